//! TwinFlow, `split` recipe (docs/method.md §3b): the batch split into four contiguous
//! groups (e2e, mul, any, adv), one gradient forward, time-weighted loss, and
//! rectification on the e2e group.

use super::{enhance_velocity, filled, interpolate, per_sample, rcgm_target, rectification_delta};
use super::{velocity_target, Batch, LossFn, RcgmConfig, StepContext, StepLoss, TimeDistribution};
use serde::{Deserialize, Serialize};
use twinflow_engine::{no_grad, Error, Result, Tensor};
use twinflow_nn::VelocityModel;

/// The fewest samples a `split` batch may have: one per group.
pub(crate) const MIN_BATCH: usize = 4;

/// Settings of the `split` recipe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Group ratios e2e : mul : any : adv (non-negative, positive sum). `[1, 1, 1, 1]` is
    /// TwinFlow; `[1, 1, 1, 0]` is RCGM alone (a ratio of 0 removes its group and every
    /// term fed by it: without adv, the rectification too), the same as
    /// [`TwinFlowConfig::adversarial`](super::TwinFlowConfig::adversarial) off;
    /// `[0, 1, 0, 0]` is flow matching (with short jumps `tt`).
    pub ratios: [f64; 4],
    /// The consistency ratio r: mul jumps to `t − u·t·min(0.05, r)`, any to `t − u·t·r`.
    pub consistency_ratio: f64,
    /// Guidance applies where `lo < t < hi` (non-adv samples only).
    pub enhanced_range: [f64; 2],
    /// The weight λ of the rectification term.
    pub rect_weight: f64,
    /// Multiply each sample's loss by `w_t = tan((1 − (|t| − |tt|))·π/2.5) + 1` (1 on
    /// adv samples); off: every weight is 1.
    pub time_weighting: bool,
}

impl Default for SplitConfig {
    /// The production defaults: ratios 1:1:1:1, r = 1, range (0, 1), λ = 0.5, weighted.
    fn default() -> Self {
        SplitConfig {
            ratios: [1.0; 4],
            consistency_ratio: 1.0,
            enhanced_range: [0.0, 1.0],
            rect_weight: 0.5,
            time_weighting: true,
        }
    }
}

impl SplitConfig {
    /// Errors for negative or all-zero ratios, or a non-finite setting.
    pub fn validate(&self) -> Result<()> {
        let ok = self.ratios.iter().all(|r| r.is_finite() && *r >= 0.0)
            && self.ratios.iter().sum::<f64>() > 0.0
            && self.consistency_ratio.is_finite()
            && self.enhanced_range.iter().all(|r| r.is_finite())
            && self.rect_weight.is_finite();
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "twinflow split",
                format!("needs finite settings and non-negative ratios with a positive sum, got {self:?}"),
            ))
        }
    }

    /// The group sizes `[e2e, mul, any, adv]` of a batch of `n`, rounded as the
    /// reference rounds them: every group but the last one with a positive ratio gets
    /// `round(n·r_k/Σr)` samples (halves to even, like Python's `round`), capped so that
    /// the running total stays within `n`, and that last group gets the rest. A group
    /// whose ratio is 0 gets no sample. For `[1, 1, 1, 1]` this is the reference's
    /// split exactly: 8 → `[2, 2, 2, 2]`, 6 → `[2, 2, 2, 0]`, 10 → `[2, 2, 2, 4]`.
    pub fn group_sizes(&self, n: usize) -> [usize; 4] {
        let total: f64 = self.ratios.iter().sum();
        let Some(last) = self.ratios.iter().rposition(|&r| r > 0.0) else {
            return [0; 4];
        };
        let mut sizes = [0usize; 4];
        let mut used = 0usize;
        for k in (0..4).filter(|&k| k != last && self.ratios[k] > 0.0) {
            let share = (n as f64 * self.ratios[k] / total).round_ties_even() as usize;
            sizes[k] = share.min(n - used);
            used += sizes[k];
        }
        sizes[last] = n - used;
        sizes
    }
}

