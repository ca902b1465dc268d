//! The attention forward of one (batch, head) pair over at most 64 keys with heads of
//! at most 64 values, f32 on AVX-512 (the DiT's 49 tokens and heads of 32): each block
//! of query rows keeps its scores and their softmax in registers.
//!
//! The general path (`attention.rs`) makes three passes over a `tq × tk` score buffer
//! between two products, and each 49-long row ends in a partial vector in every pass.
//! Here a block of [`ROWS`] query rows computes its scores against all keys at once
//! (at most four 16-lane vectors per row) and takes the softmax of each row while it
//! is in registers. Only kᵀ (packed once per pair by the packed kernel's
//! `transpose_columns`) and the probabilities pass through memory; the product of the
//! probabilities with v then runs once per pair on the small-product kernel
//! (`sgemm_small`).

use super::host_buffer::HostBuffer;
use super::matmul::GemmArgs;
use super::sgemm_avx512::{transpose_columns, with_scratch};
use super::sgemm_small::sgemm_small;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Query rows per block: `ROWS × 4` score vectors stay in registers.
const ROWS: usize = 6;
/// The most keys: four 16-lane vectors per score row.
pub const MAX_KEYS: usize = 64;
/// The most values per head, of q and k and of v: four vectors per row.
pub const MAX_HEAD: usize = 64;

/// One matrix operand of a pair: element `(r, c)` at `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    /// The storage, from the pair's first element.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// (row stride, column stride).
    pub strides: (usize, usize),
}

impl Rows<'_> {
    /// Whether every element the strides reach is in `data`.
    fn in_bounds(&self) -> bool {
        let (rs, cs) = self.strides;
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * rs + (self.cols - 1) * cs < self.data.len()
    }
}

/// Whether [`forward`] takes this pair: AVX-512F present, at least one and at most
/// [`MAX_KEYS`] keys, heads of at most [`MAX_HEAD`] values, and k and v with
/// contiguous rows (their rows are read as vectors).
pub fn covers(q: &Rows, k: &Rows, v: &Rows) -> bool {
    super::sgemm_avx512::available()
        && (1..=MAX_KEYS).contains(&k.rows)
        && (1..=MAX_HEAD).contains(&q.cols)
        && (1..=MAX_HEAD).contains(&v.cols)
        && k.strides.1 == 1
        && v.strides.1 == 1
}

thread_local! {
    /// Each thread's buffer for one pair's kᵀ (`d` rows of [`MAX_KEYS`] values) and
    /// probabilities (a row of [`MAX_KEYS`] per query, rounded up to whole blocks).
    static SCRATCH: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
}

/// The output rows (`ldo` apart in `out`) and row log-sum-exps (`lse`) of one pair:
/// `softmax(scale·q·kᵀ, masked when causal)·v`. The caller has checked [`covers`].
/// Panics if an operand's strides reach past its storage or the destinations are
/// short.
pub fn forward(
    (q, k, v): (Rows, Rows, Rows),
    (scale, causal): (f32, bool),
    (out, ldo): (&mut [f32], usize),
    lse: &mut [f32],
) {
    assert!(covers(&q, &k, &v) && q.cols == k.cols && k.rows == v.rows);
    assert!(q.in_bounds() && k.in_bounds() && v.in_bounds());
    assert!(lse.len() >= q.rows);
    assert!(q.rows == 0 || (q.rows - 1) * ldo + v.cols <= out.len());
    let rows = q.rows.next_multiple_of(ROWS);
    with_scratch(&SCRATCH, (q.cols + rows) * MAX_KEYS, |scratch| {
        let (keys_t, p) = scratch.split_at_mut(q.cols * MAX_KEYS);
        let (p, _) = p.as_chunks_mut::<MAX_KEYS>();
        // SAFETY: AVX-512F is available (`covers`); the operands and destinations
        // hold every index the kernels reach (asserted above).
        unsafe {
            // kᵀ: row c holds column c of k, the keys' lanes zero past the last.
            transpose_columns(keys_t, k.data, k.strides.0, (k.cols, k.rows), MAX_KEYS);
            match k.rows.div_ceil(16) {
                1 => blocks::<1>(q, keys_t, v.rows, (scale, causal), p, lse),
                2 => blocks::<2>(q, keys_t, v.rows, (scale, causal), p, lse),
                3 => blocks::<3>(q, keys_t, v.rows, (scale, causal), p, lse),
                _ => blocks::<4>(q, keys_t, v.rows, (scale, causal), p, lse),
            }
            // Then o = P·v, one product for all queries (`sgemm_small` needs one).
            if q.rows == 0 {
                return;
            }
            let g = GemmArgs {
                m: q.rows,
                n: v.cols,
                k: k.rows,
                lhs_strides: (MAX_KEYS, 1),
                rhs_strides: v.strides,
                accumulate: false,
            };
            sgemm_small(out, ldo, p.as_flattened(), v.data, g, 1.0);
        }
    });
}

