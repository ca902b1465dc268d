//! Reductions (sum, max, min) over any set of dims.

use super::float::CpuFloat;
use super::strided::{gather_view, PARALLEL_CUTOFF};
use crate::backend::ReduceOp;
use crate::layout::Layout;
use rayon::prelude::*;

fn identity<F: CpuFloat>(op: ReduceOp) -> F {
    match op {
        ReduceOp::Sum => F::zero(),
        ReduceOp::Max => F::neg_infinity(),
        ReduceOp::Min => F::infinity(),
    }
}

#[inline]
fn combine<F: CpuFloat>(op: ReduceOp, a: F, b: F) -> F {
    match op {
        ReduceOp::Sum => a + b,
        // NaN propagates, as in PyTorch.
        ReduceOp::Max => {
            if a > b || a.is_nan() {
                a
            } else {
                b
            }
        }
        ReduceOp::Min => {
            if a < b || a.is_nan() {
                a
            } else {
                b
            }
        }
    }
}

/// Σ with eight running partial sums: the loop vectorises, and rounding error grows
/// with n/8 rather than n.
fn sum_slice<F: CpuFloat>(x: &[F]) -> F {
    let mut lanes = [F::zero(); 8];
    let chunks = x.chunks_exact(8);
    let tail: F = chunks.remainder().iter().copied().sum();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = *l + v;
        }
    }
    lanes.iter().copied().sum::<F>() + tail
}

fn reduce_slice<F: CpuFloat>(op: ReduceOp, x: &[F]) -> F {
    match op {
        ReduceOp::Sum => sum_slice(x),
        _ => x.iter().fold(identity(op), |a, &b| combine(op, a, b)),
    }
}

/// `op` over `dims` (sorted) of the view; output in keep-dim shape, contiguous.
pub fn reduce<F: CpuFloat>(x: &[F], layout: &Layout, dims: &[usize], op: ReduceOp) -> Vec<F> {
    let shape = layout.shape();
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
    let n_out: usize = kept.iter().map(|&d| shape[d]).product();
    let n_red: usize = dims.iter().map(|&d| shape[d]).product();
    if n_red == 0 || n_out == 0 {
        return vec![identity(op); n_out];
    }
    let is_prefix = dims.iter().enumerate().all(|(i, &d)| i == d);
    if let (true, Some(range)) = (is_prefix, layout.contiguous_range()) {
        return reduce_leading(op, &x[range], n_red, n_out);
    }
    let order: Vec<usize> = kept.iter().chain(dims).copied().collect();
    let view = layout.permute(&order);
    match view.contiguous_range() {
        Some(range) => reduce_rows(op, &x[range], n_red),
        None => {
            let data = gather_view(x, view.shape(), view.strides(), view.offset());
            reduce_rows(op, &data, n_red)
        }
    }
}

/// Each consecutive row of `row_len` elements reduced to one value.
fn reduce_rows<F: CpuFloat>(op: ReduceOp, x: &[F], row_len: usize) -> Vec<F> {
    if x.len() >= PARALLEL_CUTOFF && x.len() / row_len > 1 {
        x.par_chunks(row_len).map(|r| reduce_slice(op, r)).collect()
    } else {
        x.chunks(row_len).map(|r| reduce_slice(op, r)).collect()
    }
}

/// `x` as `[n_red, n_out]` reduced over its first dim: rows accumulate into the output,
/// which reads memory in order (bias gradients are this shape).
fn reduce_leading<F: CpuFloat>(op: ReduceOp, x: &[F], n_red: usize, n_out: usize) -> Vec<F> {
    let accumulate = |cols: std::ops::Range<usize>, out: &mut [F]| {
        out.fill(identity(op));
        for row in x.chunks(n_out).take(n_red) {
            for (o, &v) in out.iter_mut().zip(&row[cols.clone()]) {
                *o = combine(op, *o, v);
            }
        }
    };
    let mut out = vec![F::zero(); n_out];
    let block = 1024.max(n_out / rayon::current_num_threads().max(1));
    if x.len() >= PARALLEL_CUTOFF && n_out > block {
        out.par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, o)| accumulate(i * block..i * block + o.len(), o));
    } else {
        accumulate(0..n_out, &mut out);
    }
    out
}
