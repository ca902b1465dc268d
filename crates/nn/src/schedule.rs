//! Learning-rate schedules, configurable from JSON.
//!
//! A schedule maps the number of optimizer steps already taken (0 before the first
//! update) to the learning rate of the next update; a trainer calls
//! `optimizer.set_learning_rate(schedule.lr_at(step))` before each step.

use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, Result};

/// A learning-rate schedule. In JSON, `{"kind": "constant", "lr": 2e-4}` or
/// `{"kind": "warmup_cosine", "peak_lr": 2e-4, "warmup_steps": 500,
/// "total_steps": 9400, "min_lr": 0.0}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The same rate at every step.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then a half cosine from
    /// `peak_lr` down to `min_lr` at `total_steps`, and `min_lr` after.
    WarmupCosine {
        /// The rate at the end of the warm-up.
        peak_lr: f64,
        /// Steps of linear warm-up (0: start at the peak).
        warmup_steps: u64,
        /// The step at which the decay reaches `min_lr` (warm-up included).
        total_steps: u64,
        /// The floor the cosine decays to.
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The rate of the update made after `step` updates:
    /// constant: `lr`; warm-up/cosine: `peak·step/warmup` while `step < warmup`, then
    /// `min + (peak − min)·(1 + cos(π·p))/2` with `p = (step − warmup)/(total − warmup)`
    /// clamped to [0, 1] (so `min_lr` from `total_steps` on).
    pub fn lr_at(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupCosine {
                peak_lr,
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    return peak_lr * step as f64 / warmup_steps as f64;
                }
                let decay_steps = total_steps.saturating_sub(warmup_steps);
                if step >= total_steps || decay_steps == 0 {
                    return min_lr;
                }
                let progress = (step - warmup_steps) as f64 / decay_steps as f64;
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                min_lr + (peak_lr - min_lr) * cosine
            }
        }
    }

    /// Refuses negative or non-finite rates and a warm-up longer than the schedule.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LrSchedule::Constant { lr } => check_rate("lr", lr),
            LrSchedule::WarmupCosine {
                peak_lr,
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                if warmup_steps > total_steps {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "warmup_steps ({warmup_steps}) exceeds total_steps ({total_steps})"
                        ),
                    ));
                }
                check_rate("peak_lr", peak_lr)?;
                check_rate("min_lr", min_lr)
            }
        }
    }
}

const OP: &str = "LrSchedule";

/// Refuses a negative or non-finite rate, naming it.
fn check_rate(name: &str, rate: f64) -> Result<()> {
    if rate.is_finite() && rate >= 0.0 {
        return Ok(());
    }
    Err(Error::invalid(
        OP,
        format!("{name} must be finite and >= 0, got {rate}"),
    ))
}
