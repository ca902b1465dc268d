//! RCGM: the any-step consistency loss `L_base` of order N with training-time guidance
//! (docs/method.md §2).

use super::TimeDistribution;
use super::{check_batch, filled, interpolate, invert, per_sample, replay, velocity_target};
use super::{Batch, FlowMethod, LossFn, Method, MethodSettings, StepContext, StepLoss};
use serde::{Deserialize, Serialize};
use twinflow_engine::{no_grad, Error, Generator, GeneratorState, Result, Tensor};
use twinflow_nn::VelocityModel;

/// The "unconditional" labels `c_u` of training-time guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Unconditional {
    /// A random permutation of the batch's labels (the MNIST recipe; needs no null
    /// label in the model).
    #[default]
    Shuffle,
    /// This label for every sample (e.g. `MlpVelocity::null_label()`).
    Null(i64),
    /// The model's null class (the extra label-embedding row, index = number of
    /// classes), as the reference's production code conditions its unconditional
    /// branch on a real null input. The trainer resolves it to [`Unconditional::Null`]
    /// with the model's null label ([`Unconditional::resolve`]).
    NullClass,
}

impl Unconditional {
    /// `NullClass` as `Null(null_label)`; every other choice unchanged.
    pub fn resolve(self, null_label: i64) -> Self {
        match self {
            Unconditional::NullClass => Unconditional::Null(null_label),
            other => other,
        }
    }
}

/// Settings of [`Rcgm`] (and of the base loss of [`TwinFlow`](super::TwinFlow)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RcgmConfig {
    /// The order N: Euler sub-steps of θ⁻ in the target; 0 is plain flow matching.
    pub order: usize,
    /// The exact step δ along the true velocity (0.01).
    pub delta: f64,
    /// The guidance ratio w of the enhanced target; 0 turns guidance off.
    pub guidance: f64,
    /// The unconditional labels of guidance.
    pub uncond: Unconditional,
    /// The per-sample loss ℓ; unset means the recipe's default: Barron (α = 1,
    /// c = 10⁻³) for TwinFlow's `split` recipe, as the reference's production code
    /// trains, and l2 for RCGM and TwinFlow's `full` recipe, as its MNIST tutorial does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossFn>,
}

impl Default for RcgmConfig {
    /// The MNIST recipe: N = 2, δ = 0.01, w = 0.5 against shuffled labels, the
    /// recipe's default loss.
    fn default() -> Self {
        RcgmConfig {
            order: 2,
            delta: 0.01,
            guidance: 0.5,
            uncond: Unconditional::Shuffle,
            loss: None,
        }
    }
}

impl MethodSettings for RcgmConfig {
    const NAME: &'static str = "rcgm";

    /// Errors for δ outside (0, 1), a non-finite w, or an invalid loss.
    fn validate(&self) -> Result<()> {
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::invalid(
                "rcgm",
                format!("delta must lie in (0, 1), got {}", self.delta),
            ));
        }
        if !self.guidance.is_finite() {
            return Err(Error::invalid(
                "rcgm",
                format!("the guidance ratio must be finite, got {}", self.guidance),
            ));
        }
        self.loss.map_or(Ok(()), |loss| loss.validate())
    }

    fn for_model(self, null_label: i64) -> Self {
        RcgmConfig {
            uncond: self.uncond.resolve(null_label),
            ..self
        }
    }
}

impl RcgmConfig {
    /// The loss ℓ in force: the configured one, else `recipe_default`.
    pub fn loss_or(&self, recipe_default: LossFn) -> LossFn {
        self.loss.unwrap_or(recipe_default)
    }

    /// Draws the unconditional labels for `labels` when guidance is on (a permutation
    /// consumes `labels.len()` draws of `rng`); `None` when w = 0.
    pub fn draw_uncond(&self, labels: &Tensor, rng: &mut Generator) -> Result<Option<Tensor>> {
        if self.guidance == 0.0 {
            return Ok(None);
        }
        let b = labels.elem_count();
        let values = match self.uncond {
            Unconditional::Shuffle => {
                let l = labels.to_vec::<i64>()?;
                rng.permutation(b)
                    .into_iter()
                    .map(|i| l[i as usize])
                    .collect()
            }
            Unconditional::Null(null) => vec![null; b],
            Unconditional::NullClass => {
                return Err(Error::invalid(
                    "rcgm",
                    "uncond = \"null_class\" needs the model's null label: resolve it first \
                     (Unconditional::resolve; the trainer does)",
                ))
            }
        };
        Tensor::from_vec(values, &[b], labels.device()).map(Some)
    }
}

