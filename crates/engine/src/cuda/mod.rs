//! The CUDA backend: [`CudaStorage`] implements every kernel of
//! [`BackendStorage`] on an NVIDIA GPU, with NVRTC-compiled kernels from `kernels/`,
//! cuBLAS for products and a caching allocator.
//!
//! Data flow: a `Tensor` op checks shapes and records its backward (`ops/`), `Storage`
//! dispatches on the device, and a launcher of one of the family files below (called by
//! a method here, or for a fused op by the op's own `cuda` kernel in `ops/`) flattens
//! the operands' layouts into kernel views (`launch::View`) and queues a kernel on the
//! device's one stream.
//! bf16/f16 are storage types: kernels load them into f32, compute, and round back.
//!
//! Files: `device.rs` (context, stream, cuBLAS, kernel cache), `alloc.rs` (caching
//! allocator), `kernels.rs` (embedded sources, NVRTC), `launch.rs` (views, launches),
//! then one file per op family (`flash.rs`: the fused attention kernels;
//! `adam_list.rs`: the optimizer step over many parameters a launch).

pub(crate) mod adam_list;
mod alloc;
pub(crate) mod attention;
mod device;
pub(crate) mod elementwise;
mod flash;
mod index;
pub mod kernels;
mod launch;
mod lt;
pub(crate) mod matmul;
pub(crate) mod rows;
mod tma;

pub use alloc::MemoryStats;
pub use device::{
    driver_present, set_allow_tf32, set_fused_attention, set_half_gradient_epilogues,
    set_hopper_attention, set_poison, set_single_pass_attention_backward, HopperAttention,
};

use crate::backend::{BackendStorage, BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::Device;
use alloc::Buffer;
use cudarc::driver::result as drv;
pub(crate) use device::CudaDevice;
use std::sync::Arc;

/// The memory counters of CUDA device `ordinal`.
pub fn memory_stats(ordinal: usize) -> Result<MemoryStats> {
    Ok(CudaDevice::get(ordinal)?.memory_stats())
}

/// Returns the cached, unused buffers of device `ordinal` to the driver.
pub fn empty_cache(ordinal: usize) -> Result<()> {
    CudaDevice::get(ordinal)?.empty_cache()
}

/// The architecture of CUDA device `ordinal`, `sm_<major><minor>` (`sm_90` for H100 and
/// H200).
pub fn arch(ordinal: usize) -> Result<String> {
    Ok(CudaDevice::get(ordinal)?.arch().to_string())
}

/// Waits until all queued work of device `ordinal` has finished (for timing).
pub fn synchronize(ordinal: usize) -> Result<()> {
    CudaDevice::get(ordinal)?.synchronize()
}

/// An event with timing recorded now on device `ordinal`'s stream (the op profiler's
/// device clock, `profile::Timing::DeviceEvents`).
pub(crate) fn timing_event(ordinal: usize) -> Result<cudarc::driver::CudaEvent> {
    let dev = CudaDevice::get(ordinal)?;
    let timed = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
    dev.stream
        .record_event(Some(timed))
        .map_err(|e| dev.error("profile", e))
}

/// Opens device `ordinal` (context, stream, cuBLAS), or says why it cannot.
pub(crate) fn open(ordinal: usize) -> Result<()> {
    CudaDevice::get(ordinal).map(|_| ())
}

/// A tensor's elements in the memory of one GPU.
pub struct CudaStorage {
    buf: Buffer,
    len: usize,
    dtype: DType,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage[{} × {}, {}]",
            self.len,
            self.dtype,
            self.device()
        )
    }
}

/// The kernel name suffix of a float dtype (`unary_f32`, ...).
fn suffix(dtype: DType) -> &'static str {
    dtype.as_str()
}

/// The kernel name suffix of a data-movement kernel: by element size.
fn size_suffix(dtype: DType) -> &'static str {
    match dtype.size_in_bytes() {
        2 => "b2",
        4 => "b4",
        _ => "b8",
    }
}