/// The probabilities (rows of `p`) and log-sum-exps of every block of [`ROWS`] query
/// rows of a pair with `16·VK` key lanes.
///
/// # Safety
/// AVX-512F is available, `keys_t` holds kᵀ (`d` rows of `MAX_KEYS`, zero past the
/// keys), `p` a row for every query of every block, and the bounds [`forward`]
/// asserts hold.
#[target_feature(enable = "avx512f")]
unsafe fn blocks<const VK: usize>(
    q: Rows,
    keys_t: &[f32],
    tk: usize,
    (scale, causal): (f32, bool),
    p: &mut [[f32; MAX_KEYS]],
    lse: &mut [f32],
) {
    let d = q.cols;
    for i0 in (0..q.rows).step_by(ROWS) {
        let rows = (q.rows - i0).min(ROWS);
        // A short last block repeats its last row: computed, never stored.
        let row = |r: usize| q.data.as_ptr().add((i0 + r.min(rows - 1)) * q.strides.0);
        let lhs: [*const f32; ROWS] = std::array::from_fn(row);
        let mut s = [[_mm512_setzero_ps(); VK]; ROWS];
        for c in 0..d {
            let kt = keys_t.as_ptr().add(c * MAX_KEYS);
            let kv: [__m512; VK] = std::array::from_fn(|w| _mm512_loadu_ps(kt.add(16 * w)));
            for (sums, a) in s.iter_mut().zip(&lhs) {
                let a = _mm512_set1_ps(*a.add(c * q.strides.1));
                for (sum, &kv) in sums.iter_mut().zip(&kv) {
                    *sum = _mm512_fmadd_ps(a, kv, *sum);
                }
            }
        }
        let keys: [usize; ROWS] = std::array::from_fn(|r| match causal {
            true => (i0 + r + 1).min(tk),
            false => tk,
        });
        let p: &mut [[f32; MAX_KEYS]; ROWS] = (&mut p[i0..i0 + ROWS]).try_into().expect("a block");
        let (max, sum) = softmax_rows(&s, &keys, scale, p);
        // The logarithms after the block's vectors are dead: a libm call in the middle
        // would spill them.
        for r in 0..rows {
            lse[i0 + r] = max[r] + sum[r].ln();
        }
    }
}

