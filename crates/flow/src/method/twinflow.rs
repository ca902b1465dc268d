//! TwinFlow (docs/method.md §3): the `full` recipe (§3a, every term on the whole batch,
//! `L = L_base + L_real + L_adv + L_rect + L_cons`) and the `split` recipe (§3b, see
//! [`SplitConfig`]).

use super::rcgm::{base_loss, draw_base, times};
use super::split::split_loss;
use super::{check_batch, interpolate, rcgm_target, replay, velocity_target};
use super::{Batch, FlowMethod, LossFn, RcgmConfig, SplitConfig, StepContext, StepLoss};
use super::{Method, MethodSettings, TimeDistribution};
use serde::{Deserialize, Serialize};
use twinflow_engine::{no_grad, Error, Result, Tensor};
use twinflow_nn::VelocityModel;

/// Settings of [`TwinFlow`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwinFlowConfig {
    /// The base loss (order N, δ, guidance) and the per-sample loss ℓ used by every
    /// term.
    pub base: RcgmConfig,
    /// Which recipe ([`Recipe::Full`] by default).
    pub recipe: Recipe,
    /// Settings of the `split` recipe (ignored by `full`).
    pub split: SplitConfig,
    /// The self-adversarial (negative-time) branch: the adv group of `split` (its
    /// ratio is taken as 0 when off) and `L_adv` of `full`. Off also removes the
    /// rectification, which only a trained fake branch can feed. Default on.
    pub adversarial: bool,
    /// The rectification term (`L_rect`). Default on.
    pub rectify: bool,
}

impl Default for TwinFlowConfig {
    /// The `full` recipe with every term, the MNIST base loss and the production split.
    fn default() -> Self {
        TwinFlowConfig {
            base: RcgmConfig::default(),
            recipe: Recipe::Full,
            split: SplitConfig::default(),
            adversarial: true,
            rectify: true,
        }
    }
}

impl TwinFlowConfig {
    /// The settings of RCGM alone on the same recipe: the adversarial branch and the
    /// rectification off, everything else as given.
    pub fn without_twinflow_terms(self) -> Self {
        TwinFlowConfig {
            adversarial: false,
            rectify: false,
            ..self
        }
    }

    /// The `split` settings in force: the adv ratio is 0 without the adversarial branch.
    pub fn split_in_force(&self) -> SplitConfig {
        let mut split = self.split;
        if !self.adversarial {
            split.ratios[3] = 0.0;
        }
        split
    }

    /// Whether the rectification term runs (it needs the adversarial branch).
    pub fn rectifies(&self) -> bool {
        self.adversarial && self.rectify
    }
}

impl MethodSettings for TwinFlowConfig {
    const NAME: &'static str = "twinflow";
    const FEW_STEP_PRESETS: bool = true;