/// The compute type kernels accumulate in: f64 for f64, f32 otherwise.
fn acc_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// Refuses an integer operand for a float kernel.
fn float_only(op: &'static str, dtype: DType) -> Result<()> {
    match dtype.is_float() {
        true => Ok(()),
        false => Err(Error::dtypes(op, &[dtype])),
    }
}

/// Refuses operands whose dtypes differ from the first.
fn same_dtype(op: &'static str, all: &[&CudaStorage]) -> Result<DType> {
    let dt = all[0].dtype;
    match all.iter().all(|s| s.dtype == dt) {
        true => Ok(dt),
        false => Err(Error::dtypes(
            op,
            &all.iter().map(|s| s.dtype).collect::<Vec<_>>(),
        )),
    }
}

/// A contiguous operand: the storage's own memory when the view already is, or a copy.
pub(crate) struct Dense {
    _copy: Option<CudaStorage>,
    /// Device address of the first element.
    pub(crate) ptr: u64,
}

impl CudaStorage {
    /// `n` elements of `dtype` with undefined contents (NaN bits in poison mode).
    pub(crate) fn alloc(dev: &Arc<CudaDevice>, n: usize, dtype: DType) -> Result<Self> {
        let bytes = n
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::OutOfMemory {
                op: "alloc",
                what: format!("{n} values of {dtype} overflow the address space"),
            })?;
        let buf = alloc::alloc(dev, bytes)?;
        if device::poison() {
            fill(dev, buf.ptr(), 0xff, bytes, "alloc")?;
        }
        Ok(CudaStorage { buf, len: n, dtype })
    }

    /// `n` zeros of `dtype` on `dev`.
    pub(crate) fn zeros_on(dev: &Arc<CudaDevice>, n: usize, dtype: DType) -> Result<Self> {
        let s = CudaStorage::alloc(dev, n, dtype)?;
        fill(dev, s.ptr(), 0, n * dtype.size_in_bytes(), "zeros")?;
        Ok(s)
    }

    /// `n` zeros of `dtype` on device `ordinal`.
    pub fn zeros(ordinal: usize, n: usize, dtype: DType) -> Result<Self> {
        CudaStorage::zeros_on(&CudaDevice::get(ordinal)?, n, dtype)
    }

    /// Host data copied to device `ordinal`.
    pub fn from_cpu(ordinal: usize, data: &CpuStorage) -> Result<Self> {
        let dev = CudaDevice::get(ordinal)?;
        let s = CudaStorage::alloc(&dev, data.len(), data.dtype())?;
        dev.bind().map_err(|e| dev.error("to_device", e))?;
        let stream = dev.stream.cu_stream();
        // SAFETY: the buffer holds `len` elements of the source's dtype; a copy from
        // pageable host memory returns once the source has been read.
        let copied = unsafe {
            match data {
                CpuStorage::F16(v) => drv::memcpy_htod_async(s.ptr(), v, stream),
                CpuStorage::BF16(v) => drv::memcpy_htod_async(s.ptr(), v, stream),
                CpuStorage::F32(v) => drv::memcpy_htod_async(s.ptr(), v, stream),
                CpuStorage::F64(v) => drv::memcpy_htod_async(s.ptr(), v, stream),
                CpuStorage::I64(v) => drv::memcpy_htod_async(s.ptr(), v, stream),
            }
        };
        copied.map_err(|e| dev.error("to_device", e))?;
        Ok(s)
    }

    /// The whole buffer copied to the host (waits for the queued work).
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        let dev = self.dev();
        let mut out = CpuStorage::zeros(self.len, self.dtype)?;
        dev.bind().map_err(|e| dev.error("to_cpu", e))?;
        let stream = dev.stream.cu_stream();
        // SAFETY: `out` has `len` elements of our dtype; the stream is synchronised
        // before `out` is read.
        let copied = unsafe {
            match &mut out {
                CpuStorage::F16(v) => drv::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::BF16(v) => drv::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::F32(v) => drv::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::F64(v) => drv::memcpy_dtoh_async(v, self.ptr(), stream),
                CpuStorage::I64(v) => drv::memcpy_dtoh_async(v, self.ptr(), stream),
            }
        };
        copied.map_err(|e| dev.error("to_cpu", e))?;
        dev.synchronize()?;
        Ok(out)
    }

    /// Number of elements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.dev().ordinal()
    }

    pub(crate) fn dev(&self) -> &Arc<CudaDevice> {
        self.buf.dev()
    }

    pub(crate) fn ptr(&self) -> u64 {
        self.buf.ptr()
    }

    /// Device address of element `offset`.
    pub(crate) fn ptr_at(&self, offset: usize) -> u64 {
        self.ptr() + (offset * self.dtype.size_in_bytes()) as u64
    }

    /// The view as contiguous memory: in place when it already is, else a copy.
    pub(crate) fn dense(&self, l: &Layout) -> Result<Dense> {
        if l.is_contiguous() {
            return Ok(Dense {
                _copy: None,
                ptr: self.ptr_at(l.offset()),
            });
        }
        let copy = self.copy_strided(l)?;
        Ok(Dense {
            ptr: copy.ptr(),
            _copy: Some(copy),
        })
    }

    /// The view as contiguous memory of `dtype`: as [`Self::dense`] when it has that
    /// dtype (in place when contiguous), else a converted copy.
    pub(crate) fn dense_as(&self, l: &Layout, dtype: DType) -> Result<Dense> {
        if self.dtype == dtype {
            return self.dense(l);
        }
        let copy = elementwise::cast(self, l, dtype)?;
        Ok(Dense {
            ptr: copy.ptr(),
            _copy: Some(copy),
        })
    }
}