/// The `split` loss (see [`TwinFlow`](super::TwinFlow) for the draws and terms).
/// `cfg` holds the ratios in force (the adv ratio is 0 when the adversarial branch is
/// off); `rectify` says whether the rectification term runs.
pub(crate) fn split_loss<M: VelocityModel>(
    base: &RcgmConfig,
    cfg: &SplitConfig,
    rectify: bool,
    time: &TimeDistribution,
    ctx: &mut StepContext<'_, M>,
    batch: &Batch,
) -> Result<StepLoss> {
    let n = batch.len();
    if n < MIN_BATCH {
        return Err(Error::invalid(
            "twinflow split",
            format!("needs a batch of at least {MIN_BATCH}, got {n}"),
        ));
    }
    let groups = Groups::new(cfg.group_sizes(n));
    let (ne, nn, nv) = (groups.e2e, groups.non_adv(), groups.adv);
    let r = cfg.consistency_ratio;
    let ell = base.loss_or(LossFn::barron_default());
    // The reference rectifies only with r = 1, and only a trained fake branch (adv
    // group present) can feed it.
    let rect_on = rectify && ne > 0 && cfg.ratios[3] > 0.0 && r == 1.0;
    let (x, c) = (&batch.x, &batch.labels);
    let (dt, dev) = (x.dtype(), x.device());
    let rng = &mut *ctx.rng;
    let z = rng.randn(x.shape(), dt, dev)?;
    let t0 = time.sample(rng, n, dt, dev)?.to_vec_f64()?;
    let u = rng.uniform(&[n], 0.0, 1.0, dt, dev)?.to_vec_f64()?;
    let mut dim = x.shape().to_vec();
    dim[0] = nv;
    let z_adv = match nv {
        0 => None,
        _ => Some(rng.randn(&dim, dt, dev)?),
    };
    let uncond = match nn {
        0 => None,
        _ => base.draw_uncond(&c.narrow(0, 0, nn)?, rng)?,
    };
    dim[0] = ne;
    let rect_draws = match rect_on {
        false => None,
        true => Some((
            rng.randn(&dim, dt, dev)?,
            rng.uniform(&[ne], 0.0, 1.0, dt, dev)?,
        )),
    };

    let (t, tt) = groups.times(&t0, &u, r);
    let tensor = |v: &[f64]| Tensor::from_f64s(v, &[v.len()], dt, dev);
    let (t_t, tt_t) = (tensor(&t)?, tensor(&tt)?);
    let t_abs: Vec<f64> = t.iter().map(|v| v.abs()).collect();

    // Data: real x on the non-adv groups, one-step fakes of fresh noise on adv.
    let x_data = match &z_adv {
        None => x.clone(),
        Some(z_adv) => {
            let c_adv = c.narrow(0, nn, nv)?;
            let x_fake = no_grad(|| {
                let (one, zero) = (filled(1.0, nv, x)?, filled(0.0, nv, x)?);
                z_adv.sub(&ctx.online.velocity(z_adv, &one, &zero, &c_adv)?)
            })?
            .detach();
            match nn {
                0 => x_fake,
                _ => Tensor::cat(&[&x.narrow(0, 0, nn)?, &x_fake], 0)?,
            }
        }
    };
    let x_t = interpolate(&x_data, &z, &tensor(&t_abs)?)?;
    let v = velocity_target(&x_data, &z)?;

    let state = ctx.online.forward_rng().state();
    let f = ctx.online.velocity(&x_t, &t_t, &tt_t, c)?;

    // Targets: guidance inside the enhanced range, then RCGM, on non-adv samples; adv
    // samples keep v. As in the reference, the RCGM target is built only when some
    // sample jumps (an e2e or any group) and r ≠ 0; it then replaces every non-adv
    // target, mul's short jumps included.
    let target = if nn == 0 {
        v.detach()
    } else {
        let (xt_na, t_na, tt_na) = (
            x_t.narrow(0, 0, nn)?,
            t_t.narrow(0, 0, nn)?,
            tt_t.narrow(0, 0, nn)?,
        );
        let mut v_na = v.narrow(0, 0, nn)?;
        let c_na = c.narrow(0, 0, nn)?;
        if let Some(u_labels) = &uncond {
            let enhanced = enhance_velocity(
                ctx.ema,
                state,
                &xt_na,
                &t_na,
                &v_na,
                &c_na,
                u_labels,
                base.guidance,
            )?;
            let [lo, hi] = cfg.enhanced_range;
            let inside: Vec<f64> = t[..nn]
                .iter()
                .map(|&ti| f64::from(u8::from(lo < ti && ti < hi)))
                .collect();
            let mask = per_sample(&tensor(&inside)?, &v_na)?;
            v_na = v_na.add(&enhanced.sub(&v_na)?.mul(&mask)?)?;
        }
        let jumps = ne + groups.any > 0 && r != 0.0;
        let target_na = if base.order > 0 && jumps {
            rcgm_target(
                ctx.consistency_model(),
                state,
                base.order,
                base.delta,
                &xt_na,
                &t_na,
                &tt_na,
                &v_na,
                &f.narrow(0, 0, nn)?,
                &c_na,
            )?
        } else {
            v_na.detach()
        };
        match nv {
            0 => target_na,
            _ => Tensor::cat(&[&target_na, &v.narrow(0, nn, nv)?.detach()], 0)?,
        }
    };

    let weights = groups.loss_weights(&t, &tt, cfg.time_weighting, base.order);
    let main = match weights {
        None => Tensor::scalar(0.0, dt, dev)?,
        Some((w, count)) => ell
            .per_sample(&f, &target)?
            .mul(&tensor(&w)?)?
            .sum_all()?
            .mul_scalar(1.0 / count as f64)?,
    };

    // Rectification on e2e: Δv at the predicted data sg(x̂) = sg(z − F), clamped.
    let rect = if let Some((z_rect, t_rect)) = &rect_draws {
        let f_e = f.narrow(0, 0, ne)?;
        let x_hat = x_t.narrow(0, 0, ne)?.sub(&f_e)?.detach();
        let dv = rectification_delta(ctx.online, &x_hat, z_rect, t_rect, &c.narrow(0, 0, ne)?)?
            .clamp(-1.0, 1.0)?;
        ell.mean(&f_e, &f_e.detach().sub(&dv)?)?
            .mul_scalar(cfg.rect_weight)?
    } else {
        Tensor::scalar(0.0, dt, dev)?
    };
    let terms = vec![("base", main.item()?), ("rect", rect.item()?)];
    Ok(StepLoss {
        loss: main.add(&rect)?,
        terms,
    })
}

