//! The CPU backend: host buffers aligned to a cache line (`host_buffer`), `gemm` for
//! products, rayon for large loops.
//!
//! f32 and f64 are computed natively; bf16 and f16 are converted to f32 for the
//! kernel and rounded back (`float::ComputeType`).
//!
//! `impl BackendStorage for CpuStorage` below runs the primitives; the fused ops call
//! their kernels here (`norm`, `softmax`, `attention`, `adam`, `ema`, `elementwise::addcmul`)
//! from their own files in `ops/`.

pub(crate) mod adam;
pub(crate) mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_few_keys;
pub(crate) mod elementwise;
pub(crate) mod ema;
pub(crate) mod epilogue;
mod fastmath;
mod float;
pub mod host_buffer;
mod index;
mod isa;
pub(crate) mod matmul;
#[cfg(target_arch = "x86_64")]
pub(crate) mod mlp_rows;
pub(crate) mod norm;
pub(crate) mod pool;
mod prefetch;
#[cfg(all(test, target_arch = "x86_64"))]
mod product_cases;
mod reduce;
#[cfg(target_arch = "x86_64")]
mod sgemm_avx512;
#[cfg(target_arch = "x86_64")]
mod sgemm_small;
pub(crate) mod softmax;
pub(crate) mod strided;
mod threads;
mod transpose;

pub use float::CpuFloat;
pub use host_buffer::HostBuffer;
pub use strided::PARALLEL_CUTOFF;
pub use threads::on_worker_thread;

use crate::backend::{BackendStorage, BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::Device;
pub(crate) use float::{dispatch_float, ComputeType};
use half::{bf16, f16};
use rayon::prelude::*;
use strided::{fill_runs, gather_view, Runs};

/// A tensor's elements in host memory.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    /// IEEE half precision.
    F16(HostBuffer<f16>),
    /// bfloat16.
    BF16(HostBuffer<bf16>),
    /// f32.
    F32(HostBuffer<f32>),
    /// f64.
    F64(HostBuffer<f64>),
    /// i64 (indices, labels).
    I64(HostBuffer<i64>),
}

/// Applies `$body` to the buffer inside any variant, binding it to `$v`.
macro_rules! each_variant {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F16($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::I64($v) => $body,
        }
    };
}

/// Like [`each_variant`], rebuilding the same variant from `$body`'s buffer.
macro_rules! map_variant {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F16($v) => CpuStorage::F16($body),
            CpuStorage::BF16($v) => CpuStorage::BF16($body),
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F64($v) => CpuStorage::F64($body),
            CpuStorage::I64($v) => CpuStorage::I64($body),
        }
    };
}

impl Drop for CpuStorage {
    /// Parks the buffer in the pool for the next op of the same size.
    fn drop(&mut self) {
        each_variant!(self, v => pool::give(std::mem::take(v)))
    }
}

impl CpuStorage {
    /// A linear layer's weight gradient `gᵀ·x` and bias gradient (`g` summed over its
    /// rows) from one f32 product, `self` being the view `gᵀ` (see
    /// `matmul::weight_bias_gradients`); `None` for other dtypes, or where the product
    /// does not run on the AVX-512 kernel.
    pub(crate) fn weight_bias_gradients(
        &self,
        l: &Layout,
        x: &Self,
        xl: &Layout,
    ) -> Option<(Self, Self)> {
        match (self, x) {
            (CpuStorage::F32(gt), CpuStorage::F32(x)) => {
                matmul::weight_bias_gradients(gt, l, x, xl)
                    .map(|(w, sums)| (CpuStorage::F32(w), CpuStorage::F32(sums)))
            }
            _ => None,
        }
    }

