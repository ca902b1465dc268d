//! The training configuration, read from TOML.

pub use crate::data::DataConfig;
use crate::method::{MethodConfig, TimeDistribution};
use crate::sampler::{SamplerConfig, SamplerMethod, MAX_SAMPLER_STEPS};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use twinflow_engine::{DType, Error, Result};
use twinflow_nn::{AdamConfig, DitConfig, LrSchedule, MlpVelocityConfig};

const OP: &str = "config";

/// Everything a training run needs. Unknown keys are refused everywhere.
///
/// ```toml
/// steps = 400
/// seed = 0
/// ema_decay = 0.99
/// nan_policy = "stop"
///
/// [model]
/// kind = "mlp"
/// [model.mlp]
/// data_dim = 2
/// width = 128
/// depth = 2
/// emb_dim = 32
/// num_classes = 2
///
/// [method]
/// name = "twinflow"
/// [method.twinflow]
/// recipe = "full"
///
/// [time]          # optional: t ~ Beta(beta_a, beta_b)·scale, U(0, 1) by default
/// beta_a = 1.0
/// beta_b = 1.0
/// scale = 1.0
///
/// [optimizer]
/// lr = 1e-3
///
/// [schedule]
/// kind = "constant"
/// lr = 1e-3
///
/// [data]
/// dataset = "moons"
/// batch_size = 256
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps of the whole run.
    pub steps: u64,
    /// Seed of everything random: model init, data, the method's draws.
    #[serde(default)]
    pub seed: u64,
    /// Where to train: `"cpu"` (the default), `"cuda"` or `"cuda:N"` (a build with the
    /// `cuda` feature). Parameters are initialised identically on every device.
    #[serde(default = "default_device")]
    pub device: String,
    /// A trainer checkpoint to start from instead of a random init (fine-tuning): θ
    /// gets its online weights and θ⁻ its EMA weights (its online weights when it saved
    /// no EMA copy, and nothing when this run's `ema_decay` is 0: θ⁻ is θ). Only the
    /// network must match (kind, class count, every parameter's name and shape); the
    /// method may differ. The run still starts at step 0 with a fresh optimizer, EMA
    /// warm-up, random streams from `seed` and data order; nothing else of the old
    /// run is used. A relative path is taken relative to the current working
    /// directory, not to the config file. Read only when a run starts: resuming it
    /// does not read the file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// The EMA decay target (docs/method.md §4); 0 keeps no EMA copy.
    #[serde(default = "default_ema_decay")]
    pub ema_decay: f64,
    /// Clip the global gradient norm to this value (none: only measure it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Replace NaN/Inf gradient entries by 0 before clipping and the update.
    #[serde(default)]
    pub clean_non_finite: bool,
    /// What to do on a non-finite loss or gradient norm.
    #[serde(default)]
    pub nan_policy: NanPolicy,
    /// With `nan_policy = "skip"`: the most steps in a row that may be skipped for a
    /// non-finite loss or gradient norm; the next one stops the run with an error (the
    /// model is not learning any more, and a bounded run should say so rather than
    /// finish as if it had trained).
    #[serde(default = "default_max_consecutive_skips")]
    pub max_consecutive_skips: u64,
    /// With `nan_policy = "skip"`: the largest share of the steps so far that may have
    /// been skipped for a non-finite value; a skip that takes the share above it stops
    /// the run, from step `skip_fraction_min_steps` on (before, a few early skips would
    /// be a large share). 1 never stops.
    #[serde(default = "default_max_skip_fraction")]
    pub max_skip_fraction: f64,
    /// The step from which `max_skip_fraction` applies.
    #[serde(default = "default_skip_fraction_min_steps")]
    pub skip_fraction_min_steps: u64,
    /// Precision of the forward's products and attention (`"f32"`, `"bf16"`, `"f16"`).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Cut each rank's share of the batch into this many micro-batches, computed one
    /// after the other with their gradients added up: the same step in less memory,
    /// and the same result as that many ranks (see `train::parallel`). 1 by default,
    /// and then left out of the resolved config.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub micro_batches: usize,
    /// Write a metrics line every this many steps (0: never).
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Save a checkpoint every this many steps (0: only at the end of [`Trainer::train`]).
    ///
    /// [`Trainer::train`]: crate::train::Trainer::train
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Write PNG sample grids every this many steps (0: only at the end of training).
    #[serde(default)]
    pub sample_every: u64,
    /// The sampler steps (NFE) of the sample grids; one picture per entry.
    #[serde(default = "default_sample_nfe")]
    pub sample_nfe: Vec<usize>,
    /// The network.
    pub model: ModelConfig,
    /// The training method.
    pub method: MethodConfig,
    /// The distribution of the method's times `t` (`[time]`: `beta_a`, `beta_b`,
    /// `scale`); `U(0, 1)` by default, and then left out of the resolved config.
    #[serde(default, skip_serializing_if = "TimeDistribution::is_uniform")]
    pub time: TimeDistribution,
    /// AdamW's hyper-parameters.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule (default: constant at `optimizer.lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<LrSchedule>,
    /// The training data.
    pub data: DataConfig,
    /// The sampler of the sample grids, and the default of `twinflow sample` and
    /// `twinflow eval` for this run (its `steps` is replaced by each NFE asked for).
    #[serde(default)]
    pub sampler: SamplerConfig,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn default_ema_decay() -> f64 {
    0.99
}

