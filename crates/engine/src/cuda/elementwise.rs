//! Elementwise ops, copies, casts and the moving-average update
//! (`kernels/elementwise.cu`, `copy.cu`, `cast.cu`, `ema.cu`). Operands are read in place through their strides
//! (broadcasts included); outputs are contiguous.

use super::launch::{args, launch, per_element, per_pack, per_tile, Arg, View};
use super::{float_only, size_suffix, suffix, CudaStorage};
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;

/// (code, p0, p1) of a unary op: its `U_*` code ([`UnaryOp::kernel_code`]) and its
/// parameters (0 for the ops without).
fn unary_args(op: UnaryOp) -> (i32, f64, f64) {
    let (p0, p1) = match op {
        UnaryOp::Powf(p) => (p, 0.0),
        UnaryOp::Clamp(lo, hi) => (lo, hi),
        UnaryOp::Affine(a, b) => (a, b),
        _ => (0.0, 0.0),
    };
    (op.kernel_code(), p0, p1)
}

/// Addresses of the first elements of the output and the operands when every operand
/// is contiguous, of the output's shape (no broadcast) and 16-byte aligned, as the
/// `*_dense` kernels' vector accesses need; `None` sends the op to the strided kernel.
/// A fresh output is aligned, but a view (`narrow`) may start anywhere.
fn dense<const N: usize>(
    out: &CudaStorage,
    shape: &[usize],
    ops: [(&CudaStorage, &Layout); N],
) -> Option<(u64, [u64; N])> {
    let ptrs = ops.map(|(s, l)| s.ptr_at(l.offset()));
    let fits = ops
        .iter()
        .zip(&ptrs)
        .all(|((_, l), &p)| l.is_contiguous() && l.shape() == shape && p % 16 == 0);
    (fits && out.ptr().is_multiple_of(16)).then_some((out.ptr(), ptrs))
}

/// Launches elementwise kernel `kernel` on strided operands (merged views of the output's
/// shape) into the contiguous `out` of `n` elements: `{kernel}_packed_*`, a 16-byte pack
/// per thread, where `packed` allows, else `{kernel}_*`, an element per thread. Both
/// take (pointer, view) per operand, the output, the count (packs, then the 32-bit
/// flag, or elements), then `extra` (op code and parameters).
fn strided<const N: usize, const E: usize>(
    op: &'static str,
    kernel: &str,
    operands: [(&CudaStorage, View); N],
    out: &CudaStorage,
    n: usize,
    extra: [Arg; E],
) -> Result<()> {
    let mut args: Vec<Arg> = Vec::with_capacity(2 * N + 3 + E);
    for (s, v) in &operands {
        args.extend([s.ptr().into(), (*v).into()]);
    }
    args.push(out.ptr().into());
    let sfx = suffix(out.dtype);
    let views = operands.map(|(_, v)| v);
    let (name, cfg) = match packed(out, n, &views, operands.map(|(s, _)| s)) {
        Some((packs, narrow)) => {
            args.extend([packs.into(), narrow.into()]);
            (format!("{kernel}_packed_{sfx}"), per_element(packs))
        }
        None => {
            args.push(n.into());
            (format!("{kernel}_{sfx}"), per_element(n))
        }
    };
    args.extend(extra);
    launch(out.dev(), op, ("elementwise", &name), cfg, &mut args)
}

/// (packs, narrow) for the `*_packed` kernels when every merged view of the `n`
/// elements of `out` fits them (`View::fits_packs`) and every buffer is 16-byte
/// aligned; `narrow` when every offset fits in 32 bits. `None` sends the op to the
/// per-element kernel.
fn packed<const N: usize>(
    out: &CudaStorage,
    n: usize,
    views: &[View; N],
    stores: [&CudaStorage; N],
) -> Option<(usize, bool)> {
    let pack = 16 / out.dtype.size_in_bytes();
    let fits = views
        .iter()
        .zip(stores)
        .all(|(v, s)| v.fits_packs(pack as u64) && s.ptr() % 16 == 0);
    let narrow = n <= u32::MAX as usize && stores.iter().all(|s| s.len() <= u32::MAX as usize);
    (fits && out.ptr().is_multiple_of(16)).then_some((n / pack, narrow))
}

pub(crate) fn copy_strided(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let n = l.elem_count();
    let out = CudaStorage::alloc(x.dev(), n, x.dtype)?;
    if n > 0 {
        let [xv] = View::merged("copy", [l])?;
        let bytes = size_suffix(x.dtype);
        if let Some((rows, cols, ld)) = xv.transposed() {
            let name = format!("copy_transpose_{bytes}");
            let a = args![x.ptr_at(l.offset()), rows, cols, ld, out.ptr()];
            let cfg = per_tile(rows.div_ceil(32) * cols.div_ceil(32));
            launch(x.dev(), "copy", ("copy", &name), cfg, a)?;
        } else {
            let name = format!("copy_strided_{bytes}");
            let a = args![x.ptr(), xv, out.ptr(), n];
            launch(x.dev(), "copy", ("copy", &name), per_element(n), a)?;
        }
    }
    Ok(out)
}

