//! One CUDA device: its context, stream, cuBLAS and cuBLASLt handles, compiled kernel modules and
//! memory cache. Devices are opened once per process and kept in a registry, so that a
//! `Device::Cuda(ordinal)` (a plain value) finds its state.

use super::alloc::{self, Cache, MemoryStats};
use super::kernels;
use super::lt::Lt;
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

/// The state of one opened device.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    /// The one stream all work of the device runs on, in order.
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    /// cuBLASLt for linear layers' bias epilogue, where the library is present.
    pub(crate) lt: Option<Lt>,
    /// NVRTC target, e.g. `sm_90`.
    arch: String,
    /// Streaming multiprocessors.
    sm_count: usize,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    pub(crate) cache: Mutex<Cache>,
}

static REGISTRY: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
static POISON: AtomicBool = AtomicBool::new(false);
static TF32: AtomicBool = AtomicBool::new(false);
static FUSED_ATTENTION: AtomicBool = AtomicBool::new(true);
static HALF_GRADIENT_EPILOGUES: AtomicBool = AtomicBool::new(false);
static SINGLE_PASS_ATTENTION_BACKWARD: AtomicBool = AtomicBool::new(false);
static HOPPER_ATTENTION: AtomicU8 = AtomicU8::new(HopperAttention::Off as u8);

/// Fills every newly allocated output buffer with NaN bits (0xFF bytes) before a kernel
/// writes it, so that an element a kernel forgets to write shows up in tests. Also on
/// when the environment variable `TWINFLOW_CUDA_POISON=1` is set at the first device open.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

pub(crate) fn poison() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// Lets f32 matrix products use TF32 tensor cores (about 10 bits of mantissa in the
/// products, as PyTorch's `allow_tf32`); off by default.
pub fn set_allow_tf32(on: bool) {
    TF32.store(on, Ordering::Relaxed);
}

pub(crate) fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// Lets attention run on the fused kernels (`kernels/flash_attention.cu`) wherever they
/// cover the call; on by default. Off, every call takes the unfused path (cuBLAS
/// products and row kernels, holding the b·h·tq·tk probabilities), as f64 and other
/// head dims always do: for comparing the two (`benches/cuda.rs`) and for debugging.
/// Both store the same output and log-sum-exp, so a backward may take the other path
/// than its forward.
pub fn set_fused_attention(on: bool) {
    FUSED_ATTENTION.store(on, Ordering::Relaxed);
}

pub(crate) fn fused_attention() -> bool {
    FUSED_ATTENTION.load(Ordering::Relaxed)
}

/// Lets bf16/f16 backward products use cuBLASLt's gradient epilogues (`BGRADB`: a
/// weight gradient with its bias gradient; `DGELU_BGRAD`: the product through GELU's
/// derivative with the bias gradient); off by default. In the bf16 DiT-S/2 step on an
/// H200 (2026-12-04, `docs/gpu-runs/2026-12-04-h200-6db19d3.md`) their products ran at
/// about 200 TFLOP/s (`BGRADB`, the weight gradients: a long inner dimension and few
/// output tiles, where the plain path's products split k) and 82 (`DGELU_BGRAD`),
/// against 436 for all the step's products on the plain path in the run before they
/// were built (`docs/gpu-runs/2026-12-04-h200-1bcbd5e.md`).
/// f32 keeps `BGRADB` (its step was no slower with it). For comparing the two
/// (`benches/cuda.rs`).
pub fn set_half_gradient_epilogues(on: bool) {
    HALF_GRADIENT_EPILOGUES.store(on, Ordering::Relaxed);
}

pub(crate) fn half_gradient_epilogues() -> bool {
    HALF_GRADIENT_EPILOGUES.load(Ordering::Relaxed)
}

/// Lets the bf16/f16 fused attention backward run in one pass over the scores
/// (`fa_bwd` in `kernels/flash_attention.cu`: dK and dV per key block, each query
/// tile's share of dQ added to an f32 buffer per split of the key blocks, the splits
/// summed in order; results the same every run) instead of two (a dQ kernel and a dK/dV
/// kernel, each recomputing the scores: seven tile products a tile pair against five);
/// off by default until it has run on a GPU (`tests/cuda_flash_attention.rs` checks
/// it against the CPU, `benches/cuda.rs` times it beside the two-kernel backward). f32
/// always takes the two kernels.
pub fn set_single_pass_attention_backward(on: bool) {
    SINGLE_PASS_ATTENTION_BACKWARD.store(on, Ordering::Relaxed);
}

pub(crate) fn single_pass_attention_backward() -> bool {
    SINGLE_PASS_ATTENTION_BACKWARD.load(Ordering::Relaxed)
}

/// Which forward the bf16/f16 fused attention at head dims 64 and 128 runs on sm_90
/// cards (H100, H200): [`set_hopper_attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HopperAttention {
    /// The forward of every card (`mma.sync`, FlashAttention-2 style); the default.
    Off,
    /// Hopper's warpgroup MMAs (`wgmma`) reading both products' operands from
    /// 128-byte-swizzled shared tiles, two warpgroups of 64 query rows a block, key
    /// tiles of 128, every thread copying the tiles with `cp.async` and a block barrier
    /// a tile (`fa_fwd_sm90` in `kernels/flash_attention_sm90.cu`).
    CpAsync,
    /// The same MMAs with the tiles brought by the copy unit (TMA) on the orders of a
    /// producer warpgroup, through stages with barriers of their own, so that the two
    /// warpgroups never wait for each other (`fa_fwd_tma`); inputs a tensor map cannot
    /// describe (a broadcast over heads, say) take `CpAsync`.
    Tma,
    /// `Tma` with the two warpgroups taking turns at issuing their MMAs (named barriers),
    /// so that one's softmax runs while the other's MMAs do (`fa_fwd_tma_pp`).
    TmaPingPong,
}