fn default_max_consecutive_skips() -> u64 {
    20
}

fn default_max_skip_fraction() -> f64 {
    0.25
}

fn default_skip_fraction_min_steps() -> u64 {
    100
}

fn default_log_every() -> u64 {
    100
}

fn default_device() -> String {
    "cpu".into()
}

fn default_sample_nfe() -> Vec<usize> {
    vec![1, 2, 4]
}

/// What a non-finite loss (or gradient norm) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NanPolicy {
    /// Stop with an error naming the step; the trainer refuses to save afterwards.
    #[default]
    Stop,
    /// Skip the parameter update of that step and count it, within the bounds
    /// `max_consecutive_skips` and `max_skip_fraction` of [`TrainConfig`].
    Skip,
}

/// The precision a training step computes its products and attention in. Parameters,
/// gradients and everything else stay f32 (`twinflow_engine::autocast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Autocast to bf16.
    Bf16,
    /// Autocast to f16, with a dynamic loss scaler that skips steps whose gradients
    /// overflow.
    F16,
}

impl Precision {
    /// The autocast dtype of a training step (`None` for f32).
    pub fn autocast(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
            Precision::F16 => Some(DType::F16),
        }
    }

    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

/// Which network to train: `kind` and the sizes of that kind in its own table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `"mlp"` or `"dit"`.
    pub kind: ModelKind,
    /// Sizes of the MLP (`[model.mlp]`; defaults where absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<MlpVelocityConfig>,
    /// Sizes of the DiT (`[model.dit]`; defaults where absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dit: Option<DitConfig>,
}

/// The network families the trainer builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// [`twinflow_nn::MlpVelocity`].
    Mlp,
    /// [`twinflow_nn::Dit`].
    Dit,
}

impl ModelKind {
    /// The kind as written in the config (`"mlp"`, `"dit"`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Dit => "dit",
        }
    }
}

impl ModelConfig {
    /// The number of parameters of the network this config builds, `None` when it
    /// overflows; computed without building it.
    pub fn parameter_count(&self) -> Option<usize> {
        match self.kind {
            ModelKind::Mlp => self.mlp.unwrap_or_default().parameter_count(),
            ModelKind::Dit => self.dit.unwrap_or_default().parameter_count(),
        }
    }

    /// Refuses a network that cannot be built (sizes that are not positive or do not
    /// fit together, a label dropout outside `[0, 1)`) or is too large to build (more
    /// than [`MAX_PARAMETERS`](twinflow_nn::MAX_PARAMETERS) parameters, or a count that
    /// overflows), naming the table, before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let checked = match self.kind {
            ModelKind::Mlp => self.mlp.unwrap_or_default().validate(),
            ModelKind::Dit => self.dit.unwrap_or_default().validate(),
        };
        checked.map_err(|e| Error::invalid(OP, format!("model.{}: {e}", self.kind.name())))
    }

    /// The network's class count: `num_classes` of the table of its kind (the
    /// default's when the table is absent).
    pub fn num_classes(&self) -> usize {
        match self.kind {
            ModelKind::Mlp => self.mlp.unwrap_or_default().num_classes,
            ModelKind::Dit => self.dit.unwrap_or_default().num_classes,
        }
    }
}

/// AdamW (decoupled weight decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Learning rate (used when no schedule is given).
    pub lr: f64,
    /// `betas[0]`.
    pub beta1: f64,
    /// `betas[1]`.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for OptimizerConfig {
    /// `torch.optim.AdamW`'s defaults.
    fn default() -> Self {
        let a = AdamConfig::adamw();
        OptimizerConfig {
            lr: a.lr,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            weight_decay: a.weight_decay,
        }
    }
}

impl OptimizerConfig {
    /// The [`AdamConfig`] it describes.
    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled_weight_decay: true,
        }
    }
}

