//! Indexing kernels: index_select / gather and their scatter-add backwards.

use super::float::CpuFloat;
use super::host_buffer::HostBuffer;
use super::pool;
use super::strided::contiguous;
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Indices checked against `bound` and converted to `usize`.
pub fn checked_ids(op: &'static str, ids: &[i64], l: &Layout, bound: usize) -> Result<Vec<usize>> {
    contiguous(ids, l)
        .iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < bound)
                .ok_or_else(|| {
                    Error::invalid(
                        op,
                        format!("index {i} out of range for a dim of size {bound}"),
                    )
                })
        })
        .collect()
}

/// (outer, size of `dim`, inner) of a shape split at `dim`.
fn split_at_dim(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    let outer = shape[..dim].iter().product();
    let inner = shape[dim + 1..].iter().product();
    (outer, shape[dim], inner)
}

/// `out[o, j, i] = x[o, ids[j], i]`.
pub fn index_select<F: pool::Poolable>(
    x: &[F],
    l: &Layout,
    ids: &[usize],
    dim: usize,
) -> HostBuffer<F> {
    let x = contiguous(x, l);
    let (outer, mid, inner) = split_at_dim(l.shape(), dim);
    let mut out = pool::take(outer * ids.len() * inner);
    let sources = (0..outer).flat_map(|o| ids.iter().map(move |&j| (o * mid + j) * inner));
    for (dst, start) in out.chunks_mut(inner.max(1)).zip(sources) {
        dst.copy_from_slice(&x[start..start + inner]);
    }
    out
}

/// `out[o, ids[j], i] += src[o, j, i]` into zeros of `shape`.
pub fn index_add<F: CpuFloat>(
    src: &[F],
    l: &Layout,
    ids: &[usize],
    dim: usize,
    shape: &[usize],
) -> HostBuffer<F> {
    let src = contiguous(src, l);
    let (outer, mid, inner) = split_at_dim(shape, dim);
    let mut out = pool::take_zeroed(outer * mid * inner);
    for o in 0..outer {
        for (j, &t) in ids.iter().enumerate() {
            let from = &src[(o * ids.len() + j) * inner..][..inner];
            let to = &mut out[(o * mid + t) * inner..][..inner];
            to.iter_mut().zip(from).for_each(|(a, &b)| *a = *a + b);
        }
    }
    out
}

/// For each position of `ids_shape` (row-major), the storage offset of the element of a
/// `(shape-compatible) strides/offset` view it addresses, with `dim` replaced by the index.
fn gathered_offsets<'a>(
    ids_shape: &'a [usize],
    ids: &'a [usize],
    dim: usize,
    strides: &[usize],
    offset: usize,
) -> impl Iterator<Item = usize> + 'a {
    let strides = strides.to_vec();
    (0..ids.len()).map(move |p| {
        let (mut rest, mut at) = (p, offset);
        for d in (0..ids_shape.len()).rev() {
            let c = rest % ids_shape[d];
            rest /= ids_shape[d];
            at += if d == dim { ids[p] } else { c } * strides[d];
        }
        at
    })
}

/// `out[..p..] = x[..ids[p] at dim..]`.
pub fn gather<F: pool::Poolable>(
    x: &[F],
    l: &Layout,
    ids_shape: &[usize],
    ids: &[usize],
    dim: usize,
) -> HostBuffer<F> {
    let mut out = pool::take(ids.len());
    let offsets = gathered_offsets(ids_shape, ids, dim, l.strides(), l.offset());
    out.iter_mut().zip(offsets).for_each(|(v, o)| *v = x[o]);
    out
}

/// `out[..ids[p] at dim..] += src[..p..]` into zeros of `shape`.
pub fn scatter_add<F: CpuFloat>(
    src: &[F],
    l: &Layout,
    ids: &[usize],
    dim: usize,
    shape: &[usize],
) -> HostBuffer<F> {
    let src = contiguous(src, l);
    let strides = crate::layout::contiguous_strides(shape);
    let mut out = pool::take_zeroed(shape.iter().product());
    for (o, &v) in gathered_offsets(l.shape(), ids, dim, &strides, 0).zip(src.iter()) {
        out[o] = out[o] + v;
    }
    out
}
