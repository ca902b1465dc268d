//! The float types CPU kernels are written for: f32 and f64 (bf16/f16 compute in f32).

/// A float the CPU kernels compute in.
pub trait CpuFloat:
    num_traits::Float
    + Default
    + Send
    + Sync
    + 'static
    + std::fmt::Debug
    + std::iter::Sum
    + super::pool::Poolable
{
    /// The error function.
    fn erf(self) -> Self;
    /// Conversion of an f64 constant or parameter.
    fn c(v: f64) -> Self;
    /// eˣ, vectorisable for f32 (see `fastmath`).
    fn exp_v(self) -> Self;
    /// tanh x, vectorisable for f32 (see `fastmath`).
    fn tanh_v(self) -> Self;
}

impl CpuFloat for f32 {
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn c(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn exp_v(self) -> Self {
        super::fastmath::exp(self)
    }
    #[inline(always)]
    fn tanh_v(self) -> Self {
        super::fastmath::tanh(self)
    }
}

impl CpuFloat for f64 {
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn c(v: f64) -> Self {
        v
    }
    fn exp_v(self) -> Self {
        self.exp()
    }
    fn tanh_v(self) -> Self {
        self.tanh()
    }
}

/// Σᵢ f(a₀[i], a₁[i], …) over `N` equal-length slices, with eight running partial
/// sums (element i goes to lane i mod 8): a single running sum would wait on each
/// addition's latency, and rounding error grows with n/8 rather than n. Written as
/// fixed blocks of eight over slices so that it vectorises; an iterator with a lane
/// index does not.
#[inline(always)]
pub fn sum_lanes<F: CpuFloat, const N: usize>(xs: [&[F]; N], f: impl Fn([F; N]) -> F) -> F {
    let n = xs.iter().map(|x| x.len()).min().unwrap_or(0);
    let xs = xs.map(|x| &x[..n]);
    let mut lanes = [F::zero(); 8];
    let full = n / 8 * 8;
    for base in (0..full).step_by(8) {
        let block = xs.map(|x| -> &[F; 8] { x[base..base + 8].try_into().expect("8 long") });
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = *lane + f(block.map(|b| b[l]));
        }
    }
    for (lane, i) in lanes.iter_mut().zip(full..n) {
        *lane = *lane + f(xs.map(|x| x[i]));
    }
    lanes.iter().copied().sum()
}

/// max of the values, eight lanes at a time (see [`sum_lanes`]); −∞ when empty.
#[inline(always)]
pub fn max_lanes<F: CpuFloat>(values: &[F]) -> F {
    let mut lanes = [F::neg_infinity(); 8];
    let mut blocks = values.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &v) in lanes.iter_mut().zip(block) {
            *lane = lane.max(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(blocks.remainder()) {
        *lane = lane.max(v);
    }
    lanes.iter().copied().fold(F::neg_infinity(), F::max)
}

use super::host_buffer::HostBuffer;
use super::pool::{self, Poolable};
use super::CpuStorage;
use crate::backend::BackendStorage;
use crate::{
    dtype::DType,
    error::{Error, Result},
};
use half::{bf16, f16};
use std::borrow::Cow;

/// Moving between [`CpuStorage`] and the slices kernels compute on.
pub trait ComputeType: CpuFloat {
    /// The storage's values in this compute type: borrowed when the storage already
    /// holds it, converted from bf16/f16 otherwise.
    fn view<'a>(s: &'a CpuStorage, op: &'static str) -> Result<Cow<'a, [Self]>>;
    /// Kernel output stored as `dtype` (rounded to bf16/f16 where asked).
    fn store(v: HostBuffer<Self>, dtype: DType) -> CpuStorage;
}

/// `v` rounded to a 16-bit type by `round`, into a buffer from the pool.
fn rounded<T: Poolable>(v: &[f32], round: fn(f32) -> T) -> HostBuffer<T> {
    let mut out = pool::take(v.len());
    out.iter_mut().zip(v).for_each(|(o, &x)| *o = round(x));
    out
}

impl ComputeType for f32 {
    fn view<'a>(s: &'a CpuStorage, op: &'static str) -> Result<Cow<'a, [f32]>> {
        match s {
            CpuStorage::F32(v) => Ok(Cow::Borrowed(v)),
            CpuStorage::BF16(v) => Ok(Cow::Owned(v.iter().map(|x| x.to_f32()).collect())),
            CpuStorage::F16(v) => Ok(Cow::Owned(v.iter().map(|x| x.to_f32()).collect())),
            _ => Err(Error::dtypes(op, &[s.dtype(), DType::F32])),
        }
    }
    fn store(v: HostBuffer<f32>, dtype: DType) -> CpuStorage {
        match dtype {
            DType::BF16 => CpuStorage::BF16(rounded(&v, bf16::from_f32)),
            DType::F16 => CpuStorage::F16(rounded(&v, f16::from_f32)),
            _ => CpuStorage::F32(v),
        }
    }
}

impl ComputeType for f64 {
    fn view<'a>(s: &'a CpuStorage, op: &'static str) -> Result<Cow<'a, [f64]>> {
        match s {
            CpuStorage::F64(v) => Ok(Cow::Borrowed(v)),
            _ => Err(Error::dtypes(op, &[s.dtype(), DType::F64])),
        }
    }
    fn store(v: HostBuffer<f64>, _dtype: DType) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// Runs `$body` with the type alias `$F` set to the compute type of `$s`'s dtype
/// (f32 for f32/bf16/f16, f64 for f64); i64 storage is refused with an error naming `$op`.
macro_rules! dispatch_float {
    ($op:expr, $s:expr, |$F:ident| $body:expr) => {
        match $s.dtype() {
            $crate::DType::F32 | $crate::DType::BF16 | $crate::DType::F16 => {
                type $F = f32;
                $body
            }
            $crate::DType::F64 => {
                type $F = f64;
                $body
            }
            $crate::DType::I64 => Err($crate::Error::dtypes($op, &[$crate::DType::I64])),
        }
    };
}
pub(crate) use dispatch_float;
