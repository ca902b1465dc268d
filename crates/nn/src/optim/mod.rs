//! Optimizers: the [`Optimizer`] trait, the parameter list every optimizer keeps, and
//! the state an optimizer exports to a checkpoint.
//!
//! An optimizer is built from a model's [`crate::Module::named_params`] and keeps the
//! parameter handles; [`Optimizer::step`] looks each one up in the [`Gradients`] of a
//! backward pass and updates its storage in place. A parameter without a gradient (a
//! frozen one, which is not a variable, or one the loss did not reach) is skipped and
//! its state left untouched, as PyTorch skips parameters whose `grad` is `None`.

mod adam;
mod loss_scale;
mod sgd;
mod state;

pub use adam::{Adam, AdamConfig};
pub use loss_scale::{LossScaler, LossScalerConfig, LossScalerState};
pub use sgd::{Sgd, SgdConfig};
pub use state::{OptimizerRecord, OptimizerState};

use std::collections::HashSet;
use twinflow_engine::{Error, Gradients, Result, Tensor};

/// Something that updates parameters from their gradients.
pub trait Optimizer {
    /// Updates, in place, every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &Gradients) -> Result<()>;

    /// The learning rate the next step uses.
    fn learning_rate(&self) -> f64;

    /// Sets the learning rate of the next steps (a schedule calls this every step).
    /// Refuses a negative or non-finite rate.
    fn set_learning_rate(&mut self, lr: f64) -> Result<()>;

    /// The state to save: per-parameter buffers as named tensors and a record of the
    /// hyper-parameters and step counts. The tensors share storage with the live
    /// buffers (no copy): save them before the next step.
    fn state(&self) -> OptimizerState;

    /// Restores a saved state: the hyper-parameters and step counts of the record and a
    /// copy of every buffer. Reports every tensor that names no parameter or buffer, or
    /// has the wrong shape or dtype, in one error.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

/// One parameter an optimizer updates, with its per-parameter state `S` (created on
/// its first update).
#[derive(Debug, Clone)]
pub(crate) struct Slot<S> {
    pub(crate) name: String,
    pub(crate) param: Tensor,
    pub(crate) state: Option<S>,
}

/// Slots for `params`, refusing duplicate names. A tensor listed twice (tied weights)
/// keeps only its first name, so it is updated once per step, as PyTorch's
/// `named_parameters()` lists a shared parameter once.
pub(crate) fn slots<S>(op: &'static str, params: Vec<(String, Tensor)>) -> Result<Vec<Slot<S>>> {
    let (mut names, mut ids) = (HashSet::new(), HashSet::new());
    let mut out = Vec::with_capacity(params.len());
    for (name, param) in params {
        if !names.insert(name.clone()) {
            return Err(Error::invalid(
                op,
                format!("parameter name `{name}` appears twice"),
            ));
        }
        if ids.insert(param.id()) {
            out.push(Slot {
                name,
                param,
                state: None,
            });
        }
    }
    Ok(out)
}

/// The gradient of a slot's parameter, or `None` for a frozen parameter (not a
/// variable) or one the backward did not reach.
pub(crate) fn gradient<'g, S>(slot: &Slot<S>, grads: &'g Gradients) -> Option<&'g Tensor> {
    grads.get(&slot.param).filter(|_| slot.param.is_variable())
}

/// Refuses a negative or non-finite learning rate (or other non-negative
/// hyper-parameter), naming it.
pub(crate) fn check_non_negative(op: &'static str, what: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!("{what} must be finite and >= 0, got {value}"),
    ))
}
