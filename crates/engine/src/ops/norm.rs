//! Fused layer norm and RMS norm over the last dim, with hand-written backwards. They
//! run in f32 inside an autocast scope (see [`crate::autocast`]).

use super::{check_float, check_same, per_group};
use crate::autocast::widened;
use crate::backend::{stats_dtype, BackendStorage, NormSpec};
use crate::cpu::{dispatch_float, norm, strided, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{rows, CudaStorage};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::forward_ad::Duals;
use crate::fused::{AnyFloat, BackendInputs, FusedOp, View};
use crate::storage::Storage;
use crate::Tensor;
use std::borrow::Cow;

impl Tensor {
    /// The norm `name` of the last dim, its output written in dtype `out` (x's when
    /// `None`): the low dtype of an autocast scope for a norm whose output only feeds
    /// products, which would cast it (see [`crate::PreNorm`]). The norm itself runs in
    /// x's dtype, f32 in an autocast scope, and the output's gradient comes back in
    /// `out`.
    pub(crate) fn norm_op(
        &self,
        name: &'static str,
        (weight, bias): (Option<&Tensor>, Option<&Tensor>),
        spec: NormSpec,
        out: Option<DType>,
    ) -> Result<Tensor> {
        let params: Vec<&Tensor> = weight.into_iter().chain(bias).collect();
        if let Some(x) = widened(&[&[self], params.as_slice()].concat())? {
            let (w, b) = (weight.map(|_| &x[1]), bias.map(|_| &x[x.len() - 1]));
            return x[0].norm_op(name, (w, b), spec, out);
        }
        check_float(name, self)?;
        // x's dtype, or a half dtype beside an f32 x: the pairs both backends' kernels
        // write (and whose gradients they read) directly.
        let out = out.unwrap_or(self.dtype());
        let half_of_f32 = self.dtype() == DType::F32 && matches!(out, DType::BF16 | DType::F16);
        if out != self.dtype() && !half_of_f32 {
            return Err(Error::dtypes(name, &[self.dtype(), out]));
        }
        let d = *self
            .shape()
            .last()
            .ok_or_else(|| Error::invalid(name, "needs at least one dim"))?;
        for p in &params {
            check_same(name, &[self, p])?;
            if !per_group(self.shape(), p.shape()) {
                // The per-sample shape, as an example of a grouped parameter.
                let mut example = self.shape()[..1.min(self.rank() - 1)].to_vec();
                example.resize(self.rank() - 1, 1);
                example.push(d);
                return Err(Error::invalid(
                    name,
                    format!(
                        "a weight or bias of shape {:?} does not fit x of shape {:?}: it \
                         must be [{d}], or x's leading dims, then ones, then {d}, one row \
                         per group of x's rows (such as {example:?})",
                        p.shape(),
                        self.shape()
                    ),
                ));
            }
        }
        let (y, mean, rstd) = {
            let (ws, bs) = (weight.map(|w| w.storage()), bias.map(|b| b.storage()));
            let w = ws.as_deref().zip(weight.map(|w| w.layout()));
            let b = bs.as_deref().zip(bias.map(|b| b.layout()));
            let x = (&*self.storage(), self.layout());
            Storage::fused(&NormForward { spec, out }, (x, w, b))?
        };
        let rows = &self.shape()[..self.rank() - 1];
        let (mean, rstd) = (
            Tensor::from_storage(mean, rows),
            Tensor::from_storage(rstd, rows),
        );
        let inputs: Vec<&Tensor> = std::iter::once(self).chain(params).collect();
        let has_weight = weight.is_some();
        let bias_len = bias.map(Tensor::elem_count);
        let has_bias = bias_len.is_some();
        let stats = (mean.clone(), rstd.clone());
        // On a residual stream x also takes the gradient of the residual path, which
        // the walk has gathered by the time it reaches the norm: dx adds it in its own
        // pass instead of a separate sum of two `[rows, d]` tensors.
        Tensor::from_op_accumulating(
            name,
            y,
            self.shape(),
            &inputs,
            move |x, _, g, gathered| {
                let w = has_weight.then(|| &x[1]);
                let ws = w.map(|w| w.storage());
                let wv = ws.as_deref().zip(w.map(|w| w.layout()));
                let rs = gathered.map(|r| r.storage());
                let residual = rs.as_deref().zip(gathered.map(|r| r.layout()));
                let (dx, dw, db) = Storage::fused(
                    &NormBackward { spec, bias_len },
                    (
                        (&x[0].storage(), x[0].layout()),
                        wv,
                        &mean.storage(),
                        &rstd.storage(),
                        AnyFloat((&g.storage(), g.layout())),
                        residual,
                    ),
                )?;
                let mut grads = vec![Some(Tensor::from_storage(dx, x[0].shape()))];
                grads.extend(dw.map(|s| Some(Tensor::from_storage(s, x[1].shape()))));
                let bias_shape = x.last().map(Tensor::shape).unwrap_or_default();
                grads.extend(db.map(|s| Some(Tensor::from_storage(s, bias_shape))));
                Ok(grads)
            },
            move |duals, _| {
                let (mean, rstd) = stats;
                let params = (has_weight, has_bias);
                norm_tangent(duals, (&mean, &rstd), spec, name, params)?.to_dtype(out)
            },
        )
    }

    /// Layer norm over the last dim: (x − mean)/√(var + eps), then `· weight + bias`
    /// where given.
    ///
    /// A weight or bias is `[last dim]` (one for every row), or x's leading dims, then
    /// ones, then the last dim: one row per group of x's rows. For x `[B, T, D]`, a
    /// `[B, 1, D]` weight and bias are a DiT's adaLN modulation,
    /// `LN(x)·(1 + scale) + shift` per sample, in one pass and one backward.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let spec = NormSpec { eps, rms: false };
        self.norm_op("layer_norm", (weight, bias), spec, None)
    }

    /// RMS norm over the last dim: x/√(mean(x²) + eps), then `· weight` where given
    /// (of the shapes [`Tensor::layer_norm`] takes).
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        self.norm_op(
            "rms_norm",
            (weight, None),
            NormSpec { eps, rms: true },
            None,
        )
    }
}