/// The enhanced velocity of training-time guidance:
/// `v + w·(F_θ⁻(x_t, t, t, c) − F_θ⁻(x_t, t, t, c_u))`, both forwards without gradient
/// and each replaying the forward-stream state `state`; they run as one forward over
/// the two inputs stacked ([`VelocityModel::velocity_stacked`]). Detached.
#[allow(clippy::too_many_arguments)]
pub fn enhance_velocity<M: VelocityModel>(
    ema: &M,
    state: GeneratorState,
    x_t: &Tensor,
    t: &Tensor,
    v: &Tensor,
    labels: &Tensor,
    uncond: &Tensor,
    w: f64,
) -> Result<Tensor> {
    no_grad(|| {
        let pair = [(x_t, t, t, labels), (x_t, t, t, uncond)];
        let both = replay(ema, state, || ema.velocity_stacked(&pair))?;
        let (cond, free) = (&both[0], &both[1]);
        v.add(&cond.sub(free)?.mul_scalar(w)?)
    })
    .map(|t| t.detach())
}

/// The RCGM target of order `order` (docs/method.md §2, step 4), detached:
/// `sg(F) − clamp(Δ, −1, 1)` with `Δ = a·F − b·P − v`, where P accumulates `order`
/// Euler sub-steps of θ⁻ (no gradient, each replaying `state`) from
/// `t_m = max(t − δ, tt)` to `tt`, started at `x' = x_t − δ·v`.
///
/// Where `t < tt + δ` the sub-steps have zero length (`t_m = tt`, so P = 0 exactly),
/// `a = 1` and `b·P` is taken as 0 without dividing by `t − tt` (which is 0 at `t = tt`):
/// the target is `sg(F) − clamp(F − v)`, flow matching. Elsewhere `a = (t − tt)/δ`,
/// `b = 1/δ`. Order 0 returns `v` (plain flow matching).
#[allow(clippy::too_many_arguments)]
pub fn rcgm_target<M: VelocityModel>(
    ema: &M,
    state: GeneratorState,
    order: usize,
    delta: f64,
    x_t: &Tensor,
    t: &Tensor,
    tt: &Tensor,
    v: &Tensor,
    f: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    if order == 0 {
        return Ok(v.detach());
    }
    no_grad(|| {
        let f = f.detach();
        // small = 1 where t < tt + δ (zero-length sub-steps), else 0.
        let small = t.lt(&tt.add_scalar(delta)?)?;
        let t_m = small.where_cond(tt, &t.add_scalar(-delta)?)?;
        let mut x = x_t.sub(&v.mul_scalar(delta)?)?;
        let mut p = f.zeros_like()?;
        let n = order as f64;
        for i in 0..order {
            let grid = |k: f64| -> Result<Tensor> {
                t_m.mul_scalar(1.0 - k / n)?.add(&tt.mul_scalar(k / n)?)
            };
            let (s, s_next) = (grid(i as f64)?, grid((i + 1) as f64)?);
            let f_i = replay(ema, state, || ema.velocity(&x, &s, &s_next, labels))?.detach();
            let (x_hat, z_hat) = invert(&x, &s, &f_i)?;
            x = interpolate(&x_hat, &z_hat, &s_next)?;
            p = p.add(&f_i.mul(&per_sample(&s.sub(&s_next)?, &f_i)?)?)?;
        }
        let ones = small.ones_like()?;
        let a = small.where_cond(&ones, &t.sub(tt)?.mul_scalar(1.0 / delta)?)?;
        let bp =
            per_sample(&small, &p)?.where_cond(&p.zeros_like()?, &p.mul_scalar(1.0 / delta)?)?;
        let d = f.mul(&per_sample(&a, &f)?)?.sub(&bp)?.sub(v)?;
        f.sub(&d.clamp(-1.0, 1.0)?)
    })
    .map(|t| t.detach())
}

