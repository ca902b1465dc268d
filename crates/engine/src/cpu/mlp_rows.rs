//! The GELU feed-forward block `gelu_tanh(x·w1 + b1)·w2 + b2`, f32 on AVX-512, in
//! blocks of rows whose hidden activations stay in the L2 cache: the forward, and the
//! backward.
//!
//! As whole products, the `[rows, hidden]` tensors (the widest of a transformer block,
//! 12.8 MB for the DiT at batch 128) go out to memory after one product and come back
//! for the next. Here one thread takes a block of rows (about 1 MiB of hidden values)
//! through every product that involves them:
//! - forward: the first product into the thread's buffer with the GELU in place
//!   (`Epilogue::GeluInPlace`; for a backward, h is first copied out by streaming
//!   stores), then the second reading gelu(h) back from L2. Only h, which the
//!   backward needs, goes to memory, and only when there is a backward. Without a
//!   graph a pre-norm block's branch can run whole here: the block's rows of x
//!   normalised into a second buffer first ([`NormRows`]), and `x + gate·output`
//!   added by the second product's epilogue (`Epilogue::GatedResidual`);
//! - backward: dh = (g·w2) ∘ gelu'(h) into the thread's buffer, gelu(h) recomputed
//!   beside it when the forward did not keep it (the two share their sigmoid), dw2's
//!   and dw1's shares of the block, and dx = dh·w1; dh and gelu(h) are never written to
//!   memory.

use super::epilogue::{Epilogue, GatedRows};
use super::host_buffer::HostBuffer;
use super::isa;
use super::matmul::{Bias, GemmArgs, SharedOut, AVX512_MIN_MNK};
use super::norm::norm_row;
use super::pool;
use super::reduce::combine_rows;
use super::sgemm_avx512::{available, sgemm, sgemm_packed, with_scratch, PackedRhs};
use super::strided::gather_view;
use super::CpuStorage;
use crate::backend::NormSpec;
use crate::fused::View;
use rayon::prelude::*;
use std::cell::RefCell;

/// About this many hidden values per block, all of its buffers together (1 MiB of
/// f32): the forward's one hidden block, or the backward's two (dh and gelu(h)), half
/// each. With the packed weights and the block's rows of x they fit a 2 MiB L2 with
/// room to spare; the backward's two blocks at 1 MiB each ran 2 % slower.
const HIDDEN_VALUES_PER_BLOCK: usize = 1 << 18;

thread_local! {
    /// Each thread's hidden block.
    static HIDDEN: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
    /// Each thread's block of gelu(h) recomputed by the backward.
    static ACT: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
    /// Each thread's block of normalised input rows (with a [`NormRows`] prologue).
    static NORMED: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
}

/// A layer norm of x's rows before the first product (a pre-norm block's norm, run
/// per block of rows so that its output stays in cache): each parameter `[groups,
/// k]`, row `i` of x taking parameter row `i / rows_per_group`, the same values as the
/// norm op's (`norm::norm_row`).
#[derive(Clone, Copy)]
pub struct NormRows<'a> {
    /// The weight and how many of x's rows share each of its rows.
    pub weight: (&'a [f32], usize),
    /// The bias and how many of x's rows share each of its rows.
    pub bias: (&'a [f32], usize),
    /// The norm's epsilon (and kind).
    pub spec: NormSpec,
}

impl NormRows<'_> {
    /// Normalises `x`, rows `first..` of x (of `k` values each), into `dst`.
    fn apply(&self, dst: &mut [f32], x: &[f32], first: usize, k: usize) {
        isa::dispatch(
            #[inline(always)]
            |dst: &mut [f32]| {
                for (i, (y, x)) in dst.chunks_mut(k).zip(x.chunks(k)).enumerate() {
                    let row = first + i;
                    let params = (param_row(self.weight, row, k), param_row(self.bias, row, k));
                    norm_row(y, x, params, self.spec);
                }
            },
            dst,
        );
    }
}

