//! What every built-in method is made of: its settings (a config struct implementing
//! [`MethodSettings`]) and the distribution of its times. [`Method`] holds the two and
//! gives every method the same constructor and accessors, so that a method's own
//! file holds only its settings and its loss.

use super::TimeDistribution;
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

    /// Errors naming the offending setting.
    fn validate(&self) -> Result<()>;

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

    /// The same method drawing its times `t` from `time` (checked).
    pub fn with_time(mut self, time: TimeDistribution) -> Result<Self> {
        time.validate()?;
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