/// Writes `softmax(scale·sᵣ)` over the first `keys[r]` lanes of each row into `p[r]`
/// (zero past them) and returns each row's maximum and sum of exponentials.
///
/// Phase by phase over all the block's rows rather than row by row: each row's
/// softmax is a chain of dependent steps (two horizontal reductions, the exponential's
/// polynomial), and independent rows side by side keep the vector units busy. The
/// scaled scores go through `p` (L1) so that the exponentials' constants do not push
/// the sums out of registers.
///
/// # Safety
/// AVX-512F is available; `1 ≤ keys[r] ≤ 16·VK`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows<const VK: usize>(
    s: &[[__m512; VK]; ROWS],
    keys: &[usize; ROWS],
    scale: f32,
    p: &mut [[f32; MAX_KEYS]; ROWS],
) -> ([f32; ROWS], [f32; ROWS]) {
    let masks: [[__mmask16; VK]; ROWS] =
        std::array::from_fn(|r| super::sgemm_avx512::lane_masks::<VK>(keys[r]));
    let scale = _mm512_set1_ps(scale);
    let mut max = [0.0; ROWS];
    for (((s, p), masks), max) in s.iter().zip(p.iter_mut()).zip(&masks).zip(&mut max) {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for ((&s, p), &mask) in s.iter().zip(p.chunks_exact_mut(16)).zip(masks) {
            let x = _mm512_mul_ps(s, scale);
            _mm512_storeu_ps(p.as_mut_ptr(), x);
            m = _mm512_mask_max_ps(m, mask, m, x);
        }
        *max = _mm512_reduce_max_ps(m);
    }
    let mut sum = [0.0; ROWS];
    for (((p, masks), &max), sum) in p.iter_mut().zip(&masks).zip(&max).zip(&mut sum) {
        let mut total = _mm512_setzero_ps();
        for (p, &mask) in p.chunks_exact_mut(16).zip(masks) {
            let e = exp(_mm512_sub_ps(
                _mm512_loadu_ps(p.as_ptr()),
                _mm512_set1_ps(max),
            ));
            let e = _mm512_maskz_mov_ps(mask, e);
            _mm512_storeu_ps(p.as_mut_ptr(), e);
            total = _mm512_add_ps(total, e);
        }
        *sum = _mm512_reduce_add_ps(total);
    }
    for (p, &sum) in p.iter_mut().zip(&sum) {
        let inv = _mm512_set1_ps(sum.recip());
        for p in p.chunks_exact_mut(16).take(VK) {
            _mm512_storeu_ps(
                p.as_mut_ptr(),
                _mm512_mul_ps(_mm512_loadu_ps(p.as_ptr()), inv),
            );
        }
    }
    (max, sum)
}

