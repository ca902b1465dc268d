//! Dynamic loss scaling for f16 training (PyTorch's `GradScaler`).
//!
//! f16 flushes gradients below about 6e-8 to zero. Multiplying the loss by a large
//! scale before backpropagation lifts them into range; the gradients are divided by
//! the same scale before the optimizer sees them. When a gradient overflows (Inf or
//! NaN after the scaled backward) the step is skipped and the scale halved; after
//! `growth_interval` clean steps in a row it doubles again.
//!
//! ```
//! # use twinflow_engine::{Device, Result, Tensor};
//! # use twinflow_nn::{LossScaler, LossScalerConfig};
//! # fn main() -> Result<()> {
//! let w = Tensor::from_vec(vec![1.0f32, 2.0], &[2], Device::Cpu)?.into_variable()?;
//! let mut scaler = LossScaler::new(LossScalerConfig::default())?;
//! let loss = w.square()?.sum_all()?;
//! let mut grads = scaler.scale(&loss)?.backward()?;
//! let found_inf = scaler.unscale_and_check(&mut grads, [&w])?;
//! if !found_inf { /* optimizer.step(&grads)? */ }
//! scaler.update(found_inf);
//! assert_eq!(grads.get(&w).unwrap().to_vec::<f32>()?, vec![2.0, 4.0]);
//! # Ok(())
//! # }
//! ```

use serde::{Deserialize, Serialize};
use twinflow_engine::{DType, Error, Gradients, NoGradGuard, Result, Tensor};

const OP: &str = "loss_scaler";

/// The scaler's schedule (PyTorch's `GradScaler` defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossScalerConfig {
    /// The first scale.
    pub init_scale: f64,
    /// Multiplies the scale after `growth_interval` clean steps.
    pub growth_factor: f64,
    /// Multiplies the scale after a step with an overflow.
    pub backoff_factor: f64,
    /// Clean steps in a row before the scale grows.
    pub growth_interval: u64,
}

impl Default for LossScalerConfig {
    fn default() -> Self {
        LossScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// What a checkpoint keeps of a scaler: its scale and its count of clean steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScalerState {
    /// The current scale.
    pub scale: f64,
    /// Clean steps since the last growth or back-off.
    pub clean_steps: u64,
}

/// A dynamic loss scaler; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    cfg: LossScalerConfig,
    state: LossScalerState,
}

impl LossScaler {
    /// A scaler at `cfg.init_scale`. Refuses a non-positive or non-finite scale, a
    /// growth factor not above 1, a back-off factor outside (0, 1) or a zero interval.
    pub fn new(cfg: LossScalerConfig) -> Result<Self> {
        let bad = |what: String| Err(Error::invalid(OP, what));
        if !(cfg.init_scale.is_finite() && cfg.init_scale > 0.0) {
            return bad(format!(
                "init_scale must be finite and > 0, got {}",
                cfg.init_scale
            ));
        }
        if !(cfg.growth_factor.is_finite() && cfg.growth_factor > 1.0) {
            return bad(format!(
                "growth_factor must be > 1, got {}",
                cfg.growth_factor
            ));
        }
        if !(cfg.backoff_factor > 0.0 && cfg.backoff_factor < 1.0) {
            return bad(format!(
                "backoff_factor must be in (0, 1), got {}",
                cfg.backoff_factor
            ));
        }
        if cfg.growth_interval == 0 {
            return bad("growth_interval must be at least 1".into());
        }
        let state = LossScalerState {
            scale: cfg.init_scale,
            clean_steps: 0,
        };
        Ok(LossScaler { cfg, state })
    }

    /// The current scale.
    pub fn scale_factor(&self) -> f64 {
        self.state.scale
    }

    /// `loss · scale`, recorded in the graph: backpropagate this instead of the loss.
    pub fn scale(&self, loss: &Tensor) -> Result<Tensor> {
        loss.mul_scalar(self.state.scale)
    }

    /// Divides the gradient of each of `params` by the scale (replacing it in the
    /// store) and reports whether any entry is Inf or NaN: then the step must be
    /// skipped. Parameters without a gradient are passed over.
    pub fn unscale_and_check<'a>(
        &self,
        grads: &mut Gradients,
        params: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<bool> {
        let _no_grad = NoGradGuard::new();
        let inv = 1.0 / self.state.scale;
        let mut found_inf = false;
        for p in params {
            let Some(g) = grads.get(p).cloned() else {
                continue;
            };
            let g = g.mul_scalar(inv)?;
            found_inf |= !finite(&g)?;
            grads.insert(p, g);
        }
        Ok(found_inf)
    }

    /// Moves the scale after a step: backs off on an overflow (and restarts the count
    /// of clean steps), grows after `growth_interval` clean steps in a row.
    pub fn update(&mut self, found_inf: bool) {
        let s = &mut self.state;
        if found_inf {
            s.scale *= self.cfg.backoff_factor;
            s.clean_steps = 0;
            return;
        }
        s.clean_steps += 1;
        if s.clean_steps >= self.cfg.growth_interval {
            // Growth stops short of overflowing the scale itself to Inf.
            let grown = s.scale * self.cfg.growth_factor;
            if grown.is_finite() {
                s.scale = grown;
            }
            s.clean_steps = 0;
        }
    }

    /// The state to save.
    pub fn state(&self) -> LossScalerState {
        self.state
    }

    /// Restores a saved state; refuses a non-positive or non-finite scale.
    pub fn load_state(&mut self, state: LossScalerState) -> Result<()> {
        if !(state.scale.is_finite() && state.scale > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("saved scale must be finite and > 0, got {}", state.scale),
            ));
        }
        self.state = state;
        Ok(())
    }
}

/// True when every entry of `g` is finite. The largest magnitude (a reduction that
/// propagates NaN) decides, so large but finite gradients never read as an overflow.
fn finite(g: &Tensor) -> Result<bool> {
    if g.elem_count() == 0 {
        return Ok(true);
    }
    let g = match g.dtype() {
        DType::BF16 | DType::F16 => g.to_dtype(DType::F32)?,
        _ => g.clone(),
    };
    let dims: Vec<isize> = (0..g.rank() as isize).collect();
    let top = match dims.is_empty() {
        true => g.abs()?,
        false => g.abs()?.max(&dims, false)?,
    };
    Ok(top.item()?.is_finite())
}
