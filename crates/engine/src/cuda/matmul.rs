//! Matrix products through cuBLAS (`cublasGemmStridedBatchedEx`, f32 accumulation;
//! TF32 only after [`super::set_allow_tf32`]). Row-major products are computed as the
//! column-major Cᵀ = Bᵀ·Aᵀ; transposed operands are passed as such (no copy), and
//! broadcast batch dims as batch stride 0. Only views that cuBLAS cannot describe (no
//! unit stride, or batch dims that do not merge into one stride) are copied first.

use super::device::{tf32, CudaDevice};
use super::elementwise::copy_strided;
use super::lt::{Epilogue, Extras};
use super::{CudaStorage, Dense};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use cudarc::cublas::{result as blas, sys};
use std::ffi::c_void;

/// One operand of a batched product: `batch` matrices of `rows × cols` at `ptr`, with
/// row stride `rs`, column stride `cs` and `batch_stride` between matrices (elements).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand {
    pub ptr: u64,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
    pub batch_stride: usize,
}

impl Operand {
    /// Contiguous row-major matrices.
    pub(crate) fn dense(ptr: u64, dtype: DType, rows: usize, cols: usize) -> Self {
        Operand {
            ptr,
            dtype,
            rows,
            cols,
            rs: cols,
            cs: 1,
            batch_stride: rows * cols,
        }
    }

    /// The transposed matrices (a view, nothing moves).
    pub(crate) fn t(self) -> Self {
        Operand {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// How cuBLAS reads the matrix: (`N`, ld) when it is row-major with leading
    /// dimension ld (cuBLAS then sees its transpose, as the swapped product wants), (`T`,
    /// ld) when column-major; `None` when neither.
    pub(crate) fn blas(&self) -> Option<(sys::cublasOperation_t, usize)> {
        let (r, c) = (self.rows, self.cols);
        if (self.cs == 1 || c == 1) && (r == 1 || self.rs >= c.max(1)) {
            let ld = if r == 1 { c.max(1) } else { self.rs };
            return Some((sys::cublasOperation_t::CUBLAS_OP_N, ld));
        }
        if (self.rs == 1 || r == 1) && (c == 1 || self.cs >= r.max(1)) {
            let ld = if c == 1 { r.max(1) } else { self.cs };
            return Some((sys::cublasOperation_t::CUBLAS_OP_T, ld));
        }
        None
    }
}

fn data_type(dtype: DType) -> Result<sys::cudaDataType> {
    Ok(match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F64 => sys::cudaDataType::CUDA_R_64F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::I64 => return Err(Error::dtypes("matmul", &[dtype])),
    })
}

fn int(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("size {v} is too large for cuBLAS")))
}

