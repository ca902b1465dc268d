//! Scaled-dot-product attention as one fused op with its own backward.

use super::{check_float, check_same};
use crate::autocast::lowered;
use crate::backend::{stats_dtype, AttentionSpec, BackendStorage};
use crate::cpu::{attention, dispatch_float, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{self, CudaStorage};
use crate::error::{Error, Result};
use crate::forward_ad;
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::Tensor;

/// softmax(scale·q·kᵀ [+ causal mask])·v for q `[b, h, tq, d]`, k `[b, h, tk, d]`,
/// v `[b, h, tk, dv]`; `scale` defaults to 1/√d. The T×T scores are not kept for the
/// backward: only the output and the row log-sum-exp are, and the backward recomputes.
/// Runs in and returns the low dtype inside an autocast scope (see
/// [`crate::autocast()`]).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f64>,
    causal: bool,
) -> Result<Tensor> {
    if let Some(x) = lowered(&[q, k, v])? {
        return scaled_dot_product_attention(&x[0], &x[1], &x[2], scale, causal);
    }
    const OP: &str = "attention";
    check_float(OP, q)?;
    check_same(OP, &[q, k, v])?;
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let fits = qs.len() == 4
        && ks.len() == 4
        && vs.len() == 4
        && qs[..2] == ks[..2]
        && ks[..2] == vs[..2]
        && qs[3] == ks[3]
        && ks[2] == vs[2];
    if !fits {
        return Err(Error::shapes(OP, &[qs, ks, vs]));
    }
    let spec = AttentionSpec {
        scale: scale.unwrap_or(1.0 / (qs[3] as f64).sqrt()),
        causal,
    };
    let layouts = [q.layout(), k.layout(), v.layout()].map(Layout::clone);
    let tangents = match forward_ad::wants_tangent(&[q, k, v]) {
        false => None,
        true => {
            let t = |x: &Tensor| x.tangent().map_or_else(|| x.zeros_like(), Ok);
            let [tq, tk, tv] = [t(q)?, t(k)?, t(v)?];
            let views = [tq.layout(), tk.layout(), tv.layout()].map(Layout::clone);
            Some(([tq, tk, tv], views))
        }
    };
    let (sq, sk, sv) = (q.storage(), k.storage(), v.storage());
    let (out, lse, tangent) = attend([&sq, &sk, &sv], &layouts, tangents, spec)?;
    drop((sq, sk, sv));
    let lse = Tensor::from_storage(lse, &qs[..3]);
    let shape = [qs[0], qs[1], qs[2], vs[3]];
    Tensor::from_op_in(
        OP,
        out,
        token_major(shape),
        &[q, k, v],
        move |x, out, g| {
            let (q, k, v) = (&x[0], &x[1], &x[2]);
            let grads = Storage::fused(
                &AttentionBackward { spec, joint: false },
                (
                    (&q.storage(), q.layout()),
                    (&k.storage(), k.layout()),
                    (&v.storage(), v.layout()),
                    (&out.storage(), out.layout()),
                    &lse.storage(),
                    (&g.storage(), g.layout()),
                ),
            )?;
            let grad = |s, t: &Tensor| {
                let shape = [t.shape()[0], t.shape()[1], t.shape()[2], t.shape()[3]];
                Some(Tensor::from_storage_in(s, token_major(shape)))
            };
            let [dq, dk, dv] = <[Storage; 3]>::try_from(grads)
                .map_err(|_| Error::Autograd("attention: three gradients expected".into()))?;
            Ok(vec![grad(dq, q), grad(dk, k), grad(dv, v)])
        },
        move |_, _| {
            let t =
                tangent.ok_or_else(|| Error::Autograd("attention: tangent not computed".into()))?;
            Ok(Tensor::from_storage_in(t, token_major(shape)))
        },
    )
}