/// Sets the forward the fused attention runs on sm_90 cards for bf16/f16 at head dims 64
/// and 128 (other cards, dtypes and head dims always take the forward of every card).
/// Each writes the same output and log-sum-exp. With any of them on, the two-kernel
/// backward runs on warpgroup MMAs too (`fa_dq_sm90` and `fa_dkdv_sm90`: two warpgroups
/// of 64 query rows or keys, 64-row tiles of the other side copied with `cp.async`); the
/// single-pass backward and other cards keep theirs. `Off`
/// by default until the Hopper kernels have run on a GPU (`tests/cuda_flash_attention.rs`
/// checks each against the CPU, `benches/cuda.rs` times each beside the other forward
/// and PyTorch's flash SDPA).
pub fn set_hopper_attention(mode: HopperAttention) {
    HOPPER_ATTENTION.store(mode as u8, Ordering::Relaxed);
}

pub(crate) fn hopper_attention() -> HopperAttention {
    match HOPPER_ATTENTION.load(Ordering::Relaxed) {
        x if x == HopperAttention::CpAsync as u8 => HopperAttention::CpAsync,
        x if x == HopperAttention::Tma as u8 => HopperAttention::Tma,
        x if x == HopperAttention::TmaPingPong as u8 => HopperAttention::TmaPingPong,
        _ => HopperAttention::Off,
    }
}

/// True when the CUDA driver library can be loaded (a GPU may still be absent).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

fn open_error(ordinal: usize, msg: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: format!("cannot open device {ordinal}: {msg}"),
    }
}

impl CudaDevice {
    /// The device `ordinal`, opened on first use.
    pub(crate) fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let registry = REGISTRY.get_or_init(Default::default);
        let mut devices = registry.lock();
        if let Some(dev) = devices.get(&ordinal) {
            return Ok(dev.clone());
        }
        let dev = Arc::new(CudaDevice::open(ordinal)?);
        devices.insert(ordinal, dev.clone());
        Ok(dev)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        if !driver_present() {
            return Err(open_error(
                ordinal,
                "the CUDA driver library (libcuda.so) is not installed",
            ));
        }
        if !kernels::nvrtc_present() {
            return Err(open_error(
                ordinal,
                "NVRTC (libnvrtc.so.13) is not on the loader path",
            ));
        }
        let count = CudaContext::device_count().map_err(|e| open_error(ordinal, e))?;
        if ordinal >= count.max(0) as usize {
            return Err(open_error(
                ordinal,
                format!("{count} CUDA device(s) present"),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| open_error(ordinal, e))?;
        // One stream and buffers reused in stream order: cudarc's per-buffer events
        // are not needed.
        // SAFETY: no CudaSlice of this context exists yet.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| open_error(ordinal, e))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| open_error(ordinal, e))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| open_error(ordinal, e))?;
        let lt = Lt::open(&stream);
        if std::env::var("TWINFLOW_CUDA_POISON").is_ok_and(|v| v == "1") {
            set_poison(true);
        }
        Ok(CudaDevice {
            ordinal,
            ctx,
            stream,
            blas,
            lt,
            arch: format!("sm_{major}{minor}"),
            sm_count: sm_count.max(1) as usize,
            modules: Mutex::default(),
            functions: Mutex::default(),
            cache: Mutex::default(),
        })
    }

    /// The device's ordinal.
    pub(crate) fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's architecture, `sm_<major><minor>`.
    pub(crate) fn arch(&self) -> &str {
        &self.arch
    }

    /// The device's streaming multiprocessors.
    pub(crate) fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Makes the device's context current on this thread (driver calls need it).
    pub(crate) fn bind(&self) -> std::result::Result<(), DriverError> {
        self.ctx.bind_to_thread()
    }

    /// A driver failure as the engine's error, naming the op.
    pub(crate) fn error(&self, op: &str, e: impl std::fmt::Display) -> Error {
        Error::Backend {
            backend: "cuda",
            msg: format!("{op} on cuda:{}: {e}", self.ordinal),
        }
    }

    /// Kernel `name` of kernel file `file`, compiled on first use.
    pub(crate) fn function(&self, file: &'static str, name: &str) -> Result<CudaFunction> {
        let key = format!("{file}/{name}");
        if let Some(f) = self.functions.lock().get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(file)?;
        let f = module
            .load_function(name)
            .map_err(|e| self.error(name, format!("kernel {key}: {e}")))?;
        self.functions.lock().insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock();
        if let Some(m) = modules.get(file) {
            return Ok(m.clone());
        }
        let arch = kernels::target(file, &self.arch).ok_or_else(|| {
            let why = format!("kernel file {file}.cu is not built for {}", self.arch);
            self.error("load_module", why)
        })?;
        let compiled = kernels::compile(file, &arch)?;
        let module = self
            .ctx
            .load_module(Ptx::from_src(compiled.ptx))
            .map_err(|e| self.error("load_module", format!("{file}.cu: {e}")))?;
        modules.insert(file, module.clone());
        Ok(module)
    }

    /// Waits for all queued work of the device.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.error("synchronize", e))
    }

    /// The memory counters.
    pub(crate) fn memory_stats(&self) -> MemoryStats {
        self.cache.lock().stats
    }

    /// Frees the cached (unused) buffers.
    pub(crate) fn empty_cache(&self) -> Result<()> {
        alloc::free_all(self, &mut self.cache.lock()).map_err(|e| self.error("empty_cache", e))
    }
}
