//! Fused layer norm and RMS norm over the last dim, with hand-written backwards. They
//! run in f32 inside an autocast scope (see [`crate::autocast`]).

use super::{check_float, check_same};
use crate::autocast::widened;
use crate::backend::{BackendStorage, NormSpec};
use crate::error::{Error, Result};
use crate::Tensor;

impl Tensor {
    fn norm_op(
        &self,
        name: &'static str,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        spec: NormSpec,
    ) -> Result<Tensor> {
        let params: Vec<&Tensor> = weight.into_iter().chain(bias).collect();
        if let Some(x) = widened(&[&[self], params.as_slice()].concat())? {
            let (w, b) = (weight.map(|_| &x[1]), bias.map(|_| &x[x.len() - 1]));
            return x[0].norm_op(name, w, b, spec);
        }
        check_float(name, self)?;
        let d = *self
            .shape()
            .last()
            .ok_or_else(|| Error::invalid(name, "needs at least one dim"))?;
        for p in &params {
            check_same(name, &[self, p])?;
            if p.shape() != [d] {
                return Err(Error::shapes(name, &[self.shape(), p.shape()]));
            }
        }
        let (y, mean, rstd) = {
            let (ws, bs) = (weight.map(|w| w.storage()), bias.map(|b| b.storage()));
            let w = ws.as_deref().zip(weight.map(|w| w.layout()));
            let b = bs.as_deref().zip(bias.map(|b| b.layout()));
            self.storage().norm(self.layout(), w, b, spec)?
        };
        let rows = &self.shape()[..self.rank() - 1];
        let (mean, rstd) = (
            Tensor::from_storage(mean, rows),
            Tensor::from_storage(rstd, rows),
        );
        let inputs: Vec<&Tensor> = std::iter::once(self).chain(params).collect();
        let has_weight = weight.is_some();
        let has_bias = bias.is_some();
        Ok(Tensor::from_op(
            name,
            y,
            self.shape(),
            &inputs,
            move |x, _, g| {
                let w = has_weight.then(|| &x[1]);
                let ws = w.map(|w| w.storage());
                let wv = ws.as_deref().zip(w.map(|w| w.layout()));
                let (dx, dw, db) = x[0].storage().norm_backward(
                    x[0].layout(),
                    wv,
                    has_bias,
                    &mean.storage(),
                    &rstd.storage(),
                    (&g.storage(), g.layout()),
                    spec,
                )?;
                let d = [d];
                let mut grads = vec![Some(Tensor::from_storage(dx, x[0].shape()))];
                grads.extend(dw.map(|s| Some(Tensor::from_storage(s, &d))));
                grads.extend(db.map(|s| Some(Tensor::from_storage(s, &d))));
                Ok(grads)
            },
        ))
    }

    /// Layer norm over the last dim: (x − mean)/√(var + eps), then `· weight + bias`
    /// where given (each of shape `[last dim]`).
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        self.norm_op("layer_norm", weight, bias, NormSpec { eps, rms: false })
    }

    /// RMS norm over the last dim: x/√(mean(x²) + eps), then `· weight` where given.
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        self.norm_op("rms_norm", weight, None, NormSpec { eps, rms: true })
    }
}
