//! Scaled-dot-product attention as one fused op with its own backward.

use super::{check_float, check_same};
use crate::autocast::lowered;
use crate::backend::{AttentionSpec, BackendStorage};
use crate::error::{Error, Result};
use crate::layout::Layout;
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
    let (out, lse) = q.storage().attention(
        q.layout(),
        (&k.storage(), k.layout()),
        (&v.storage(), v.layout()),
        spec,
    )?;
    let lse = Tensor::from_storage(lse, &qs[..3]);
    let shape = [qs[0], qs[1], qs[2], vs[3]];
    Ok(Tensor::from_op_in(
        OP,
        out,
        token_major(shape),
        &[q, k, v],
        move |x, out, g| {
            let (q, k, v) = (&x[0], &x[1], &x[2]);
            let (dq, dk, dv) = q.storage().attention_backward(
                q.layout(),
                (&k.storage(), k.layout()),
                (&v.storage(), v.layout()),
                (&out.storage(), out.layout()),
                &lse.storage(),
                (&g.storage(), g.layout()),
                spec,
            )?;
            let grad = |s, t: &Tensor| {
                let shape = [t.shape()[0], t.shape()[1], t.shape()[2], t.shape()[3]];
                Some(Tensor::from_storage_in(s, token_major(shape)))
            };
            Ok(vec![grad(dq, q), grad(dk, k), grad(dv, v)])
        },
    ))
}

/// A `[b, h, t, d]` view of storage laid out `[b, t, h, d]` (token-major): how the
/// backends store attention's output and gradients, so that merging the heads back
/// (`transpose(1, 2)` then `reshape`) is a view rather than a copy, forward and
/// backward.
fn token_major(shape: [usize; 4]) -> Layout {
    let [_, h, t, d] = shape;
    Layout::new(shape.to_vec(), vec![t * h * d, d, h * d, 1], 0)
}
