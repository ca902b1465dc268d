//! What every built-in method is made of: its settings (a config struct implementing
//! [`MethodSettings`]) and the distribution of its times. [`Method`] holds the two and
//! gives every method the same constructor and accessors, so that a method's own
//! file holds only its settings and its loss.

use super::TimeDistribution;
use crate::sampler::JumpTarget;
use serde::de::DeserializeOwned;
use serde::Serialize;
use twinflow_engine::Result;

/// The settings of a built-in method: the `[method.<NAME>]` table of a training config.
pub trait MethodSettings:
    Copy + Default + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned
{
    /// The method's name in configs (`[method] name = "…"`) and logs.
    const NAME: &'static str;

    /// Whether the method's models sample with the few-step presets by default
    /// ([`SamplerConfig::at_steps`](crate::sampler::SamplerConfig::at_steps)): true
    /// for one-step generators trained to take the reference's 2- and 4-step grids.
    const FEW_STEP_PRESETS: bool = false;

    /// The jump target the UCGM sampler gives its models by default
    /// ([`TrainConfig::sampler`](crate::train::TrainConfig::sampler)): `few_step`, or
    /// `any_step` for a model of the average velocity over `[tt, t]` (MeanFlow), whose
    /// steps then move `x ← x − (t − tt)·F(x, t, tt, c)` onto the next grid time.
    const SAMPLER_JUMP: JumpTarget = JumpTarget::FewStep;

    /// Errors naming the offending setting.
    fn validate(&self) -> Result<()>;

    /// The fewest samples a batch (or a shard of one, in data-parallel training) may
    /// have for these settings' loss.
    fn min_batch(&self) -> usize {
        1
    }

    /// Errors unless the method draws its times from `time` (the run's `[time]` table):
    /// a method that draws its times its own way refuses any table but the default, so
    /// that a `[time]` table is never silently ignored.
    fn check_time(&self, _time: &TimeDistribution) -> Result<()> {
        Ok(())
    }

    /// The settings for a model whose null class (the extra label-embedding row) is
    /// `null_label`: settings that name "the model's null class" resolve it here.
    fn for_model(self, _null_label: i64) -> Self {
        self
    }
}

/// A built-in method: settings `C` and the distribution of its times `t`.
#[derive(Debug, Clone)]
pub struct Method<C> {
    pub(super) cfg: C,
    pub(super) time: TimeDistribution,
}

impl<C: MethodSettings> Method<C> {
    /// The method with the given settings (checked), drawing `t ~ U(0, 1)`.
    pub fn new(cfg: C) -> Result<Self> {
        cfg.validate()?;
        Ok(Method {
            cfg,
            time: TimeDistribution::default(),
        })
    }

    /// The same method drawing its times `t` from `time` (checked, also against the
    /// method: [`MethodSettings::check_time`]).
    pub fn with_time(mut self, time: TimeDistribution) -> Result<Self> {
        time.validate()?;
        self.cfg.check_time(&time)?;
        self.time = time;
        Ok(self)
    }

    /// Its settings.
    pub fn config(&self) -> &C {
        &self.cfg
    }

    /// The distribution of its times `t`.
    pub fn time(&self) -> &TimeDistribution {
        &self.time
    }
}
