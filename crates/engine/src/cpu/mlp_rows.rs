//! The GELU feed-forward block `gelu_tanh(x·w1 + b1)·w2 + b2` without a graph, f32 on
//! AVX-512, in blocks of rows: each block's hidden activations are written and read
//! back while they are in the L2 cache.
//!
//! As two products over all rows, the `[rows, hidden]` activation (the widest tensor
//! of a transformer block, 12.8 MB for the DiT at batch 128) goes out to memory after
//! the first and comes back for the second. Here each task takes a block of rows
//! through both products (the first with the GELU in place, `Epilogue::GeluInPlace`),
//! the hidden block in a per-thread buffer of about 1 MiB. Only inference takes this
//! path: a backward needs the pre-activation and the activation of every row, so a
//! training forward writes them anyway (`ops/mlp.rs`).

use super::epilogue::Epilogue;
use super::matmul::{Bias, GemmArgs, AVX512_MIN_MNK};
use super::pool;
use super::sgemm_avx512::{available, sgemm, with_scratch};
use super::CpuStorage;
use crate::fused::View;
use rayon::prelude::*;
use std::cell::RefCell;

/// About this many hidden values per block (1 MiB of f32): the block, the packed
/// weights and the block's rows of x fit in a 2 MiB L2 with room to spare, and each
/// block's work dwarfs packing the two weights again.
const HIDDEN_VALUES_PER_BLOCK: usize = 1 << 18;

thread_local! {
    /// Each thread's hidden block.
    static HIDDEN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One layer of the block: the weight as a `[k, n]` view (element (i, j) at
/// `offset + i·rs + j·cs`) and the bias as a `[rows, n]` view, if any.
#[derive(Clone, Copy)]
pub struct Layer<'a> {
    /// The weight's storage.
    pub weight: &'a [f32],
    /// Where the weight's element (0, 0) is.
    pub offset: usize,
    /// (inner, output) dims.
    pub shape: (usize, usize),
    /// (row stride, column stride) of the `[k, n]` view.
    pub strides: (usize, usize),
    /// The bias, broadcast to the output's shape.
    pub bias: Option<Bias<'a, f32>>,
}

/// A weight (a `[k, n]` view) and its bias (broadcast to `[rows, n]`), as the fused
/// op passes them.
pub type LayerViews<'a> = (View<'a, CpuStorage>, Option<View<'a, CpuStorage>>);

/// The block over x, a `[rows, k]` view, where this path takes it: f32 throughout,
/// AVX-512F present, x contiguous, every dimension nonzero and the products large
/// enough for the packed kernel (`matmul::AVX512_MIN_MNK`); `None` otherwise.
pub fn from_views<'a>(
    x: View<'a, CpuStorage>,
    fc1: LayerViews<'a>,
    fc2: LayerViews<'a>,
) -> Option<Vec<f32>> {
    fn f32s(s: &CpuStorage) -> Option<&[f32]> {
        match s {
            CpuStorage::F32(v) => Some(v.as_slice()),
            _ => None,
        }
    }
    let layer = |((w, lw), bias): LayerViews<'a>| -> Option<Layer<'a>> {
        let (shape, strides) = (lw.shape(), lw.strides());
        let bias = match bias {
            Some((b, lb)) => Some(Bias {
                data: f32s(b)?,
                offset: lb.offset(),
                strides: (lb.strides()[0], lb.strides()[1]),
            }),
            None => None,
        };
        Some(Layer {
            weight: f32s(w)?,
            offset: lw.offset(),
            shape: (shape[0], shape[1]),
            strides: (strides[0], strides[1]),
            bias,
        })
    };
    let (rows, k) = (x.1.shape()[0], x.1.shape()[1]);
    let (fc1, fc2) = (layer(fc1)?, layer(fc2)?);
    let hidden = fc1.shape.1;
    let large = rows.saturating_mul(k).saturating_mul(hidden) >= AVX512_MIN_MNK;
    let fits = rows > 0 && k > 0 && hidden > 0 && fc2.shape.1 > 0 && fc2.shape.0 == hidden;
    if !(available() && x.1.is_contiguous() && large && fits) {
        return None;
    }
    Some(gelu_mlp_rows(&f32s(x.0)?[x.1.offset()..], rows, fc1, fc2))
}

/// `gelu_tanh(x·w1 + b1)·w2 + b2` for x with `rows` contiguous rows of `fc1.shape.0`
/// values; contiguous `[rows, fc2.shape.1]` output. The caller has checked that
/// AVX-512F is available, that the shapes chain (`fc1.shape.1 == fc2.shape.0`), that
/// every dimension is nonzero and that every index the views reach is in bounds.
pub fn gelu_mlp_rows(x: &[f32], rows: usize, fc1: Layer, fc2: Layer) -> Vec<f32> {
    let ((k, hidden), (_, n)) = (fc1.shape, fc2.shape);
    assert!(fc2.shape.0 == hidden && rows * k <= x.len());
    let block_rows = block_rows(rows, hidden);
    let mut out = pool::take(rows * n);
    out.par_chunks_mut(block_rows * n)
        .enumerate()
        .for_each(|(block, dst)| {
            let (first, m) = (block * block_rows, dst.len() / n);
            with_scratch(&HIDDEN, m * hidden, |h| {
                let x_block = &x[first * k..(first + m) * k];
                product(h, x_block, (m, k), fc1, first, Some(Epilogue::GeluInPlace));
                product(dst, h, (m, hidden), fc2, first, None);
            });
        });
    out
}

