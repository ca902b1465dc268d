//! The built-in methods, listed once: the `[method]` table of a training config
//! ([`MethodConfig`], one variant per method), their names ([`METHOD_NAMES`]) and the
//! way from a name or a config to a running method ([`by_name`],
//! [`MethodConfig::build`]). A new method is one file (its settings, implementing
//! [`MethodSettings`], and its loss, implementing [`FlowMethod`] for [`Method`] of
//! them) and one line in the list at the bottom of this file.

use super::{FlowMatchingConfig, FlowMethod, MeanFlowConfig, Method, MethodSettings};
use super::{RcgmConfig, TimeDistribution, TwinFlowConfig};
use crate::sampler::JumpTarget;
use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, Result};
use twinflow_nn::VelocityModel;

/// Declares [`MethodConfig`] and [`METHOD_NAMES`] from `Variant { table: Settings }`
/// entries, where `table` is the method's name in configs: the variant's name in
/// snake case, and its `NAME`.
macro_rules! methods {
    ($($(#[$doc:meta])* $variant:ident { $table:ident: $settings:ty }),+ $(,)?) => {
        /// The training method: `name` and its settings in a table of that name,
        ///
        /// ```toml
        /// [method]
        /// name = "twinflow"
        /// [method.twinflow]     # optional: the method's defaults where absent
        /// recipe = "split"
        /// ```
        ///
        /// A table of another method is refused as an unknown key.
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
        pub enum MethodConfig {
            $(
                $(#[$doc])*
                $variant {
                    #[allow(missing_docs)]
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    $table: Option<$settings>,
                },
            )+
        }

        /// The names of the built-in methods, as configs and [`by_name`] spell them.
        pub const METHOD_NAMES: &[&str] = &[$(<$settings as MethodSettings>::NAME),+];

        impl MethodConfig {
            /// The method's name as written in the config.
            pub fn name(&self) -> &'static str {
                match self {
                    $(MethodConfig::$variant { .. } => <$settings as MethodSettings>::NAME,)+
                }
            }

            /// Whether its models sample with the few-step presets by default.
            pub fn few_step_presets(&self) -> bool {
                match self {
                    $(MethodConfig::$variant { .. } => {
                        <$settings as MethodSettings>::FEW_STEP_PRESETS
                    })+
                }
            }

            /// The UCGM sampler's default jump target for its models.
            pub fn sampler_jump(&self) -> JumpTarget {
                match self {
                    $(MethodConfig::$variant { .. } => {
                        <$settings as MethodSettings>::SAMPLER_JUMP
                    })+
                }
            }

            /// The fewest samples a batch may have
            /// ([`MethodSettings::min_batch`]).
            pub fn min_batch(&self) -> usize {
                match self {
                    $(MethodConfig::$variant { $table } => {
                        $table.unwrap_or_default().min_batch()
                    })+
                }
            }

            /// Checks the settings (the method's defaults where the table is absent).
            pub fn validate(&self) -> Result<()> {
                match self {
                    $(MethodConfig::$variant { $table } => {
                        $table.unwrap_or_default().validate()
                    })+
                }
            }

            /// The method, drawing its times from `time`, for a model whose null
            /// class is `null_label`.
            pub fn build<M: VelocityModel>(
                &self,
                time: TimeDistribution,
                null_label: i64,
            ) -> Result<Box<dyn FlowMethod<M>>> {
                match *self {
                    $(MethodConfig::$variant { $table } => {
                        let settings = $table.unwrap_or_default().for_model(null_label);
                        Ok(Box::new(Method::new(settings)?.with_time(time)?))
                    })+
                }
            }

            /// The method `name` with its default settings.
            pub fn default_of(name: &str) -> Option<MethodConfig> {
                $(if name == <$settings as MethodSettings>::NAME {
                    return Some(MethodConfig::$variant { $table: None });
                })+
                None
            }
        }

        $(impl From<$settings> for MethodConfig {
            fn from(settings: $settings) -> MethodConfig {
                MethodConfig::$variant { $table: Some(settings) }
            }
        })+
    };
}

/// The built-in method `name` with its default settings, drawing `t ~ U(0, 1)`; errors
/// with the valid names.
pub fn by_name<M: VelocityModel>(name: &str) -> Result<Box<dyn FlowMethod<M>>> {
    let unknown = || {
        Error::invalid(
            "method",
            format!(
                "unknown method `{name}`, expected one of {}",
                METHOD_NAMES.join(", ")
            ),
        )
    };
    let cfg = MethodConfig::default_of(name).ok_or_else(unknown)?;
    // No null class is named by default settings, so any label does.
    cfg.build(TimeDistribution::default(), 0)
}

methods! {
    /// Flow matching ([`FlowMatching`](super::FlowMatching)).
    FlowMatching { flow_matching: FlowMatchingConfig },
    /// RCGM alone ([`Rcgm`](super::Rcgm)).
    Rcgm { rcgm: RcgmConfig },
    /// TwinFlow ([`TwinFlow`](super::TwinFlow)).
    Twinflow { twinflow: TwinFlowConfig },
    /// MeanFlow ([`MeanFlow`](super::MeanFlow)).
    Meanflow { meanflow: MeanFlowConfig },
}