/// The row (of `k` values) of a per-group parameter that x's row `row` takes.
#[inline(always)]
fn param_row((p, per_group): (&[f32], usize), row: usize, k: usize) -> &[f32] {
    &p[row / per_group * k..][..k]
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

/// The block over x, a `[rows, k]` view, and h when `keep_pre` (see
/// [`gelu_mlp_rows`]), where this path takes it: f32 throughout, AVX-512F present, x
/// contiguous, every dimension nonzero and the products large enough for the packed
/// kernel (`matmul::AVX512_MIN_MNK`); `None` otherwise.
pub fn from_views<'a>(
    x: View<'a, CpuStorage>,
    fc1: LayerViews<'a>,
    fc2: LayerViews<'a>,
    mode: RowsMode<'a>,
) -> Option<(HostBuffer<f32>, Option<HostBuffer<f32>>)> {
    let layer = |((w, lw), bias): LayerViews<'a>| -> Option<Layer<'a>> {
        let (shape, strides) = (lw.shape(), lw.strides());
        let bias = match bias {
            Some((b, lb)) => Some(Bias {
                data: b.as_slice::<f32>()?,
                offset: lb.offset(),
                strides: (lb.strides()[0], lb.strides()[1]),
            }),
            None => None,
        };
        Some(Layer {
            weight: w.as_slice::<f32>()?,
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
    Some(gelu_mlp_rows(
        &x.0.as_slice::<f32>()?[x.1.offset()..],
        rows,
        (fc1, fc2),
        mode,
    ))
}

/// What the forward in row blocks does besides the block: whether it keeps h for a
/// backward, a gated residual added to its output, a norm of its input rows first.
pub type RowsMode<'a> = (bool, Option<GatedRows<'a, f32>>, Option<NormRows<'a>>);

/// `gelu_tanh(x·w1 + b1)·w2 + b2` for x with `rows` contiguous rows of `fc1.shape.0`
/// values, as a contiguous `[rows, fc2.shape.1]` output, and, when `keep_pre`, the
/// pre-activation h = x·w1 + b1 `[rows, fc1.shape.1]` for a backward; with a
/// `residual`, `stream + gate·output` instead of the output, added while each block's
/// output is in cache; with `prenorm`, the block runs on the normalised rows of x,
/// each block's normalised first. The caller has checked that AVX-512F is available,
/// that the shapes chain (`fc1.shape.1 == fc2.shape.0`), that every dimension is
/// nonzero and that every index the views reach is in bounds.
pub fn gelu_mlp_rows(
    x: &[f32],
    rows: usize,
    (fc1, fc2): (Layer, Layer),
    (keep_pre, residual, prenorm): RowsMode,
) -> (HostBuffer<f32>, Option<HostBuffer<f32>>) {
    let ((k, hidden), (_, n)) = (fc1.shape, fc2.shape);
    assert!(fc2.shape.0 == hidden && rows * k <= x.len());
    // A multiple of the threads in number, so that none waits on a last block.
    let blocks = blocks_for(rows, hidden).next_multiple_of(rayon::current_num_threads());
    let block_rows = rows.div_ceil(blocks);
    let (w1, w2) = rayon::join(|| fc1.packed(), || fc2.packed());
    let block = |b: usize, dst: &mut [f32], pre: Option<&mut [f32]>| {
        let (first, m) = (b * block_rows, dst.len() / n);
        let normed_len = prenorm.map_or(0, |_| m * k);
        with_scratch(&HIDDEN, m * hidden, |act| {
            with_scratch(&NORMED, normed_len, |normed| {
                let mut x_block = &x[first * k..(first + m) * k];
                if let Some(norm) = prenorm {
                    norm.apply(normed, x_block, first, k);
                    x_block = normed;
                }
                match pre {
                    // h into the thread's buffer, copied out for the backward by streaming
                    // stores (no read of the lines it overwrites), then gelu(h) in place.
                    Some(pre) => {
                        product(act, x_block, (fc1, &w1), first, None);
                        // SAFETY: AVX-512F is available (the caller's promise).
                        unsafe { stream_copy(pre, act) };
                        // SAFETY: this epilogue writes no shared output.
                        unsafe { Epilogue::GeluInPlace.apply(act, 0) };
                    }
                    None => product(act, x_block, (fc1, &w1), first, Some(Epilogue::GeluInPlace)),
                }
                let residual = residual.map(|r| {
                    Epilogue::GatedResidual(GatedRows {
                        first_row: first,
                        ..r
                    })
                });
                product(dst, act, (fc2, &w2), first, residual);
            })
        });
    };
    let mut out = pool::take(rows * n);
    let mut pre = keep_pre.then(|| pool::take(rows * hidden));
    let outs = out.par_chunks_mut(block_rows * n).enumerate();
    match pre.as_mut() {
        Some(pre) => outs
            .zip(pre.par_chunks_mut(block_rows * hidden))
            .for_each(|((b, dst), pre)| block(b, dst, Some(pre))),
        None => outs.for_each(|(b, dst)| block(b, dst, None)),
    }
    (out, pre)
}

/// Copies `src` into `dst` (of the same length) with non-temporal stores where
/// `dst` is 64-byte aligned: a copy that only a later pass reads goes to memory
/// without first reading the lines it overwrites into the cache.
///
/// # Safety
/// AVX-512F is available.
#[target_feature(enable = "avx512f")]
unsafe fn stream_copy(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_stream_ps, _mm_sfence};
    assert_eq!(dst.len(), src.len());
    let head = dst.as_ptr().align_offset(64).min(dst.len());
    let body_end = head + (dst.len() - head) / 16 * 16;
    dst[..head].copy_from_slice(&src[..head]);
    for i in (head..body_end).step_by(16) {
        // SAFETY: i + 16 ≤ body_end ≤ len, and dst + i is 64-byte aligned.
        unsafe {
            _mm512_stream_ps(
                dst.as_mut_ptr().add(i),
                _mm512_loadu_ps(src.as_ptr().add(i)),
            )
        };
    }
    dst[body_end..].copy_from_slice(&src[body_end..]);
    // Streaming stores are weakly ordered: fence them before another thread reads.
    _mm_sfence();
}

/// How many blocks `rows` rows of `values_per_row` buffered hidden values take at
/// about [`HIDDEN_VALUES_PER_BLOCK`] values a block (at least one).
fn blocks_for(rows: usize, values_per_row: usize) -> usize {
    let by_cache = (HIDDEN_VALUES_PER_BLOCK / values_per_row).max(1);
    rows.div_ceil(by_cache).max(1)
}

/// `dst = lhs·w + bias` (then `epilogue`) for `lhs` `m × k` row-major, `w` packed,
/// and rows `first..` of the bias, on this thread.
fn product(
    dst: &mut [f32],
    lhs: &[f32],
    (layer, packed): (Layer, &PackedRhs),
    first: usize,
    epilogue: Option<Epilogue<f32>>,
) {
    let (k, n) = layer.shape;
    let g = args(lhs.len() / k, k, n, (k, 1), layer.strides, false);
    let bias = layer.bias.map(|b| Bias {
        offset: b.offset + first * b.strides.0,
        ..b
    });
    sgemm_packed(dst, n, lhs, packed, g, 1.0, false, (bias, epilogue, None));
}

impl Layer<'_> {
    /// The weight packed for the product kernel, once for all blocks.
    fn packed(&self) -> PackedRhs {
        PackedRhs::new(&self.weight[self.offset..], self.shape, self.strides)
    }
}

/// The gradients of the block's inputs (see [`gelu_mlp_rows_backward`]), each in its
/// tensor's own layout: dx `[rows, k]`, dw1 `[hidden, k]`, dw2 `[n, hidden]`, and the
/// bias gradients where asked for.
pub struct BackwardRows {
    /// Gradient of x.
    pub dx: HostBuffer<f32>,
    /// Gradient of the first weight.
    pub dw1: HostBuffer<f32>,
    /// Gradient of the first bias, when asked for.
    pub db1: Option<HostBuffer<f32>>,
    /// Gradient of the second weight.
    pub dw2: HostBuffer<f32>,
    /// Gradient of the second bias, when asked for.
    pub db2: Option<HostBuffer<f32>>,
}

/// What the backward in row blocks reads: the output's gradient `g` `[rows, n]`, the
/// forward's x `[rows, k]`, pre-activation `h` and, if the forward kept it, activation
/// `act` `[rows, hidden]`,
/// and the weights as stored, w1 `[hidden, k]` and w2 `[n, hidden]`; all contiguous.
pub struct BackwardInputs<'a> {
    /// The output's gradient.
    pub g: &'a [f32],
    /// The block's input.
    pub x: &'a [f32],
    /// The first layer's output before the GELU.
    pub h: &'a [f32],
    /// The GELU's output.
    /// The GELU's output, if the forward kept it (else recomputed from `h`).
    pub act: Option<&'a [f32]>,
    /// The first weight, `[hidden, k]`.
    pub w1: &'a [f32],
    /// The second weight, `[n, hidden]`.
    pub w2: &'a [f32],
    /// (rows, k, hidden, n).
    pub dims: (usize, usize, usize, usize),
}

