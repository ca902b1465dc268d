//! Indexing (`kernels/index.cu`): index_select and gather move data of any dtype.
//! Their backwards: index_add sums each index's positions in order (a plan the host
//! makes from the indices, so results are identical run to run); scatter_add adds
//! atomically into a zeroed buffer of the compute type, cast to the dtype at the end.
//! Indices are checked on the host first (one small copy), so an index out of range is
//! an error naming the op, as on the CPU.

use super::elementwise::cast;
use super::launch::{args, launch, per_element, View};
use super::{acc_dtype, float_only, size_suffix, suffix, CudaStorage, Dense};
use crate::backend::BackendStorage;
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{contiguous_strides, Layout};

/// The indices as contiguous device memory, after checking each against `bound`, and
/// as host values.
fn checked_ids(
    op: &'static str,
    ids: &CudaStorage,
    l: &Layout,
    bound: usize,
) -> Result<(Dense, Vec<i64>)> {
    if ids.dtype != DType::I64 {
        return Err(Error::invalid(
            op,
            format!("indices must be i64, got {}", ids.dtype),
        ));
    }
    let dense = ids.dense(l)?;
    let storage = ids.copy_strided(l)?.to_cpu()?;
    let host = match &storage {
        CpuStorage::I64(v) => v.to_vec(),
        other => {
            let msg = format!("i64 indices came back as {}", other.dtype());
            return Err(Error::invalid(op, msg));
        }
    };
    if let Some(&bad) = host.iter().find(|&&i| i < 0 || i as usize >= bound) {
        return Err(Error::invalid(
            op,
            format!("index {bad} out of range for a dim of size {bound}"),
        ));
    }
    Ok((dense, host))
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
    let (ids, _) = checked_ids("index_select", ids, il, mid)?;
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
    let (_, host_ids) = checked_ids("index_add", ids, il, mid)?;
    let dev = src.dev();
    let n = outer * mid * inner;
    let out = CudaStorage::alloc(dev, n, src.dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let plan = SumPlan::new(&host_ids, mid);
    let chunks = plan.chunks;
    let table = CudaStorage::from_cpu(src.ordinal(), &CpuStorage::I64(plan.table.into()))?;
    let at = |offset: usize| table.ptr_at(offset);
    let (order, cb, seg) = (at(0), at(nids), at(nids + chunks + 1));
    let part = CudaStorage::alloc(dev, outer * chunks * inner, acc_dtype(src.dtype))?;
    let parts = part.len();
    if parts > 0 {
        let sd = src.dense(l)?;
        let name = format!("index_add_chunks_{}", suffix(src.dtype));
        let a = args![sd.ptr, order, cb, part.ptr(), nids, chunks, inner, parts];
        launch(dev, "index_add", ("index", &name), per_element(parts), a)?;
    }
    let name = format!("index_add_segments_{}", suffix(src.dtype));
    let a = args![part.ptr(), seg, out.ptr(), mid, chunks, inner, n];
    launch(dev, "index_add", ("index", &name), per_element(n), a)?;
    Ok(out)
}

/// Positions summed by one thread of `index_add_chunks_*` at most: it bounds a thread's
/// serial work when many positions share an index (a class label over a whole batch).
const CHUNK: usize = 64;

/// How `index_add` sums the positions of each index in order: `table` is
/// `[order | chunk bounds | first chunk of each index]`, the positions j sorted stably by
/// `ids[j]`, cut into chunks of at most `CHUNK` positions of one index each.
struct SumPlan {
    table: Vec<i64>,
    chunks: usize,
}

impl SumPlan {
    fn new(ids: &[i64], mid: usize) -> Self {
        // A stable counting sort: segment m of `order` holds the positions of index m.
        let mut starts = vec![0usize; mid + 1];
        for &i in ids {
            starts[i as usize + 1] += 1;
        }
        for m in 0..mid {
            starts[m + 1] += starts[m];
        }
        let mut order = vec![0i64; ids.len()];
        let mut next = starts.clone();
        for (j, &i) in ids.iter().enumerate() {
            order[next[i as usize]] = j as i64;
            next[i as usize] += 1;
        }
        let (mut bounds, mut first_chunk) = (vec![0i64], Vec::with_capacity(mid + 1));
        for m in 0..mid {
            first_chunk.push(bounds.len() as i64 - 1);
            for lo in (starts[m]..starts[m + 1]).step_by(CHUNK) {
                bounds.push((lo + CHUNK).min(starts[m + 1]) as i64);
            }
        }
        first_chunk.push(bounds.len() as i64 - 1);
        let chunks = bounds.len() - 1;
        order.extend(bounds);
        order.extend(first_chunk);
        Self {
            table: order,
            chunks,
        }
    }
}

pub(crate) fn gather(
    x: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let (ids, _) = checked_ids("gather", ids, il, l.shape()[dim])?;
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
    let (ids, _) = checked_ids("scatter_add", ids, il, shape[dim])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position once, each index's positions in increasing order, in chunks of at
    /// most `CHUNK` positions of one index, indices without positions having no chunk.
    #[test]
    fn sum_plan_orders_positions_by_index() {
        let ids: Vec<i64> = (0..500).map(|j| [4, 0, 4, 4, 1][j % 5]).collect();
        let mid = 6;
        let plan = SumPlan::new(&ids, mid);
        let (n, chunks) = (ids.len(), plan.chunks);
        let (order, rest) = plan.table.split_at(n);
        let (bounds, first) = rest.split_at(chunks + 1);
        assert_eq!(first.len(), mid + 1);
        assert_eq!((bounds[0], bounds[chunks]), (0, n as i64));
        let mut seen = vec![false; n];
        for m in 0..mid {
            let mut last = -1;
            for c in first[m]..first[m + 1] {
                let (lo, hi) = (bounds[c as usize] as usize, bounds[c as usize + 1] as usize);
                assert!(hi > lo && hi - lo <= CHUNK, "index {m} chunk {c}");
                for &j in &order[lo..hi] {
                    assert_eq!(ids[j as usize], m as i64);
                    assert!(j > last && !seen[j as usize]);
                    (last, seen[j as usize]) = (j, true);
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
        // 300 positions of index 4: five chunks; indices 2, 3 and 5: none.
        assert_eq!(first[5] - first[4], 5);
        assert_eq!(first[2], first[4]);
    }
}