/// Rows per block: about [`HIDDEN_VALUES_PER_BLOCK`] hidden values, in a number of
/// blocks that is a multiple of the threads (so that none waits on a last block).
fn block_rows(rows: usize, hidden: usize) -> usize {
    let by_cache = (HIDDEN_VALUES_PER_BLOCK / hidden).max(1);
    let blocks = rows
        .div_ceil(by_cache)
        .next_multiple_of(rayon::current_num_threads());
    rows.div_ceil(blocks)
}

/// `dst = lhs·w + bias` (then `epilogue`) for `lhs` `m × k` row-major and rows
/// `first..` of the bias, on this thread.
fn product(
    dst: &mut [f32],
    lhs: &[f32],
    (m, k): (usize, usize),
    layer: Layer,
    first: usize,
    epilogue: Option<Epilogue<f32>>,
) {
    let n = layer.shape.1;
    let g = GemmArgs {
        m,
        n,
        k,
        lhs_strides: (k, 1),
        rhs_strides: layer.strides,
        accumulate: false,
    };
    let bias = layer.bias.map(|b| Bias {
        offset: b.offset + first * b.strides.0,
        ..b
    });
    let rhs = &layer.weight[layer.offset..];
    sgemm(dst, n, lhs, rhs, g, 1.0, false, (bias, epilogue, None));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::product_cases::skipped;
    use proptest::prelude::*;
    use std::sync::Once;

    fn values(state: &mut u64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn gelu(x: f64) -> f64 {
        let u = 0.797_884_560_802_865_4 * (x + 0.044_715 * x * x * x);
        0.5 * x * (1.0 + u.tanh())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Row counts across block edges (a block may be a few rows), both weights
        /// read transposed (PyTorch's `[out, in]` layout) or row-major, with and
        /// without biases: the output matches f64 arithmetic.
        #[test]
        fn gelu_mlp_rows_matches_f64(
            rows in 1usize..300, k in 1usize..40, hidden in 1usize..80, n in 1usize..40,
            transposed: bool, with_bias: bool, seed: u64,
        ) {
            static SAID: Once = Once::new();
            if skipped("gelu_mlp_rows_matches_f64", &SAID) {
                return Ok(());
            }
            let mut state = seed;
            let x = values(&mut state, rows * k);
            let (w1, w2) = (values(&mut state, k * hidden), values(&mut state, hidden * n));
            let (b1, b2) = (values(&mut state, hidden), values(&mut state, n));
            // Element (i, j) of the `[k, n]` view of an `[n, k]` (transposed) or
            // `[k, n]` weight.
            let strides = |inner: usize, outer: usize| if transposed { (1, inner) } else { (outer, 1) };
            let layer = |w: &'static [f32], shape: (usize, usize), b: &'static [f32]| Layer {
                weight: w,
                offset: 0,
                shape,
                strides: strides(shape.0, shape.1),
                bias: with_bias.then_some(Bias { data: b, offset: 0, strides: (0, 1) }),
            };
            let leak = |v: Vec<f32>| -> &'static [f32] { Box::leak(v.into_boxed_slice()) };
            let (w1, w2, b1, b2) = (leak(w1), leak(w2), leak(b1), leak(b2));
            let (fc1, fc2) = (layer(w1, (k, hidden), b1), layer(w2, (hidden, n), b2));
            let out = gelu_mlp_rows(&x, rows, fc1, fc2);
            let at = |l: &Layer, i: usize, j: usize| l.weight[i * l.strides.0 + j * l.strides.1] as f64;
            for r in 0..rows {
                let h: Vec<f64> = (0..hidden)
                    .map(|j| {
                        let bias = if with_bias { b1[j] as f64 } else { 0.0 };
                        gelu(bias + (0..k).map(|i| x[r * k + i] as f64 * at(&fc1, i, j)).sum::<f64>())
                    })
                    .collect();
                for c in 0..n {
                    let bias = if with_bias { b2[c] as f64 } else { 0.0 };
                    let want = bias + (0..hidden).map(|j| h[j] * at(&fc2, j, c)).sum::<f64>();
                    let got = out[r * n + c] as f64;
                    let tol = 1e-5 * ((k + hidden) as f64).sqrt() * (1.0 + want.abs());
                    prop_assert!((got - want).abs() <= tol, "({r}, {c}): {got} vs {want}");
                }
            }
        }
    }
}