/// The sizes of the four contiguous groups e2e, mul, any, adv of a batch.
#[derive(Debug, Clone, Copy)]
struct Groups {
    e2e: usize,
    mul: usize,
    any: usize,
    adv: usize,
}

impl Groups {
    fn new([e2e, mul, any, adv]: [usize; 4]) -> Self {
        Groups { e2e, mul, any, adv }
    }

    /// Samples outside the adv group (they come first).
    fn non_adv(&self) -> usize {
        self.e2e + self.mul + self.any
    }

    fn is_mul(&self, i: usize) -> bool {
        (self.e2e..self.e2e + self.mul).contains(&i)
    }

    fn is_adv(&self, i: usize) -> bool {
        i >= self.non_adv()
    }

    /// The signed times `(t, tt)` of every sample from the draws `t0` and `u`: e2e
    /// (1, 0); mul `(t, t − u·t·min(0.05, r))`; any `(t, t − u·t·r)`; adv `(−t, −t)`.
    fn times(&self, t0: &[f64], u: &[f64], r: f64) -> (Vec<f64>, Vec<f64>) {
        (0..t0.len())
            .map(|i| {
                if i < self.e2e {
                    (1.0, 0.0)
                } else if self.is_mul(i) {
                    (t0[i], t0[i] - u[i] * t0[i] * r.min(0.05))
                } else if !self.is_adv(i) {
                    (t0[i], t0[i] - u[i] * t0[i] * r)
                } else {
                    (-t0[i], -t0[i])
                }
            })
            .unzip()
    }

    /// The per-sample loss weights and the count the weighted sum is divided by, or
    /// `None` when no sample carries the base loss. Weights: `w_t` (1 on adv, and 1
    /// everywhere without time weighting). With N ≥ 1 every sample carries it and the
    /// count is the batch; with N = 0 only mul and adv do (the others weigh 0) and the
    /// count is theirs, as the reference averages.
    fn loss_weights(
        &self,
        t: &[f64],
        tt: &[f64],
        time_weighting: bool,
        order: usize,
    ) -> Option<(Vec<f64>, usize)> {
        let carries = |i: usize| order > 0 || self.is_mul(i) || self.is_adv(i);
        let count = (0..t.len()).filter(|&i| carries(i)).count();
        if count == 0 {
            return None;
        }
        let weights = (0..t.len())
            .map(|i| match (carries(i), self.is_adv(i) || !time_weighting) {
                (false, _) => 0.0,
                (true, true) => 1.0,
                (true, false) => time_weight(t[i], tt[i]),
            })
            .collect();
        Some((weights, count))
    }
}

/// `w_t = tan((1 − (|t| − |tt|))·π/2.5) + 1`.
fn time_weight(t: f64, tt: f64) -> f64 {
    ((1.0 - (t.abs() - tt.abs())) * std::f64::consts::PI / 2.5).tan() + 1.0
}