/// Self-attention over the three parts of one tensor `qkv` `[b, t, 3·h·d]`: queries,
/// keys and values, each `heads` heads of `d` features, as a `Linear(D, 3·D)`
/// projection lays them out (`qkv.view(b, t, 3, h, d)`). Returns the heads merged,
/// `[b, t, h·d]`, contiguous.
///
/// The values are those of [`scaled_dot_product_attention`] on the three `[b, h, t, d]`
/// views of `qkv` (read in place, no copy), but the backward writes `qkv`'s gradient
/// as one tensor: through the views, it would be three gradients, each padded to
/// `qkv`'s shape and then added. So a model projects q, k and v with one product
/// forward and backward instead of three.
pub fn qkv_attention(
    qkv: &Tensor,
    heads: usize,
    scale: Option<f64>,
    causal: bool,
) -> Result<Tensor> {
    if let Some(x) = lowered(&[qkv])? {
        return qkv_attention(&x[0], heads, scale, causal);
    }
    const OP: &str = "qkv_attention";
    check_float(OP, qkv)?;
    let &[b, t, width] = qkv.shape() else {
        return Err(Error::shapes(OP, &[qkv.shape()]));
    };
    if heads == 0 || !width.is_multiple_of(3 * heads) {
        let why = format!(
            "the last dim of {:?} is not 3·heads·d for heads = {heads}",
            qkv.shape()
        );
        return Err(Error::invalid(OP, why));
    }
    let d = width / (3 * heads);
    let spec = AttentionSpec {
        scale: scale.unwrap_or(1.0 / (d as f64).sqrt()),
        causal,
    };
    let parts = move |l: &Layout| [0, 1, 2].map(|part| head_view(l, (heads, d), part));
    let tangents = match forward_ad::wants_tangent(&[qkv]) {
        false => None,
        true => {
            let t = qkv.tangent().map_or_else(|| qkv.zeros_like(), Ok)?;
            let views = parts(t.layout());
            Some(([t.clone(), t.clone(), t], views))
        }
    };
    let storage = qkv.storage();
    let (out, lse, tangent) = attend([&storage; 3], &parts(qkv.layout()), tangents, spec)?;
    drop(storage);
    let lse = Tensor::from_storage(lse, &[b, heads, t]);
    let merged = Layout::contiguous(&[b, t, heads * d]);
    Tensor::from_op_in(
        OP,
        out,
        merged.clone(),
        &[qkv],
        move |x, out, g| {
            let qkv = &x[0];
            let (storage, layout) = (qkv.storage(), qkv.layout());
            let [q, k, v] = parts(layout);
            let grads = Storage::fused(
                &AttentionBackward { spec, joint: true },
                (
                    (&storage, &q),
                    (&storage, &k),
                    (&storage, &v),
                    (&out.storage(), &head_view(out.layout(), (heads, d), 0)),
                    &lse.storage(),
                    (&g.storage(), &head_view(g.layout(), (heads, d), 0)),
                ),
            )?;
            let [joint] = <[Storage; 1]>::try_from(grads)
                .map_err(|_| Error::Autograd("qkv_attention: one gradient expected".into()))?;
            Ok(vec![Some(Tensor::from_storage(joint, &[b, t, width]))])
        },
        move |_, _| {
            let t = tangent
                .ok_or_else(|| Error::Autograd("qkv_attention: tangent not computed".into()))?;
            Ok(Tensor::from_storage_in(t, merged.clone()))
        },
    )
}

/// Part `part` (0, 1, 2: q, k, v) of a `[b, t, parts·heads·d]` view as the
/// `[b, heads, t, d]` view attention reads; part 0 of a `[b, t, heads·d]` view is that
/// view with its heads split.
fn head_view(l: &Layout, (heads, d): (usize, usize), part: usize) -> Layout {
    let (shape, strides) = (l.shape(), l.strides());
    Layout::new(
        vec![shape[0], heads, shape[1], d],
        vec![strides[0], d * strides[2], strides[1], strides[2]],
        l.offset() + part * heads * d * strides[2],
    )
}

/// The forward kernels on q, k and v (storages read through `layouts`), with the
/// output's tangent when `tangents` are given (tensors and the views to read them
/// through; one kernel computes both): the output
/// stored token-major, the row log-sum-exp, and the tangent stored token-major.
fn attend(
    [q, k, v]: [&Storage; 3],
    layouts: &[Layout; 3],
    tangents: Option<([Tensor; 3], [Layout; 3])>,
    spec: AttentionSpec,
) -> Result<(Storage, Storage, Option<Storage>)> {
    let primals = ((q, &layouts[0]), (k, &layouts[1]), (v, &layouts[2]));
    let Some(([tq, tk, tv], [lq, lk, lv])) = tangents else {
        let (out, lse) = Storage::fused(&AttentionForward(spec), primals)?;
        return Ok((out, lse, None));
    };
    let (pq, pk, pv) = primals;
    let inputs = (
        pq,
        pk,
        pv,
        (&*tq.storage(), &lq),
        (&*tk.storage(), &lk),
        (&*tv.storage(), &lv),
    );
    let (out, lse, t) = Storage::fused(&AttentionJvp(spec), inputs)?;
    Ok((out, lse, Some(t)))
}

/// A `[b, h, t, d]` view of storage laid out `[b, t, h, d]` (token-major): how the
/// backends store attention's output and gradients, so that merging the heads back
/// (`transpose(1, 2)` then `reshape`) is a view rather than a copy, forward and
/// backward.
fn token_major(shape: [usize; 4]) -> Layout {
    let [_, h, t, d] = shape;
    Layout::new(shape.to_vec(), vec![t * h * d, d, h * d, 1], 0)
}

/// The forward kernels: the output, stored token-major (`[b, tq, h, dv]`), and the row
/// log-sum-exp `[b, h, tq]` in `stats_dtype`, from q, k and v.
struct AttentionForward(AttentionSpec);