    /// Σ over `dims` (sorted) of `self·other`, two f32 or f64 views of one shape, in one
    /// pass without the product in memory (see `reduce::sum_product`); `None` for other
    /// dtypes and layouts.
    pub(crate) fn sum_product(
        &self,
        l: &Layout,
        other: &Self,
        ol: &Layout,
        dims: &[usize],
    ) -> Option<Self> {
        match (self, other) {
            (CpuStorage::F32(x), CpuStorage::F32(y)) => {
                reduce::sum_product(x, l, y, ol, dims).map(CpuStorage::F32)
            }
            (CpuStorage::F64(x), CpuStorage::F64(y)) => {
                reduce::sum_product(x, l, y, ol, dims).map(CpuStorage::F64)
            }
            _ => None,
        }
    }

    /// `n` zeros of `dtype`; an error, not an abort, when memory cannot hold them.
    pub fn zeros(n: usize, dtype: DType) -> Result<Self> {
        const OP: &str = "zeros";
        Ok(match dtype {
            DType::F16 => CpuStorage::F16(pool::try_take_zeroed(OP, n)?),
            DType::BF16 => CpuStorage::BF16(pool::try_take_zeroed(OP, n)?),
            DType::F32 => CpuStorage::F32(pool::try_take_zeroed(OP, n)?),
            DType::F64 => CpuStorage::F64(pool::try_take_zeroed(OP, n)?),
            DType::I64 => CpuStorage::I64(pool::try_take_zeroed(OP, n)?),
        })
    }

    /// The `n` values `value(0), value(1), …` converted from f64 into `dtype`, rounded to
    /// nearest (ties to even); an error, not an abort, when memory cannot hold them.
    /// Each value depends on its index only, so large fills run in parallel blocks and
    /// give the same values in the same places: a seeded draw (`random.rs`) costs a
    /// Philox block, a logarithm and a cosine a value, which on one thread left the
    /// other idle for about 4 % of the default MNIST run's step (docs/benchmarks.md).
    pub fn from_f64_fn(
        n: usize,
        dtype: DType,
        value: impl Fn(usize) -> f64 + Sync,
    ) -> Result<Self> {
        const OP: &str = "from_f64";
        Ok(match dtype {
            DType::F16 => CpuStorage::F16(filled(OP, n, |i| {
                f16::from_f32(round_to_odd_f32(value(i)))
            })?),
            DType::BF16 => CpuStorage::BF16(filled(OP, n, |i| {
                bf16::from_f32(round_to_odd_f32(value(i)))
            })?),
            DType::F32 => CpuStorage::F32(filled(OP, n, |i| value(i) as f32)?),
            DType::F64 => CpuStorage::F64(filled(OP, n, value)?),
            DType::I64 => CpuStorage::I64(filled(OP, n, |i| value(i) as i64)?),
        })
    }

    /// Number of elements held (the whole buffer, not a view).
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `T`, if the storage holds `T`.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::slice(self)
    }

    /// The elements as `T`, mutably, if the storage holds `T`.
    pub fn as_mut_slice<T: Element>(&mut self) -> Option<&mut [T]> {
        T::slice_mut(self)
    }

    /// The view's elements converted to f64, row-major.
    pub fn to_f64_vec(&self, layout: &Layout) -> Vec<f64> {
        let view = |l: &Layout| (l.shape().to_vec(), l.strides().to_vec(), l.offset());
        let (shape, strides, offset) = view(layout);
        each_variant!(self, v => gather_view(v, &shape, &strides, offset)
            .iter()
            .map(|&x| x.to_f64())
            .collect())
    }

    /// The indices in an i64 storage, range-checked against `bound`.
    fn ids(&self, op: &'static str, l: &Layout, bound: usize) -> Result<Vec<usize>> {
        match self {
            CpuStorage::I64(v) => index::checked_ids(op, v, l, bound),
            _ => Err(Error::invalid(
                op,
                format!("indices must be i64, got {}", self.dtype()),
            )),
        }
    }
}

/// Values per task of [`filled`]: about 0.2 ms of normal draws, and a whole number of
/// 64-byte lines for every element type.
const FILL_BLOCK: usize = 1 << 12;