/// eˣ of 16 lanes: `fastmath::exp`'s reduction and polynomial, lane by lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp(x: __m512) -> __m512 {
    use super::fastmath::{EXP_POLY, LN2_HI, LN2_LO, LOG2_E, ROUND_MAGIC};
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
        _mm512_set1_ps(88.7),
    );
    let magic = _mm512_set1_ps(ROUND_MAGIC);
    let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2_E), magic);
    let n = _mm512_sub_ps(shifted, magic);
    let minus_n = _mm512_sub_ps(_mm512_setzero_ps(), n);
    let r = _mm512_fmadd_ps(minus_n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fmadd_ps(minus_n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let one_plus_r = _mm512_add_ps(r, _mm512_set1_ps(1.0));
    let er = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, one_plus_r);
    let n_int = _mm512_sub_epi32(
        _mm512_castps_si512(shifted),
        _mm512_set1_epi32(ROUND_MAGIC.to_bits() as i32),
    );
    let two_n = _mm512_slli_epi32::<23>(_mm512_add_epi32(n_int, _mm512_set1_epi32(127)));
    _mm512_mul_ps(er, _mm512_castsi512_ps(two_n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::product_cases::skipped;
    use proptest::prelude::*;
    use std::sync::Once;

    /// `len` values in [−2, 2) from a linear congruential generator.
    fn values(state: &mut u64, len: usize) -> Vec<f32> {
        let mut next = || {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        };
        (0..len).map(|_| next()).collect()
    }

    /// A random `rows × cols` operand: rows padded past `cols`, or (`spread`) every
    /// other value of wider rows.
    fn operand(
        state: &mut u64,
        rows: usize,
        cols: usize,
        spread: bool,
    ) -> (Vec<f32>, (usize, usize)) {
        let strides = match spread {
            true => (2 * cols + 1, 2),
            false => (cols + 5, 1),
        };
        (values(state, rows * strides.0 + 1), strides)
    }

    /// Outputs and log-sum-exps in f64: softmax(scale·q·kᵀ, masked)·v.
    fn reference(q: &Rows, k: &Rows, v: &Rows, scale: f64, causal: bool) -> (Vec<f64>, Vec<f64>) {
        let at = |m: &Rows, r: usize, c: usize| m.data[r * m.strides.0 + c * m.strides.1] as f64;
        let (mut out, mut lse) = (Vec::new(), Vec::new());
        for i in 0..q.rows {
            let keys = if causal { (i + 1).min(k.rows) } else { k.rows };
            let s: Vec<f64> = (0..keys)
                .map(|j| scale * (0..q.cols).map(|c| at(q, i, c) * at(k, j, c)).sum::<f64>())
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
            lse.push(max + sum.ln());
            for c in 0..v.cols {
                let o: f64 = (0..keys)
                    .map(|j| (s[j] - max).exp() / sum * at(v, j, c))
                    .sum();
                out.push(o);
            }
        }
        (out, lse)
    }

    /// The 16-lane exponential is the scalar one's arithmetic, lane by lane: equal
    /// bits from far below underflow to past overflow.
    #[test]
    fn exp_matches_the_scalar_exp() {
        static SAID: Once = Once::new();
        if skipped("exp_matches_the_scalar_exp", &SAID) {
            return;
        }
        let inputs: Vec<f32> = (-1600..1600).map(|i| i as f32 * 0.0625 + 0.01).collect();
        for chunk in inputs.chunks_exact(16) {
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F is available (checked above).
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, got) in chunk.iter().zip(got) {
                assert_eq!(
                    got.to_bits(),
                    super::super::fastmath::exp(x).to_bits(),
                    "e^{x}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Every key count up to 64 (one to four vectors, each with a partial last
        /// vector), query counts around the row block, head sizes up to 64, causal or
        /// not, padded and non-contiguous query rows: outputs and log-sum-exps match
        /// f64 arithmetic, and the output's columns past the head are left alone.
        #[test]
        fn forward_matches_f64_reference(
            tq in 1usize..30, tk in 1usize..=MAX_KEYS, d in 1usize..=MAX_HEAD,
            dv in 1usize..=MAX_HEAD, causal: bool, spread_q: bool, seed: u64,
        ) {
            static SAID: Once = Once::new();
            if skipped("forward_matches_f64_reference", &SAID) {
                return Ok(());
            }
            let mut state = seed;
            let (qd, qs) = operand(&mut state, tq, d, spread_q);
            let (kd, ks) = operand(&mut state, tk, d, false);
            let (vd, vs) = operand(&mut state, tk, dv, false);
            let q = Rows { data: &qd, rows: tq, cols: d, strides: qs };
            let k = Rows { data: &kd, rows: tk, cols: d, strides: ks };
            let v = Rows { data: &vd, rows: tk, cols: dv, strides: vs };
            let scale = 1.0 / (d as f32).sqrt();
            let ldo = dv + 3;
            let before = values(&mut state, tq * ldo);
            let (mut out, mut lse) = (before.clone(), vec![0.0; tq]);
            forward((q, k, v), (scale, causal), (&mut out, ldo), &mut lse);
            let (want, want_lse) = reference(&q, &k, &v, scale as f64, causal);
            let tol = |want: f64| 1e-5 * ((tk + d) as f64).sqrt() * (1.0 + want.abs());
            for i in 0..tq {
                prop_assert!((lse[i] as f64 - want_lse[i]).abs() <= tol(want_lse[i]), "lse row {i}");
                for c in 0..ldo {
                    let got = out[i * ldo + c];
                    if c < dv {
                        let want = want[i * dv + c];
                        prop_assert!((got as f64 - want).abs() <= tol(want), "({i}, {c}): {got} vs {want}");
                    } else {
                        prop_assert_eq!(got.to_bits(), before[i * ldo + c].to_bits());
                    }
                }
            }
        }
    }
}
