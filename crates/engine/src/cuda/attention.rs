//! Scaled-dot-product attention, the straightforward version: the products run in
//! cuBLAS with scores and probabilities held in the compute type (f32, f64 for f64),
//! and the row kernels of `kernels/attention.cu` do the softmax and the score
//! gradient. Memory is O(b·h·tq·tk). Where the fused kernels of [`super::flash`]
//! cover the call (f32/bf16/f16, head dims 32, 64, 128) they run instead, forward,
//! backward and JVP alike. Results are copied to the token-major storage the backend
//! returns at the end.

use super::elementwise::cast;
use super::flash;
use super::launch::{args, launch, per_element, per_row};
use super::matmul::{gemm, Operand};
use super::{acc_dtype, float_only, suffix, CudaStorage, Dense};
use crate::backend::{AttentionSpec, BackendStorage};
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;

/// (b·h, t, d) of a `[b, h, t, d]` view.
fn dims(l: &Layout) -> (usize, usize, usize) {
    let s = l.shape();
    (s[0] * s[1], s[2], s[3])
}

/// A contiguous `[b, h, t, d]` result stored token-major (`[b, t, h, d]`), as the
/// backend's attention returns its output and gradients.
fn token_major(x: CudaStorage, l: &Layout, d: usize) -> Result<CudaStorage> {
    let (b, h, t) = (l.shape()[0], l.shape()[1], l.shape()[2]);
    let view = Layout::new(vec![b, t, h, d], vec![h * t * d, d, t * d, 1], 0);
    x.copy_strided(&view)
}

/// The storage as `dtype`: itself, or a converted contiguous copy of its `n` elements.
fn as_dtype(s: CudaStorage, n: usize, dtype: DType) -> Result<CudaStorage> {
    match s.dtype == dtype {
        true => Ok(s),
        false => cast(&s, &Layout::contiguous(&[n]), dtype),
    }
}

/// The scores `scale·q·kᵀ` `[bh, tq, tk]` in the compute type.
fn scores(
    q: (&Dense, &Layout),
    k: (&Dense, &Layout),
    dt: DType,
    scale: f64,
    dev: &std::sync::Arc<super::device::CudaDevice>,
) -> Result<CudaStorage> {
    let ((bh, tq, d), (_, tk, _)) = (dims(q.1), dims(k.1));
    let s = CudaStorage::alloc(dev, bh * tq * tk, acc_dtype(dt))?;
    let (oq, ok) = (
        Operand::dense(q.0.ptr, dt, tq, d),
        Operand::dense(k.0.ptr, dt, tk, d).t(),
    );
    gemm(
        dev,
        "attention",
        (&oq, &ok),
        (s.ptr(), s.dtype),
        bh,
        (scale, 0.0),
    )?;
    Ok(s)
}

pub(crate) fn forward(
    (q, lq): (&CudaStorage, &Layout),
    (k, lk): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
    spec: AttentionSpec,
) -> Result<(CudaStorage, CudaStorage)> {
    float_only("attention", q.dtype)?;
    let (dev, dt) = (q.dev(), q.dtype);
    let ((bh, tq, d), (_, tk, dv)) = (dims(lq), dims(lv));
    if bh * tq * tk > 0 && flash::covers(dt, d, dv, (tq, tk)) {
        return flash::forward((q, lq), (k, lk), (v, lv), (bh, tq, tk, d), spec);
    }
    let out = CudaStorage::zeros_on(dev, bh * tq * dv, dt)?;
    let lse = CudaStorage::zeros_on(dev, bh * tq, acc_dtype(dt))?;
    if bh * tq * tk == 0 {
        return Ok((out, lse));
    }
    let (qd, kd, vd) = (q.dense(lq)?, k.dense(lk)?, v.dense(lv)?);
    let p = scores((&qd, lq), (&kd, lk), dt, spec.scale, dev)?;
    let rows = bh * tq;
    let name = format!("attn_softmax_{}", suffix(p.dtype));
    let a = args![p.ptr(), lse.ptr(), rows, tq, tk, spec.causal];
    launch(dev, "attention", ("attention", &name), per_row(rows, tk), a)?;
    let p = as_dtype(p, rows * tk, dt)?;
    let (op, ov) = (
        Operand::dense(p.ptr(), dt, tq, tk),
        Operand::dense(vd.ptr, dt, tk, dv),
    );
    gemm(
        dev,
        "attention",
        (&op, &ov),
        (out.ptr(), dt),
        bh,
        (1.0, 0.0),
    )?;
    Ok((token_major(out, lq, dv)?, lse))
}

