//! θ⁻: the exponential moving average of a model's parameters, with TwinFlow's warm-up
//! of the decay (docs/method.md §4).

use crate::module::Module;
use serde::{Deserialize, Serialize};
use twinflow_engine::{DType, Error, NoGradGuard, Result, Tensor};

const OP: &str = "Ema";

/// An EMA of a model's parameters: `θ⁻ ← m·θ⁻ + (1 − m)·θ` at every
/// [`update`](Ema::update), where the decay m starts at 0 (so the first update copies
/// θ) and after each update moves halfway along `(1 − m)` towards the target:
/// `m ← m + (1 − m)·(m_target − m)·0.5`.
///
/// Two targets are special: `m_target = 0` keeps no copy, θ⁻ is θ itself (the rule
/// would keep m at 0 anyway); `m_target = 1` keeps a frozen copy of θ taken at
/// construction, never updated (m is 1 throughout).
///
/// The copy is a clone of the model whose parameters are detached tensors with their
/// own storage, replaced by fresh ones at each update (so a clone of [`Ema::model`]
/// taken earlier keeps its values), and [`Ema::model`] is a usable model for θ⁻
/// forwards (no gradient reaches it).
#[derive(Debug, Clone)]
pub struct Ema<M> {
    /// The averaged model; `None` when θ⁻ is θ (target 0).
    shadow: Option<M>,
    state: EmaState,
}

/// The scalars of an [`Ema`], saved in checkpoints beside its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaState {
    /// The decay the next update uses.
    pub decay: f64,
    /// The configured decay the warm-up tends to.
    pub target: f64,
    /// Updates made so far.
    pub updates: u64,
}

impl<M: Module + Clone> Ema<M> {
    /// The EMA of `online` with decay target `target` (in [0, 1]); copies the
    /// parameters unless the target is 0.
    pub fn new(online: &M, target: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&target) {
            return Err(Error::invalid(
                OP,
                format!("the decay target must lie in [0, 1], got {target}"),
            ));
        }
        let shadow = if target == 0.0 {
            None
        } else {
            Some(detached_copy(online)?)
        };
        let decay = if target == 1.0 { 1.0 } else { 0.0 };
        Ok(Ema {
            shadow,
            state: EmaState {
                decay,
                target,
                updates: 0,
            },
        })
    }

    /// One EMA step towards `online`'s current parameters, then the decay warm-up.
    /// Refuses a model whose parameter names or shapes differ from the copy's.
    pub fn update(&mut self, online: &M) -> Result<()> {
        let EmaState {
            decay: m, target, ..
        } = self.state;
        // Target 0 keeps no copy and target 1 a frozen one: only targets between average.
        if let Some(shadow) = self.shadow.as_mut().filter(|_| target < 1.0) {
            average_into(shadow, online, m)?;
            self.state.decay = m + (1.0 - m) * (target - m) * 0.5;
        }
        self.state.updates += 1;
        Ok(())
    }

    /// θ⁻ for a forward pass: the averaged copy, or `online` itself when the target is 0.
    pub fn model<'a>(&'a self, online: &'a M) -> &'a M {
        self.shadow.as_ref().unwrap_or(online)
    }

    /// The decay m the next update uses.
    pub fn decay(&self) -> f64 {
        self.state.decay
    }

    /// The configured decay target.
    pub fn target(&self) -> f64 {
        self.state.target
    }

    /// Updates made so far.
    pub fn updates(&self) -> u64 {
        self.state.updates
    }

    /// The averaged copy (`None` when the target is 0 and θ⁻ is θ).
    pub fn shadow(&self) -> Option<&M> {
        self.shadow.as_ref()
    }

    /// The averaged copy, mutably (to switch its train/eval mode or restore it from a
    /// checkpoint).
    pub fn shadow_mut(&mut self) -> Option<&mut M> {
        self.shadow.as_mut()
    }

    /// The decay, target and update count, to save.
    pub fn state(&self) -> EmaState {
        self.state
    }

    /// Resumes the warm-up from a saved state. Refuses a state saved with another
    /// target (the decay sequence would not be this EMA's) or a decay outside [0, 1].
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        if state.target != self.state.target {
            return Err(Error::invalid(
                OP,
                format!(
                    "the saved EMA has decay target {}, this one {}",
                    state.target, self.state.target
                ),
            ));
        }
        if !(0.0..=1.0).contains(&state.decay) {
            return Err(Error::invalid(
                OP,
                format!("the saved decay {} lies outside [0, 1]", state.decay),
            ));
        }
        self.state = state;
        Ok(())
    }
}

/// A clone of `model` whose parameters are detached copies with their own contiguous
/// storage (a clone alone would share storage with the online model).
fn detached_copy<M: Module + Clone>(model: &M) -> Result<M> {
    let mut copy = model.clone();
    let mut result = Ok(());
    copy.visit_params_mut(&mut |_, t| {
        if result.is_ok() {
            result = fresh_copy(t).map(|c| *t = c);
        }
    });
    result.map(|_| copy)
}

/// A constant tensor with `t`'s values in new storage.
fn fresh_copy(t: &Tensor) -> Result<Tensor> {
    let copy = Tensor::zeros(t.shape(), t.dtype(), t.device())?;
    copy.assign(t)?;
    Ok(copy)
}

/// `θ⁻ ← m·θ⁻ + (1 − m)·θ` for every parameter, matched by name and position.
fn average_into<M: Module>(shadow: &mut M, online: &M, m: f64) -> Result<()> {
    let _no_grad = NoGradGuard::new();
    let theirs = online.named_params();
    let mut ours = 0;
    shadow.visit_params(&mut |_, _| ours += 1);
    if ours != theirs.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "the model has {} parameters, the EMA copy {ours}",
                theirs.len()
            ),
        ));
    }
    let mut theirs = theirs.iter();
    let mut result = Ok(());
    shadow.visit_params_mut(&mut |name, avg| {
        let Some((online_name, theta)) = theirs.next().filter(|_| result.is_ok()) else {
            return;
        };
        result = average_one(name, avg, online_name, theta, m);
    });
    result
}

/// `avg ← θ + m·(avg − θ)`: two passes into fresh storage that replaces the old (a
/// snapshot taken with `clone` keeps its values).
fn average_one(
    name: &str,
    avg: &mut Tensor,
    online_name: &str,
    theta: &Tensor,
    m: f64,
) -> Result<()> {
    if name != online_name || avg.shape() != theta.shape() {
        return Err(Error::invalid(
            OP,
            format!(
                "the model's parameter `{online_name}` {:?} does not match the EMA's \
                 `{name}` {:?}",
                theta.shape(),
                avg.shape()
            ),
        ));
    }
    // The fused in-place update where it applies (an f32 copy of its own, as `Ema`
    // makes); the same arithmetic through two ops otherwise.
    let own_storage = avg.is_contiguous() && avg.layout().offset() == 0;
    if avg.dtype() == DType::F32 && own_storage && !avg.shares_storage(theta) {
        return avg.ema_update(theta, m);
    }
    let decay = Tensor::scalar(m, avg.dtype(), avg.device())?;
    *avg = theta.addcmul(&avg.sub(theta)?, &decay)?;
    Ok(())
}