/// Sets `bytes` bytes at `ptr` to `value`, in stream order.
fn fill(dev: &CudaDevice, ptr: u64, value: u8, bytes: usize, op: &'static str) -> Result<()> {
    dev.bind().map_err(|e| dev.error(op, e))?;
    // SAFETY: `ptr` addresses at least `bytes` bytes of a live buffer of this device.
    unsafe { drv::memset_d8_async(ptr, value, bytes, dev.stream.cu_stream()) }
        .map_err(|e| dev.error(op, e))
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> Device {
        Device::Cuda(self.ordinal())
    }

    fn copy_strided(&self, l: &Layout) -> Result<Self> {
        elementwise::copy_strided(self, l)
    }

    fn copy_into(&self, l: &Layout, dst: &mut Self, dl: &Layout) -> Result<()> {
        elementwise::copy_into(self, l, dst, dl)
    }

    fn to_dtype(&self, l: &Layout, dtype: DType) -> Result<Self> {
        elementwise::cast(self, l, dtype)
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self> {
        elementwise::unary(self, l, op)
    }

    fn unary_backward(&self, l: &Layout, g: &Self, gl: &Layout, op: UnaryOp) -> Result<Self> {
        same_dtype("unary_backward", &[self, g])?;
        elementwise::unary_backward(self, l, g, gl, op)
    }

    fn binary(&self, l: &Layout, rhs: &Self, rl: &Layout, op: BinaryOp) -> Result<Self> {
        same_dtype("binary", &[self, rhs])?;
        elementwise::binary(self, l, rhs, rl, op)
    }

    fn cmp(&self, l: &Layout, rhs: &Self, rl: &Layout, op: CmpOp) -> Result<Self> {
        same_dtype("cmp", &[self, rhs])?;
        elementwise::cmp(self, l, rhs, rl, op)
    }

    fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self> {
        rows::reduce(self, l, dims, op)
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
        same_dtype("matmul", &operands)?;
        matmul::matmul(self, l, rhs, rl, bias)
    }

    fn index_select(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        index::index_select(self, l, ids, il, dim)
    }

    fn index_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        index::index_add(self, l, ids, il, dim, shape)
    }

    fn gather(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        index::gather(self, l, ids, il, dim)
    }

    fn scatter_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        index::scatter_add(self, l, ids, il, dim, shape)
    }
}
