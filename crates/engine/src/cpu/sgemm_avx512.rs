//! f32 matrix products with AVX-512, for CPUs that have it (the `gemm` crate's stable
//! build stops at AVX2, which on such CPUs leaves half of each core's FMA width idle;
//! MKL, which PyTorch uses, does not).
//!
//! The structure is the usual packed one (Goto, BLIS):
//!
//! - the right operand is packed once into tiles of [`NR`] columns, each tile `k` rows of
//!   `NR` contiguous values (zero-padded past the last column);
//! - the output is cut into tasks of at most [`MC`] rows by a range of tiles; each task
//!   packs its rows of the left operand, [`KC`] columns at a time, into micro-panels of
//!   [`MR`] rows stored column by column (zero-padded past the last row);
//! - the micro-kernel multiplies one `MR × KC` micro-panel by one `KC × NR` tile slice
//!   into `MR × NR` sums held in 24 registers (two 16-lane vectors per row), loading
//!   two vectors of the right operand and broadcasting one left value per row per step.
//!
//! Any row and column strides are read, so transposed operands need no copy beforehand:
//! the packing is where the layout is dealt with.

use super::matmul::{Bias, GemmArgs};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::thread::LocalKey;

/// Rows of a micro-tile.
const MR: usize = 12;
/// Columns of a micro-tile: two 16-lane vectors.
const NR: usize = 32;
/// Inner-dimension block: a `KC × NR` slice of the packed right operand (32 KiB)
/// stays in the L1 cache while the micro-panels of a task stream past it.
const KC: usize = 256;
/// Rows per task: the task's packed left block (`MC × KC`, 192 KiB) stays in L2.
const MC: usize = 16 * MR;

/// Whether this CPU runs the AVX-512 product (checked once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

/// `dst = beta·lhs·rhs` (or `dst += …` when `g.accumulate`, or `dst = bias + …`) for a
/// row-major `dst` with `ldc` between rows, split over rayon's threads when
/// `parallel`. Each task writes its bias rows just before its first product, while
/// they are in cache. The caller has checked [`available`], that `m`, `n` and `k` are
/// nonzero, and that every index the strides reach is in bounds.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    dst: &mut [f32],
    ldc: usize,
    lhs: &[f32],
    rhs: &[f32],
    g: GemmArgs,
    beta: f32,
    parallel: bool,
    bias: Option<Bias<f32>>,
) {
    assert!(available() && g.m > 0 && g.n > 0 && g.k > 0);
    let tiles = g.n.div_ceil(NR);
    with_scratch(&PACKED_RHS, tiles * g.k * NR, |packed_rhs| {
        pack_rhs(packed_rhs, rhs, g, parallel);
        run_tasks(dst, ldc, lhs, packed_rhs, g, beta, parallel, bias);
    });
}

