//! Products with cuBLASLt's epilogues, each in one kernel:
//!
//! - `out = a·b + bias`, linear layers, where [`super::matmul`] would first copy the
//!   broadcast bias into the output and run the product with β = 1 (one more write and
//!   read of the output);
//! - `out = gelu_tanh(a·b (+ bias))`, keeping `a·b (+ bias)` beside it for a backward
//!   (the first layer of a GELU feed-forward block, `ops/mlp.rs`);
//! - `out = (a·b) ∘ gelu_tanh'(pre)`, with the column sums of `out` (the bias gradient)
//!   beside it (that block's backward);
//! - `out = a·b` with the sums of `a`'s rows beside it (a weight gradient with its bias
//!   gradient).
//!
//! Used for 2-D products of f32, bf16 and f16 (the GELU epilogues for bf16 and f16 only,
//! the two gradient epilogues for bf16 and f16 only when
//! [`super::set_half_gradient_epilogues`] asks for them)
//! whose pointers are 256-byte aligned (what the heuristics assume by default); anything
//! else, or any cuBLASLt failure, takes the plain path (cuBLAS and our own kernels).
//! `TWINFLOW_CUBLASLT=0` turns it off.
//!
//! The descriptors and the algorithm the heuristics pick are kept per shape: only the
//! pointers change between the calls of a training step.

use super::device::{half_gradient_epilogues, tf32, CudaDevice};
use super::matmul::Operand;
use crate::dtype::DType;
use cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, DevicePtr};
use parking_lot::Mutex;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

/// Workspace the heuristics may use (NVIDIA's recommendation for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;
/// Alignment every pointer must have for the cached plans to be valid.
const ALIGN: u64 = 256;

/// A device's cuBLASLt handle, workspace and plans.
pub(crate) struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<Key, Option<Plan>>>,
}

// SAFETY: the handle is used only under the device's one stream, in stream order, and
// the plans behind a mutex; cuBLASLt handles may be used from any thread.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

/// What a product does to its result in the same kernel. In cuBLASLt's column-major
/// terms our row-major output is `outᵀ`: a bias is one value per output column (per
/// row of cuBLASLt's D), and a bias gradient sums each output column over the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    /// `out = a·b + bias`.
    Bias,
    /// `out = gelu_tanh(a·b (+ bias))`, and `pre = a·b (+ bias)` when `keep_pre`.
    Gelu { bias: bool, keep_pre: bool },
    /// `out = (a·b) ∘ gelu_tanh'(pre)`, and `bias = Σ_rows out` when `bias_grad`.
    GeluGrad { bias_grad: bool },
    /// `out = a·b`, and `bias = Σ_k a[·, k]`, one sum per output row: a weight
    /// gradient `gᵀ·x` with the bias gradient `Σ_rows g` of the same `g`.
    LhsSums,
}

impl Epilogue {
    fn value(self) -> sys::cublasLtEpilogue_t {
        use sys::cublasLtEpilogue_t as E;
        match self {
            Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::Gelu { bias, keep_pre } => match (bias, keep_pre) {
                (false, false) => E::CUBLASLT_EPILOGUE_GELU,
                (true, false) => E::CUBLASLT_EPILOGUE_GELU_BIAS,
                (false, true) => E::CUBLASLT_EPILOGUE_GELU_AUX,
                (true, true) => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            },
            Epilogue::GeluGrad { bias_grad: false } => E::CUBLASLT_EPILOGUE_DGELU,
            Epilogue::GeluGrad { bias_grad: true } => E::CUBLASLT_EPILOGUE_DGELU_BGRAD,
            // cuBLASLt's B is our left operand (see `product`).
            Epilogue::LhsSums => E::CUBLASLT_EPILOGUE_BGRADB,
        }
    }

    /// Whether the epilogue reads or writes a bias vector.
    fn uses_bias(self) -> bool {
        match self {
            Epilogue::Bias => true,
            Epilogue::Gelu { bias, .. } => bias,
            Epilogue::GeluGrad { bias_grad } => bias_grad,
            Epilogue::LhsSums => true,
        }
    }

    /// Whether the epilogue reads or writes the pre-activation (cuBLASLt's aux matrix).
    fn uses_pre(self) -> bool {
        match self {
            Epilogue::Bias | Epilogue::LhsSums => false,
            Epilogue::Gelu { keep_pre, .. } => keep_pre,
            Epilogue::GeluGrad { .. } => true,
        }
    }
}

/// The vectors and matrices an epilogue reads or writes beside the output (0 where it
/// takes none): the bias or bias gradient (one element per output column; per output
/// row for [`Epilogue::LhsSums`]) and the pre-activation (laid out like the output).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extras {
    pub bias: u64,
    pub pre: u64,
}

