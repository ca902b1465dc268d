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
}

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
