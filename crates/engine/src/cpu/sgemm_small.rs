//! f32 products small enough to sit in the L1 cache (the attention's per-head
//! products: 49 × 32 × 49 in the default DiT), on AVX-512.
//!
//! The packed kernel (`sgemm_avx512`) and the `gemm` crate both pack their operands
//! and cut the work for large products; at this size that set-up costs more than the
//! arithmetic. Here nothing is packed but a right operand whose rows are not
//! contiguous: each step loads one row of the right operand as up to four 16-lane
//! vectors (masked past `n`) and broadcasts one left value per output row, into
//! `R × V` sums held in registers.

use super::host_buffer::HostBuffer;
use super::matmul::GemmArgs;
use super::sgemm_avx512::{
    available, lane_masks, pack_tile, store_row, unrolled, with_scratch, NR,
};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Vectors per micro-tile row at most: 64 output columns.
const MAX_V: usize = 4;

/// Rows of a micro-tile for `v` vectors per row: about 24 sums in registers, leaving
/// room for the right operand's row and a broadcast.
const fn tile_rows(v: usize) -> usize {
    match v {
        1 | 2 => 12,
        3 => 8,
        _ => 6,
    }
}

thread_local! {
    /// Each thread's buffer for one tile of a right operand whose rows are not
    /// contiguous, packed.
    static RHS_TILE: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
}

/// `dst = beta·lhs·rhs`, or `dst += beta·lhs·rhs` when `g.accumulate`, on one thread,
/// for a row-major `dst` with `ldc` between rows. The caller has checked that AVX-512F
/// is available, that `m`, `n` and `k` are nonzero and that every index the strides
/// reach is in bounds.
///
/// A right operand with contiguous rows is read in place, 64 columns at a time; any
/// other (the transposed keys of `q·kᵀ`) is packed `NR` columns at a time by the
/// packed kernel's `pack_tile` (16 × 16 transposes in registers for a transposed one).
pub fn sgemm_small(dst: &mut [f32], ldc: usize, lhs: &[f32], rhs: &[f32], g: GemmArgs, beta: f32) {
    assert!(available() && g.m > 0 && g.n > 0 && g.k > 0);
    assert!((g.m - 1) * ldc + g.n <= dst.len());
    let (rs, cs) = g.rhs_strides;
    assert!((g.m - 1) * g.lhs_strides.0 + (g.k - 1) * g.lhs_strides.1 < lhs.len());
    assert!((g.k - 1) * rs + (g.n - 1) * cs < rhs.len());
    let mut block = |j0: usize, cols: usize, (b, ldb): (&[f32], usize)| {
        let tile = Tile {
            k: g.k,
            rhs: b.as_ptr(),
            ldb,
            cols,
            ldc,
            beta,
            add: g.accumulate,
        };
        // SAFETY: AVX-512F is available; `b` holds `k` rows of `cols` values `ldb`
        // apart, and the output and the left operand are in bounds (asserted above).
        unsafe { column_block(dst.as_mut_ptr().add(j0), lhs, g, tile) }
    };
    if cs == 1 {
        for j0 in (0..g.n).step_by(16 * MAX_V) {
            block(j0, (g.n - j0).min(16 * MAX_V), (&rhs[j0..], rs));
        }
        return;
    }
    with_scratch(&RHS_TILE, g.k * NR, |packed| {
        for tile in 0..g.n.div_ceil(NR) {
            pack_tile(packed, rhs, g, &(0..g.k), tile);
            let j0 = tile * NR;
            block(j0, (g.n - j0).min(NR), (packed, NR));
        }
    });
}

/// What the micro-tiles of one column block share.
#[derive(Clone, Copy)]
struct Tile {
    /// Inner dimension.
    k: usize,
    /// The block's first column of the right operand's first row.
    rhs: *const f32,
    ldb: usize,
    /// Valid columns (≤ `16·V`).
    cols: usize,
    ldc: usize,
    beta: f32,
    /// Add to the destination's values instead of overwriting them.
    add: bool,
}

/// The `t.cols` output columns starting at `c` (the block's column in row 0).
///
/// # Safety
/// AVX-512F is available, `t.rhs` addresses `t.k` rows of `t.cols` values `t.ldb`
/// apart, `c` addresses `g.m` rows of `t.cols` values, and `lhs` every index its
/// strides reach.
#[target_feature(enable = "avx512f")]
unsafe fn column_block(c: *mut f32, lhs: &[f32], g: GemmArgs, t: Tile) {
    match t.cols.div_ceil(16) {
        1 => rows::<1>(c, lhs, g, t),
        2 => rows::<2>(c, lhs, g, t),
        3 => rows::<3>(c, lhs, g, t),
        _ => rows::<4>(c, lhs, g, t),
    }
}

