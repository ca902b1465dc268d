//! Samplers: turn a trained [`VelocityModel`] and noise into data (docs/method.md §5).
//!
//! Conventions of docs/method.md §1: `t = 0` is data, `t = 1` noise, the path is
//! `x_t = t·z + (1 − t)·x`, and a prediction `F` at `(x_t, t)` inverts to the data
//! `x̂ = x_t − |t|·F` and the noise `ẑ = x_t + (1 − |t|)·F`.
//!
//! - [`ucgm`]: the UCGM any-step sampler (TwinFlow / RCGM models; 1 NFE by default).
//! - [`euler`], [`heun`]: ODE integration of the instantaneous velocity (`tt = t`) of
//!   plain flow-matching models.
//! - [`Guidance`]: classifier-free guidance `F_null + w·(F_cond − F_null)`.
//! - [`SamplerConfig`] + [`sample`]: one serde-configurable entry point over all three.
//!
//! Every sampler walks the grid of [`time_grid`] and runs under `no_grad`.

mod grid;
mod guidance;
mod ode;
mod ucgm;

pub use grid::{kumaraswamy, linspace, time_grid, MAX_SAMPLER_STEPS};
pub use guidance::Guidance;
pub use ode::{euler, heun};
pub use ucgm::{ucgm, JumpTarget, UcgmOptions};

use serde::{Deserialize, Serialize};
use twinflow_engine::{DType, Error, Generator, Result, Tensor};
use twinflow_nn::VelocityModel;

/// Which sampler [`sample`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerMethod {
    /// The UCGM any-step sampler ([`ucgm`]); the default.
    #[default]
    Ucgm,
    /// Euler steps of the instantaneous velocity ([`euler`]); NFE = K.
    Euler,
    /// Heun steps of the instantaneous velocity ([`heun`]); NFE = 2K − 1.
    Heun,
}

/// The settings of [`sample`]. Every field has a default (the 1-NFE deterministic UCGM
/// sampler without guidance); unknown fields are rejected when deserializing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// The sampler.
    pub method: SamplerMethod,
    /// The number of steps K (≥ 1). NFE is K for UCGM and Euler, 2K − 1 for Heun (each
    /// evaluation on a doubled batch when guided).
    pub steps: usize,
    /// The classifier-free guidance weight `w` of [`Guidance`]: 1 means none.
    pub guidance: f64,
    /// Kumaraswamy warp parameters `[a, b, c]` of the time grid ([`time_grid`]);
    /// `[1, 1, 1]` (the identity) by default.
    pub kumaraswamy: [f64; 3],
    /// Gaps `[g₀, g₁]` left at the noise and data ends of the time grid ([`time_grid`]);
    /// `[0, 0]` by default. With the defaults the grid is uniform, `1, (K−1)/K, …, 0`.
    pub gaps: [f64; 2],
    /// UCGM only: the stochastic ratio `ρ ∈ [0, 1]` (0: deterministic).
    pub stochastic_ratio: f64,
    /// UCGM only: the jump target of each step. Unset in a training config means the
    /// method's own ([`TrainConfig::sampler`](crate::train::TrainConfig::sampler):
    /// `any_step` for MeanFlow runs, `few_step` otherwise); unset here means
    /// `few_step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jump: Option<JumpTarget>,
    /// UCGM only: replace `gaps` and `stochastic_ratio` by the reference's few-step
    /// settings at 2 and 4 steps ([`SamplerConfig::at_steps`]). Unset in a training
    /// config means on for TwinFlow runs and off otherwise
    /// ([`TrainConfig::sampler`](crate::train::TrainConfig::sampler)); unset here means
    /// off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presets: Option<bool>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            method: SamplerMethod::Ucgm,
            steps: 1,
            guidance: 1.0,
            kumaraswamy: [1.0, 1.0, 1.0],
            gaps: [0.0, 0.0],
            stochastic_ratio: 0.0,
            jump: None,
            presets: None,
        }
    }
}

impl SamplerConfig {
    /// The reference's 2-NFE UCGM setting: ρ = 1, gaps (0.001, 0.6), times 0.999, 0.6, 0.
    pub fn ucgm_2nfe() -> Self {
        SamplerConfig {
            steps: 2,
            gaps: [0.001, 0.6],
            stochastic_ratio: 1.0,
            ..SamplerConfig::default()
        }
    }

    /// The reference's 4-NFE UCGM setting: ρ = 1, gaps (0.001, 0.5), times 0.999,
    /// 0.8327, 0.6663, 0.5, 0.
    pub fn ucgm_4nfe() -> Self {
        SamplerConfig {
            steps: 4,
            gaps: [0.001, 0.5],
            stochastic_ratio: 1.0,
            ..SamplerConfig::default()
        }
    }