/// A buffer of the `n` values `value(0), value(1), …`, blocks of [`FILL_BLOCK`] indices
/// in parallel when there are two or more.
fn filled<T: pool::Poolable + Send>(
    op: &'static str,
    n: usize,
    value: impl Fn(usize) -> T + Sync,
) -> Result<HostBuffer<T>> {
    // Every element is written below: a parked buffer needs no zeroing first.
    let mut buffer = pool::try_take(op, n)?;
    let fill = |(block, values): (usize, &mut [T])| {
        for (i, slot) in values.iter_mut().enumerate() {
            *slot = value(block * FILL_BLOCK + i);
        }
    };
    match n >= 2 * FILL_BLOCK {
        true => buffer.par_chunks_mut(FILL_BLOCK).enumerate().for_each(fill),
        false => buffer.chunks_mut(FILL_BLOCK).enumerate().for_each(fill),
    }
    Ok(buffer)
}

/// `v` as an f32 rounded to odd: truncated toward zero, with the last mantissa bit set
/// when inexact. Rounding that to a format with at least two fewer mantissa bits (bf16,
/// f16) gives the correctly rounded result, which rounding f64 → f32 → half twice to
/// nearest does not.
fn round_to_odd_f32(v: f64) -> f32 {
    let nearest = v as f32;
    if nearest as f64 == v || !nearest.is_finite() {
        return nearest;
    }
    let toward_zero = if (nearest as f64).abs() > v.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(toward_zero.to_bits() | 1)
}

/// Writes the contiguous `from` into the runs of `to`.
fn scatter_runs<T: Copy>(runs: &Runs<1>, from: &[T], to: &mut [T]) {
    let (st, len) = (runs.inner[0], runs.len);
    for i in 0..runs.count() {
        let [start] = runs.starts(i);
        let from = &from[i * len..(i + 1) * len];
        match st {
            // A run of adjacent destination values: one block copy, not a store per
            // value with its own bounds check.
            1 => to[start..start + len].copy_from_slice(from),
            _ => {
                for (j, &v) in from.iter().enumerate() {
                    to[start + j * st] = v;
                }
            }
        }
    }
}

