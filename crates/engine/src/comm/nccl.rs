//! Ranks as processes, one per GPU, through NVIDIA's NCCL: the GPU backend of
//! [`Communicator`]. NCCL is loaded at run time (`libnccl.so.2`, e.g. from PyPI's
//! `nvidia-nccl-cu13`), so a binary built with it still starts without it and says so
//! when a run asks for it.
//!
//! Rank 0 makes the group's id ([`NcclId::new`]); a [`Rendezvous`](super::Rendezvous)
//! hands it to every rank, and each rank joins with [`NcclCommunicator::join`].
//! Collectives are enqueued on the device's one stream, so they are ordered with the
//! kernels before and after them.
//!
//! NCCL itself waits forever for a rank that is gone. So each communicator has a
//! watchdog thread: when the newest collective has not completed after
//! [`Communicator::timeout`], it aborts the communicator, which ends the stuck kernels,
//! and the rank's next collective fails saying why.

use super::{Communicator, ReduceOp};
use crate::cuda::CudaDevice;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::{Device, Tensor};
use cudarc::driver::{sys as driver_sys, CudaEvent};
use cudarc::nccl::{result, sys};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a collective may take before the watchdog aborts the group.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(200);

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

/// The NCCL handle, shared with the watchdog thread (NCCL allows aborting a
/// communicator from another thread while this one waits on it).
struct Handle(sys::ncclComm_t);

// SAFETY: see `Handle`; the handle is destroyed only after the watchdog has stopped.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

/// What the communicator and its watchdog share.
struct Shared {
    comm: Handle,
    rank: usize,
    timeout: Duration,
    /// Set once aborted: an aborted communicator is freed by the abort, not destroyed.
    aborted: AtomicBool,
    /// Why it was aborted, for the rank's next collective.
    why: Mutex<Option<String>>,
    /// The newest collective not yet seen complete: its event, when and what.
    pending: Mutex<Option<(CudaEvent, Instant, &'static str)>>,
    /// Tells the watchdog to end.
    stop: AtomicBool,
}

impl Shared {
    /// Aborts the communicator once, keeping the first reason.
    fn abort(&self, why: String) {
        if self.aborted.swap(true, Ordering::AcqRel) {
            return;
        }
        *self.why.lock() = Some(why);
        // SAFETY: the communicator is valid and aborted once; aborting ends the pending
        // collectives of this rank and makes the other ranks' fail.
        let _ = unsafe { result::comm_abort(self.comm.0) };
    }

    /// An error when the communicator was aborted.
    fn check(&self, op: &str) -> Result<()> {
        match self.aborted.load(Ordering::Acquire) {
            false => Ok(()),
            true => Err(Error::Backend {
                backend: "nccl",
                msg: format!(
                    "{op}: rank {}'s communicator was aborted: {}",
                    self.rank,
                    self.why.lock().as_deref().unwrap_or("no reason given")
                ),
            }),
        }
    }

    /// The watchdog's loop: aborts when the pending collective is older than the
    /// timeout, until told to stop.
    fn watch(&self) {
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(WATCH_EVERY);
            let mut pending = self.pending.lock();
            let Some((event, since, op)) = pending.as_ref() else {
                continue;
            };
            if event.is_complete() {
                *pending = None;
            } else if since.elapsed() > self.timeout {
                let why = format!(
                    "{op} did not complete within {:?}: another rank is gone or stuck",
                    self.timeout
                );
                *pending = None;
                drop(pending);
                self.abort(why);
                return;
            }
        }
    }
}

/// One rank of an NCCL group, bound to one GPU.
pub struct NcclCommunicator {
    shared: Arc<Shared>,
    dev: Arc<CudaDevice>,
    world_size: usize,
    watchdog: Option<JoinHandle<()>>,
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
        let shared = Arc::new(Shared {
            comm: Handle(comm),
            rank,
            timeout: DEFAULT_TIMEOUT,
            aborted: AtomicBool::new(false),
            why: Mutex::new(None),
            pending: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let watched = shared.clone();
        let ctx = dev.stream.context().clone();
        let watchdog = std::thread::Builder::new()
            .name(format!("nccl-watchdog-{rank}"))
            .spawn(move || {
                // Event queries need the device's context on this thread.
                if ctx.bind_to_thread().is_ok() {
                    watched.watch();
                }
            })
            .map_err(|e| Error::invalid("nccl", format!("cannot start the watchdog: {e}")))?;
        Ok(NcclCommunicator {
            shared,
            dev,
            world_size,
            watchdog: Some(watchdog),
        })
    }

    /// Marks the collective just enqueued as pending for the watchdog.
    fn watch(&self, op: &'static str) -> Result<()> {
        let flags = Some(driver_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
        let event = self
            .dev
            .stream
            .record_event(flags)
            .map_err(|e| self.dev.error("nccl", e))?;
        *self.shared.pending.lock() = Some((event, Instant::now(), op));
        Ok(())
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

    fn comm(&self) -> sys::ncclComm_t {
        self.shared.comm.0
    }

    fn stream(&self) -> sys::cudaStream_t {
        self.dev.stream.cu_stream() as sys::cudaStream_t
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.shared.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()> {
        self.shared.check("all_reduce")?;
        let (ptr, n, dtype) = self.buffer("all_reduce", tensor)?;
        let op = match op {
            ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
            ReduceOp::Mean => sys::ncclRedOp_t::ncclAvg,
        };
        let buf = ptr as *mut ::core::ffi::c_void;
        // SAFETY: `buf` addresses `n` elements of `dtype` on this communicator's device,
        // kept alive by `tensor` until the stream has run the call (the caller holds it).
        unsafe { result::all_reduce(buf, buf, n, dtype, op, self.comm(), self.stream()) }
            .map_err(|e| nccl_error("all_reduce", e))?;
        self.watch("all_reduce")?;
        tensor.bump_version();
        Ok(())
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        self.shared.check("broadcast")?;
        let (ptr, n, dtype) = self.buffer("broadcast", tensor)?;
        let root = i32::try_from(root).map_err(|_| Error::invalid("broadcast", "bad root"))?;
        let buf = ptr as *mut ::core::ffi::c_void;
        // SAFETY: as in `all_reduce`.
        unsafe { result::broadcast(buf, buf, n, dtype, root, self.comm(), self.stream()) }
            .map_err(|e| nccl_error("broadcast", e))?;
        self.watch("broadcast")?;
        tensor.bump_version();
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        // An all-reduce of one element, waited for: NCCL has no barrier of its own.
        let one = Tensor::ones(&[1], DType::F32, Device::Cuda(self.dev.ordinal()))?;
        self.all_reduce(&one, ReduceOp::Sum)?;
        self.dev.synchronize()?;
        self.shared.check("barrier")
    }

    fn abort(&self, why: &str) {
        self.shared.abort(why.to_string());
    }

    fn timeout(&self) -> Duration {
        self.shared.timeout
    }
}

impl Drop for NcclCommunicator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        if self.shared.aborted.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the communicator was made by comm_init_rank, the watchdog that
        // shared it has ended, and it is destroyed once.
        let _ = unsafe { result::comm_destroy(self.shared.comm.0) };
    }
}