    /// Errors for invalid base or split settings, or a `split` recipe left with no
    /// group (every ratio 0 once the adversarial branch is off).
    fn validate(&self) -> Result<()> {
        self.base.validate()?;
        self.split.validate()?;
        if self.recipe == Recipe::Split {
            self.split_in_force().validate().map_err(|_| {
                Error::invalid(
                    "twinflow split",
                    format!(
                        "with adversarial = false the ratios {:?} leave no group",
                        self.split.ratios
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// The `split` recipe needs one sample per group.
    fn min_batch(&self) -> usize {
        match self.recipe {
            Recipe::Split => super::split::MIN_BATCH,
            Recipe::Full => 1,
        }
    }

    fn for_model(self, null_label: i64) -> Self {
        TwinFlowConfig {
            base: self.base.for_model(null_label),
            ..self
        }
    }
}

/// The two TwinFlow recipes (docs/method.md §3a and §3b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// §3a (the tutorial): every term on the whole batch, 4 gradient forwards.
    #[default]
    Full,
    /// §3b (production): four groups, one gradient forward.
    Split,
}

/// `Δv = F_θ(y, −t', −t', c) − F_θ(y, t', t', c)` (fake minus real velocity) at
/// `y = t'·z' + (1 − t')·x_fake`, without gradient; both forwards replay the model's
/// current forward-stream state (so they see the same draws and leave the stream as it
/// was), run as one forward over the two inputs stacked
/// ([`VelocityModel::velocity_stacked`]). Detached.
pub fn rectification_delta<M: VelocityModel>(
    model: &M,
    x_fake: &Tensor,
    z: &Tensor,
    t: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    no_grad(|| {
        let state = model.forward_rng().state();
        let y = interpolate(&x_fake.detach(), z, t)?;
        let neg = t.neg()?;
        let pair = [(&y, &neg, &neg, labels), (&y, t, t, labels)];
        let both = replay(model, state, || model.velocity_stacked(&pair))?;
        let (fake, real) = (&both[0], &both[1]);
        fake.sub(real)
    })
    .map(|d| d.detach())
}

/// TwinFlow.
///
/// Its times `t` follow its [`TimeDistribution`] (`U(0, 1)` by default, see
/// [`TwinFlow::with_time`]); the rectification's `t'` is always `U(0, 1)` (docs/method.md
/// §3a.5, §3b).
///
/// **`full` recipe** (the reference's MNIST tutorial). Draws, in order: those of
/// [`Rcgm`](super::Rcgm) (`z`, `t`, `u`, the permutation when guidance shuffles
/// labels), then, when the rectification runs, `z' ~ N(0, I)` `[B, D]` and
/// `t' ~ U(0, 1)` `[B]`.
///
/// Terms (reported under these names, all with ℓ = the configured loss), where `v_g` is
/// `v = z − x` after guidance (`v` itself with w = 0):
/// - `base`: `L_base` at `(x_t, t, tt)`, targeting `v_g`.
/// - `real`: `ℓ(F_θ(x_t, t, t, c), v_g)`.
/// - `adv` (with `adversarial`): `ℓ(F_θ(x^f_t, −t, −t, c), v^f)` on the fake
///   trajectory of `x_fake = z − F_1`, `F_1 = F_θ(z, 1, 0, c)`, with the same `z` and
///   `t`, and the unguided `v^f = z − x_fake`.
/// - `rect` (with `adversarial` and `rectify`): `ℓ(F_1, sg(F_1 − Δv))`,
///   [`rectification_delta`] at `(sg(x_fake), z', t')`.
/// - `cons`: `ℓ(F_1, target)` with the RCGM target at `(x_t = z, t = 1, tt = 0)` built
///   from `v_g`, θ⁻ replaying the draws of `F_1`'s forward.
///
/// Forwards per step: 4 with gradient, 2N + 4 without (8 for N = 2, as in docs/method.md §6).
///
/// **`split` recipe** (the reference's production code; batch ≥ 4, groups e2e, mul,
/// any, adv of [`SplitConfig::group_sizes`], the adv ratio taken as 0 without
/// `adversarial`). Draws, in order: `z` `[B, D]`, `t` `[B]` of the time distribution
/// (for every sample; e2e samples then use 1), `u ~ U(0,1)` `[B]`, the adv group's
/// noise `z''` (if any), the permutation of the non-adv labels (guidance with shuffled
/// labels), then `z'` and `t' ~ U(0,1)` of the e2e group's rectification (if it runs).
/// The adv data are `sg(z'' − F_θ(z'', 1, 0, c))`.
/// One gradient forward `F = F_θ(x_t, t, tt, c)` with `x_t = |t|·z + (1 − |t|)·x`;
/// non-adv samples get guidance where `t` lies strictly inside the enhanced range, then
/// (N ≥ 1, r ≠ 0 and an e2e or any group present) the RCGM target, built by θ⁻ (θ when
/// θ⁻ is frozen, [`StepContext::consistency_model`]) replaying the draws of that
/// forward; adv samples target `v`.
/// Terms: `base` = `mean(ℓ(F, target)·w_t)` over the whole batch (with N = 0 over the
/// mul and adv samples only), and `rect` = `λ·mean_e2e ℓ(F_e2e, sg(F_e2e − clamp(Δv)))`
/// with Δv of [`rectification_delta`] at the e2e group's `sg(x̂) = sg(z − F_e2e)`; the
/// rectification runs only with `adversarial`, `rectify`, an adv ratio above 0 and
/// r = 1 (the reference's condition), and reports 0 otherwise.
pub type TwinFlow = Method<TwinFlowConfig>;

impl<M: VelocityModel> FlowMethod<M> for TwinFlow {
    fn name(&self) -> &'static str {
        TwinFlowConfig::NAME
    }

    fn loss(&self, ctx: &mut StepContext<'_, M>, batch: &Batch) -> Result<StepLoss> {
        check_batch(TwinFlowConfig::NAME, batch)?;
        let cfg = &self.cfg;
        if cfg.recipe == Recipe::Split {
            let split = cfg.split_in_force();
            return split_loss(&cfg.base, &split, cfg.rectifies(), &self.time, ctx, batch);
        }
        full_loss(cfg, &self.time, ctx, batch)
    }
}

/// The `full` recipe (see [`TwinFlow`] for the draws and terms).
fn full_loss<M: VelocityModel>(
    cfg: &TwinFlowConfig,
    time: &TimeDistribution,
    ctx: &mut StepContext<'_, M>,
    batch: &Batch,
) -> Result<StepLoss> {
    let base = &cfg.base;
    let ell = base.loss_or(LossFn::L2);
    let (x, c) = (&batch.x, &batch.labels);
    let d = draw_base(base, time, ctx.rng, batch)?;
    let rect_draws = match cfg.rectifies() {
        false => None,
        true => Some((
            ctx.rng.randn(x.shape(), x.dtype(), x.device())?,
            ctx.rng
                .uniform(&[batch.len()], 0.0, 1.0, x.dtype(), x.device())?,
        )),
    };
    let (z, t) = (&d.z, &d.t);
    let x_t = interpolate(x, z, t)?;
    let v = velocity_target(x, z)?;

    // v_g: v after guidance; the reference's tutorial targets it in L_real and L_cons.
    let (l_base, v_g) = base_loss(base, ctx, &x_t, t, &d.tt, &v, c, d.uncond.as_ref())?;
    let mut terms = vec![("base", l_base)];

    let f_real = ctx.online.velocity(&x_t, t, t, c)?;
    terms.push(("real", ell.mean(&f_real, &v_g)?));

    let (one, zero) = (times(1.0, t)?, times(0.0, t)?);
    let state_1 = ctx.online.forward_rng().state();
    let f_1 = ctx.online.velocity(z, &one, &zero, c)?;
    let x_fake = z.sub(&f_1)?.detach();

    if cfg.adversarial {
        let xf_t = interpolate(&x_fake, z, t)?;
        let vf = velocity_target(&x_fake, z)?;
        let neg = t.neg()?;
        let f_adv = ctx.online.velocity(&xf_t, &neg, &neg, c)?;
        terms.push(("adv", ell.mean(&f_adv, &vf)?));
    }
    if let Some((z2, t2)) = &rect_draws {
        let dv = rectification_delta(ctx.online, &x_fake, z2, t2, c)?;
        terms.push(("rect", ell.mean(&f_1, &f_1.detach().sub(&dv)?)?));
    }

    let cons_target = rcgm_target(
        ctx.ema, state_1, base.order, base.delta, z, &one, &zero, &v_g, &f_1, c,
    )?;
    terms.push(("cons", ell.mean(&f_1, &cons_target)?));

    let mut loss = terms[0].1.clone();
    for (_, part) in &terms[1..] {
        loss = loss.add(part)?;
    }
    let terms = terms
        .iter()
        .map(|(name, part)| Ok((*name, part.item()?)))
        .collect::<Result<_>>()?;
    Ok(StepLoss { loss, terms })
}
