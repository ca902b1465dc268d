//! The interface every TwinFlow network implements: a velocity field
//! `F_θ(x, t, tt, c)` over flat data.

use crate::init::ForwardRng;
use crate::module::Module;
use twinflow_engine::{DType, Error, Result, Tensor};

/// A network predicting a velocity from a state, two signed times and a class label.
pub trait VelocityModel: Module {
    /// `F_θ(x, t, tt, labels)`: x `[B, D]` flat data; t and tt `[B]` signed times of
    /// x's dtype (t < 0 marks TwinFlow's fake trajectory); labels i64 `[B]`, each in
    /// `0..=classes` where `classes` is the null (unconditional) label. Returns `[B, D]`.
    fn velocity(&self, x: &Tensor, t: &Tensor, tt: &Tensor, labels: &Tensor) -> Result<Tensor>;

    /// The stream of the model's run-time randomness (dropout, label dropout): save its
    /// state before a forward and restore it to repeat the same draws.
    fn forward_rng(&self) -> &ForwardRng;

    /// [`velocity`](VelocityModel::velocity) of each of `inputs` (`(x, t, tt,
    /// labels)`, all of one batch size), computed in one forward over the inputs
    /// stacked along the batch. Each input gets the run-time draws (dropout masks,
    /// dropped labels) that a forward of it alone would get from the stream's current
    /// state, and the stream ends where such a forward leaves it: the results are
    /// those of one forward per input, each started from the same saved state, as
    /// TwinFlow's paired no-gradient forwards are specified. One forward reads each
    /// weight once instead of once per input. A model whose output for a sample
    /// depends on the rest of its batch overrides this with one forward per input,
    /// each started from the stream's state at the call.
    fn velocity_stacked(&self, inputs: &[VelocityArgs]) -> Result<Vec<Tensor>> {
        let Some(&(x, ..)) = inputs.first() else {
            return Ok(Vec::new());
        };
        let b = x.shape().first().copied().unwrap_or(0);
        if let Some(&(other, ..)) = inputs.iter().find(|i| i.0.shape().first() != Some(&b)) {
            return Err(Error::invalid(
                "velocity_stacked",
                format!(
                    "every input needs the same batch size, got x of {:?} and {:?}",
                    x.shape(),
                    other.shape()
                ),
            ));
        }
        let stack = |operand: usize| -> Result<Tensor> {
            let parts: Vec<&Tensor> = inputs
                .iter()
                .map(|&(x, t, tt, c)| [x, t, tt, c][operand])
                .collect();
            Tensor::cat(&parts, 0)
        };
        let (xs, ts, tts, labels) = (stack(0)?, stack(1)?, stack(2)?, stack(3)?);
        let out = self
            .forward_rng()
            .with_copies(inputs.len(), || self.velocity(&xs, &ts, &tts, &labels))?;
        (0..inputs.len()).map(|i| out.narrow(0, i * b, b)).collect()
    }
}

/// The operands of one [`VelocityModel::velocity`] call: `(x, t, tt, labels)`.
pub type VelocityArgs<'a> = (&'a Tensor, &'a Tensor, &'a Tensor, &'a Tensor);

/// Checks the operands of [`VelocityModel::velocity`] for data of `dim` values per
/// sample and returns the batch size.
pub(crate) fn check_velocity_inputs(
    op: &'static str,
    dim: usize,
    x: &Tensor,
    t: &Tensor,
    tt: &Tensor,
    labels: &Tensor,
) -> Result<usize> {
    let b = match x.shape() {
        &[b, d] if d == dim => b,
        s => {
            return Err(Error::invalid(
                op,
                format!("x must be [B, {dim}], got {s:?}"),
            ))
        }
    };
    for (name, time) in [("t", t), ("tt", tt)] {
        if time.shape() != [b] || time.dtype() != x.dtype() {
            return Err(Error::invalid(
                op,
                format!(
                    "{name} must be [{b}] of x's dtype {}, got {} {:?}",
                    x.dtype(),
                    time.dtype(),
                    time.shape()
                ),
            ));
        }
    }
    if labels.shape() != [b] || labels.dtype() != DType::I64 {
        return Err(Error::invalid(
            op,
            format!(
                "labels must be i64 [{b}], got {} {:?}",
                labels.dtype(),
                labels.shape()
            ),
        ));
    }
    Ok(b)
}