/// The backward's views as the fused op passes them: g, x, h, w1, w2, and act if the
/// forward kept it (see [`BackwardInputs`]).
pub type BackwardViews<'a> = ([View<'a, CpuStorage>; 5], Option<View<'a, CpuStorage>>);

/// The backward in row blocks where this path takes it: every view f32 and
/// contiguous, AVX-512F present, x and w1 of the same inner size, every dimension
/// nonzero and the products large enough for the packed kernel; `None` otherwise.
pub fn backward_from_views<'a>(
    views: BackwardViews<'a>,
    biases: (bool, bool),
) -> Option<BackwardRows> {
    let slice = |(s, l): View<'a, CpuStorage>| match l.is_contiguous() {
        true => Some(&s.as_slice::<f32>()?[l.offset()..][..l.elem_count()]),
        false => None,
    };
    let ([g, x, h, w1, w2], act) = views;
    let ((rows, n), k, hidden) = (
        (g.1.shape()[0], g.1.shape()[1]),
        x.1.shape()[1],
        h.1.shape()[1],
    );
    let fits = x.1.shape()[0] == rows
        && w1.1.shape() == [hidden, k]
        && w2.1.shape() == [n, hidden]
        && act.is_none_or(|a| a.1.shape() == h.1.shape())
        && [rows, k, hidden, n].iter().all(|&d| d > 0);
    let large = rows.saturating_mul(k).saturating_mul(hidden) >= AVX512_MIN_MNK;
    if !(available() && fits && large) {
        return None;
    }
    let inputs = BackwardInputs {
        g: slice(g)?,
        x: slice(x)?,
        h: slice(h)?,
        act: match act {
            Some(act) => Some(slice(act)?),
            None => None,
        },
        w1: slice(w1)?,
        w2: slice(w2)?,
        dims: (rows, k, hidden, n),
    };
    Some(gelu_mlp_rows_backward(inputs, biases))
}

