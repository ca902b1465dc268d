//! Adam and AdamW with PyTorch's `torch.optim.Adam`/`AdamW` semantics, on the engine's
//! fused in-place kernel, all parameters in one multi-tensor update
//! ([`Tensor::adam_update_many`]).

use super::state::{group_state, hyper_from, report, restored_buffer};
use super::{
    check_non_negative, gradient, slots, Optimizer, OptimizerRecord, OptimizerState, Slot,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use twinflow_engine::{
    AdamStep, AdamTensors, DType, Error, Gradients, NoGradGuard, Result, Tensor,
};

const OP: &str = "Adam";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";

/// Hyper-parameters of [`Adam`] (AdamW when `decoupled_weight_decay` is set).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment (PyTorch's `betas[0]`).
    pub beta1: f64,
    /// Decay of the second moment (PyTorch's `betas[1]`).
    pub beta2: f64,
    /// Added to the bias-corrected √v̂ in the denominator.
    pub eps: f64,
    /// Weight decay coefficient.
    pub weight_decay: f64,
    /// AdamW: decay the parameter by `lr·weight_decay·θ` instead of adding
    /// `weight_decay·θ` to the gradient (Adam's L2 penalty).
    pub decoupled_weight_decay: bool,
}

impl Default for AdamConfig {
    /// `torch.optim.Adam`'s defaults: lr 10⁻³, betas (0.9, 0.999), eps 10⁻⁸, no decay.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW`'s defaults: Adam's, with decoupled weight decay 10⁻².
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..AdamConfig::default()
        }
    }

    /// Refuses values PyTorch refuses.
    pub fn validate(&self) -> Result<()> {
        check_non_negative(OP, "lr", self.lr)?;
        check_non_negative(OP, "eps", self.eps)?;
        check_non_negative(OP, "weight_decay", self.weight_decay)?;
        for (what, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(
                    OP,
                    format!("{what} must lie in [0, 1), got {beta}"),
                ));
            }
        }
        Ok(())
    }

    /// `"adamw"` or `"adam"`, the kind a saved state records.
    fn kind(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "adamw"
        } else {
            "adam"
        }
    }
}

/// Per-parameter state: updates applied and the two moment buffers (f32).
#[derive(Debug, Clone)]
struct AdamState {
    steps: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl AdamState {
    fn new(param: &Tensor) -> Result<Self> {
        let zeros = || Tensor::zeros(param.shape(), DType::F32, param.device());
        Ok(AdamState {
            steps: 0,
            exp_avg: zeros()?,
            exp_avg_sq: zeros()?,
        })
    }
}

/// Adam / AdamW. For each parameter θ with gradient g at its step t (counted per
/// parameter from 1):
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `θ ← θ − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`, with the weight decay either added to
/// g (Adam) or applied as `θ ← θ − lr·wd·θ` first (AdamW).
///
/// Parameters must be f32: the fused kernel updates f32 storage only.
#[derive(Debug, Clone)]
pub struct Adam {
    config: AdamConfig,
    slots: Vec<Slot<AdamState>>,
}

impl Adam {
    /// An optimizer of `params` (e.g. [`crate::Module::named_params`]); refuses a
    /// trainable parameter that is not f32.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Result<Self> {
        config.validate()?;
        let slots = slots(OP, params)?;
        let not_f32: Vec<String> = slots
            .iter()
            .filter(|s| s.param.is_variable() && s.param.dtype() != DType::F32)
            .map(|s| format!("`{}` is {}", s.name, s.param.dtype()))
            .collect();
        if !not_f32.is_empty() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the fused kernel updates f32 parameters only: {}",
                    not_f32.join(", ")
                ),
            ));
        }
        Ok(Adam { config, slots })
    }

    /// The hyper-parameters in use.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }
}