/// The tangent of `x̂·w + b`: tx̂·w + x̂·tw + tb, where tx̂, the normalisation's JVP, is
/// the backward kernel applied to tx without weight (the normalisation's Jacobian is
/// symmetric), and x̂ is recomputed only when the weight carries a tangent.
fn norm_tangent(
    d: &Duals,
    (mean, rstd): (&Tensor, &Tensor),
    spec: NormSpec,
    name: &'static str,
    (has_weight, has_bias): (bool, bool),
) -> Result<Tensor> {
    let (x, tx) = (d.primal(0), d.tangent_or_zeros(0)?);
    let (dx, _, _) = Storage::fused(
        &NormBackward {
            spec,
            bias_len: None,
        },
        (
            (&x.storage(), x.layout()),
            None,
            &mean.storage(),
            &rstd.storage(),
            AnyFloat((&tx.storage(), tx.layout())),
            None,
        ),
    )?;
    let mut t = Tensor::from_storage(dx, x.shape());
    if has_weight {
        t = t.mul(d.primal(1))?;
        if let Some(tw) = d.tangent(1) {
            let x_hat = x.norm_op(name, (None, None), spec, None)?;
            t = t.addcmul(&x_hat, tw)?;
        }
    }
    match d.tangent(1 + has_weight as usize).filter(|_| has_bias) {
        Some(tb) => t.add(tb),
        None => Ok(t),
    }
}

/// The forward kernels: the output (in dtype `out`), the row means (zeros for RMS norm)
/// and the row reciprocal std devs (both in `stats_dtype`), from x and the optional
/// weight and bias of shape `[d]`.
struct NormForward {
    spec: NormSpec,
    out: DType,
}

