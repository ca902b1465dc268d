//! Euler and Heun integration of the instantaneous velocity (`tt = t`) of a
//! flow-matching model, from noise at the first grid time down to data at `t = 0`.

use super::{check_start, Guidance};
use twinflow_engine::{no_grad, Result, Tensor};
use twinflow_nn::VelocityModel;

/// First-order Euler sampling over `times` (decreasing, ending at 0; see
/// [`super::time_grid`]): from `x = z`, each step `(cur, next)` does
/// `x ← x + (next − cur)·F(x, cur, cur, c)`. One velocity evaluation per step
/// (NFE = K = `times.len() − 1`; doubled batch under guidance). Runs under `no_grad`.
pub fn euler<M: VelocityModel + ?Sized>(
    model: &M,
    z: &Tensor,
    labels: &Tensor,
    times: &[f64],
    guidance: &Guidance,
) -> Result<Tensor> {
    check_start("euler", z, labels, times, guidance)?;
    no_grad(|| {
        let mut x = z.clone();
        for w in times.windows(2) {
            let (cur, next) = (w[0], w[1]);
            let v = guidance.velocity(model, &x, cur, cur, labels)?;
            x = x.add(&v.mul_scalar(next - cur)?)?;
        }
        Ok(x)
    })
}

/// Second-order Heun sampling (the trapezoidal predictor–corrector of EDM) over `times`:
/// each step `(cur, next)` takes the Euler predictor `x' = x + h·d₁`, `h = next − cur`,
/// `d₁ = F(x, cur, cur, c)`, then corrects `x ← x + h·(d₁ + d₂)/2` with
/// `d₂ = F(x', next, next, c)`. The step that lands on `t = 0` keeps the Euler
/// predictor (the velocity at `t = 0` is not evaluated: it is singular for concentrated
/// data and outside the times a model is trained on).
///
/// NFE convention: **`2K − 1`** velocity evaluations for `K = times.len() − 1` steps (two
/// per step, one for the last); a doubled batch under guidance. Runs under `no_grad`.
pub fn heun<M: VelocityModel + ?Sized>(
    model: &M,
    z: &Tensor,
    labels: &Tensor,
    times: &[f64],
    guidance: &Guidance,
) -> Result<Tensor> {
    check_start("heun", z, labels, times, guidance)?;
    no_grad(|| {
        let mut x = z.clone();
        for w in times.windows(2) {
            let (cur, next) = (w[0], w[1]);
            let h = next - cur;
            let d1 = guidance.velocity(model, &x, cur, cur, labels)?;
            let predicted = x.add(&d1.mul_scalar(h)?)?;
            x = if next > 0.0 {
                let d2 = guidance.velocity(model, &predicted, next, next, labels)?;
                x.add(&d1.add(&d2)?.mul_scalar(0.5 * h)?)?
            } else {
                predicted
            };
        }
        Ok(x)
    })
}
