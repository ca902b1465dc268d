//! Ranks as processes, one per GPU, through NVIDIA's NCCL: the GPU backend of
//! [`Communicator`]. NCCL is loaded at run time (`libnccl.so.2`, e.g. from PyPI's
//! `nvidia-nccl-cu13`), so a binary built with it still starts without it and says so
//! when a run asks for it.
//!
//! Rank 0 makes the group's id ([`NcclId::new`]); the launcher hands it to every rank
//! (a file, or the environment), and each rank joins with
//! [`NcclCommunicator::join`]. Collectives are enqueued on the device's one stream, so
//! they are ordered with the kernels before and after them.

use super::{Communicator, ReduceOp};
use crate::cuda::CudaDevice;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::{Device, Tensor};
use cudarc::nccl::{result, sys};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The 128 bytes that name an NCCL group, made by rank 0 and shared with the others.
#[derive(Clone, Copy)]
pub struct NcclId(pub [u8; 128]);

impl NcclId {
    /// A fresh id (rank 0 makes it once per run).
    pub fn new() -> Result<NcclId> {
        require_nccl()?;
        let id = result::get_uniqueid().map_err(|e| nccl_error("nccl id", e))?;
        Ok(NcclId(id.internal.map(|c| c as u8)))
    }
}

/// True when `libnccl.so.2` can be loaded.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

fn require_nccl() -> Result<()> {
    match nccl_present() {
        true => Ok(()),
        false => Err(Error::Backend {
            backend: "nccl",
            msg: "the NCCL library (libnccl.so.2) is not on the loader path; install it \
                  (e.g. `pip install nvidia-nccl-cu13` and add its lib folder to \
                  LD_LIBRARY_PATH) to train on several GPUs"
                .into(),
        }),
    }
}

fn nccl_error(op: &str, e: result::NcclError) -> Error {
    Error::Backend {
        backend: "nccl",
        msg: format!("{op}: {:?}", e.0),
    }
}

/// One rank of an NCCL group, bound to one GPU.
pub struct NcclCommunicator {
    comm: sys::ncclComm_t,
    dev: Arc<CudaDevice>,
    rank: usize,
    world_size: usize,
    timeout: Duration,
    /// Set once aborted: an aborted communicator is freed by the abort, not destroyed.
    aborted: AtomicBool,
}

// SAFETY: the communicator is used from one thread at a time (`&self` calls are
// serialised by the trainer, which owns it); NCCL allows a communicator to move between
// threads.
unsafe impl Send for NcclCommunicator {}

impl NcclCommunicator {
    /// Joins the group `id` as `rank` of `world_size` on `device` (a CUDA device).
    /// Blocks until every rank has joined.
    pub fn join(id: &NcclId, rank: usize, world_size: usize, device: Device) -> Result<Self> {
        require_nccl()?;
        let Device::Cuda(ordinal) = device else {
            return Err(Error::invalid(
                "nccl",
                format!("needs a CUDA device, got {device}"),
            ));
        };
        if rank >= world_size {
            return Err(Error::invalid(
                "nccl",
                format!("rank {rank} is not below the world size {world_size}"),
            ));
        }
        let dev = CudaDevice::get(ordinal)?;
        dev.bind().map_err(|e| dev.error("nccl", e))?;
        let unique = sys::ncclUniqueId {
            internal: id.0.map(|b| b as ::core::ffi::c_char),
        };
        let mut comm = std::ptr::null_mut();
        let count =
            |n: usize| i32::try_from(n).map_err(|_| Error::invalid("nccl", "too many ranks"));
        // SAFETY: `comm` is a valid out-pointer; the id came from ncclGetUniqueId.
        unsafe { result::comm_init_rank(&mut comm, count(world_size)?, unique, count(rank)?) }
            .map_err(|e| nccl_error("joining the group", e))?;
        Ok(NcclCommunicator {
            comm,
            dev,
            rank,
            world_size,
            timeout: Duration::from_secs(300),
            aborted: AtomicBool::new(false),
        })
    }

    /// The device pointer, element count and NCCL type of a contiguous CUDA tensor.
    fn buffer(&self, op: &'static str, t: &Tensor) -> Result<(u64, usize, sys::ncclDataType_t)> {
        if !t.is_contiguous() {
            return Err(Error::invalid(op, "needs a contiguous tensor"));
        }
        let dtype = match t.dtype() {
            DType::F32 => sys::ncclDataType_t::ncclFloat32,
            DType::F64 => sys::ncclDataType_t::ncclFloat64,
            DType::F16 => sys::ncclDataType_t::ncclFloat16,
            DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
            DType::I64 => sys::ncclDataType_t::ncclInt64,
        };
        match &*t.storage() {
            Storage::Cuda(s) if s.ordinal() == self.dev.ordinal() => {
                Ok((s.ptr_at(t.layout().offset()), t.elem_count(), dtype))
            }
            _ => Err(Error::DeviceMismatch {
                op,
                lhs: format!("cuda:{}", self.dev.ordinal()),
                rhs: t.device().to_string(),
            }),
        }
    }

    fn stream(&self) -> sys::cudaStream_t {
        self.dev.stream.cu_stream() as sys::cudaStream_t
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()> {
        let (ptr, n, dtype) = self.buffer("all_reduce", tensor)?;
        let op = match op {
            ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
            ReduceOp::Mean => sys::ncclRedOp_t::ncclAvg,
        };
        let buf = ptr as *mut ::core::ffi::c_void;
        // SAFETY: `buf` addresses `n` elements of `dtype` on this communicator's device,
        // kept alive by `tensor` until the stream has run the call (the caller holds it).
        unsafe { result::all_reduce(buf, buf, n, dtype, op, self.comm, self.stream()) }
            .map_err(|e| nccl_error("all_reduce", e))?;
        tensor.bump_version();
        Ok(())
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        let (ptr, n, dtype) = self.buffer("broadcast", tensor)?;
        let root = i32::try_from(root).map_err(|_| Error::invalid("broadcast", "bad root"))?;
        let buf = ptr as *mut ::core::ffi::c_void;
        // SAFETY: as in `all_reduce`.
        unsafe { result::broadcast(buf, buf, n, dtype, root, self.comm, self.stream()) }
            .map_err(|e| nccl_error("broadcast", e))?;
        tensor.bump_version();
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        // An all-reduce of one element, waited for: NCCL has no barrier of its own.
        let one = Tensor::ones(&[1], DType::F32, Device::Cuda(self.dev.ordinal()))?;
        self.all_reduce(&one, ReduceOp::Sum)?;
        self.dev.synchronize()
    }

    fn abort(&self, _why: &str) {
        if self.aborted.swap(true, Ordering::AcqRel) {
            return;
        }
        // SAFETY: the communicator is valid and aborted once; aborting makes the other
        // ranks' pending collectives fail.
        let _ = unsafe { result::comm_abort(self.comm) };
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Drop for NcclCommunicator {
    fn drop(&mut self) {
        if *self.aborted.get_mut() {
            return;
        }
        // SAFETY: the communicator was made by comm_init_rank and is destroyed once.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