/// The RCGM base loss of one batch: `(L_base, v_g)` for `x_t` at times `(t, tt)`, where
/// `v_g` is `v` after guidance with `uncond` (when given; `v` otherwise, detached) and
/// the target is built with θ⁻ replaying the forward-stream state of `F`'s forward.
#[allow(clippy::too_many_arguments)]
pub(crate) fn base_loss<M: VelocityModel>(
    cfg: &RcgmConfig,
    ctx: &StepContext<'_, M>,
    x_t: &Tensor,
    t: &Tensor,
    tt: &Tensor,
    v: &Tensor,
    labels: &Tensor,
    uncond: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let state = ctx.online.forward_rng().state();
    let f = ctx.online.velocity(x_t, t, tt, labels)?;
    let v = match uncond {
        Some(u) => enhance_velocity(ctx.ema, state, x_t, t, v, labels, u, cfg.guidance)?,
        None => v.detach(),
    };
    let target = rcgm_target(
        ctx.ema, state, cfg.order, cfg.delta, x_t, t, tt, &v, &f, labels,
    )?;
    let loss = cfg.loss_or(LossFn::L2).mean(&f, &target)?;
    Ok((loss, v))
}

/// The draws shared by RCGM and TwinFlow, in order: `z ~ N(0, I)` `[B, D]`,
/// `t` `[B]` of `time` (`U(0, 1)` by default), `u ~ U(0, 1)` `[B]` (`tt = t − u·t`), then
/// the unconditional labels (a permutation of B, only when guidance is on and uses
/// shuffled labels).
pub(crate) struct BaseDraws {
    pub z: Tensor,
    pub t: Tensor,
    pub tt: Tensor,
    pub uncond: Option<Tensor>,
}

pub(crate) fn draw_base(
    cfg: &RcgmConfig,
    time: &TimeDistribution,
    rng: &mut Generator,
    batch: &Batch,
) -> Result<BaseDraws> {
    let b = batch.len();
    let x = &batch.x;
    let z = rng.randn(x.shape(), x.dtype(), x.device())?;
    let t = time.sample(rng, b, x.dtype(), x.device())?;
    let u = rng.uniform(&[b], 0.0, 1.0, x.dtype(), x.device())?;
    let tt = t.sub(&t.mul(&u)?)?;
    let uncond = cfg.draw_uncond(&batch.labels, rng)?;
    Ok(BaseDraws { z, t, tt, uncond })
}

/// RCGM alone: `L = L_base` (docs/method.md §2). Draws, in order: `z` `[B, D]`, `t` of its
/// [`TimeDistribution`] (`U(0, 1)` by default), `u ~ U(0, 1)` (`tt = t − u·t`), then the
/// permutation of the unconditional labels when guidance is on with
/// [`Unconditional::Shuffle`]. Reports the term `base`.
pub type Rcgm = Method<RcgmConfig>;

impl<M: VelocityModel> FlowMethod<M> for Rcgm {
    fn name(&self) -> &'static str {
        RcgmConfig::NAME
    }

    fn loss(&self, ctx: &mut StepContext<'_, M>, batch: &Batch) -> Result<StepLoss> {
        check_batch("rcgm", batch)?;
        let d = draw_base(&self.cfg, &self.time, ctx.rng, batch)?;
        let x_t = interpolate(&batch.x, &d.z, &d.t)?;
        let v = velocity_target(&batch.x, &d.z)?;
        let (loss, _) = base_loss(
            &self.cfg,
            ctx,
            &x_t,
            &d.t,
            &d.tt,
            &v,
            &batch.labels,
            d.uncond.as_ref(),
        )?;
        let base = loss.item()?;
        Ok(StepLoss {
            loss,
            terms: vec![("base", base)],
        })
    }
}

/// A `[n]` tensor of `value` shaped like the batch's times.
pub(crate) fn times(value: f64, like: &Tensor) -> Result<Tensor> {
    filled(value, like.dim(0)?, like)
}
