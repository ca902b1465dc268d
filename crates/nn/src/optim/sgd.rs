//! Stochastic gradient descent with momentum, Nesterov momentum and weight decay, with
//! PyTorch's `torch.optim.SGD` semantics.

use super::state::{group_state, hyper_from, report, restored_buffer};
use super::{
    check_non_negative, gradient, slots, Optimizer, OptimizerRecord, OptimizerState, Slot,
};
use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, Gradients, NoGradGuard, Result, Tensor};

const OP: &str = "SGD";
const KIND: &str = "sgd";
const MOMENTUM_BUFFER: &str = "momentum_buffer";

/// Hyper-parameters of [`Sgd`], named and defaulted as in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0: plain SGD, no buffer kept).
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer.
    pub dampening: f64,
    /// L2 penalty: `weight_decay·θ` is added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening = 0).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// PyTorch's defaults: lr 10⁻³, no momentum, no weight decay.
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    /// Refuses values PyTorch refuses.
    pub fn validate(&self) -> Result<()> {
        check_non_negative(OP, "lr", self.lr)?;
        check_non_negative(OP, "momentum", self.momentum)?;
        check_non_negative(OP, "weight_decay", self.weight_decay)?;
        if !self.dampening.is_finite() {
            return Err(Error::invalid(OP, "dampening must be finite"));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::invalid(
                OP,
                "Nesterov momentum needs momentum > 0 and dampening = 0",
            ));
        }
        Ok(())
    }
}

/// Per-parameter state: updates applied and the momentum buffer (when momentum ≠ 0).
#[derive(Debug, Clone, Default)]
struct SgdState {
    steps: u64,
    buffer: Option<Tensor>,
}

/// SGD: for each parameter θ with gradient g,
/// `g ← g + wd·θ`; with momentum μ, `b ← g` on the first step and
/// `b ← μ·b + (1 − dampening)·g` after, then `g ← g + μ·b` (Nesterov) or `g ← b`;
/// finally `θ ← θ − lr·g`.
#[derive(Debug, Clone)]
pub struct Sgd {
    config: SgdConfig,
    slots: Vec<Slot<SgdState>>,
}

impl Sgd {
    /// An optimizer of `params` (e.g. [`crate::Module::named_params`]).
    pub fn new(params: Vec<(String, Tensor)>, config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Sgd {
            config,
            slots: slots(OP, params)?,
        })
    }

    /// The hyper-parameters in use.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

/// The update direction of one parameter (the `g` that `θ ← θ − lr·g` uses), updating
/// its momentum buffer.
fn direction(
    cfg: &SgdConfig,
    param: &Tensor,
    grad: &Tensor,
    buffer: &mut Option<Tensor>,
) -> Result<Tensor> {
    let g = if cfg.weight_decay == 0.0 {
        grad.clone()
    } else {
        grad.add(&param.mul_scalar(cfg.weight_decay)?)?
    };
    if cfg.momentum == 0.0 {
        return Ok(g);
    }
    let buf = match buffer {
        Some(b) => {
            b.assign(
                &b.mul_scalar(cfg.momentum)?
                    .add(&g.mul_scalar(1.0 - cfg.dampening)?)?,
            )?;
            b
        }
        None => {
            // The buffer owns its storage: a gradient may be a view shared with others.
            let b = g.zeros_like()?;
            b.assign(&g)?;
            buffer.insert(b)
        }
    };
    if cfg.nesterov {
        g.add(&buf.mul_scalar(cfg.momentum)?)
    } else {
        Ok(buf.clone())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let _no_grad = NoGradGuard::new();
        let cfg = self.config;
        for slot in &mut self.slots {
            let Some(grad) = gradient(slot, grads) else {
                continue;
            };
            let state = slot.state.get_or_insert_with(SgdState::default);
            let d = direction(&cfg, &slot.param, grad, &mut state.buffer)?;
            slot.param
                .assign(&slot.param.add(&d.mul_scalar(-cfg.lr)?)?)?;
            state.steps += 1;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        check_non_negative(OP, "lr", lr)?;
        self.config.lr = lr;
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        let mut record = OptimizerRecord {
            kind: KIND.into(),
            hyper: serde_json::to_value(self.config).unwrap_or_default(),
            steps: Default::default(),
        };
        let mut tensors = Vec::new();
        for slot in &self.slots {
            let Some(state) = &slot.state else { continue };
            record.steps.insert(slot.name.clone(), state.steps);
            if let Some(b) = &state.buffer {
                tensors.push((format!("{}.{MOMENTUM_BUFFER}", slot.name), b.clone()));
            }
        }
        OptimizerState { tensors, record }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let config: SgdConfig = hyper_from(OP, &[KIND], &state.record)?;
        config.validate()?;
        let mut problems = Vec::new();
        let mut groups = group_state(
            &self.slots,
            &[MOMENTUM_BUFFER],
            &state.tensors,
            &mut problems,
        );
        let known = |name: &String| self.slots.iter().any(|s| &s.name == name);
        for name in state.record.steps.keys().filter(|n| !known(n)) {
            problems.push(format!("step count for unknown parameter `{name}`"));
        }
        let mut restored = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let saved = groups.remove(&i).unwrap_or_default();
            let buffer = match saved.get(MOMENTUM_BUFFER) {
                Some(t) => {
                    let name = format!("{}.{MOMENTUM_BUFFER}", slot.name);
                    restored_buffer(&name, t, &slot.param, slot.param.dtype(), &mut problems)?
                }
                None => None,
            };
            let steps = state.record.steps.get(&slot.name).copied();
            restored.push((steps.is_some() || buffer.is_some()).then(|| SgdState {
                steps: steps.unwrap_or(0),
                buffer,
            }));
        }
        report(OP, problems)?;
        self.config = config;
        for (slot, state) in self.slots.iter_mut().zip(restored) {
            slot.state = state;
        }
        Ok(())
    }
}