impl<'a> FusedOp<'a> for AttentionForward {
    const NAME: &'static str = "attention";
    type Inputs = (View<'a, Storage>, View<'a, Storage>, View<'a, Storage>);
    type Output = (Storage, Storage);

    fn cpu(&self, (q, k, v): BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        let dt = q.0.dtype();
        dispatch_float!(Self::NAME, q.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (qv, kv, vv) = (view(q.0)?, view(k.0)?, view(v.0)?);
            let (o, lse) = attention::attention((&qv, q.1), (&kv, k.1), (&vv, v.1), self.0);
            Ok((
                F::store(o, dt).into(),
                F::store(lse, stats_dtype(dt)).into(),
            ))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (q, k, v): BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        let (o, lse) = cuda::attention::forward(q, k, v, self.0)?;
        Ok((o.into(), lse.into()))
    }
}

/// The forward and JVP kernels: the output and its tangent (both token-major) and the
/// row log-sum-exp, from q, k, v and their tangents.
struct AttentionJvp(AttentionSpec);

impl<'a> FusedOp<'a> for AttentionJvp {
    const NAME: &'static str = "attention_jvp";
    /// q, k, v, then their tangents.
    type Inputs = (
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
    );
    type Output = (Storage, Storage, Storage);

    fn cpu(&self, inputs: BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        let (q, k, v, tq, tk, tv) = inputs;
        let dt = q.0.dtype();
        dispatch_float!(Self::NAME, q.0, |F| {
            let view = |(s, l): View<'a, CpuStorage>| F::view(s, Self::NAME).map(|v| (v, l));
            let (q, k, v) = (view(q)?, view(k)?, view(v)?);
            let (tq, tk, tv) = (view(tq)?, view(tk)?, view(tv)?);
            let r = attention::attention_jvp(
                ((&q.0, q.1), (&k.0, k.1), (&v.0, v.1)),
                ((&tq.0, tq.1), (&tk.0, tk.1), (&tv.0, tv.1)),
                self.0,
            );
            let store = |v| -> Storage { F::store(v, dt).into() };
            let lse = F::store(r.lse, stats_dtype(dt)).into();
            Ok((store(r.out), lse, store(r.tangent)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, inputs: BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        let (q, k, v, tq, tk, tv) = inputs;
        let (o, lse, to) = cuda::attention::jvp((q, k, v), (tq, tk, tv), self.0)?;
        Ok((o.into(), lse.into(), to.into()))
    }
}

/// The backward kernels: dq, dk and dv, stored token-major like the output (three
/// storages), or, `joint`, written into one `[b, t, 3, h, d]` storage, the gradient of
/// the tensor whose three parts q, k and v are ([`qkv_attention`]); from q, k, v, the
/// forward's output and log-sum-exp, and the output gradient.
struct AttentionBackward {
    spec: AttentionSpec,
    joint: bool,
}

impl<'a> FusedOp<'a> for AttentionBackward {
    const NAME: &'static str = "attention_backward";
    type Inputs = (
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        &'a Storage,
        View<'a, Storage>,
    );
    /// dq, dk and dv, or the one joint gradient.
    type Output = Vec<Storage>;

    fn cpu(
        &self,
        (q, k, v, _out, lse, grad): BackendInputs<'a, Self, CpuStorage>,
    ) -> Result<Self::Output> {
        // The CPU kernel takes rowsum(dO∘O) from its probabilities and their
        // gradients instead of reading the output (`cpu::attention::score_grads`).
        let dt = q.0.dtype();
        dispatch_float!(Self::NAME, q.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let qv = view(q.0)?;
            // In the joint case q, k and v are one storage: read (convert) it once.
            let (kv, vv) = match self.joint {
                true => (None, None),
                false => (Some(view(k.0)?), Some(view(v.0)?)),
            };
            let (lv, gv) = (view(lse)?, view(grad.0)?);
            let x = attention::BackwardInputs {
                q: (&qv, q.1),
                k: (kv.as_deref().unwrap_or(&qv), k.1),
                v: (vv.as_deref().unwrap_or(&qv), v.1),
                lse: &lv,
                grad: (&gv, grad.1),
            };
            let store = |v| -> Storage { F::store(v, dt).into() };
            Ok(match self.joint {
                true => vec![store(attention::attention_backward_joint(x, self.spec))],
                false => {
                    let r = attention::attention_backward(x, self.spec);
                    vec![store(r.dq), store(r.dk), store(r.dv)]
                }
            })
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        (q, k, v, out, lse, grad): BackendInputs<'a, Self, CudaStorage>,
    ) -> Result<Self::Output> {
        let grads = cuda::attention::backward(q, k, v, (out, lse, grad), self.spec, self.joint)?;
        Ok(grads.into_iter().map(Storage::from).collect())
    }
}