impl TrainConfig {
    /// Reads and checks a TOML file; errors name the file and the offending key.
    pub fn load(path: impl AsRef<Path>) -> Result<TrainConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(OP, path, e))?;
        TrainConfig::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks TOML text; `origin` (a file name) starts every error message.
    pub fn from_toml(text: &str, origin: &str) -> Result<TrainConfig> {
        let cfg: TrainConfig =
            toml::from_str(text).map_err(|e| Error::invalid(OP, describe(&e, text, origin)))?;
        cfg.validate()
            .map_err(|e| Error::invalid(OP, format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// The configuration as TOML (the resolved config of a run).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::invalid(OP, format!("cannot write TOML: {e}")))
    }

    /// The schedule in force: the configured one, or constant at `optimizer.lr`.
    pub fn lr_schedule(&self) -> LrSchedule {
        self.schedule.unwrap_or(LrSchedule::Constant {
            lr: self.optimizer.lr,
        })
    }

    /// Checks values serde cannot: sections matching `kind`, positive sizes,
    /// valid time distribution, optimizer, schedule and method settings.
    pub fn validate(&self) -> Result<()> {
        let (kind, other) = match self.model.kind {
            ModelKind::Mlp => ("mlp", self.model.dit.is_some().then_some("dit")),
            ModelKind::Dit => ("dit", self.model.mlp.is_some().then_some("mlp")),
        };
        if let Some(other) = other {
            return Err(Error::invalid(
                OP,
                format!("model.kind is \"{kind}\" but a [model.{other}] table is given"),
            ));
        }
        self.model.validate()?;
        self.data.validate()?;
        if !(0.0..=1.0).contains(&self.ema_decay) {
            return Err(Error::invalid(
                OP,
                format!("ema_decay must lie in [0, 1], got {}", self.ema_decay),
            ));
        }
        if let Some(c) = self.grad_clip {
            if c.is_nan() || c <= 0.0 {
                return Err(Error::invalid(
                    OP,
                    format!("grad_clip must be positive, got {c}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.max_skip_fraction) {
            return Err(Error::invalid(
                OP,
                format!(
                    "max_skip_fraction must lie in [0, 1], got {}",
                    self.max_skip_fraction
                ),
            ));
        }
        if let Some(&bad) = self
            .sample_nfe
            .iter()
            .find(|&&nfe| nfe == 0 || nfe > MAX_SAMPLER_STEPS)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "sample_nfe entries must lie in 1..={MAX_SAMPLER_STEPS}, got {bad} in {:?}",
                    self.sample_nfe
                ),
            ));
        }
        self.method.validate()?;
        self.time.validate()?;
        self.optimizer.adam().validate()?;
        self.lr_schedule().validate()?;
        self.sampler.validate()?;
        Ok(())
    }

    /// The sampler of this run's pictures, `sample` and `eval`: the `[sampler]` table,
    /// with the few-step presets ([`SamplerConfig::at_steps`]) on for the methods that
    /// ask for them (TwinFlow) unless the table sets `presets`, and the UCGM sampler's
    /// jump target the method's own (`any_step` for MeanFlow) unless the table sets
    /// `jump`.
    pub fn sampler(&self) -> SamplerConfig {
        let presets = self.method.few_step_presets();
        let jump = match self.sampler.method {
            SamplerMethod::Ucgm => Some(self.sampler.jump.unwrap_or(self.method.sampler_jump())),
            SamplerMethod::Euler | SamplerMethod::Heun => self.sampler.jump,
        };
        SamplerConfig {
            presets: Some(self.sampler.presets.unwrap_or(presets)),
            jump,
            ..self.sampler
        }
    }
}

/// One line: origin, position, serde's message (which names unknown keys) and the
/// offending line of the file (which names the key of a wrongly typed value). A
/// missing key is named with its table: serde reports it at the table's header, or,
/// for the top level, at the file's start, which may be a comment.
fn describe(e: &toml::de::Error, text: &str, origin: &str) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return format!("{origin}: {message}");
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[line_start..line_end].trim();
    if let Some(field) = quoted_field(&message, "missing field `") {
        return match table_header(line) {
            Some(table) if !span.is_empty() => format!(
                "{origin}: line {line_no}: table [{table}] lacks the required key \
                 `{table}.{field}`"
            ),
            _ => format!("{origin}: the required key `{field}` is missing (at the top level)"),
        };
    }
    if line.starts_with('#') {
        return format!("{origin}: line {line_no}: {message}");
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['))
        .or_else(|| unknown_key_under_header(line, &message));
    match key {
        Some(key) if !message.contains(&format!("`{key}`")) => {
            format!("{origin}: line {line_no}: key `{key}`: {message} (`{line}`)")
        }
        _ => format!("{origin}: line {line_no}: {message} (`{line}`)"),
    }
}

/// The dotted key `table.field` of an unknown field that serde reports at a table's
/// header (`[method]` for a `[method.rcgm]` table that the method does not take).
fn unknown_key_under_header(line: &str, message: &str) -> Option<String> {
    let table = table_header(line)?;
    let field = quoted_field(message, "unknown field `")?;
    Some(format!("{table}.{field}"))
}

/// The table a header line opens (`data` for `[data]`), if `line` is one.
fn table_header(line: &str) -> Option<&str> {
    Some(line.strip_prefix('[')?.strip_suffix(']')?.trim())
}

/// The field name in a serde message that starts with `prefix` (which ends in a
/// backquote), up to the closing backquote.
fn quoted_field<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}