/// Every row of a column block, in micro-tiles of `tile_rows(V)` rows and one shorter
/// last one.
///
/// # Safety
/// As [`column_block`].
#[target_feature(enable = "avx512f")]
unsafe fn rows<const V: usize>(c: *mut f32, lhs: &[f32], g: GemmArgs, t: Tile) {
    let (rs, cs) = g.lhs_strides;
    let step = tile_rows(V);
    for i0 in (0..g.m).step_by(step) {
        let a = (lhs.as_ptr().add(i0 * rs), rs, cs);
        let c = c.add(i0 * t.ldc);
        // Constant row counts let the sums live in registers.
        match (g.m - i0).min(step) {
            1 => micro_tile::<V, 1>(a, c, t),
            2 => micro_tile::<V, 2>(a, c, t),
            3 => micro_tile::<V, 3>(a, c, t),
            4 => micro_tile::<V, 4>(a, c, t),
            5 => micro_tile::<V, 5>(a, c, t),
            6 => micro_tile::<V, 6>(a, c, t),
            7 => micro_tile::<V, 7>(a, c, t),
            8 => micro_tile::<V, 8>(a, c, t),
            9 => micro_tile::<V, 9>(a, c, t),
            10 => micro_tile::<V, 10>(a, c, t),
            11 => micro_tile::<V, 11>(a, c, t),
            _ => micro_tile::<V, 12>(a, c, t),
        }
    }
}

/// `R × t.cols` outputs at `c` from the `R` left rows at `a` (pointer, row stride,
/// column stride).
///
/// # Safety
/// As [`rows`]: the `R` rows and `t.k` steps of `a`, `t.k` right rows of `t.cols`
/// values and `R` output rows of `t.cols` values are in bounds.
#[target_feature(enable = "avx512f")]
unsafe fn micro_tile<const V: usize, const R: usize>(
    (a, rs, cs): (*const f32, usize, usize),
    c: *mut f32,
    t: Tile,
) {
    let masks = lane_masks::<V>(t.cols);
    let mut sums = [[_mm512_setzero_ps(); V]; R];
    let (mut b, mut ap) = (t.rhs, a);
    // One step: a row of the right operand times each row's left value.
    macro_rules! step {
        () => {{
            // Masked lanes are not read, so the pointers may run past the row.
            let bv: [__m512; V] =
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], b.wrapping_add(16 * v)));
            for (r, row) in sums.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r * rs));
                for (sum, &bv) in row.iter_mut().zip(&bv) {
                    *sum = _mm512_fmadd_ps(av, bv, *sum);
                }
            }
            b = b.wrapping_add(t.ldb);
            ap = ap.wrapping_add(cs);
        }};
    }
    unrolled!(t.k, step!());
    let (beta, zero) = (_mm512_set1_ps(t.beta), [_mm512_setzero_ps(); V]);
    for (r, row) in sums.iter().enumerate() {
        store_row(c.add(r * t.ldc), row, &masks, (beta, &zero), t.add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::product_cases::{skipped, Case};
    use proptest::prelude::*;
    use std::sync::Once;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Every row count of each tile width and its tail, column counts across the
        /// one- to four-vector tiles and past them, three layouts of each operand
        /// (row-major, transposed, neither stride 1), overwrite and accumulate: every
        /// output matches f64 arithmetic and the columns past `n` are left alone.
        #[test]
        fn sgemm_small_matches_f64_reference(
            m in 1usize..30, n in 1usize..140, k in 1usize..70,
            layouts in (0usize..3, 0usize..3), accumulate: bool,
            beta in -2.0f32..2.0, seed: u64,
        ) {
            static SAID: Once = Once::new();
            if skipped("sgemm_small_matches_f64_reference", &SAID) {
                return Ok(());
            }
            let mut case = Case::new((m, n, k), layouts, accumulate, seed);
            let (want, before) = (case.reference(beta), case.c.clone());
            sgemm_small(&mut case.c, case.ldc, &case.a, &case.b, case.g, beta);
            case.check(&case.c, &want, &before).map_err(TestCaseError::fail)?;
        }
    }
}