/// The kernel's arguments for a parameter at its 1-based step `step`.
fn step_args(c: &AdamConfig, step: u64) -> AdamStep {
    AdamStep {
        lr: c.lr,
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        weight_decay: c.weight_decay,
        decoupled: c.decoupled_weight_decay,
        step,
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let _no_grad = NoGradGuard::new();
        let config = self.config;
        // Every parameter with a gradient, in one multi-tensor update.
        let mut stepped = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if gradient(slot, grads).is_none() {
                continue;
            }
            if slot.state.is_none() {
                slot.state = Some(AdamState::new(&slot.param)?);
            }
            stepped.push(i);
        }
        let list = stepped
            .iter()
            .filter_map(|&i| {
                let slot = &self.slots[i];
                let state = slot.state.as_ref()?;
                Some(AdamTensors {
                    param: &slot.param,
                    grad: gradient(slot, grads)?,
                    exp_avg: &state.exp_avg,
                    exp_avg_sq: &state.exp_avg_sq,
                    step: step_args(&config, state.steps + 1),
                })
            })
            .collect::<Vec<_>>();
        Tensor::adam_update_many(&list)?;
        for &i in &stepped {
            if let Some(state) = &mut self.slots[i].state {
                state.steps += 1;
            }
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
            kind: self.config.kind().into(),
            hyper: serde_json::to_value(self.config).unwrap_or_default(),
            steps: Default::default(),
        };
        let mut tensors = Vec::new();
        for slot in &self.slots {
            let Some(state) = &slot.state else { continue };
            record.steps.insert(slot.name.clone(), state.steps);
            tensors.push((format!("{}.{EXP_AVG}", slot.name), state.exp_avg.clone()));
            tensors.push((
                format!("{}.{EXP_AVG_SQ}", slot.name),
                state.exp_avg_sq.clone(),
            ));
        }
        OptimizerState { tensors, record }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let config: AdamConfig = hyper_from(OP, &["adam", "adamw"], &state.record)?;
        config.validate()?;
        let mut problems = Vec::new();
        let buffers = [EXP_AVG, EXP_AVG_SQ];
        let mut groups = group_state(&self.slots, &buffers, &state.tensors, &mut problems);
        let mut restored = Vec::with_capacity(self.slots.len());
        let mut steps = state.record.steps.clone();
        for (i, slot) in self.slots.iter().enumerate() {
            let saved = groups.remove(&i).unwrap_or_default();
            let step = steps.remove(&slot.name);
            restored.push(restore_slot(slot, step, &saved, &mut problems)?);
        }
        for name in steps.keys() {
            problems.push(format!("step count for unknown parameter `{name}`"));
        }
        report(OP, problems)?;
        self.config = config;
        for (slot, state) in self.slots.iter_mut().zip(restored) {
            slot.state = state;
        }
        Ok(())
    }
}

/// The state of one parameter from its saved step count and moments: none when neither
/// was saved; both moments and the count must be there otherwise.
fn restore_slot(
    slot: &Slot<AdamState>,
    steps: Option<u64>,
    saved: &BTreeMap<&str, Tensor>,
    problems: &mut Vec<String>,
) -> Result<Option<AdamState>> {
    if steps.is_none() && saved.is_empty() {
        return Ok(None);
    }
    let mut moment = |buffer: &str| -> Result<Option<Tensor>> {
        let name = format!("{}.{buffer}", slot.name);
        match saved.get(buffer) {
            Some(t) => restored_buffer(&name, t, &slot.param, DType::F32, problems),
            None => {
                problems.push(format!("missing tensor `{name}`"));
                Ok(None)
            }
        }
    };
    let (exp_avg, exp_avg_sq) = (moment(EXP_AVG)?, moment(EXP_AVG_SQ)?);
    let steps = steps.filter(|&s| s > 0);
    if steps.is_none() {
        problems.push(format!(
            "moments of `{}` saved without a step count >= 1",
            slot.name
        ));
    }
    Ok(match (steps, exp_avg, exp_avg_sq) {
        (Some(steps), Some(exp_avg), Some(exp_avg_sq)) => Some(AdamState {
            steps,
            exp_avg,
            exp_avg_sq,
        }),
        _ => None,
    })
}
