//! The attention backward's score gradients for one (batch, head) pair over at most 64
//! keys, f32 on AVX-512 (the DiT's 49 tokens and heads of 32): the probabilities P,
//! recomputed from the forward's log-sum-exps, and dS = P∘(dO·vᵀ − rowsum(dO∘O)).
//!
//! The general backward (`attention.rs`) computes them as two products, each packing
//! its transposed right operand, and two passes over the `tq × tk` buffers between
//! them, every 49-long row ending in a partial vector. Here each block of
//! [`ROWS`] query rows takes its scores and their exponentials, then dO·vᵀ and the
//! score gradients, in registers (the forward's few-keys kernel does the same for its
//! softmax); kᵀ and vᵀ are transposed once per pair. The products of P and dS with
//! dO, k and q that follow are the general backward's.

use super::attention_few_keys::{block_products, exp, Rows, MAX_KEYS, ROWS};
use super::sgemm_avx512::{lane_masks, transpose_columns, with_scratch};
use std::arch::x86_64::*;
use std::cell::RefCell;

thread_local! {
    /// Each thread's buffer for one pair's kᵀ and vᵀ (`d` and `dv` rows of
    /// [`MAX_KEYS`] values).
    static TRANSPOSED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One pair's operands of the backward: q, k, v, the forward's output o and its
/// gradient g.
pub struct PairOperands<'a> {
    /// Queries, `tq × d`.
    pub q: Rows<'a>,
    /// Keys, `tk × d`.
    pub k: Rows<'a>,
    /// Values, `tk × dv`.
    pub v: Rows<'a>,
    /// The forward's output, `tq × dv`.
    pub o: Rows<'a>,
    /// The output's gradient, `tq × dv`.
    pub g: Rows<'a>,
}

/// Whether [`score_grads`] takes this pair: the pairs the few-keys forward takes
/// (`attention_few_keys::covers`), with o and g of the output's shape and contiguous
/// rows (their rows' dot products are read as vectors).
pub fn covers(x: &PairOperands) -> bool {
    let output_like = |m: &Rows| m.rows == x.q.rows && m.cols == x.v.cols && m.strides.1 == 1;
    super::attention_few_keys::covers(&x.q, &x.k, &x.v) && output_like(&x.o) && output_like(&x.g)
}

/// P = softmax(scale·q·kᵀ, masked when causal), from the forward's row log-sum-exps
/// `lse`, and dS = P∘(g·vᵀ − rowsum(g∘o)), each `tq × tk` with rows `ld` apart in `p`
/// and `ds` (the values past `tk` in a row are left alone). The caller has checked
/// [`covers`]. Panics if an operand's strides reach past its storage or the
/// destinations are short.
pub fn score_grads(
    x: &PairOperands,
    lse: &[f32],
    (scale, causal): (f32, bool),
    (p, ds, ld): (&mut [f32], &mut [f32], usize),
) {
    let (q, k, v) = (&x.q, &x.k, &x.v);
    assert!(covers(x) && q.cols == k.cols && k.rows == v.rows);
    assert!([q, k, v, &x.o, &x.g].iter().all(|m| m.in_bounds()));
    assert!(lse.len() >= q.rows && ld >= k.rows);
    let needed = q.rows.saturating_sub(1) * ld + k.rows;
    assert!(q.rows == 0 || (p.len() >= needed && ds.len() >= needed));
    if q.rows == 0 {
        return;
    }
    with_scratch(&TRANSPOSED, (q.cols + v.cols) * MAX_KEYS, |scratch| {
        let (keys_t, values_t) = scratch.split_at_mut(q.cols * MAX_KEYS);
        let out = (p, ds, ld);
        // SAFETY: AVX-512F is available (`covers`); k and v have contiguous rows and
        // every operand and destination holds the indices the kernels reach (asserted
        // above).
        unsafe {
            transpose_columns(keys_t, k.data, k.strides.0, (k.cols, k.rows), MAX_KEYS);
            transpose_columns(values_t, v.data, v.strides.0, (v.cols, v.rows), MAX_KEYS);
            let transposed = (&*keys_t, &*values_t);
            match k.rows.div_ceil(16) {
                1 => blocks::<1>(x, transposed, lse, (scale, causal), out),
                2 => blocks::<2>(x, transposed, lse, (scale, causal), out),
                3 => blocks::<3>(x, transposed, lse, (scale, causal), out),
                _ => blocks::<4>(x, transposed, lse, (scale, causal), out),
            }
        }
    });
}