/// The backward of the block in blocks of rows: per block, dh = (g·w2) ∘ gelu'(h) into a
/// per-thread buffer (and act = gelu(h) into another, where the forward did not keep
/// it), dx = dh·w1, and the block's shares of dw1 = dhᵀ·x and dw2 = gᵀ·act (as its
/// transpose actᵀ·g; with db1 = Σ dh and db2 = Σ g where `biases` asks) added to the
/// part's partial sums. As whole products dh (`[rows, hidden]`, the widest tensor of
/// the block) went to memory and came back twice. The rows are cut into one part per
/// thread, each summing its blocks in order, and the parts' sums are added in order:
/// the result depends on the thread count, as the split-k weight gradients' does, not
/// on scheduling. The caller has checked that AVX-512F is available, every dimension
/// is nonzero and the slices hold their shapes.
pub fn gelu_mlp_rows_backward(x: BackwardInputs, biases: (bool, bool)) -> BackwardRows {
    let (rows, k, hidden, n) = x.dims;
    assert!(x.g.len() >= rows * n && x.x.len() >= rows * k);
    assert!(x.h.len() >= rows * hidden && x.act.is_none_or(|a| a.len() >= rows * hidden));
    assert!(x.w1.len() >= hidden * k && x.w2.len() >= n * hidden);
    let parts = rayon::current_num_threads().min(rows).max(1);
    let part_rows = rows.div_ceil(parts);
    // Both weights packed once for every block: w2 `[n, hidden]` is the `[k, n]` view
    // of g·w2 itself, w1 `[hidden, k]` that of dh·w1.
    let weights = rayon::join(
        || PackedRhs::new(x.w2, (n, hidden), (hidden, 1)),
        || PackedRhs::new(x.w1, (hidden, k), (k, 1)),
    );
    let mut dx = pool::take(rows * k);
    let partials: Vec<Partial> = dx
        .par_chunks_mut(part_rows * k)
        .enumerate()
        .map(|(p, dx_part)| backward_part(&x, &weights, p * part_rows, dx_part, biases))
        .collect();
    let total = partials
        .into_iter()
        .reduce(|mut a, b| {
            a.add(&b);
            b.recycle();
            a
        })
        .expect("rows > 0, so at least one part");
    let dw2 = gather_view(&total.dw2_t, &[n, hidden], &[1, n], 0);
    pool::give(total.dw2_t);
    BackwardRows {
        dx,
        dw1: total.dw1,
        db1: biases.0.then_some(total.db1),
        dw2,
        db2: biases.1.then_some(total.db2),
    }
}