    /// These settings at `steps` steps. With `presets` on and the UCGM sampler, 2 and 4
    /// steps take the gaps and stochastic ratio of [`SamplerConfig::ucgm_2nfe`] and
    /// [`SamplerConfig::ucgm_4nfe`] (the settings the reference recommends for TwinFlow
    /// models); every other step count, and every other setting, is kept.
    pub fn at_steps(&self, steps: usize) -> SamplerConfig {
        let mut cfg = SamplerConfig { steps, ..*self };
        if cfg.presets == Some(true) && cfg.method == SamplerMethod::Ucgm {
            let preset = match steps {
                2 => Some(SamplerConfig::ucgm_2nfe()),
                4 => Some(SamplerConfig::ucgm_4nfe()),
                _ => None,
            };
            if let Some(p) = preset {
                cfg.gaps = p.gaps;
                cfg.stochastic_ratio = p.stochastic_ratio;
            }
        }
        cfg
    }

    /// The jump target in force: `jump`, or `few_step` where unset.
    pub fn jump_target(&self) -> JumpTarget {
        self.jump.unwrap_or_default()
    }

    /// The time grid of these settings ([`time_grid`]).
    pub fn time_grid(&self) -> Result<Vec<f64>> {
        time_grid(self.steps, self.kumaraswamy, self.gaps)
    }

    /// Checks every setting: a valid grid, a finite guidance weight, `ρ ∈ [0, 1]`, and
    /// no UCGM-only setting (`stochastic_ratio ≠ 0`, a `jump` other than `few_step`) with
    /// Euler or Heun.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "sampler config";
        self.time_grid()?;
        if !self.guidance.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("guidance must be finite, got {}", self.guidance),
            ));
        }
        let rho = self.stochastic_ratio;
        if !(0.0..=1.0).contains(&rho) {
            return Err(Error::invalid(
                OP,
                format!("stochastic_ratio must lie in [0, 1], got {rho}"),
            ));
        }
        let jump = self.jump_target();
        let ucgm_only = rho != 0.0 || jump != JumpTarget::FewStep;
        if self.method != SamplerMethod::Ucgm && ucgm_only {
            return Err(Error::invalid(
                OP,
                format!(
                    "stochastic_ratio ({rho}) and jump ({jump:?}) are UCGM settings; method {:?} \
                     needs their defaults (0, few_step)",
                    self.method
                ),
            ));
        }
        Ok(())
    }
}

/// Where the samples start.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Given noise `z` `[B, D]` (float); `seed` seeds the generator of the stochastic
    /// UCGM noise `ε` (unused when `ρ = 0`).
    Noise {
        /// The initial noise.
        z: &'a Tensor,
        /// Seed of the `ε` generator.
        seed: u64,
    },
    /// `n` samples of `dim` values: `z ~ N(0, I)` (f32, on the labels' device) is drawn
    /// from `Generator::new(seed)`, and the stochastic noise `ε` continues that stream.
    Seed {
        /// Number of samples B.
        n: usize,
        /// Values per sample D.
        dim: usize,
        /// Seed of the generator.
        seed: u64,
    },
}

/// Samples from `model` with the settings `cfg`: `B` samples `[B, D]` at `t = 0`.
///
/// `labels` are i64 `[B]` class labels; `null_label` is the model's null label
/// (`MlpVelocity::null_label()`, `Dit::null_label()`), required when
/// `cfg.guidance ≠ 1` and unused otherwise. Validates `cfg` first
/// ([`SamplerConfig::validate`]); runs under `no_grad`.
pub fn sample<M: VelocityModel + ?Sized>(
    model: &M,
    start: Start<'_>,
    labels: &Tensor,
    null_label: Option<i64>,
    cfg: &SamplerConfig,
) -> Result<Tensor> {
    cfg.validate()?;
    let times = cfg.time_grid()?;
    let guidance = Guidance {
        weight: cfg.guidance,
        null_label,
    };
    guidance.validate()?;
    let (z, mut rng) = match start {
        Start::Noise { z, seed } => (z.clone(), Generator::new(seed)),
        Start::Seed { n, dim, seed } => {
            let mut rng = Generator::new(seed);
            let z = rng.randn(&[n, dim], DType::F32, labels.device())?;
            (z, rng)
        }
    };
    match cfg.method {
        SamplerMethod::Ucgm => {
            let options = UcgmOptions {
                jump: cfg.jump_target(),
                stochastic_ratio: cfg.stochastic_ratio,
            };
            ucgm(model, &z, labels, &times, options, &guidance, &mut rng)
        }
        SamplerMethod::Euler => euler(model, &z, labels, &times, &guidance),
        SamplerMethod::Heun => heun(model, &z, labels, &times, &guidance),
    }
}

/// Checks the operands shared by every sampler.
fn check_start(
    op: &'static str,
    z: &Tensor,
    labels: &Tensor,
    times: &[f64],
    guidance: &Guidance,
) -> Result<()> {
    guidance.validate()?;
    let b = match z.shape() {
        &[b, _] if z.dtype().is_float() => b,
        s => {
            return Err(Error::invalid(
                op,
                format!("z must be float [B, D], got {} {s:?}", z.dtype()),
            ))
        }
    };
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
    let ok = times.len() >= 2
        && times[0] <= 1.0
        && times.last() == Some(&0.0)
        && times.windows(2).all(|w| w[0] > w[1]);
    if !ok {
        return Err(Error::invalid(
            op,
            format!("times must decrease strictly from at most 1 to 0, got {times:?}"),
        ));
    }
    Ok(())
}