pub(crate) fn copy_into(
    x: &CudaStorage,
    l: &Layout,
    dst: &mut CudaStorage,
    dl: &Layout,
) -> Result<()> {
    if x.dtype != dst.dtype {
        let converted = cast(x, l, dst.dtype)?;
        return copy_into(&converted, &Layout::contiguous(l.shape()), dst, dl);
    }
    let n = l.elem_count();
    if n == 0 {
        return Ok(());
    }
    let [sv, dv] = View::merged("copy_into", [l, dl])?;
    let name = format!("copy_into_{}", size_suffix(x.dtype));
    let a = args![x.ptr(), sv, dst.ptr(), dv, n];
    launch(x.dev(), "copy_into", ("copy", &name), per_element(n), a)
}

pub(crate) fn cast(x: &CudaStorage, l: &Layout, dtype: DType) -> Result<CudaStorage> {
    if dtype == x.dtype {
        return copy_strided(x, l);
    }
    let n = l.elem_count();
    let out = CudaStorage::alloc(x.dev(), n, dtype)?;
    if n == 0 {
        return Ok(out);
    }
    // The casts autocast makes, of contiguous tensors: 16-byte vectors, no f64 detour.
    let halves = [DType::BF16, DType::F16];
    let autocast_pair = (x.dtype == DType::F32 && halves.contains(&dtype))
        || (halves.contains(&x.dtype) && dtype == DType::F32);
    if let Some((o, [xp])) = dense(&out, l.shape(), [(x, l)]).filter(|_| autocast_pair) {
        let name = format!("cast_dense_{}_{}", suffix(x.dtype), suffix(dtype));
        let a = args![xp, o, n];
        return launch(x.dev(), "to_dtype", ("cast", &name), per_pack(n, 2), a).map(|()| out);
    }
    let [xv] = View::merged("to_dtype", [l])?;
    let name = format!("cast_{}_{}", suffix(x.dtype), suffix(dtype));
    let a = args![x.ptr(), xv, out.ptr(), n];
    launch(x.dev(), "to_dtype", ("cast", &name), per_element(n), a)?;
    Ok(out)
}

pub(crate) fn unary(x: &CudaStorage, l: &Layout, op: UnaryOp) -> Result<CudaStorage> {
    float_only("unary", x.dtype)?;
    let n = l.elem_count();
    let out = CudaStorage::alloc(x.dev(), n, x.dtype)?;
    if n > 0 {
        let (code, p0, p1) = unary_args(op);
        let sfx = suffix(x.dtype);
        if let Some((o, [xp])) = dense(&out, l.shape(), [(x, l)]) {
            let name = format!("unary_dense_{sfx}");
            let a = args![xp, o, n, code, p0, p1];
            let cfg = per_pack(n, x.dtype.size_in_bytes());
            launch(x.dev(), "unary", ("elementwise", &name), cfg, a)?;
        } else {
            let [xv] = View::merged("unary", [l])?;
            let extra = [code.into(), p0.into(), p1.into()];
            strided("unary", "unary", [(x, xv)], &out, n, extra)?;
        }
    }
    Ok(out)
}

pub(crate) fn unary_backward(
    x: &CudaStorage,
    l: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    op: UnaryOp,
) -> Result<CudaStorage> {
    float_only("unary_backward", x.dtype)?;
    let n = l.elem_count();
    let out = CudaStorage::alloc(x.dev(), n, x.dtype)?;
    if n > 0 {
        let (code, p0, p1) = unary_args(op);
        let sfx = suffix(x.dtype);
        if let Some((o, [xp, gp])) = dense(&out, l.shape(), [(x, l), (g, gl)]) {
            let name = format!("unary_backward_dense_{sfx}");
            let a = args![xp, gp, o, n, code, p0, p1];
            let cfg = per_pack(n, x.dtype.size_in_bytes());
            launch(x.dev(), "unary_backward", ("elementwise", &name), cfg, a)?;
        } else {
            let [xv, gv] = View::merged("unary_backward", [l, gl])?;
            let extra = [code.into(), p0.into(), p1.into()];
            strided(
                "unary_backward",
                "unary_backward",
                [(x, xv), (g, gv)],
                &out,
                n,
                extra,
            )?;
        }
    }
    Ok(out)
}

/// A two-operand kernel (`binary_*` or `cmp_*`) with op code `code`.
fn two(
    op: &'static str,
    kernel: &str,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    code: i32,
) -> Result<CudaStorage> {
    float_only(op, a.dtype)?;
    let n = la.elem_count();
    let out = CudaStorage::alloc(a.dev(), n, a.dtype)?;
    if n > 0 {
        let sfx = suffix(a.dtype);
        if let Some((o, [ap, bp])) = dense(&out, la.shape(), [(a, la), (b, lb)]) {
            let name = format!("{kernel}_dense_{sfx}");
            let ar = args![ap, bp, o, n, code];
            let cfg = per_pack(n, a.dtype.size_in_bytes());
            launch(a.dev(), op, ("elementwise", &name), cfg, ar)?;
        } else {
            let [av, bv] = View::merged(op, [la, lb])?;
            strided(op, kernel, [(a, av), (b, bv)], &out, n, [code.into()])?;
        }
    }
    Ok(out)
}