impl<'a> FusedOp<'a> for NormForward {
    const NAME: &'static str = "norm";
    type Inputs = (
        View<'a, Storage>,
        Option<View<'a, Storage>>,
        Option<View<'a, Storage>>,
    );
    type Output = (Storage, Storage, Storage);

    fn cpu(&self, (x, weight, bias): BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        let st = stats_dtype(x.0.dtype());
        dispatch_float!(Self::NAME, x.0, |F| {
            let param = |p: Option<View<CpuStorage>>| -> Result<norm::Param<F>> {
                p.map(|(s, pl)| {
                    let v = F::view(s, Self::NAME)?;
                    Ok(Cow::Owned(strided::contiguous(&v, pl).to_vec()))
                })
                .transpose()
            };
            let xv = F::view(x.0, Self::NAME)?;
            let (y, mean, rstd) = norm::norm(&xv, x.1, param(weight)?, param(bias)?, self.spec);
            let (mean, rstd) = (F::store(mean, st), F::store(rstd, st));
            // Rounded to the output's dtype (bf16 or f16 beside f32 x, see `norm_op`).
            Ok((F::store(y, self.out).into(), mean.into(), rstd.into()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        (x, weight, bias): BackendInputs<'a, Self, CudaStorage>,
    ) -> Result<Self::Output> {
        let (y, mean, rstd) = rows::norm(x.0, x.1, weight, bias, self.spec, self.out)?;
        Ok((y.into(), mean.into(), rstd.into()))
    }
}

/// The backward kernels: dx, and dweight and dbias where the forward had them, from x,
/// the weight, the forward's row statistics and the output gradient; dx plus a
/// gradient of x's shape gathered elsewhere, where one is given.
struct NormBackward {
    spec: NormSpec,
    /// The bias's element count, where the forward had one (its gradient's size).
    bias_len: Option<usize>,
}

impl<'a> FusedOp<'a> for NormBackward {
    const NAME: &'static str = "norm_backward";
    /// x, the weight, the row statistics, the output's gradient (in the output's
    /// dtype, which may differ from x's) and x's gradient gathered elsewhere.
    type Inputs = (
        View<'a, Storage>,
        Option<View<'a, Storage>>,
        &'a Storage,
        &'a Storage,
        AnyFloat<'a>,
        Option<View<'a, Storage>>,
    );
    type Output = (Storage, Option<Storage>, Option<Storage>);

    fn cpu(
        &self,
        (x, weight, mean, rstd, grad, residual): BackendInputs<'a, Self, CpuStorage>,
    ) -> Result<Self::Output> {
        let dt = x.0.dtype();
        // A bf16 or f16 gradient beside f32 x (see `norm_op`) is converted by `F::view`.
        dispatch_float!(Self::NAME, x.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let w = match weight {
                Some((s, wl)) => Some(Cow::Owned(strided::contiguous(&view(s)?, wl).to_vec())),
                None => None,
            };
            let (xv, g) = (view(x.0)?, view(grad.0)?);
            let (mean, rstd) = (view(mean)?, view(rstd)?);
            let rv = residual.map(|(s, _)| view(s)).transpose()?;
            let residual = rv.as_deref().zip(residual.map(|(_, l)| l));
            let (x, g) = ((&*xv, x.1), (&*g, grad.1));
            let stats = (&*mean, &*rstd);
            let r = norm::norm_backward(x, w, self.bias_len, stats, (g, residual), self.spec);
            let store = |v| -> Storage { F::store(v, dt).into() };
            Ok((store(r.dx), r.dw.map(store), r.db.map(store)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        (x, weight, mean, rstd, grad, residual): BackendInputs<'a, Self, CudaStorage>,
    ) -> Result<Self::Output> {
        let stats = (mean, rstd);
        let (dx, dw, db) = rows::norm_backward(
            x.0,
            x.1,
            weight,
            self.bias_len,
            stats,
            (grad, residual),
            self.spec,
        )?;
        Ok((dx.into(), dw.map(Into::into), db.map(Into::into)))
    }
}
