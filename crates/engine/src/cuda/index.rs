//! Indexing (`kernels/index.cu`): index_select and gather move data of any dtype;
//! their backwards index_add and scatter_add add atomically into a zeroed buffer of the
//! compute type, cast to the dtype at the end. Indices are checked on the host first
//! (one small copy), so an index out of range is an error naming the op, as on the CPU.

use super::elementwise::cast;
use super::launch::{args, launch, per_element, View};
use super::{acc_dtype, float_only, size_suffix, suffix, CudaStorage, Dense};
use crate::backend::BackendStorage;
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{contiguous_strides, Layout};

/// The indices as contiguous device memory, after checking each against `bound`.
fn checked_ids(op: &'static str, ids: &CudaStorage, l: &Layout, bound: usize) -> Result<Dense> {
    if ids.dtype != DType::I64 {
        return Err(Error::invalid(
            op,
            format!("indices must be i64, got {}", ids.dtype),
        ));
    }
    let dense = ids.dense(l)?;
    let host = ids.copy_strided(l)?.to_cpu()?;
    if let CpuStorage::I64(v) = &host {
        if let Some(&bad) = v.iter().find(|&&i| i < 0 || i as usize >= bound) {
            return Err(Error::invalid(
                op,
                format!("index {bad} out of range for a dim of size {bound}"),
            ));
        }
    }
    Ok(dense)
}

/// (outer, size of `dim`, inner) of a shape split at `dim`.
fn split_at_dim(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    let outer = shape[..dim].iter().product();
    (outer, shape[dim], shape[dim + 1..].iter().product())
}

/// The compute-type accumulator of a scatter, cast to `dtype`.
fn finish(acc: CudaStorage, n: usize, dtype: DType) -> Result<CudaStorage> {
    match acc.dtype == dtype {
        true => Ok(acc),
        false => cast(&acc, &Layout::contiguous(&[n]), dtype),
    }
}

pub(crate) fn index_select(
    x: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let (outer, mid, inner) = split_at_dim(l.shape(), dim);
    let nids = il.elem_count();
    let ids = checked_ids("index_select", ids, il, mid)?;
    let n = outer * nids * inner;
    let out = CudaStorage::alloc(x.dev(), n, x.dtype)?;
    if n > 0 {
        let xd = x.dense(l)?;
        let name = format!("index_select_{}", size_suffix(x.dtype));
        let a = args![xd.ptr, ids.ptr, out.ptr(), mid, nids, inner, n];
        launch(x.dev(), "index_select", ("index", &name), per_element(n), a)?;
    }
    Ok(out)
}

pub(crate) fn index_add(
    src: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    dim: usize,
    shape: &[usize],
) -> Result<CudaStorage> {
    float_only("index_add", src.dtype)?;
    let (outer, mid, inner) = split_at_dim(shape, dim);
    let nids = il.elem_count();
    let ids = checked_ids("index_add", ids, il, mid)?;
    let total = outer * mid * inner;
    let acc = CudaStorage::zeros_on(src.dev(), total, acc_dtype(src.dtype))?;
    let n = outer * nids * inner;
    if n > 0 {
        let sd = src.dense(l)?;
        let name = format!("index_add_{}", suffix(src.dtype));
        let a = args![sd.ptr, ids.ptr, acc.ptr(), mid, nids, inner, n];
        launch(src.dev(), "index_add", ("index", &name), per_element(n), a)?;
    }
    finish(acc, total, src.dtype)
}

pub(crate) fn gather(
    x: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let ids = checked_ids("gather", ids, il, l.shape()[dim])?;
    let n = il.elem_count();
    let out = CudaStorage::alloc(x.dev(), n, x.dtype)?;
    if n > 0 {
        let xv = View::exact("gather", il.shape(), l.strides(), l.offset())?;
        let name = format!("gather_{}", size_suffix(x.dtype));
        let a = args![x.ptr(), xv, ids.ptr, dim, out.ptr(), n];
        launch(x.dev(), "gather", ("index", &name), per_element(n), a)?;
    }
    Ok(out)
}

pub(crate) fn scatter_add(
    src: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    dim: usize,
    shape: &[usize],
) -> Result<CudaStorage> {
    float_only("scatter_add", src.dtype)?;
    let ids = checked_ids("scatter_add", ids, il, shape[dim])?;
    let total = shape.iter().product();
    let acc = CudaStorage::zeros_on(src.dev(), total, acc_dtype(src.dtype))?;
    let n = l.elem_count();
    if n > 0 {
        let sv = View::exact("scatter_add", l.shape(), l.strides(), l.offset())?;
        let dv = View::exact("scatter_add", l.shape(), &contiguous_strides(shape), 0)?;
        let name = format!("scatter_add_{}", suffix(src.dtype));
        let a = args![src.ptr(), sv, ids.ptr, dv, dim, acc.ptr(), n];
        launch(
            src.dev(),
            "scatter_add",
            ("index", &name),
            per_element(n),
            a,
        )?;
    }
    finish(acc, total, src.dtype)
}