pub(crate) fn binary(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    op: BinaryOp,
) -> Result<CudaStorage> {
    two("binary", "binary", (a, la), (b, lb), op.kernel_code())
}

pub(crate) fn cmp(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    op: CmpOp,
) -> Result<CudaStorage> {
    two("cmp", "cmp", (a, la), (b, lb), op.kernel_code())
}

/// A three-operand kernel: `where` (mask, on_true, on_false) or `addcmul` (x, a, b).
pub(crate) fn ternary(
    op: &'static str,
    kernel: &str,
    (x, lx): (&CudaStorage, &Layout),
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    float_only(op, x.dtype)?;
    let n = lx.elem_count();
    let out = CudaStorage::alloc(x.dev(), n, x.dtype)?;
    if n > 0 {
        let sfx = suffix(x.dtype);
        if let Some((o, [xp, ap, bp])) = dense(&out, lx.shape(), [(x, lx), (a, la), (b, lb)]) {
            let name = format!("{kernel}_dense_{sfx}");
            let ar = args![xp, ap, bp, o, n];
            let cfg = per_pack(n, x.dtype.size_in_bytes());
            launch(x.dev(), op, ("elementwise", &name), cfg, ar)?;
        } else {
            let [xv, av, bv] = View::merged(op, [lx, la, lb])?;
            strided(op, kernel, [(x, xv), (a, av), (b, bv)], &out, n, [])?;
        }
    }
    Ok(out)
}

/// `x + a·b` for an f32 view x beside a bf16 or f16 view b, and a an f32 view or one of
/// b's dtype, each read in its own dtype (`addcmul_f32_{a}_{b}`, an element per thread):
/// autocast's gated residual around a half-precision product, with no f32 copies of the
/// factors first. The f32 result.
pub(crate) fn addcmul_half_factors(
    op: &'static str,
    (x, lx): (&CudaStorage, &Layout),
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let half = matches!(b.dtype, DType::BF16 | DType::F16);
    if x.dtype != DType::F32 || !half || (a.dtype != DType::F32 && a.dtype != b.dtype) {
        return Err(Error::dtypes(op, &[x.dtype, a.dtype, b.dtype]));
    }
    let n = lx.elem_count();
    let out = CudaStorage::alloc(x.dev(), n, DType::F32)?;
    if n == 0 {
        return Ok(out);
    }
    let [xv, av, bv] = View::merged(op, [lx, la, lb])?;
    let operands = [(x, xv), (a, av), (b, bv)];
    // Four elements a thread where every view and buffer allows (`addcmul_quads_*`).
    let aligned = |s: &CudaStorage| s.ptr().is_multiple_of(4 * s.dtype.size_in_bytes() as u64);
    let quads = operands.iter().all(|(s, v)| v.fits_packs(4) && aligned(s)) && aligned(&out);
    let narrow =
        n <= u32::MAX as usize && operands.iter().all(|(s, _)| s.len() <= u32::MAX as usize);
    let mut ar: Vec<Arg> = Vec::with_capacity(9);
    for (s, v) in operands {
        ar.extend([s.ptr().into(), v.into()]);
    }
    ar.push(out.ptr().into());
    let kernel = addcmul_half_kernel(a.dtype, b.dtype, quads);
    let cfg = match quads {
        true => {
            ar.extend([(n / 4).into(), narrow.into()]);
            per_element(n / 4)
        }
        false => {
            ar.push(n.into());
            per_element(n)
        }
    };
    launch(x.dev(), op, ("elementwise", &kernel), cfg, &mut ar)?;
    Ok(out)
}

/// The kernel of [`addcmul_half_factors`] for factor dtypes `a` and `b`: four elements a
/// thread (`quads`) or one.
pub(super) fn addcmul_half_kernel(a: DType, b: DType, quads: bool) -> String {
    let kind = if quads { "addcmul_quads" } else { "addcmul" };
    format!("{kind}_f32_{}_{}", suffix(a), suffix(b))
}

/// The in-place moving-average update on an f32 copy, as the CPU's `ema::update`.
pub(crate) fn ema(
    avg: &mut CudaStorage,
    n: usize,
    (online, ol): (&CudaStorage, &Layout),
    decay: f32,
) -> Result<()> {
    if avg.dtype != DType::F32 {
        return Err(Error::dtypes("ema_update", &[avg.dtype, online.dtype]));
    }
    float_only("ema_update", online.dtype)?;
    let online = online.dense_as(ol, DType::F32)?;
    if n == 0 {
        return Ok(());
    }
    let a = args![avg.ptr(), online.ptr, n, decay];
    launch(
        avg.dev(),
        "ema_update",
        ("ema", "ema_f32"),
        per_element(n),
        a,
    )
}
