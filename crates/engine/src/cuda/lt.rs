//! Linear layers through cuBLASLt's bias epilogue: `out = a·b + bias` in one kernel,
//! where [`super::matmul`] would first copy the broadcast bias into the output and run
//! the product with β = 1 (one more write and read of the output). Used for 2-D
//! products of f32, bf16 and f16 whose four pointers are 256-byte aligned (what the
//! heuristics assume by default); anything else, or any cuBLASLt failure, takes the
//! plain cuBLAS path. `TWINFLOW_CUBLASLT=0` turns it off.
//!
//! The descriptors and the algorithm the heuristics pick are kept per shape: only the
//! pointers change between the calls of a training step.

use super::device::{tf32, CudaDevice};
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

/// What a plan depends on: the dtype, the column-major shape (m × n = k-sums of the
/// swapped product) and how each operand is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dtype: DType,
    tf32: bool,
    m: usize,
    n: usize,
    k: usize,
    a: (bool, usize),
    b: (bool, usize),
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

    /// `out (row-major m × n) = a·b + bias` (bias: `n` contiguous elements), or `false`
    /// when this path does not take the product (the caller then runs the plain one).
    pub(crate) fn linear(
        &self,
        dev: &CudaDevice,
        (a, b): (&Operand, &Operand),
        bias: u64,
        out: u64,
    ) -> bool {
        let dtype = a.dtype;
        let fits = matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
            && b.dtype == dtype
            && [a.ptr, b.ptr, bias, out].iter().all(|p| p % ALIGN == 0);
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
        };
        // The heuristics query the current device.
        if dev.bind().is_err() {
            return false;
        }
        let mut plans = self.plans.lock();
        // A shape cuBLASLt has no algorithm for is remembered as such, not retried.
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Plan::new(self, key, bias).ok()),
        };
        let Some(plan) = plan else {
            return false;
        };
        self.run(dev, plan, (b.ptr, a.ptr), bias, out).is_ok()
    }

    fn run(
        &self,
        dev: &CudaDevice,
        plan: &Plan,
        (pa, pb): (u64, u64),
        bias: u64,
        out: u64,
    ) -> Result<(), CublasError> {
        let (alpha, beta) = (1f32, 0f32);
        let (ws, _sync) = self.workspace.device_ptr(&dev.stream);
        // SAFETY: the plan's layouts describe the buffers behind the pointers (checked
        // by the caller's operands), all of them 256-byte aligned; the bias holds one
        // element per output column; f32 scalars match the descriptor's scale type.
        unsafe {
            set_desc(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias,
            )?;
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
    /// Descriptors for `key` with the bias epilogue, and the heuristics' best algorithm
    /// (asked with this call's `bias` pointer set, as cudarc's own wrapper does; each
    /// call sets its own).
    fn new(lt_: &Lt, key: Key, bias: u64) -> Result<Plan, CublasError> {
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
        let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
        // SAFETY: attributes of a live descriptor, each given a value of its type.
        unsafe {
            use sys::cublasLtMatmulDescAttributes_t as A;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &op(key.a.0))?;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &op(key.b.0))?;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
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