/// `c = alpha·a·b + beta·c` for `batch` products; `c` is contiguous row-major
/// `[batch, m, n]` of `c_dtype`. `a` and `b` share a dtype; both must be describable
/// (see [`Operand`]).
pub(crate) fn gemm(
    dev: &CudaDevice,
    op: &'static str,
    (a, b): (&Operand, &Operand),
    (c, c_dtype): (u64, DType),
    batch: usize,
    (alpha, beta): (f64, f64),
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let fail = || Error::invalid(op, "operand strides cuBLAS cannot read");
    let ((op_a, lda), (op_b, ldb)) = (a.blas().ok_or_else(fail)?, b.blas().ok_or_else(fail)?);
    let compute = match (a.dtype, tf32()) {
        (DType::F64, _) => sys::cublasComputeType_t::CUBLAS_COMPUTE_64F,
        (DType::F32, true) => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    };
    let (alpha32, beta32) = (alpha as f32, beta as f32);
    let (pa, pb): (*const c_void, *const c_void) = match a.dtype {
        DType::F64 => (&alpha as *const f64 as _, &beta as *const f64 as _),
        _ => (&alpha32 as *const f32 as _, &beta32 as *const f32 as _),
    };
    dev.bind().map_err(|e| dev.error(op, e))?;
    // SAFETY: pointers address live buffers holding `batch` matrices of the described
    // shapes and strides (checked by `blas`); alpha/beta match the compute type.
    unsafe {
        blas::gemm_strided_batched_ex(
            *dev.blas.handle(),
            op_b,
            op_a,
            int(op, n)?,
            int(op, m)?,
            int(op, k)?,
            pa,
            b.ptr as *const c_void,
            data_type(b.dtype)?,
            int(op, ldb)?,
            b.batch_stride as i64,
            a.ptr as *const c_void,
            data_type(a.dtype)?,
            int(op, lda)?,
            a.batch_stride as i64,
            pb,
            c as *mut c_void,
            data_type(c_dtype)?,
            int(op, n.max(1))?,
            (m * n) as i64,
            int(op, batch)?,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| dev.error(op, e))
}

/// The batch dims of a `[batch..., r, c]` view merged into one stride, if they merge.
fn batch_stride(l: &Layout) -> Option<usize> {
    let r = l.rank();
    let mut merged: Option<(usize, usize)> = None; // (size, stride) of the merged dims
    for d in 0..r - 2 {
        let (n, s) = (l.shape()[d], l.strides()[d]);
        merged = match merged {
            _ if n == 1 => merged,
            None => Some((n, s)),
            Some((m, prev)) if prev == s * n => Some((m * n, s)),
            Some(_) => return None,
        };
    }
    Some(merged.map_or(0, |(_, s)| s))
}

/// The matrices of a view as a cuBLAS operand; a copy when the view does not fit.
fn operand(x: &CudaStorage, l: &Layout) -> Result<Readable> {
    let r = l.rank();
    let (rows, cols) = (l.shape()[r - 2], l.shape()[r - 1]);
    let view = batch_stride(l).map(|batch_stride| Operand {
        ptr: x.ptr_at(l.offset()),
        dtype: x.dtype,
        rows,
        cols,
        rs: l.strides()[r - 2],
        cs: l.strides()[r - 1],
        batch_stride,
    });
    match view {
        Some(v) if v.blas().is_some() => Ok((v, None)),
        _ => {
            let copy = copy_strided(x, l)?;
            let v = Operand::dense(copy.ptr(), x.dtype, rows, cols);
            let keep = Dense {
                ptr: copy.ptr(),
                _copy: Some(copy),
            };
            Ok((v, Some(keep)))
        }
    }
}

/// An operand as cuBLAS reads it, with the copy it needed if any (kept alive while
/// the operand is in use).
type Readable = (Operand, Option<Dense>);

/// The operands of one product (the batch dims, shared by both views, all 1) of
/// non-empty matrices as cuBLASLt takes them; `None` for anything else.
fn single_product(
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> Result<Option<[Readable; 2]>> {
    let r = la.rank();
    let single =
        la.shape()[..r - 2].iter().all(|&d| d == 1) && la.elem_count() > 0 && lb.elem_count() > 0;
    if !single {
        return Ok(None);
    }
    Ok(Some([operand(a, la)?, operand(b, lb)?]))
}

/// Where a bias view that is one contiguous vector broadcast down the rows starts;
/// `None` for any other view.
fn bias_vector((s, l): (&CudaStorage, &Layout)) -> Option<u64> {
    let (r, strides) = (l.rank(), l.strides());
    let vector = strides[r - 1] == 1 && strides[..r - 1].iter().all(|&st| st == 0);
    vector.then(|| s.ptr_at(l.offset()))
}

/// A single product with a bias vector through cuBLASLt's bias epilogue (see
/// [`super::lt`]), or `None` when that path does not take it.
fn linear_by_epilogue(
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
) -> Result<Option<CudaStorage>> {
    let (Some(bias), Some(lt)) = (bias.and_then(bias_vector), a.0.dev().lt.as_ref()) else {
        return Ok(None);
    };
    let Some([(oa, _keep_a), (ob, _keep_b)]) = single_product(a, b)? else {
        return Ok(None);
    };
    let out = CudaStorage::alloc(a.0.dev(), oa.rows * ob.cols, a.0.dtype)?;
    let extras = Extras { bias, pre: 0 };
    let taken = lt.product(a.0.dev(), (&oa, &ob), (Epilogue::Bias, extras), out.ptr());
    Ok(taken.then_some(out))
}

/// `gelu_tanh(a·b (+ bias))` of a single product through cuBLASLt's GELU epilogue,
/// with the pre-activation `a·b (+ bias)` beside it when `keep_pre`: `(pre, act)`, or
/// `None` when that path does not take the product (see [`super::lt`]).
pub(crate) fn linear_gelu(
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
    keep_pre: bool,
) -> Result<Option<(Option<CudaStorage>, CudaStorage)>> {
    let dev = a.0.dev();
    let Some(lt) = dev.lt.as_ref() else {
        return Ok(None);
    };
    let bias_ptr = match bias.map(bias_vector) {
        Some(None) => return Ok(None),
        found => found.flatten().unwrap_or(0),
    };
    let Some([(oa, _keep_a), (ob, _keep_b)]) = single_product(a, b)? else {
        return Ok(None);
    };
    let n = oa.rows * ob.cols;
    let act = CudaStorage::alloc(dev, n, a.0.dtype)?;
    let pre = keep_pre
        .then(|| CudaStorage::alloc(dev, n, a.0.dtype))
        .transpose()?;
    let epilogue = Epilogue::Gelu {
        bias: bias.is_some(),
        keep_pre,
    };
    let extras = Extras {
        bias: bias_ptr,
        pre: pre.as_ref().map_or(0, |p| p.ptr()),
    };
    let taken = lt.product(dev, (&oa, &ob), (epilogue, extras), act.ptr());
    Ok(taken.then_some((pre, act)))
}

/// `(g·w) ∘ gelu_tanh'(pre)` of a single product through cuBLASLt's GELU-gradient
/// epilogue (`pre` contiguous, shaped like the result), with the result's column sums
/// (the bias gradient) beside it when `bias_grad`; `None` when that path does not take
/// the product (see [`super::lt`]).
pub(crate) fn linear_gelu_grad(
    g: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    (pre, lpre): (&CudaStorage, &Layout),
    bias_grad: bool,
) -> Result<Option<(CudaStorage, Option<CudaStorage>)>> {
    let dev = g.0.dev();
    let Some(lt) = dev.lt.as_ref() else {
        return Ok(None);
    };
    if !lpre.is_contiguous() {
        return Ok(None);
    }
    let Some([(og, _keep_g), (ow, _keep_w)]) = single_product(g, w)? else {
        return Ok(None);
    };
    if lpre.elem_count() != og.rows * ow.cols {
        return Ok(None);
    }
    let out = CudaStorage::alloc(dev, og.rows * ow.cols, g.0.dtype)?;
    let sums = bias_grad
        .then(|| CudaStorage::alloc(dev, ow.cols, g.0.dtype))
        .transpose()?;
    let extras = Extras {
        bias: sums.as_ref().map_or(0, |s| s.ptr()),
        pre: pre.ptr_at(lpre.offset()),
    };
    let epilogue = (Epilogue::GeluGrad { bias_grad }, extras);
    let taken = lt.product(dev, (&og, &ow), epilogue, out.ptr());
    Ok(taken.then_some((out, sums)))
}

/// `a·b` of a single product with the sums of `a`'s rows (over the inner dimension)
/// beside it, through cuBLASLt's `BGRADB` epilogue: a weight gradient `gᵀ·x` and the
/// bias gradient `Σ_rows g` in one pass over `g`. `None` when that path does not take
/// the product (see [`super::lt`]).
pub(crate) fn product_with_lhs_sums(
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<Option<(CudaStorage, CudaStorage)>> {
    let dev = a.0.dev();
    let Some(lt) = dev.lt.as_ref() else {
        return Ok(None);
    };
    let Some([(oa, _keep_a), (ob, _keep_b)]) = single_product(a, b)? else {
        return Ok(None);
    };
    let out = CudaStorage::alloc(dev, oa.rows * ob.cols, a.0.dtype)?;
    let sums = CudaStorage::alloc(dev, oa.rows, a.0.dtype)?;
    let extras = Extras {
        bias: sums.ptr(),
        pre: 0,
    };
    let taken = lt.product(dev, (&oa, &ob), (Epilogue::LhsSums, extras), out.ptr());
    Ok(taken.then_some((out, sums)))
}

/// `[..., m, k] · [..., k, n]` (+ bias, a view of the output's shape).
pub(crate) fn matmul(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    bias: Option<(&CudaStorage, &Layout)>,
) -> Result<CudaStorage> {
    let r = la.rank();
    let (m, k, n) = (la.shape()[r - 2], la.shape()[r - 1], lb.shape()[r - 1]);
    let batch: usize = la.shape()[..r - 2].iter().product();
    if let Some(out) = linear_by_epilogue((a, la), (b, lb), bias)? {
        return Ok(out);
    }
    let out = match bias {
        Some((s, l)) => copy_strided(s, l)?,
        None if k == 0 => CudaStorage::zeros_on(a.dev(), batch * m * n, a.dtype)?,
        None => CudaStorage::alloc(a.dev(), batch * m * n, a.dtype)?,
    };
    if batch * m * n == 0 || k == 0 {
        return Ok(out);
    }
    let ((oa, _keep_a), (ob, _keep_b)) = (operand(a, la)?, operand(b, lb)?);
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    gemm(
        a.dev(),
        "matmul",
        (&oa, &ob),
        (out.ptr(), a.dtype),
        batch,
        (1.0, beta),
    )?;
    Ok(out)
}
