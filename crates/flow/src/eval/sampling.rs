//! Drawing many samples from a trainer's model in bounded-memory batches: the one
//! sampling path of the training run's sample pictures, `twinflow eval` and
//! `twinflow sample`.

use crate::sampler::{sample, SamplerConfig, Start};
use crate::train::{TrainModel, Trainer};
use twinflow_engine::{sizes, DType, Device, Error, Generator, Result, Tensor};
use twinflow_nn::{Module, VelocityModel};

const OP: &str = "sample_batched";

/// Samples per sampler call that `twinflow sample`, `twinflow eval` and the training
/// run's sample pictures use unless told otherwise.
pub const DEFAULT_SAMPLE_BATCH: usize = 500;

/// The class labels of the samples [`sample_batched`] draws (and so their number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleLabels {
    /// `n` samples; sample `i` has label `i mod num_classes` (0 for data without
    /// classes).
    Cycle {
        /// Number of samples.
        n: usize,
    },
    /// One sample per entry, conditioned on that label; every label must lie in
    /// `0..num_classes`.
    Given(Vec<i64>),
}

impl SampleLabels {
    /// The label of every sample for a model of `num_classes` classes (a model without
    /// classes takes label 0). Errors when there are no samples or a label is out of
    /// range, naming the label and its sample.
    pub fn resolve(&self, num_classes: usize) -> Result<Vec<i64>> {
        let classes = num_classes.max(1);
        let labels: Vec<i64> = match self {
            SampleLabels::Cycle { n } => {
                sizes::try_collect(OP, (0..*n).map(|i| (i % classes) as i64))?
            }
            SampleLabels::Given(labels) => {
                let bad = labels
                    .iter()
                    .enumerate()
                    .find(|&(_, &l)| l < 0 || l as u64 >= classes as u64);
                if let Some((i, l)) = bad {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "label {l} of sample {i} is out of range: the model has \
                             {classes} classes, labels 0 to {}",
                            classes - 1
                        ),
                    ));
                }
                let mut copy = sizes::try_vec(OP, labels.len())?;
                copy.extend_from_slice(labels);
                copy
            }
        };
        if labels.is_empty() {
            return Err(Error::invalid(
                OP,
                "no samples asked for (n = 0 or an empty label list)",
            ));
        }
        Ok(labels)
    }
}

/// Samples `[n, D]` (row-major f32) and their labels from θ (or θ⁻ with `ema`), in eval
/// mode, `batch` at a time, so memory does not grow with `n` or the number of steps.
///
/// `labels` gives the samples' classes and their number `n` ([`SampleLabels::Cycle`] or
/// an explicit list). Sample `i` starts from row `i` of one `N(0, I)` draw `[n, D]` on
/// the CPU from `Generator::new(seed)`, so the result does not depend on `batch` (for
/// the deterministic sampler; up to the float rounding of matrix products of other
/// shapes), nor on the device, and every NFE starts from the same noise. The stochastic
/// UCGM sampler's `ε` (unused when `ρ = 0`) of the batch starting at sample `s` comes
/// from `Generator::new(seed + s)`, so with `ρ > 0` the samples do depend on `batch`.
///
/// The model's forward random stream (dropout masks, label dropout), which θ, θ⁻ and
/// the trainer share, is saved before and restored after sampling, so sampling in the
/// middle of a run leaves its later steps exactly as they would have been.
///
/// `on_batch(done)` is called after each batch with the samples drawn so far.
///
/// Errors for no samples, `batch = 0`, a label outside the model's classes or an invalid
/// `sampler`.
pub fn sample_batched(
    trainer: &Trainer,
    sampler: &SamplerConfig,
    labels: &SampleLabels,
    seed: u64,
    ema: bool,
    batch: usize,
    on_batch: impl FnMut(usize),
) -> Result<(Vec<f32>, Vec<i64>)> {
    let labels = labels.resolve(trainer.data().num_classes())?;
    if batch == 0 {
        return Err(Error::invalid(OP, "the batch size must be positive, got 0"));
    }
    sampler.validate()?;
    let mut model = match ema {
        true => trainer.ema_model().clone(),
        false => trainer.model().clone(),
    };
    model.set_training(false);
    let saved = model.forward_rng().state();
    let out = draw(trainer, &model, sampler, &labels, seed, batch, on_batch);
    model.forward_rng().set_state(saved);
    Ok((out?, labels))
}

/// The batches of [`sample_batched`] from `model` (in eval mode).
fn draw(
    trainer: &Trainer,
    model: &TrainModel,
    sampler: &SamplerConfig,
    labels: &[i64],
    seed: u64,
    batch: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<f32>> {
    let (n, dim, device) = (labels.len(), trainer.data().dim(), trainer.device());
    let noise = Generator::new(seed).randn(&[n, dim], DType::F32, Device::Cpu)?;
    // `n·dim` fits: the noise holds as many values.
    let mut out = sizes::try_vec(OP, n * dim)?;
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let z = noise.narrow(0, start, len)?.to_device(device)?;
        let y = Tensor::from_slice(&labels[start..start + len], &[len], Device::Cpu)?
            .to_device(device)?;
        let begin = Start::Noise {
            z: &z,
            seed: seed.wrapping_add(start as u64),
        };
        let x = sample(model, begin, &y, Some(model.null_label()), sampler)?;
        out.extend(x.to_vec::<f32>()?);
        on_batch(start + len);
    }
    Ok(out)
}