/// P and dS of every block of [`ROWS`] query rows of a pair with `16·VK` key lanes.
///
/// # Safety
/// AVX-512F is available, `keys_t` and `values_t` hold kᵀ and vᵀ (`d` and `dv` rows
/// of [`MAX_KEYS`], zero past the keys), and the bounds [`score_grads`] asserts hold.
#[target_feature(enable = "avx512f")]
unsafe fn blocks<const VK: usize>(
    x: &PairOperands,
    (keys_t, values_t): (&[f32], &[f32]),
    lse: &[f32],
    (scale, causal): (f32, bool),
    (p, ds, ld): (&mut [f32], &mut [f32], usize),
) {
    let (q, g, o, tk) = (&x.q, &x.g, &x.o, x.k.rows);
    let store_masks = lane_masks::<VK>(tk);
    let dv_masks = lane_masks::<4>(g.cols);
    for i0 in (0..q.rows).step_by(ROWS) {
        let rows = (q.rows - i0).min(ROWS);
        // A short last block repeats its last row: computed, never stored.
        let row = |r: usize| i0 + r.min(rows - 1);
        let row_ptrs = |m: &Rows| -> [*const f32; ROWS] {
            std::array::from_fn(|r| m.data.as_ptr().add(row(r) * m.strides.0))
        };
        // P, into `p`: the exponentials of the scaled scores less each row's lse,
        // zero past the row's keys.
        let s = block_products::<VK>(&row_ptrs(q), q.strides.1, keys_t, q.cols);
        let scale_v = _mm512_set1_ps(scale);
        for (r, s) in s.iter().enumerate().take(rows) {
            let keys = match causal {
                true => (i0 + r + 1).min(tk),
                false => tk,
            };
            let keep = lane_masks::<VK>(keys);
            let l = _mm512_set1_ps(lse[i0 + r]);
            let at = p.as_mut_ptr().add((i0 + r) * ld);
            for w in 0..VK {
                let e = exp(_mm512_sub_ps(_mm512_mul_ps(s[w], scale_v), l));
                let e = _mm512_maskz_mov_ps(keep[w], e);
                _mm512_mask_storeu_ps(at.add(16 * w), store_masks[w], e);
            }
        }
        // dS = P∘(g·vᵀ − Σ g∘o), P read back from `p` (L1).
        let (g_rows, o_rows) = (row_ptrs(g), row_ptrs(o));
        let dp = block_products::<VK>(&g_rows, g.strides.1, values_t, g.cols);
        for (r, dp) in dp.iter().enumerate().take(rows) {
            let mut dot = _mm512_setzero_ps();
            for (w, &mask) in dv_masks.iter().enumerate() {
                let gv = _mm512_maskz_loadu_ps(mask, g_rows[r].add(16 * w));
                let ov = _mm512_maskz_loadu_ps(mask, o_rows[r].add(16 * w));
                dot = _mm512_fmadd_ps(gv, ov, dot);
            }
            let di = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
            let (from, to) = (
                p.as_ptr().add((i0 + r) * ld),
                ds.as_mut_ptr().add((i0 + r) * ld),
            );
            for w in 0..VK {
                let pv = _mm512_maskz_loadu_ps(store_masks[w], from.add(16 * w));
                let d = _mm512_mul_ps(pv, _mm512_sub_ps(dp[w], di));
                _mm512_mask_storeu_ps(to.add(16 * w), store_masks[w], d);
            }
        }
    }
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

    /// A random `rows × cols` operand with rows padded past `cols`, or (`spread`) every
    /// other value of wider rows.
    fn operand(
        state: &mut u64,
        rows: usize,
        cols: usize,
        spread: bool,
    ) -> (Vec<f32>, (usize, usize)) {
        let strides = match spread {
            true => (2 * cols + 1, 2),
            false => (cols + 3, 1),
        };
        (values(state, rows * strides.0 + 1), strides)
    }

    /// P (from the f64 log-sum-exps, also returned) and dS in f64, and beside each
    /// score gradient the magnitude of the sums it takes (Σ|g·v| + Σ|g·o|), which
    /// bounds its f32 rounding.
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &PairOperands,
        scale: f64,
        causal: bool,
    ) -> (Vec<f64>, Vec<(f64, f64)>, Vec<f64>) {
        let at = |m: &Rows, r: usize, c: usize| m.data[r * m.strides.0 + c * m.strides.1] as f64;
        let dot = |a: &Rows, i: usize, b: &Rows, j: usize| -> f64 {
            (0..a.cols).map(|c| at(a, i, c) * at(b, j, c)).sum()
        };
        let (tq, tk) = (x.q.rows, x.k.rows);
        let (mut p, mut ds, mut lse) = (vec![0.0; tq * tk], vec![(0.0, 0.0); tq * tk], vec![]);
        let magnitude = |a: &Rows, i: usize, b: &Rows, j: usize| -> f64 {
            (0..a.cols).map(|c| (at(a, i, c) * at(b, j, c)).abs()).sum()
        };
        for i in 0..tq {
            let keys = if causal { (i + 1).min(tk) } else { tk };
            let s: Vec<f64> = (0..keys).map(|j| scale * dot(&x.q, i, &x.k, j)).collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = max + s.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            lse.push(l);
            let di = dot(&x.g, i, &x.o, i);
            for j in 0..keys {
                p[i * tk + j] = (s[j] - l).exp();
                let sums = magnitude(&x.g, i, &x.v, j) + magnitude(&x.g, i, &x.o, i);
                ds[i * tk + j] = (p[i * tk + j] * (dot(&x.g, i, &x.v, j) - di), sums);
            }
        }
        (p, ds, lse)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Every key count up to 64 (one to four vectors, each with a partial last
        /// vector), query counts around the row block, heads up to 64, causal or not,
        /// padded and non-contiguous query rows: P and dS match f64 arithmetic, zero
        /// past each row's keys, and the destination's values past the keys are left
        /// alone.
        #[test]
        fn score_grads_match_f64_reference(
            tq in 1usize..30, tk in 1usize..=MAX_KEYS, d in 1usize..=super::super::attention_few_keys::MAX_HEAD,
            dv in 1usize..=super::super::attention_few_keys::MAX_HEAD, causal: bool, spread_q: bool, seed: u64,
        ) {
            static SAID: Once = Once::new();
            if skipped("score_grads_match_f64_reference", &SAID) {
                return Ok(());
            }
            let mut state = seed;
            let (qd, qs) = operand(&mut state, tq, d, spread_q);
            let (kd, ks) = operand(&mut state, tk, d, false);
            let (vd, vs) = operand(&mut state, tk, dv, false);
            let (od, os) = operand(&mut state, tq, dv, false);
            let (gd, gs) = operand(&mut state, tq, dv, false);
            let rows = |data, rows, cols, strides| Rows { data, rows, cols, strides };
            let x = PairOperands {
                q: rows(&qd, tq, d, qs),
                k: rows(&kd, tk, d, ks),
                v: rows(&vd, tk, dv, vs),
                o: rows(&od, tq, dv, os),
                g: rows(&gd, tq, dv, gs),
            };
            let scale = 1.0 / (d as f32).sqrt();
            let (want_p, want_ds, lse) = reference(&x, scale as f64, causal);
            let lse: Vec<f32> = lse.iter().map(|&l| l as f32).collect();
            let ld = tk + 2;
            let before = values(&mut state, tq * ld);
            let (mut p, mut ds) = (before.clone(), before.clone());
            score_grads(&x, &lse, (scale, causal), (&mut p, &mut ds, ld));
            let tol = |want: f64| 1e-5 * ((tk + d + dv) as f64).sqrt() * (1.0 + want.abs());
            for i in 0..tq {
                for j in 0..ld {
                    let (gp, gds) = (p[i * ld + j], ds[i * ld + j]);
                    if j < tk {
                        let (wp, (wds, sums)) = (want_p[i * tk + j], want_ds[i * tk + j]);
                        prop_assert!((gp as f64 - wp).abs() <= tol(wp), "P ({i}, {j}): {gp} vs {wp}");
                        // P ≤ 1 times a difference of sums of at most 64 products each.
                        let tol_ds = 1e-5 * (1.0 + sums);
                        prop_assert!((gds as f64 - wds).abs() <= tol_ds, "dS ({i}, {j}): {gds} vs {wds}");
                    } else {
                        prop_assert_eq!(gp.to_bits(), before[i * ld + j].to_bits());
                        prop_assert_eq!(gds.to_bits(), before[i * ld + j].to_bits());
                    }
                }
            }
        }
    }
}