/// One part's sums of the parameter gradients.
struct Partial {
    dw1: HostBuffer<f32>,
    db1: HostBuffer<f32>,
    /// dw2 transposed, `[hidden, n]`: as `actᵀ·g` the product packs the block of g
    /// rather than the four-times larger block of act.
    dw2_t: HostBuffer<f32>,
    db2: HostBuffer<f32>,
}

impl Partial {
    /// Returns the weights' sums to the pool.
    fn recycle(self) {
        pool::give(self.dw1);
        pool::give(self.dw2_t);
    }

    fn add(&mut self, other: &Partial) {
        let pairs = [
            (&mut self.dw1, &other.dw1),
            (&mut self.db1, &other.db1),
            (&mut self.dw2_t, &other.dw2_t),
            (&mut self.db2, &other.db2),
        ];
        for (a, b) in pairs {
            a.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
        }
    }
}

/// Rows `first..` (as many as `dx_part` holds) of the backward, block by block: their
/// dx written, their parameter gradients summed into the part's [`Partial`].
fn backward_part(
    x: &BackwardInputs,
    (w2, w1): &(PackedRhs, PackedRhs),
    first: usize,
    dx_part: &mut [f32],
    biases: (bool, bool),
) -> Partial {
    let (_, k, hidden, n) = x.dims;
    // The weights' sums from the pool, not zeroed: the first block's products
    // overwrite them (`accumulate` is false there). Zeroed fresh allocations cost a
    // page fault per 4 KiB every step (0.5 MB a part for the DiT).
    let mut sums = Partial {
        dw1: pool::take(hidden * k),
        db1: pool::take_zeroed(hidden),
        dw2_t: pool::take(hidden * n),
        db2: pool::take_zeroed(n),
    };
    let rows = dx_part.len() / k;
    // Two buffers a row: dh and gelu(h).
    let block_rows = rows.div_ceil(blocks_for(rows, 2 * hidden));
    for (b, dx_block) in dx_part.chunks_mut(block_rows * k).enumerate() {
        let (r0, m) = (first + b * block_rows, dx_block.len() / k);
        let accumulate = b > 0;
        let (g, xb) = (&x.g[r0 * n..(r0 + m) * n], &x.x[r0 * k..(r0 + m) * k]);
        let pre = &x.h[r0 * hidden..(r0 + m) * hidden];
        let recomputed = if x.act.is_some() { 0 } else { m * hidden };
        with_scratch(&HIDDEN, m * hidden, |dh| {
            with_scratch(&ACT, recomputed, |act_buf| {
                // dh = (g·w2) ∘ gelu'(h), and gelu(h) beside it where the forward did
                // not keep it.
                let epilogue = match x.act {
                    Some(_) => Epilogue::GeluGrad(pre),
                    None => Epilogue::GeluGradWithAct(pre, SharedOut::new(act_buf)),
                };
                let gw2 = args(m, n, hidden, (n, 1), (hidden, 1), false);
                let extras = (None, Some(epilogue), None);
                sgemm_packed(dh, hidden, g, w2, gw2, 1.0, false, extras);
                let act = match x.act {
                    Some(act) => &act[r0 * hidden..(r0 + m) * hidden],
                    None => &*act_buf,
                };
                // dw2ᵀ += actᵀ·g while act is in cache (db2 += Σ g).
                let at_g = args(hidden, m, n, (1, hidden), (n, 1), accumulate);
                let extras = (None, None, None);
                sgemm(&mut sums.dw2_t, n, act, g, at_g, 1.0, false, extras);
                if biases.1 {
                    combine_rows(&mut sums.db2, g, |a, b| a + b);
                }
            });
            let dhw1 = args(m, hidden, k, (hidden, 1), (k, 1), false);
            sgemm_packed(dx_block, k, dh, w1, dhw1, 1.0, false, (None, None, None));
            // dw1 += dhᵀ·x (db1 += Σ dh).
            let dht_x = args(hidden, m, k, (1, hidden), (k, 1), accumulate);
            let db1 = biases.0.then_some(&mut sums.db1[..]);
            sgemm(
                &mut sums.dw1,
                k,
                dh,
                xb,
                dht_x,
                1.0,
                false,
                (None, None, db1),
            );
        });
    }
    sums
}

