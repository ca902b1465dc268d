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
    let primals = (
        (&*q.storage(), q.layout()),
        (&*k.storage(), k.layout()),
        (&*v.storage(), v.layout()),
    );
    // With tangents, one kernel computes the output and its tangent together.
    let (out, lse, tangent) = match forward_ad::wants_tangent(&[q, k, v]) {
        false => {
            let (out, lse) = Storage::fused(&AttentionForward(spec), primals)?;
            (out, lse, None)
        }
        true => {
            let t = |x: &Tensor| x.tangent().map_or_else(|| x.zeros_like(), Ok);
            let (tq, tk, tv) = (t(q)?, t(k)?, t(v)?);
            let (pq, pk, pv) = primals;
            let inputs = (
                pq,
                pk,
                pv,
                (&*tq.storage(), tq.layout()),
                (&*tk.storage(), tk.layout()),
                (&*tv.storage(), tv.layout()),
            );
            let (out, lse, t) = Storage::fused(&AttentionJvp(spec), inputs)?;
            (out, lse, Some(t))
        }
    };
    let lse = Tensor::from_storage(lse, &qs[..3]);
    let shape = [qs[0], qs[1], qs[2], vs[3]];
    Tensor::from_op_in(
        OP,
        out,
        token_major(shape),
        &[q, k, v],
        move |x, out, g| {
            let (q, k, v) = (&x[0], &x[1], &x[2]);
            let (dq, dk, dv) = Storage::fused(
                &AttentionBackward(spec),
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
            Ok(vec![grad(dq, q), grad(dk, k), grad(dv, v)])
        },
        move |_, _| {
            let t =
                tangent.ok_or_else(|| Error::Autograd("attention: tangent not computed".into()))?;
            Ok(Tensor::from_storage_in(t, token_major(shape)))
        },
    )
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

/// The backward kernels: dq, dk and dv, stored token-major like the output, from q, k,
/// v, the forward's output and log-sum-exp, and the output gradient.
struct AttentionBackward(AttentionSpec);

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
    type Output = (Storage, Storage, Storage);

    fn cpu(
        &self,
        (q, k, v, out, lse, grad): BackendInputs<'a, Self, CpuStorage>,
    ) -> Result<Self::Output> {
        let dt = q.0.dtype();
        dispatch_float!(Self::NAME, q.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (qv, kv, vv) = (view(q.0)?, view(k.0)?, view(v.0)?);
            let (ov, lv, gv) = (view(out.0)?, view(lse)?, view(grad.0)?);
            let r = attention::attention_backward(
                (&qv, q.1),
                (&kv, k.1),
                (&vv, v.1),
                (&ov, out.1),
                &lv,
                (&gv, grad.1),
                self.0,
            );
            let store = |v| -> Storage { F::store(v, dt).into() };
            Ok((store(r.dq), store(r.dk), store(r.dv)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        (q, k, v, out, lse, grad): BackendInputs<'a, Self, CudaStorage>,
    ) -> Result<Self::Output> {
        let (dq, dk, dv) = cuda::attention::backward(q, k, v, out, lse, grad, self.0)?;
        Ok((dq.into(), dk.into(), dv.into()))
    }
}
