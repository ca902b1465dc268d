//! The training-time distribution `t ~ Beta(a, b)·s` (docs/method.md §1), shared
//! by every method that draws its times this way.
//!
//! `Beta(1, 1)·1` is `U(0, 1)`, the default, and is drawn as exactly one
//! [`Generator::uniform`] call of the batch size, so the default reproduces the draws of
//! runs made before the general distribution existed. Other shapes are drawn on the host
//! as `X/(X + Y)` with `X ~ Gamma(a)` and `Y ~ Gamma(b)` (Marsaglia–Tsang, with the
//! `U^(1/k)` boost for shapes below 1), then converted to the batch's dtype and moved to
//! its device.

use serde::{Deserialize, Serialize};
use twinflow_engine::{DType, Device, Error, Generator, Result, Tensor};

const OP: &str = "time";

/// The distribution of a method's times `t`: `Beta(beta_a, beta_b)` scaled by `scale`.
///
/// The `[time]` table of the training config (every key optional):
///
/// ```toml
/// [time]
/// beta_a = 1.0   # a > 0
/// beta_b = 1.0   # b > 0
/// scale = 1.0    # 0 < s ≤ 1
/// ```
///
/// The mean of `t` is `s·a/(a + b)`; `a > b` puts more times near the noise end
/// (`t = 1`), `a < b` near the data end (`t = 0`).
///
/// **Draws.** With `a = b = 1`: one [`Generator::uniform`] of `n` values in `[0, s)`
/// (for `s = 1` exactly the former `t ~ U(0, 1)`). Otherwise, in order: the Gamma(a)
/// variates of all `n` samples, then those of Gamma(b). A Gamma(k) draw of `n` variates
/// with `k ≥ 1` runs rounds of Marsaglia–Tsang over the samples not yet accepted, each
/// round drawing [`Generator::randn`] then [`Generator::uniform`] of that many values
/// (so the number of draws varies, but depends only on the generator's state); with
/// `k < 1` it draws Gamma(k + 1) that way, then `n` uniforms `u` and multiplies by
/// `(1 − u)^(1/k)`. Gammas are kept as logarithms, so tiny shapes do not underflow to
/// `0/0`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeDistribution {
    /// The first Beta shape `a` (> 0, finite; default 1).
    pub beta_a: f64,
    /// The second Beta shape `b` (> 0, finite; default 1).
    pub beta_b: f64,
    /// The scale `s` of the times, `0 < s ≤ 1` (default 1).
    pub scale: f64,
}

impl Default for TimeDistribution {
    /// `U(0, 1)`: `a = b = s = 1`.
    fn default() -> Self {
        TimeDistribution::UNIFORM
    }
}

impl TimeDistribution {
    /// `U(0, 1)` (`a = b = s = 1`), the default.
    pub const UNIFORM: TimeDistribution = TimeDistribution {
        beta_a: 1.0,
        beta_b: 1.0,
        scale: 1.0,
    };

    /// True for the default `U(0, 1)`.
    pub fn is_uniform(&self) -> bool {
        *self == TimeDistribution::UNIFORM
    }

    /// Errors, naming the key (`time.beta_a`, `time.beta_b`, `time.scale`), unless
    /// `a > 0`, `b > 0` and `0 < s ≤ 1`, all finite.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(
                    OP,
                    format!("time.{key} must be positive and finite, got {v}"),
                ))
            }
        };
        positive("beta_a", self.beta_a)?;
        positive("beta_b", self.beta_b)?;
        if !(self.scale > 0.0 && self.scale <= 1.0) {
            return Err(Error::invalid(
                OP,
                format!("time.scale must lie in (0, 1], got {}", self.scale),
            ));
        }
        Ok(())
    }

    /// `n` times `t ~ Beta(a, b)·s` as a `[n]` tensor of `dtype` on `device`, drawn from
    /// `rng` in the order the type documents. Errors for an invalid distribution or a
    /// non-float dtype.
    pub fn sample(
        &self,
        rng: &mut Generator,
        n: usize,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        self.validate()?;
        if self.beta_a == 1.0 && self.beta_b == 1.0 {
            // Beta(1, 1) is U(0, 1): the former draw, bit for bit when s = 1.
            return rng.uniform(&[n], 0.0, self.scale, dtype, device);
        }
        if !dtype.is_float() {
            return Err(Error::dtypes("time", &[dtype]));
        }
        let log_x = log_gamma_variates(rng, self.beta_a, n)?;
        let log_y = log_gamma_variates(rng, self.beta_b, n)?;
        let t: Vec<f64> = log_x
            .iter()
            .zip(&log_y)
            // X/(X + Y) = 1/(1 + Y/X), exact at both ends: 0 when Y/X overflows.
            .map(|(lx, ly)| self.scale / (1.0 + (ly - lx).exp()))
            .collect();
        Tensor::from_f64s(&t, &[n], dtype, device)
    }
}

/// `n` uniforms in `[0, 1)` from `rng`, on the host.
fn uniforms(rng: &mut Generator, n: usize) -> Result<Vec<f64>> {
    rng.uniform(&[n], 0.0, 1.0, DType::F64, Device::Cpu)?
        .to_vec_f64()
}

/// The logarithms of `n` Gamma(`shape`, 1) variates (`shape` > 0).
fn log_gamma_variates(rng: &mut Generator, shape: f64, n: usize) -> Result<Vec<f64>> {
    if shape < 1.0 {
        // Gamma(k) = Gamma(k + 1)·U^(1/k); 1 − u lies in (0, 1], so the log is finite.
        let mut g = log_gamma_variates(rng, shape + 1.0, n)?;
        for (g, u) in g.iter_mut().zip(uniforms(rng, n)?) {
            *g += (1.0 - u).ln() / shape;
        }
        return Ok(g);
    }
    // Marsaglia & Tsang (2000): d·v with v = (1 + c·x)³, x ~ N(0, 1), accepted when
    // ln u < x²/2 + d − d·v + d·ln v.
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    let mut out = vec![0.0; n];
    let mut pending: Vec<usize> = (0..n).collect();
    while !pending.is_empty() {
        let m = pending.len();
        let x = rng.randn(&[m], DType::F64, Device::Cpu)?.to_vec_f64()?;
        let u = uniforms(rng, m)?;
        let mut rejected = Vec::new();
        for (k, &i) in pending.iter().enumerate() {
            let v = (1.0 + c * x[k]).powi(3);
            if v > 0.0 && u[k].ln() < 0.5 * x[k] * x[k] + d - d * v + d * v.ln() {
                out[i] = d.ln() + v.ln();
            } else {
                rejected.push(i);
            }
        }
        pending = rejected;
    }
    Ok(out)
}