/// dq, dk and dv stored token-major (three storages), or, `joint`, written into one
/// `[b, t, 3, h, d]` storage (q, k and v being the three parts of one tensor; see
/// `qkv_attention`), from q, k, v, the forward's output `o` and log-sum-exp, and the
/// output gradient `g`.
pub(crate) fn backward(
    (q, lq): View,
    (k, lk): View,
    (v, lv): View,
    ((o, lo), lse, (g, lg)): (View, &CudaStorage, View),
    spec: AttentionSpec,
    joint: bool,
) -> Result<Vec<CudaStorage>> {
    float_only("attention_backward", q.dtype)?;
    let dt = q.dtype;
    let ((bh, tq, d), (_, tk, dv)) = (dims(lq), dims(lv));
    if bh * tq * tk > 0 && flash::covers(dt, d, dv, (tq, tk)) {
        let (dims, og) = ((bh, tq, tk, d), ((o, lo), lse, (g, lg)));
        return flash::backward((q, lq), (k, lk), (v, lv), og, dims, spec, joint);
    }
    let (dq, dk, dv) = unfused_backward((q, lq), (k, lk), (v, lv), ((o, lo), lse, (g, lg)), spec)?;
    match joint {
        false => Ok(vec![dq, dk, dv]),
        true => Ok(vec![interleave([dq, dk, dv], lq)?]),
    }
}

/// Three token-major `[b, t, h, d]` gradients written into one `[b, t, 3, h, d]`
/// storage (`lq` the `[b, h, t, d]` shape they share).
fn interleave(parts: [CudaStorage; 3], lq: &Layout) -> Result<CudaStorage> {
    let [b, h, t, d] = [0, 1, 2, 3].map(|i| lq.shape()[i]);
    let mut joint = CudaStorage::alloc(parts[0].dev(), b * t * 3 * h * d, parts[0].dtype)?;
    let src = Layout::contiguous(&[b, t, h, d]);
    for (i, part) in parts.iter().enumerate() {
        let dst = Layout::new(
            src.shape().to_vec(),
            vec![t * 3 * h * d, 3 * h * d, d, 1],
            i * h * d,
        );
        part.copy_into(&src, &mut joint, &dst)?;
    }
    Ok(joint)
}

/// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − rowsum(dO∘O)), dQ = scale·dS·K,
/// dK = scale·dSᵀ·Q, with P recomputed from the saved log-sum-exp, on cuBLAS and the
/// row kernels; stored token-major.
fn unfused_backward(
    (q, lq): View,
    (k, lk): View,
    (v, lv): View,
    ((o, lo), lse, (g, lg)): (View, &CudaStorage, View),
    spec: AttentionSpec,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let (dev, dt) = (q.dev(), q.dtype);
    let ((bh, tq, d), (_, tk, dv)) = (dims(lq), dims(lv));
    let dq = CudaStorage::zeros_on(dev, bh * tq * d, dt)?;
    let dk = CudaStorage::zeros_on(dev, bh * tk * d, dt)?;
    let dvv = CudaStorage::zeros_on(dev, bh * tk * dv, dt)?;
    if bh * tq * tk == 0 {
        return Ok((dq, dk, dvv));
    }
    let (qd, kd, vd) = (q.dense(lq)?, k.dense(lk)?, v.dense(lv)?);
    let (od, gd) = (o.dense(lo)?, g.dense(lg)?);
    const OP: &str = "attention_backward";
    let rows = bh * tq;
    let p = scores((&qd, lq), (&kd, lk), dt, spec.scale, dev)?;
    let name = format!("attn_probs_{}", suffix(p.dtype));
    let a = args![p.ptr(), lse.ptr(), rows, tq, tk, spec.causal];
    launch(dev, OP, ("attention", &name), per_element(rows * tk), a)?;
    // dP = dO·Vᵀ in the compute type, turned into dS in place.
    let ds = CudaStorage::alloc(dev, rows * tk, acc_dtype(dt))?;
    let (og, ovt) = (
        Operand::dense(gd.ptr, dt, tq, dv),
        Operand::dense(vd.ptr, dt, tk, dv).t(),
    );
    gemm(dev, OP, (&og, &ovt), (ds.ptr(), ds.dtype), bh, (1.0, 0.0))?;
    let name = format!("attn_dscores_{}", suffix(dt));
    let a = args![p.ptr(), ds.ptr(), gd.ptr, od.ptr, rows, tk, dv];
    launch(dev, OP, ("attention", &name), per_row(rows, dv), a)?;
    let (p, ds) = (as_dtype(p, rows * tk, dt)?, as_dtype(ds, rows * tk, dt)?);
    let (op, ods) = (
        Operand::dense(p.ptr(), dt, tq, tk),
        Operand::dense(ds.ptr(), dt, tq, tk),
    );
    let (ok, oq) = (
        Operand::dense(kd.ptr, dt, tk, d),
        Operand::dense(qd.ptr, dt, tq, d),
    );
    gemm(dev, OP, (&op.t(), &og), (dvv.ptr(), dt), bh, (1.0, 0.0))?;
    gemm(dev, OP, (&ods, &ok), (dq.ptr(), dt), bh, (spec.scale, 0.0))?;
    gemm(
        dev,
        OP,
        (&ods.t(), &oq),
        (dk.ptr(), dt),
        bh,
        (spec.scale, 0.0),
    )?;
    Ok((
        token_major(dq, lq, d)?,
        token_major(dk, lk, d)?,
        token_major(dvv, lv, dv)?,
    ))
}