/// Refuses operands whose dtypes differ.
fn same_dtype(op: &'static str, all: &[&CpuStorage]) -> Result<DType> {
    let dt = all[0].dtype();
    match all.iter().all(|s| s.dtype() == dt) {
        true => Ok(dt),
        false => Err(Error::dtypes(
            op,
            &all.iter().map(|s| s.dtype()).collect::<Vec<_>>(),
        )),
    }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::I64(_) => DType::I64,
        }
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn copy_strided(&self, l: &Layout) -> Result<Self> {
        Ok(map_variant!(self, v => gather_view(v, l.shape(), l.strides(), l.offset())))
    }

    fn copy_into(&self, l: &Layout, dst: &mut Self, dl: &Layout) -> Result<()> {
        // A contiguous source of the destination's dtype is read where it lies; any
        // other is first gathered (and cast) into a contiguous buffer.
        let converted;
        let (src, from) = match l.contiguous_range() {
            Some(range) if self.dtype() == dst.dtype() => (self, range.start),
            _ => {
                converted = self.to_dtype(l, dst.dtype())?;
                (&converted, 0)
            }
        };
        let runs = Runs::new(dl.shape(), [(dl.strides(), dl.offset())]);
        match (src, dst) {
            (CpuStorage::F16(a), CpuStorage::F16(b)) => scatter_runs(&runs, &a[from..], b),
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => scatter_runs(&runs, &a[from..], b),
            (CpuStorage::F32(a), CpuStorage::F32(b)) => scatter_runs(&runs, &a[from..], b),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => scatter_runs(&runs, &a[from..], b),
            (CpuStorage::I64(a), CpuStorage::I64(b)) => scatter_runs(&runs, &a[from..], b),
            (a, b) => return Err(Error::dtypes("copy_into", &[a.dtype(), b.dtype()])),
        }
        Ok(())
    }

    fn to_dtype(&self, l: &Layout, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return self.copy_strided(l);
        }
        let runs = Runs::new(l.shape(), [(l.strides(), l.offset())]);
        // Casts go through f64, which holds every value of every dtype exactly
        // (except i64 beyond 2^53, which no index reaches).
        let mut wide = vec![0.0f64; l.elem_count()];
        each_variant!(self, v => fill_runs(&mut wide, &runs, |o, [s]| {
            for (i, o) in o.iter_mut().enumerate() {
                *o = v[s + i * runs.inner[0]].to_f64();
            }
        }));
        Self::from_f64_fn(wide.len(), dtype, |i| wide[i])
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self> {
        dispatch_float!("unary", self, |F| {
            let x = F::view(self, "unary")?;
            Ok(F::store(elementwise::unary(&x, l, op), self.dtype()))
        })
    }

    fn unary_backward(&self, l: &Layout, g: &Self, gl: &Layout, op: UnaryOp) -> Result<Self> {
        let dt = same_dtype("unary_backward", &[self, g])?;
        dispatch_float!("unary_backward", self, |F| {
            let (x, g) = (
                F::view(self, "unary_backward")?,
                F::view(g, "unary_backward")?,
            );
            Ok(F::store(
                elementwise::unary_backward((&x, l), (&g, gl), op),
                dt,
            ))
        })
    }

    fn binary(&self, l: &Layout, rhs: &Self, rl: &Layout, op: BinaryOp) -> Result<Self> {
        let dt = same_dtype("binary", &[self, rhs])?;
        dispatch_float!("binary", self, |F| {
            let (a, b) = (F::view(self, "binary")?, F::view(rhs, "binary")?);
            Ok(F::store(elementwise::binary((&a, l), (&b, rl), op), dt))
        })
    }

    fn cmp(&self, l: &Layout, rhs: &Self, rl: &Layout, op: CmpOp) -> Result<Self> {
        let dt = same_dtype("cmp", &[self, rhs])?;
        dispatch_float!("cmp", self, |F| {
            let (a, b) = (F::view(self, "cmp")?, F::view(rhs, "cmp")?);
            Ok(F::store(elementwise::cmp((&a, l), (&b, rl), op), dt))
        })
    }

    fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self> {
        dispatch_float!("reduce", self, |F| {
            let x = F::view(self, "reduce")?;
            Ok(F::store(reduce::reduce(&x, l, dims, op), self.dtype()))
        })
    }

    fn matmul(
        &self,
        l: &Layout,
        rhs: &Self,
        rl: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self> {
        let mut operands = vec![self, rhs];
        operands.extend(bias.map(|b| b.0));
        let dt = same_dtype("matmul", &operands)?;
        dispatch_float!("matmul", self, |F| {
            let (a, b) = (F::view(self, "matmul")?, F::view(rhs, "matmul")?);
            let bias_values = bias.map(|(s, _)| F::view(s, "matmul")).transpose()?;
            let bias = bias_values.as_deref().zip(bias.map(|(_, bl)| bl));
            Ok(F::store(matmul::matmul(&a, l, &b, rl, bias), dt))
        })
    }

    fn index_select(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        let ids = ids.ids("index_select", il, l.shape()[dim])?;
        Ok(map_variant!(self, v => index::index_select(v, l, &ids, dim)))
    }

    fn index_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        let ids = ids.ids("index_add", il, shape[dim])?;
        dispatch_float!("index_add", self, |F| {
            let src = F::view(self, "index_add")?;
            let out = index::index_add(&src, l, &ids, dim, shape);
            Ok(F::store(out, self.dtype()))
        })
    }

    fn gather(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        let ids = ids.ids("gather", il, l.shape()[dim])?;
        Ok(map_variant!(self, v => index::gather(v, l, il.shape(), &ids, dim)))
    }

    fn scatter_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        let ids = ids.ids("scatter_add", il, shape[dim])?;
        dispatch_float!("scatter_add", self, |F| {
            let src = F::view(self, "scatter_add")?;
            let out = index::scatter_add(&src, l, &ids, dim, shape);
            Ok(F::store(out, self.dtype()))
        })
    }
}
