//! Flow matching, the baseline (docs/method.md §1.1): `t ~ U(0,1)` (in general
//! `Beta(a, b)·s`, [`TimeDistribution`](super::TimeDistribution)), `tt = t`,
//! `L = mean ℓ(F_θ(x_t, t, t, c), z − x)`.

use super::{check_batch, interpolate, velocity_target, Batch, FlowMethod, LossFn};
use super::{Method, MethodSettings, StepContext, StepLoss};
use serde::{Deserialize, Serialize};
use twinflow_engine::Result;
use twinflow_nn::VelocityModel;

/// Settings of [`FlowMatching`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowMatchingConfig {
    /// The per-sample loss (l2 by default).
    pub loss: LossFn,
}

impl MethodSettings for FlowMatchingConfig {
    const NAME: &'static str = "flow_matching";

    fn validate(&self) -> Result<()> {
        self.loss.validate()
    }
}

/// Flow matching. Draws, in order: `z ~ N(0, I)` `[B, D]`, the times `t` `[B]` of its
/// [`TimeDistribution`](super::TimeDistribution) (`U(0, 1)` by default). Reports the
/// term `fm`.
pub type FlowMatching = Method<FlowMatchingConfig>;

impl<M: VelocityModel> FlowMethod<M> for FlowMatching {
    fn name(&self) -> &'static str {
        FlowMatchingConfig::NAME
    }

    fn loss(&self, ctx: &mut StepContext<'_, M>, batch: &Batch) -> Result<StepLoss> {
        let b = check_batch(FlowMatchingConfig::NAME, batch)?;
        let x = &batch.x;
        let z = ctx.rng.randn(x.shape(), x.dtype(), x.device())?;
        let t = self.time.sample(ctx.rng, b, x.dtype(), x.device())?;
        let x_t = interpolate(x, &z, &t)?;
        let f = ctx.online.velocity(&x_t, &t, &t, &batch.labels)?;
        let loss = self.cfg.loss.mean(&f, &velocity_target(x, &z)?)?;
        let fm = loss.item()?;
        Ok(StepLoss {
            loss,
            terms: vec![("fm", fm)],
        })
    }
}