/// The forward and its JVP: O and the log-sum-exp as [`forward`], and
/// tO = tP·V + P·tV with tP = P∘(tS − rowsum(P∘tS)) and tS = scale·(tQ·Kᵀ + Q·tKᵀ).
/// Where [`flash::covers`] the call, the fused kernel computes all three in one pass
/// over the keys (O(T) memory); otherwise O and the log-sum-exp come from [`forward`]
/// and the tangent from cuBLAS products, with tP the softmax backward's row kernel
/// applied to (P, tS) (softmax's Jacobian is symmetric): O(b·h·tq·tk) memory.
pub(crate) fn jvp(
    (q, k, v): (View, View, View),
    (tq, tk, tv): (View, View, View),
    spec: AttentionSpec,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    float_only("attention_jvp", q.0.dtype)?;
    let (dev, dt) = (q.0.dev(), q.0.dtype);
    if let Some(t) = [tq, tk, tv].iter().find(|t| t.0.dtype != dt) {
        let why = format!("a {} tangent of {dt} inputs", t.0.dtype);
        return Err(dev.error("attention_jvp", why));
    }
    let ((bh, rows, d), (_, keys, dv)) = (dims(q.1), dims(v.1));
    if bh * rows * keys > 0 && flash::covers(dt, d, dv, (rows, keys)) {
        return flash::jvp((q, k, v), (tq, tk, tv), (bh, rows, keys, d), spec);
    }
    let (out, lse) = forward(q, k, v, spec)?;
    let tangent = CudaStorage::zeros_on(dev, bh * rows * dv, dt)?;
    if bh * rows * keys == 0 {
        return Ok((out, lse, tangent));
    }
    const OP: &str = "attention_jvp";
    let dense = |(s, l): View| s.dense(l);
    let (qd, kd, vd) = (dense(q)?, dense(k)?, dense(v)?);
    let (tqd, tkd, tvd) = (dense(tq)?, dense(tk)?, dense(tv)?);
    let p = scores((&qd, q.1), (&kd, k.1), dt, spec.scale, dev)?;
    let name = format!("attn_probs_{}", suffix(p.dtype));
    let a = args![p.ptr(), lse.ptr(), bh * rows, rows, keys, spec.causal];
    launch(
        dev,
        OP,
        ("attention", &name),
        per_element(bh * rows * keys),
        a,
    )?;
    let ts = CudaStorage::alloc(dev, bh * rows * keys, acc_dtype(dt))?;
    let m = |ptr, r, c| Operand::dense(ptr, dt, r, c);
    let (mq, mk) = (m(qd.ptr, rows, d), m(kd.ptr, keys, d).t());
    let (mtq, mtk) = (m(tqd.ptr, rows, d), m(tkd.ptr, keys, d).t());
    gemm(
        dev,
        OP,
        (&mtq, &mk),
        (ts.ptr(), ts.dtype),
        bh,
        (spec.scale, 0.0),
    )?;
    gemm(
        dev,
        OP,
        (&mq, &mtk),
        (ts.ptr(), ts.dtype),
        bh,
        (spec.scale, 1.0),
    )?;
    let scores_layout = Layout::contiguous(&[bh * rows, keys]);
    let tp = super::rows::softmax_backward(&p, &scores_layout, &ts, &scores_layout, false)?;
    let (p, tp) = (
        as_dtype(p, bh * rows * keys, dt)?,
        as_dtype(tp, bh * rows * keys, dt)?,
    );
    let (mp, mtp) = (m(p.ptr(), rows, keys), m(tp.ptr(), rows, keys));
    let (mv, mtv) = (m(vd.ptr, keys, dv), m(tvd.ptr, keys, dv));
    gemm(dev, OP, (&mtp, &mv), (tangent.ptr(), dt), bh, (1.0, 0.0))?;
    gemm(dev, OP, (&mp, &mtv), (tangent.ptr(), dt), bh, (1.0, 1.0))?;
    Ok((out, lse, token_major(tangent, q.1, dv)?))
}

/// A view: storage and the layout that reads it.
type View<'a> = (&'a CudaStorage, &'a Layout);
