//! Evaluation of a trained flow model at several step counts (NFE), as `twinflow eval`
//! runs it (see `docs/evaluation.md`).
//!
//! For each NFE, [`evaluate`] draws `n` samples with the UCGM sampler
//! ([`sample_batched`], labels cycling over the classes, the same noise for every NFE)
//! and scores them against a [`Reference`]:
//!
//! - 2-D toys: energy distance and sliced W2 to `n` fresh true samples, beside the
//!   real-vs-real floor (a second independent draw of `n`);
//! - images: the accuracy of a [`Classifier`] trained on the run's dataset w.r.t. the
//!   conditioning labels, and the Fréchet distance in its penultimate features to the
//!   training images of the dataset's fixed split ([`split_images`]), beside the floor
//!   of its held-out real images.
//!
//! ```no_run
//! use twinflow_flow::eval::{evaluate_checkpoint, EvalConfig};
//! let cfg = EvalConfig { nfe: vec![1, 2, 4], ..EvalConfig::default() };
//! let report = evaluate_checkpoint("runs/moons-twinflow/checkpoints/latest.safetensors",
//!                                  &cfg, None, |_, _| {})?;
//! println!("{}", serde_json::to_string_pretty(&report).unwrap());
//! # Ok::<(), twinflow_engine::Error>(())
//! ```

mod reference;
mod sampling;

pub use reference::{Metrics, Reference};
pub use sampling::{sample_batched, SampleLabels, DEFAULT_SAMPLE_BATCH};

use crate::classifier::split_images;
use crate::data::DataSource;
use crate::sampler::SamplerConfig;
use crate::train::Trainer;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use twinflow_engine::{Error, Result};
use twinflow_nn::Classifier;

/// What [`evaluate`] measures.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// The step counts K of the UCGM sampler, one table row each.
    pub nfe: Vec<usize>,
    /// Samples per NFE (and true samples of a toy reference).
    pub n: usize,
    /// Seed of the initial noise (and, offset, of the toy reference draws).
    pub seed: u64,
    /// Sample from the EMA weights θ⁻ instead of θ.
    pub ema: bool,
    /// The sampler; each entry of `nfe` runs [`SamplerConfig::at_steps`] of it.
    pub sampler: SamplerConfig,
    /// Samples per sampler call (bounds memory).
    pub batch_size: usize,
}

impl Default for EvalConfig {
    /// NFE 1, 2 and 4; 2,000 samples; seed 0; online weights; the default sampler
    /// (deterministic UCGM, no guidance); batches of 500.
    fn default() -> Self {
        EvalConfig {
            nfe: vec![1, 2, 4],
            n: 2000,
            seed: 0,
            ema: false,
            sampler: SamplerConfig::default(),
            batch_size: DEFAULT_SAMPLE_BATCH,
        }
    }
}

/// One NFE's scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    /// The sampler's step count.
    pub nfe: usize,
    /// Metrics by name.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Seconds spent sampling and scoring.
    pub seconds: f64,
    /// The sampler this row ran: the report's at this NFE, presets applied.
    pub sampler: SamplerConfig,
}

/// Everything an evaluation measured, serialisable as the JSON `twinflow eval` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// The checkpoint file, when evaluated through [`evaluate_checkpoint`].
    pub checkpoint: Option<String>,
    /// The flow method (`flow_matching`, `rcgm`, `twinflow`).
    pub method: String,
    /// The dataset name.
    pub dataset: String,
    /// The checkpoint's training step.
    pub step: u64,
    /// Samples per NFE.
    pub n: usize,
    /// The noise seed.
    pub seed: u64,
    /// The sampler (its `steps` is each row's `nfe`).
    pub sampler: SamplerConfig,
    /// Whether the EMA weights were sampled.
    pub ema: bool,
    /// What the samples were compared with.
    pub reference: String,
    /// One row per NFE, in the order asked.
    pub rows: Vec<EvalRow>,
    /// The metrics of real data measured the same way.
    pub floor: Metrics,
}

