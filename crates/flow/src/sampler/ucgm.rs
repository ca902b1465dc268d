//! The UCGM any-step sampler of docs/method.md §5.

use super::{check_start, Guidance};
use serde::{Deserialize, Serialize};
use twinflow_engine::{no_grad, Error, Generator, Result, Tensor};
use twinflow_nn::VelocityModel;

/// The target time `tt` of each UCGM jump from the current grid time `cur`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JumpTarget {
    /// `tt = 0`: every step predicts the data directly (the default; "few-step").
    #[default]
    FewStep,
    /// `tt = next`, the next grid time ("any-step").
    AnyStep,
    /// `tt = cur`, the instantaneous velocity ("multi-step"); with `ρ = 0` this is Euler.
    MultiStep,
}

impl JumpTarget {
    /// The target time for the step `(cur, next)`.
    pub fn target(self, cur: f64, next: f64) -> f64 {
        match self {
            JumpTarget::FewStep => 0.0,
            JumpTarget::AnyStep => next,
            JumpTarget::MultiStep => cur,
        }
    }
}

/// The per-step settings of [`ucgm`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UcgmOptions {
    /// The jump target of each step.
    pub jump: JumpTarget,
    /// The stochastic ratio `ρ ∈ [0, 1]` (0: deterministic).
    pub stochastic_ratio: f64,
}

/// UCGM sampling over `times` (decreasing, ending at 0; see [`super::time_grid`]).
///
/// From `x = z`, each step `(cur, next)` evaluates `F = F_θ(x, cur, tt, c)` with
/// `tt = options.jump.target(cur, next)`, inverts it to `x̂ = x − cur·F` (predicted data) and
/// `ẑ = x + (1 − cur)·F` (predicted noise), and moves to
/// `x ← (1 − next)·x̂ + next·(√(1 − ρ)·ẑ + √ρ·ε)`, `ε ~ N(0, I)` drawn from `rng`
/// (`ρ = options.stochastic_ratio`) (only
/// when `ρ > 0`, and not on the last step, where `next = 0`). Returns the last `x̂`.
/// NFE = K = `times.len() − 1` (a doubled batch under guidance). Runs under `no_grad`.
///
/// Errors for `ρ` outside `[0, 1]`, bad guidance, or operands of the wrong shapes.
pub fn ucgm<M: VelocityModel + ?Sized>(
    model: &M,
    z: &Tensor,
    labels: &Tensor,
    times: &[f64],
    options: UcgmOptions,
    guidance: &Guidance,
    rng: &mut Generator,
) -> Result<Tensor> {
    const OP: &str = "ucgm";
    check_start(OP, z, labels, times, guidance)?;
    let UcgmOptions {
        jump,
        stochastic_ratio: rho,
    } = options;
    if !(0.0..=1.0).contains(&rho) {
        return Err(Error::invalid(
            OP,
            format!("stochastic_ratio must lie in [0, 1], got {rho}"),
        ));
    }
    no_grad(|| {
        let mut x = z.clone();
        let mut x_hat = z.clone();
        for w in times.windows(2) {
            let (cur, next) = (w[0], w[1]);
            let f = guidance.velocity(model, &x, cur, jump.target(cur, next), labels)?;
            let t = cur.abs();
            x_hat = x.sub(&f.mul_scalar(t)?)?;
            if next == 0.0 {
                break;
            }
            let z_hat = x.add(&f.mul_scalar(1.0 - t)?)?;
            let mut noise = z_hat.mul_scalar(next * (1.0 - rho).sqrt())?;
            if rho > 0.0 {
                let eps = rng.randn(z.shape(), z.dtype(), z.device())?;
                noise = noise.add(&eps.mul_scalar(next * rho.sqrt())?)?;
            }
            x = x_hat.mul_scalar(1.0 - next)?.add(&noise)?;
        }
        Ok(x_hat)
    })
}