/// The product `m × k · k × n` with those strides.
fn args(
    m: usize,
    k: usize,
    n: usize,
    lhs: (usize, usize),
    rhs: (usize, usize),
    accumulate: bool,
) -> GemmArgs {
    GemmArgs {
        m,
        n,
        k,
        lhs_strides: lhs,
        rhs_strides: rhs,
        accumulate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::UnaryOp;
    use crate::cpu::elementwise::unary_fn;
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

    /// A backward that recomputes gelu(h) gives the gradients, bit for bit, of one
    /// given the forward's own gelu(h) (both ways through the f32 unary map).
    #[test]
    fn recomputed_activation_changes_no_bit() {
        static SAID: Once = Once::new();
        if skipped("recomputed_activation_changes_no_bit", &SAID) {
            return;
        }
        let (rows, k, hidden, n) = (300, 24, 64, 20);
        let mut state = 7;
        let (x, w1) = (values(&mut state, rows * k), values(&mut state, hidden * k));
        let (w2, g) = (values(&mut state, n * hidden), values(&mut state, rows * n));
        let h: Vec<f32> = values(&mut state, rows * hidden)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let act: Vec<f32> = h.iter().map(|&v| unary_fn(UnaryOp::GeluTanh, v)).collect();
        let run = |act| {
            let dims = (rows, k, hidden, n);
            let (g, x, h, w1, w2) = (&g[..], &x[..], &h[..], &w1[..], &w2[..]);
            let inputs = BackwardInputs {
                g,
                x,
                h,
                act,
                w1,
                w2,
                dims,
            };
            gelu_mlp_rows_backward(inputs, (true, true))
        };
        let (kept, recomputed) = (run(Some(&act)), run(None));
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&kept.dx), bits(&recomputed.dx));
        assert_eq!(bits(&kept.dw1), bits(&recomputed.dw1));
        assert_eq!(bits(&kept.dw2), bits(&recomputed.dw2));
        assert_eq!(kept.db1, recomputed.db1);
        assert_eq!(kept.db2, recomputed.db2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Row counts across block edges (a block may be a few rows), both weights
        /// read transposed (PyTorch's `[out, in]` layout) or row-major, with and
        /// without biases, with and without keeping h: the output (and h) match f64
        /// arithmetic.
        #[test]
        fn gelu_mlp_rows_matches_f64(
            rows in 1usize..300, k in 1usize..40, hidden in 1usize..80, n in 1usize..40,
            transposed: bool, with_bias: bool, keep_pre: bool, seed: u64,
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
            let (out, kept) = gelu_mlp_rows(&x, rows, (fc1, fc2), (keep_pre, None, None));
            prop_assert_eq!(kept.is_some(), keep_pre);
            let at = |l: &Layer, i: usize, j: usize| l.weight[i * l.strides.0 + j * l.strides.1] as f64;
            for r in 0..rows {
                let pre: Vec<f64> = (0..hidden)
                    .map(|j| {
                        let bias = if with_bias { b1[j] as f64 } else { 0.0 };
                        bias + (0..k).map(|i| x[r * k + i] as f64 * at(&fc1, i, j)).sum::<f64>()
                    })
                    .collect();
                if let Some(kept) = &kept {
                    for (j, &want) in pre.iter().enumerate() {
                        let got = kept[r * hidden + j] as f64;
                        let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                        prop_assert!((got - want).abs() <= tol, "h ({r}, {j}): {got} vs {want}");
                    }
                }
                let h: Vec<f64> = pre.into_iter().map(gelu).collect();
                for c in 0..n {
                    let bias = if with_bias { b2[c] as f64 } else { 0.0 };
                    let want = bias + (0..hidden).map(|j| h[j] * at(&fc2, j, c)).sum::<f64>();
                    let got = out[r * n + c] as f64;
                    let tol = 1e-5 * ((k + hidden) as f64).sqrt() * (1.0 + want.abs());
                    prop_assert!((got - want).abs() <= tol, "({r}, {c}): {got} vs {want}");
                }
            }
        }

        /// The backward in row blocks against f64 arithmetic: dx, both weights'
        /// gradients and both biases', rows across parts and (at the wide hidden
        /// sizes) blocks, with the forward's activation given or recomputed.
        #[test]
        fn gelu_mlp_rows_backward_matches_f64(
            rows in 1usize..300, k in 1usize..24, n in 1usize..24,
            // Wide enough for several blocks a part (128 rows at hidden 1024).
            hidden in prop_oneof![1usize..40, 600usize..1100],
            biases: (bool, bool), act_kept: bool, seed: u64,
        ) {
            static SAID: Once = Once::new();
            if skipped("gelu_mlp_rows_backward_matches_f64", &SAID) {
                return Ok(());
            }
            let mut state = seed;
            let (x, w1) = (values(&mut state, rows * k), values(&mut state, hidden * k));
            let (w2, g) = (values(&mut state, n * hidden), values(&mut state, rows * n));
            let h = values(&mut state, rows * hidden);
            let act: Vec<f32> = h.iter().map(|&v| gelu(v as f64) as f32).collect();
            let inputs = BackwardInputs {
                g: &g, x: &x, h: &h, act: act_kept.then_some(&act[..]), w1: &w1, w2: &w2,
                dims: (rows, k, hidden, n),
            };
            let got = gelu_mlp_rows_backward(inputs, biases);
            let d = 1e-6;
            let gelu_grad = |v: f64| (gelu(v + d) - gelu(v - d)) / (2.0 * d);
            // dh[r][j] = Σ_c g[r][c]·w2[c][j] · gelu'(h[r][j])
            let dh: Vec<f64> = (0..rows * hidden)
                .map(|idx| {
                    let (r, j) = (idx / hidden, idx % hidden);
                    let s: f64 = (0..n).map(|c| g[r * n + c] as f64 * w2[c * hidden + j] as f64).sum();
                    s * gelu_grad(h[idx] as f64)
                })
                .collect();
            let close = |what: &str, got: f32, want: f64, terms: usize| -> Result<(), TestCaseError> {
                let tol = 2e-5 * (terms as f64).sqrt() * (1.0 + want.abs());
                prop_assert!((got as f64 - want).abs() <= tol, "{}: {} vs {}", what, got, want);
                Ok(())
            };
            for r in 0..rows {
                for i in 0..k {
                    let want: f64 = (0..hidden).map(|j| dh[r * hidden + j] * w1[j * k + i] as f64).sum();
                    close("dx", got.dx[r * k + i], want, hidden)?;
                }
            }
            for j in 0..hidden {
                for i in 0..k {
                    let want: f64 = (0..rows).map(|r| dh[r * hidden + j] * x[r * k + i] as f64).sum();
                    close("dw1", got.dw1[j * k + i], want, rows)?;
                }
                let want: f64 = (0..rows).map(|r| dh[r * hidden + j]).sum();
                if let Some(db1) = &got.db1 {
                    close("db1", db1[j], want, rows)?;
                }
            }
            for c in 0..n {
                for j in 0..hidden {
                    let want: f64 = (0..rows).map(|r| g[r * n + c] as f64 * act[r * hidden + j] as f64).sum();
                    close("dw2", got.dw2[c * hidden + j], want, rows)?;
                }
                let want: f64 = (0..rows).map(|r| g[r * n + c] as f64).sum();
                if let Some(db2) = &got.db2 {
                    close("db2", db2[c], want, rows)?;
                }
            }
            prop_assert_eq!(got.db1.is_some(), biases.0);
            prop_assert_eq!(got.db2.is_some(), biases.1);
        }
    }
}