impl EvalConfig {
    /// The samples drawn over all NFEs, `n` times the number of NFEs (`None` when that
    /// overflows).
    pub fn total_samples(&self) -> Option<usize> {
        self.n.checked_mul(self.nfe.len())
    }

    fn validate(&self) -> Result<()> {
        let problem = if self.nfe.is_empty() || self.nfe.contains(&0) {
            Some(format!(
                "NFE values must be positive and at least one, got {:?}",
                self.nfe
            ))
        } else if self.n < 2 || self.batch_size == 0 {
            Some(format!(
                "needs at least 2 samples and a positive batch size, got n = {} and batch \
                 size {}",
                self.n, self.batch_size
            ))
        } else if self.total_samples().is_none() {
            Some(format!(
                "{} samples at each of {} NFEs are more than can be counted",
                self.n,
                self.nfe.len()
            ))
        } else {
            None
        };
        match problem {
            Some(why) => Err(Error::invalid("eval", why)),
            None => self.sampler.validate(),
        }
    }
}

/// Evaluates `trainer`'s model for every NFE of `cfg`. Image data need `classifier`,
/// one trained on the run's dataset (its file says which:
/// [`ClassifierFile::check_fits`](crate::classifier::ClassifierFile::check_fits)), and
/// are scored against that dataset's [`split_images`]; toys ignore it.
/// `on_progress(done, total)` counts samples drawn over all NFEs.
pub fn evaluate(
    trainer: &Trainer,
    cfg: &EvalConfig,
    classifier: Option<&Classifier>,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    cfg.validate()?;
    let data = trainer.data();
    let reference = match (data, classifier) {
        (DataSource::Toy { dist, .. }, _) => Reference::toy(*dist, cfg.n, cfg.seed)?,
        (DataSource::Images { data, .. }, Some(c)) => {
            Reference::images(c, &split_images(&trainer.config().data, data)?)?
        }
        (DataSource::Images { name, .. }, None) => {
            return Err(Error::invalid(
                "eval",
                format!("evaluating image data ({name}) needs a classifier"),
            ))
        }
    };
    let total = cfg.total_samples().unwrap_or(usize::MAX);
    let mut rows = Vec::with_capacity(cfg.nfe.len());
    for (i, &nfe) in cfg.nfe.iter().enumerate() {
        let start = Instant::now();
        let sampler = cfg.sampler.at_steps(nfe);
        // At most `total`, which fits.
        let done_before = i * cfg.n;
        let (samples, labels) = sample_batched(
            trainer,
            &sampler,
            &SampleLabels::Cycle { n: cfg.n },
            cfg.seed,
            cfg.ema,
            cfg.batch_size,
            |d| on_progress(done_before + d, total),
        )?;
        rows.push(EvalRow {
            nfe,
            metrics: reference.score(&samples, &labels, data.dim())?,
            seconds: start.elapsed().as_secs_f64(),
            sampler,
        });
    }
    Ok(EvalReport {
        checkpoint: None,
        method: trainer.config().method.name().to_string(),
        dataset: data.name().to_string(),
        step: trainer.step_count(),
        n: cfg.n,
        seed: cfg.seed,
        sampler: cfg.sampler,
        ema: cfg.ema,
        reference: reference.describe(cfg.n),
        rows,
        floor: reference.floor().clone(),
    })
}

/// Loads the trainer checkpoint at `path` ([`Trainer::from_checkpoint`]) and
/// [`evaluate`]s it; the report names the file.
pub fn evaluate_checkpoint(
    path: impl AsRef<Path>,
    cfg: &EvalConfig,
    classifier: Option<&Classifier>,
    on_progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    let path = path.as_ref();
    let trainer = Trainer::from_checkpoint(path)?;
    let mut report = evaluate(&trainer, cfg, classifier, on_progress)?;
    report.checkpoint = Some(path.display().to_string());
    Ok(report)
}