/// What a plan depends on: the dtype, the column-major shape (m × n = k-sums of the
/// swapped product), how each operand is read, and the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dtype: DType,
    tf32: bool,
    m: usize,
    n: usize,
    k: usize,
    a: (bool, usize),
    b: (bool, usize),
    epilogue: Epilogue,
}

/// Descriptors and the chosen algorithm for one [`Key`].
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by `Plan::new` (null where its creation failed) and destroyed
        // once, here. Failures to free are ignored: nothing can be done about them here.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts.into_iter().filter(|l| !l.is_null()) {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

impl Lt {
    /// cuBLASLt for `dev`, or `None` where the library is missing, turned off, or fails
    /// to start (the plain cuBLAS path then serves every product).
    pub(crate) fn open(dev_stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> Option<Lt> {
        if std::env::var("TWINFLOW_CUBLASLT").is_ok_and(|v| v == "0") {
            return None;
        }
        // SAFETY: only tries to load the library.
        if !unsafe { sys::is_culib_present() } {
            return None;
        }
        dev_stream.context().bind_to_thread().ok()?;
        let handle = lt::create_handle().ok()?;
        // SAFETY: the workspace is only handed to cuBLASLt, never read.
        match unsafe { dev_stream.alloc::<u8>(WORKSPACE_BYTES) } {
            Ok(workspace) => Some(Lt {
                handle,
                workspace,
                plans: Mutex::default(),
            }),
            Err(_) => {
                // SAFETY: created above, not used elsewhere.
                let _ = unsafe { lt::destroy_handle(handle) };
                None
            }
        }
    }

    /// `out` (row-major m × n, contiguous) = `a·b` with `epilogue` applied, reading or
    /// writing `extras` (see [`Epilogue`]; vectors of `n` contiguous elements, matrices
    /// laid out like `out`), or `false` when this path does not take the product (the
    /// caller then runs the plain one).
    pub(crate) fn product(
        &self,
        dev: &CudaDevice,
        (a, b): (&Operand, &Operand),
        (epilogue, extras): (Epilogue, Extras),
        out: u64,
    ) -> bool {
        let dtype = a.dtype;
        let half = matches!(dtype, DType::BF16 | DType::F16);
        let float = match epilogue {
            Epilogue::Bias => dtype == DType::F32 || half,
            // The gradient epilogues of 16-bit products only when asked for (see
            // `set_half_gradient_epilogues`: slower than the plain path on an H200).
            Epilogue::LhsSums => dtype == DType::F32 || (half && half_gradient_epilogues()),
            Epilogue::GeluGrad { .. } => half && half_gradient_epilogues(),
            // cuBLASLt does not document how it evaluates GELU's tanh: it is used where
            // a 16-bit output's rounding covers any difference, and f32 keeps our
            // kernels (the CPU op's formula).
            Epilogue::Gelu { .. } => half,
        };
        let pointers = [
            Some(a.ptr),
            Some(b.ptr),
            Some(out),
            epilogue.uses_bias().then_some(extras.bias),
            epilogue.uses_pre().then_some(extras.pre),
        ];
        // The pre-activation's rows (cuBLASLt's aux columns) must start 8 elements apart.
        let pre_fits = !epilogue.uses_pre() || b.cols % 8 == 0;
        let fits = float
            && b.dtype == dtype
            && pre_fits
            && pointers.iter().flatten().all(|p| p % ALIGN == 0);
        let (Some(ra), Some(rb)) = (a.blas(), b.blas()) else {
            return false;
        };
        if !fits || a.rows == 0 || b.cols == 0 || a.cols == 0 {
            return false;
        }
        // The row-major product as the column-major outᵀ (n × m) = bᵀ·aᵀ, as in
        // `matmul::gemm`: cuBLASLt's A is our b, its B our a.
        let key = Key {
            dtype,
            tf32: dtype == DType::F32 && tf32(),
            m: b.cols,
            n: a.rows,
            k: a.cols,
            a: (rb.0 == CUBLAS_OP_T, rb.1),
            b: (ra.0 == CUBLAS_OP_T, ra.1),
            epilogue,
        };
        // The heuristics query the current device.
        if dev.bind().is_err() {
            return false;
        }
        let mut plans = self.plans.lock();
        // A shape cuBLASLt has no algorithm for is remembered as such, not retried.
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Plan::new(self, key, extras).ok()),
        };
        let Some(plan) = plan else {
            return false;
        };
        self.run(dev, plan, (b.ptr, a.ptr), (epilogue, extras), out)
            .is_ok()
    }

    fn run(
        &self,
        dev: &CudaDevice,
        plan: &Plan,
        (pa, pb): (u64, u64),
        (epilogue, extras): (Epilogue, Extras),
        out: u64,
    ) -> Result<(), CublasError> {
        let (alpha, beta) = (1f32, 0f32);
        let (ws, _sync) = self.workspace.device_ptr(&dev.stream);
        // SAFETY: the plan's layouts describe the buffers behind the pointers (checked
        // by the caller's operands), all of them 256-byte aligned; the bias holds one
        // element per output column, the pre-activation one per output element; f32
        // scalars match the descriptor's scale type.
        unsafe {
            set_pointers(plan.desc, epilogue, extras)?;
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                pa as *const c_void,
                plan.layouts[0],
                pb as *const c_void,
                plan.layouts[1],
                out as *const c_void,
                plan.layouts[2],
                out as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                dev.stream.cu_stream() as sys::cudaStream_t,
            )
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.lock().clear();
        // SAFETY: created by `Lt::open`, destroyed once, after its plans.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Plan {
    /// Descriptors for `key` with its epilogue, and the heuristics' best algorithm
    /// (asked with this call's `extras` pointers set, as cudarc's own wrapper does with
    /// the bias; each call sets its own).
    fn new(lt_: &Lt, key: Key, extras: Extras) -> Result<Plan, CublasError> {
        let ty = data_type(key.dtype);
        let compute = match key.tf32 {
            true => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            false => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType_t::CUDA_R_32F)?;
        // Owned from here on, so that a failure below frees what was made.
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // Stored matrices: cuBLASLt's A is (m × k, or k × m transposed), B is (k × n,
        // or n × k), both column-major with the operands' leading dimensions.
        let stored = |(t, ld): (bool, usize), rows: usize, cols: usize| match t {
            false => lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64),
            true => lt::create_matrix_layout(ty, cols as u64, rows as u64, ld as i64),
        };
        plan.layouts[0] = stored(key.a, key.m, key.k)?;
        plan.layouts[1] = stored(key.b, key.k, key.n)?;
        plan.layouts[2] = lt::create_matrix_layout(ty, key.m as u64, key.n as u64, key.m as i64)?;
        let [la, lb, lc] = plan.layouts;
        // cublasOperation_t as the attribute takes it: 0 = N, 1 = T.
        let op = |t: bool| t as i32;
        // SAFETY: attributes of a live descriptor, each given a value of its type.
        unsafe {
            use sys::cublasLtMatmulDescAttributes_t as A;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &op(key.a.0))?;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &op(key.b.0))?;
            set_desc(
                desc,
                A::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &key.epilogue.value(),
            )?;
            if key.epilogue.uses_pre() {
                // The pre-activation is laid out like D: column-major, m rows.
                let ld = key.m as i64;
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld)?;
            }
            set_pointers(desc, key.epilogue, extras)?;
        }
        let pref = lt::create_matmul_pref()?;
        // SAFETY: a live preference, given its workspace limit; freed right after use.
        let heuristic = unsafe {
            let size = WORKSPACE_BYTES;
            let attr =
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
            let set = lt::set_matmul_pref_attribute(
                pref,
                attr,
                &size as *const usize as *const c_void,
                size_of::<usize>(),
            );
            let found = set.and_then(|()| {
                lt::get_matmul_algo_heuristic(lt_.handle, desc, la, lb, lc, lc, pref)
            });
            let _ = lt::destroy_matmul_pref(pref);
            found?
        };
        plan.algo = heuristic.algo;
        Ok(plan)
    }
}

/// Sets the bias and pre-activation pointers `epilogue` takes.
///
/// # Safety
/// `desc` must be live.
unsafe fn set_pointers(
    desc: sys::cublasLtMatmulDesc_t,
    epilogue: Epilogue,
    extras: Extras,
) -> Result<(), CublasError> {
    use sys::cublasLtMatmulDescAttributes_t as A;
    if epilogue.uses_bias() {
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &extras.bias)?;
    }
    if epilogue.uses_pre() {
        set_desc(
            desc,
            A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
            &extras.pre,
        )?;
    }
    Ok(())
}

/// Sets descriptor attribute `attr` to `value`.
///
/// # Safety
/// `desc` must be live and `T` the attribute's type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), CublasError> {
    lt::set_matmul_desc_attribute(
        desc,
        attr,
        value as *const T as *const c_void,
        size_of::<T>(),
    )
}

fn data_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
        _ => sys::cudaDataType_t::CUDA_R_32F,
    }
}