thread_local! {
    /// Each thread's buffer for packed right operands, kept between products: the
    /// attention's many small products would otherwise allocate for every one.
    static PACKED_RHS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's buffer for packed left blocks.
    static PACKED_LHS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the first `len` values of this thread's `buffer`, or on a fresh buffer
/// when this thread's is in use (a product started by a job that this thread picked
/// up while waiting inside another product).
fn with_scratch<R>(
    buffer: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    buffer.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Splits the product into tasks over rows and column tiles and runs them.
#[allow(clippy::too_many_arguments)]
fn run_tasks(
    dst: &mut [f32],
    ldc: usize,
    lhs: &[f32],
    packed_rhs: &[f32],
    g: GemmArgs,
    beta: f32,
    parallel: bool,
    bias: Option<Bias<f32>>,
) {
    let tiles = g.n.div_ceil(NR);

    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // Row blocks of equal size (whole micro-panels), then enough column chunks to keep
    // every thread busy when the rows alone do not.
    let panels = g.m.div_ceil(MR);
    let row_blocks = g.m.div_ceil(MC).max(threads.min(panels));
    let panels_per_block = panels.div_ceil(row_blocks);
    let row_blocks = panels.div_ceil(panels_per_block);
    let column_chunks = (2 * threads).div_ceil(row_blocks).clamp(1, tiles);
    let tiles_per_chunk = tiles.div_ceil(column_chunks);
    let column_chunks = tiles.div_ceil(tiles_per_chunk);

    let out = SharedOut(dst.as_mut_ptr(), dst.len());
    let task = |t: usize| {
        let (block, chunk) = (t / column_chunks, t % column_chunks);
        let rows = block * panels_per_block * MR..g.m.min((block + 1) * panels_per_block * MR);
        let tile_range = chunk * tiles_per_chunk..tiles.min((chunk + 1) * tiles_per_chunk);
        let part = Part {
            rows,
            tiles: tile_range,
        };
        // SAFETY: tasks cover disjoint (row range × column range) parts of `dst`.
        unsafe { run_task(&out, ldc, lhs, packed_rhs, g, beta, part, bias) };
    };
    let tasks = row_blocks * column_chunks;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// One task's part of the output: a range of rows by a range of `NR`-wide tiles.
struct Part {
    rows: std::ops::Range<usize>,
    tiles: std::ops::Range<usize>,
}

/// The output's pointer and length, shared by tasks that write disjoint parts.
struct SharedOut(*mut f32, usize);
// SAFETY: tasks write disjoint elements (see `sgemm`), so sharing the pointer is sound.
unsafe impl Sync for SharedOut {}

/// Packs `rhs` (`k × n` with `g.rhs_strides`) into `NR`-wide tiles of `k` rows each.
fn pack_rhs(packed: &mut [f32], rhs: &[f32], g: GemmArgs, parallel: bool) {
    let (rs, cs) = g.rhs_strides;
    let pack_tile = |(tile, dst): (usize, &mut [f32])| {
        let first = tile * NR;
        let width = NR.min(g.n - first);
        if cs == 1 {
            for (p, row) in dst.chunks_exact_mut(NR).enumerate() {
                let at = p * rs + first;
                row[..width].copy_from_slice(&rhs[at..at + width]);
                row[width..].fill(0.0);
            }
        } else {
            // A transposed operand: walk down each column, sixteen inner indices at a
            // time, so that the rows written stay in L1.
            for p0 in (0..g.k).step_by(16) {
                let steps = &mut dst[p0 * NR..g.k.min(p0 + 16) * NR];
                for j in 0..NR {
                    for (i, step) in steps.chunks_exact_mut(NR).enumerate() {
                        step[j] = if j < width {
                            rhs[(p0 + i) * rs + (first + j) * cs]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    };
    if parallel && g.k * g.n >= 1 << 16 {
        packed
            .par_chunks_mut(g.k * NR)
            .enumerate()
            .for_each(pack_tile);
    } else {
        packed.chunks_mut(g.k * NR).enumerate().for_each(pack_tile);
    }
}

/// Packs rows `rows` and inner indices `ks` of `lhs` into `MR`-row micro-panels, each
/// stored column by column (`MR` values per inner index).
fn pack_lhs(
    packed: &mut [f32],
    lhs: &[f32],
    g: GemmArgs,
    rows: &std::ops::Range<usize>,
    ks: &std::ops::Range<usize>,
) {
    let (rs, cs) = g.lhs_strides;
    let kc = ks.len();
    for (panel, dst) in packed.chunks_exact_mut(kc * MR).enumerate() {
        let first = rows.start + panel * MR;
        let valid = MR.min(rows.end - first);
        if cs == 1 {
            // Row-major rows: read each row as a slice, write the panel step by step.
            let row = |r: usize| &lhs[(first + r.min(valid - 1)) * rs + ks.start..][..kc];
            let src: [&[f32]; MR] = std::array::from_fn(row);
            for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                for (value, src) in step.iter_mut().zip(&src) {
                    *value = src[p];
                }
            }
        } else if rs == 1 {
            // A transposed operand: each step's rows are adjacent.
            for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                let at = first + (ks.start + p) * cs;
                step[..valid].copy_from_slice(&lhs[at..at + valid]);
            }
        } else {
            for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                let col = (ks.start + p) * cs;
                for (r, value) in step.iter_mut().enumerate().take(valid) {
                    *value = lhs[(first + r) * rs + col];
                }
            }
        }
        // Rows past the end are zero (the row-major path filled them with copies).
        if valid < MR {
            dst.chunks_exact_mut(MR)
                .for_each(|step| step[valid..].fill(0.0));
        }
    }
}

/// Writes the bias into the task's part of the output.
///
/// # Safety
/// No other thread writes the task's part of `out`.
unsafe fn fill_bias(out: &SharedOut, ldc: usize, g: GemmArgs, part: &Part, bias: Bias<f32>) {
    let cols = part.tiles.start * NR..g.n.min(part.tiles.end * NR);
    let (rs, cs) = bias.strides;
    for row in part.rows.clone() {
        let at = row * ldc + cols.start;
        assert!(at + cols.len() <= out.1);
        let dst = std::slice::from_raw_parts_mut(out.0.add(at), cols.len());
        let first = bias.offset + row * rs + cols.start * cs;
        if cs == 1 {
            dst.copy_from_slice(&bias.data[first..first + cols.len()]);
        } else {
            dst.iter_mut()
                .enumerate()
                .for_each(|(j, d)| *d = bias.data[first + j * cs]);
        }
    }
}

/// One task: its part of the output, over the whole inner dimension in blocks of `KC`.
///
/// # Safety
/// No other thread writes the task's part of `out`, and AVX-512F is available.
#[allow(clippy::too_many_arguments)]
unsafe fn run_task(
    out: &SharedOut,
    ldc: usize,
    lhs: &[f32],
    packed_rhs: &[f32],
    g: GemmArgs,
    beta: f32,
    part: Part,
    bias: Option<Bias<f32>>,
) {
    if let Some(bias) = bias {
        fill_bias(out, ldc, g, &part, bias);
    }
    let Part { rows, tiles } = part;
    let panels = rows.len().div_ceil(MR);
    with_scratch(&PACKED_LHS, panels * MR * KC.min(g.k), |packed_lhs| {
        multiply_part(
            out,
            ldc,
            lhs,
            packed_rhs,
            g,
            beta,
            rows,
            tiles,
            packed_lhs,
            bias.is_some(),
        )
    });
}

/// The products of one task (see [`run_task`]), packing its left rows into `packed_lhs`.
///
/// # Safety
/// As for [`run_task`].
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_part(
    out: &SharedOut,
    ldc: usize,
    lhs: &[f32],
    packed_rhs: &[f32],
    g: GemmArgs,
    beta: f32,
    rows: std::ops::Range<usize>,
    tiles: std::ops::Range<usize>,
    packed_lhs: &mut [f32],
    biased: bool,
) {
    let panels = rows.len().div_ceil(MR);
    for k0 in (0..g.k).step_by(KC) {
        let ks = k0..g.k.min(k0 + KC);
        let kc = ks.len();
        pack_lhs(&mut packed_lhs[..panels * MR * kc], lhs, g, &rows, &ks);
        // Later blocks add to what the earlier ones wrote.
        let add = g.accumulate || biased || k0 > 0;
        for tile in tiles.clone() {
            let b = &packed_rhs[tile * g.k * NR + k0 * NR..][..kc * NR];
            let cols = NR.min(g.n - tile * NR);
            for panel in 0..panels {
                let a = &packed_lhs[panel * MR * kc..][..MR * kc];
                let row = rows.start + panel * MR;
                let tile_rows = MR.min(rows.end - row);
                let at = row * ldc + tile * NR;
                debug_assert!((tile_rows - 1) * ldc + at + cols <= out.1);
                let c = out.0.add(at);
                let edge = Edge {
                    rows: tile_rows,
                    cols,
                    ldc,
                    beta,
                    add,
                };
                if cols > NR / 2 {
                    micro_kernel::<2>(kc, a, b, c, edge);
                } else {
                    micro_kernel::<1>(kc, a, b, c, edge);
                }
            }
        }
    }
}

/// Where and how a micro-tile's sums are stored.
#[derive(Clone, Copy)]
struct Edge {
    /// Valid rows (≤ `MR`).
    rows: usize,
    /// Valid columns (≤ `16·V`).
    cols: usize,
    ldc: usize,
    beta: f32,
    /// Add to the destination's values instead of overwriting them.
    add: bool,
}

/// `MR × 16V` sums of `a` (`kc × MR`, packed) times `b` (`kc` rows of `NR`, packed),
/// scaled by `beta` and stored (or added) at `c`. `V = 1` serves tiles whose last
/// columns fit one vector.
///
/// # Safety
/// AVX-512F is available, `a` and `b` hold `kc` packed steps, and `c` addresses
/// `edge.rows` rows of `edge.cols` values, `edge.ldc` apart.
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel<const V: usize>(kc: usize, a: &[f32], b: &[f32], c: *mut f32, edge: Edge) {
    let mut sums = [[_mm512_setzero_ps(); V]; MR];
    let (a, b) = (&a[..kc * MR], &b[..kc * NR]);
    for p in 0..kc {
        let (ap, bp) = (a.as_ptr().add(p * MR), b.as_ptr().add(p * NR));
        // The left micro-panel streams from L2: ask for it a few steps ahead.
        _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(8 * MR).cast());
        let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
        for (r, row) in sums.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r));
            for (sum, &bv) in row.iter_mut().zip(&bv) {
                *sum = _mm512_fmadd_ps(av, bv, *sum);
            }
        }
    }
    let beta = _mm512_set1_ps(edge.beta);
    let masks: [__mmask16; V] = std::array::from_fn(|v| {
        let valid = edge.cols.saturating_sub(16 * v).min(16);
        ((1u32 << valid) - 1) as __mmask16
    });
    for (r, row) in sums.iter().enumerate().take(edge.rows) {
        let line = c.add(r * edge.ldc);
        for (v, (&sum, &mask)) in row.iter().zip(&masks).enumerate() {
            let ptr = line.add(16 * v);
            let mut value = _mm512_mul_ps(sum, beta);
            if edge.add {
                value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask, ptr));
            }
            _mm512_mask_storeu_ps(ptr, mask, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `beta·A·B (+ C)` in f64, for operands stored with the given strides.
    fn reference(c: &[f32], ldc: usize, a: &[f32], b: &[f32], g: GemmArgs, beta: f32) -> Vec<f64> {
        let mut out = vec![0.0; g.m * ldc];
        for i in 0..g.m {
            for j in 0..g.n {
                let dot: f64 = (0..g.k)
                    .map(|p| {
                        a[i * g.lhs_strides.0 + p * g.lhs_strides.1] as f64
                            * b[p * g.rhs_strides.0 + j * g.rhs_strides.1] as f64
                    })
                    .sum();
                let prior = if g.accumulate {
                    c[i * ldc + j] as f64
                } else {
                    0.0
                };
                out[i * ldc + j] = beta as f64 * dot + prior;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Sizes around the tile edges and the inner block, both layouts of each
        /// operand, overwrite and accumulate, one thread and several: every output
        /// matches f64 arithmetic, and the columns past `n` are left alone.
        #[test]
        fn sgemm_matches_f64_reference(
            m in 1usize..40, n in 1usize..80, k in 1usize..300,
            lhs_transposed: bool, rhs_transposed: bool, accumulate: bool, parallel: bool,
            with_bias: bool, beta in -2.0f32..2.0, seed: u64,
        ) {
            if !available() {
                eprintln!("skipped: this CPU has no AVX-512F");
                return Ok(());
            }
            let mut state = seed;
            let mut next = move || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            };
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let ldc = n + 3;
            let mut c: Vec<f32> = (0..m * ldc).map(|_| next()).collect();
            let g = GemmArgs {
                m, n, k,
                lhs_strides: if lhs_transposed { (1, m) } else { (k, 1) },
                rhs_strides: if rhs_transposed { (1, k) } else { (n, 1) },
                accumulate,
            };
            // A bias of one row, repeated: the linear layer's.
            let bias_row: Vec<f32> = (0..n + 1).map(|_| next()).collect();
            let bias = with_bias.then_some(Bias { data: &bias_row, offset: 1, strides: (0, 1) });
            let mut want = reference(&c, ldc, &a, &b, g, beta);
            if with_bias {
                for i in 0..m {
                    for j in 0..n {
                        let prior = if g.accumulate { c[i * ldc + j] as f64 } else { 0.0 };
                        want[i * ldc + j] += bias_row[1 + j] as f64 - prior;
                    }
                }
            }
            let before = c.clone();
            sgemm(&mut c, ldc, &a, &b, g, beta, parallel, bias);
            for i in 0..m {
                for j in 0..ldc {
                    let got = c[i * ldc + j] as f64;
                    if j < n {
                        let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want[i * ldc + j].abs());
                        prop_assert!((got - want[i * ldc + j]).abs() <= tol,
                            "({i}, {j}): {got} vs {}", want[i * ldc + j]);
                    } else {
                        prop_assert_eq!(c[i * ldc + j], before[i * ldc + j]);
                    }
                }
            }
        }
    }
}
