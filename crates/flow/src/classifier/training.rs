//! The classifier's training loop: Adam with a warm-up/cosine learning rate on
//! shift-augmented batches, held-out accuracy after every epoch.

use super::augment::random_shifts;
use super::inference::accuracy;
use crate::data::ImageDataset;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use twinflow_engine::{Device, Error, Generator, Result, Tensor};
use twinflow_nn::{
    Adam, AdamConfig, Classifier, ClassifierConfig, Forward, LrSchedule, Module, Optimizer,
    ParamBuilder,
};

/// Seed offset of the batch order and shifts, so they are unrelated to the init stream.
const DATA_SEED: u64 = 0xC1A5_51F1_E5DA_7A00;

/// How to train a [`Classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierTraining {
    /// The model's sizes.
    pub model: ClassifierConfig,
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate of Adam (after a one-epoch linear warm-up, cosine to 0).
    pub lr: f64,
    /// Largest random shift in pixels, per axis, of each training image (0: none).
    pub max_shift: usize,
    /// Seed of the initialisation, the batch order, the shifts and the dropout.
    pub seed: u64,
}

impl Default for ClassifierTraining {
    /// The settings of the documented MNIST run (`docs/evaluation.md`).
    fn default() -> Self {
        ClassifierTraining {
            model: ClassifierConfig::default(),
            epochs: 16,
            batch_size: 64,
            lr: 2e-3,
            max_shift: 2,
            seed: 0,
        }
    }
}

/// What one epoch did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch's number (1 for the first).
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
    /// Accuracy on the epoch's (augmented, dropout-on) training batches.
    pub train_accuracy: f64,
    /// Accuracy on the held-out images (eval mode, no augmentation).
    pub held_out_accuracy: f64,
    /// Wall time of the epoch, evaluation included, in seconds.
    pub seconds: f64,
}

/// Progress reported by [`train_classifier`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainEvent {
    /// A step finished: its number (from 1) out of `total`, and its loss.
    Step {
        /// The step's number.
        step: usize,
        /// Steps of the whole run.
        total: usize,
        /// The step's loss.
        loss: f64,
    },
    /// An epoch finished.
    Epoch(EpochRecord),
}

impl ClassifierTraining {
    fn validate(&self, train: &ImageDataset, held_out: &ImageDataset) -> Result<()> {
        let dim = self.model.input_dim();
        let fits = |d: &ImageDataset| !d.is_empty() && d.dim() == dim;
        let problem = if self.epochs == 0 || self.batch_size == 0 {
            Some("epochs and batch_size must be positive".to_string())
        } else if !(self.lr.is_finite() && self.lr > 0.0) {
            Some(format!("lr must be positive, got {}", self.lr))
        } else if !fits(train) || !fits(held_out) {
            Some(format!(
                "the model takes {dim}-value images; got {} training and {} held-out \
                 images of {} and {} values",
                train.len(),
                held_out.len(),
                train.dim(),
                held_out.dim()
            ))
        } else {
            None
        };
        match problem {
            Some(why) => Err(Error::invalid("train_classifier", why)),
            None => Ok(()),
        }
    }

    fn schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        LrSchedule::WarmupCosine {
            peak_lr: self.lr,
            warmup_steps: steps_per_epoch as u64,
            total_steps: (steps_per_epoch * self.epochs) as u64,
            min_lr: 0.0,
        }
    }
}

/// Trains a classifier on `train` (every epoch a fresh seeded order, each image
/// shifted at random) and measures it on `held_out` after every epoch, reporting to
/// `on_event`. Returns the model (in eval mode) and the epoch records. The last, partial
/// batch of an epoch is dropped so every step sees `batch_size` images.
pub fn train_classifier(
    cfg: &ClassifierTraining,
    train: &ImageDataset,
    held_out: &ImageDataset,
    mut on_event: impl FnMut(TrainEvent),
) -> Result<(Classifier, Vec<EpochRecord>)> {
    cfg.validate(train, held_out)?;
    let mut model = Classifier::new(&mut ParamBuilder::new(cfg.seed), &cfg.model)?;
    let mut optimizer = Adam::new(model.named_params(), AdamConfig::default())?;
    let mut gen = Generator::new(cfg.seed ^ DATA_SEED);
    // A batch larger than the data is the whole data.
    let batch = cfg.batch_size.min(train.len());
    let steps_per_epoch = train.len() / batch;
    let schedule = cfg.schedule(steps_per_epoch);
    let total = steps_per_epoch * cfg.epochs;
    let mut records = Vec::with_capacity(cfg.epochs);
    let mut step = 0;
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        model.set_training(true);
        let order = gen.permutation(train.len());
        let (mut loss_sum, mut right) = (0.0, 0);
        for ids in order.chunks_exact(batch) {
            let (x, labels) = augmented_batch(cfg, train, ids, &mut gen)?;
            optimizer.set_learning_rate(schedule.lr_at(step as u64))?;
            let logits = model.forward(&x)?;
            right += correct(&logits, &labels)?;
            let loss = logits.cross_entropy(&labels)?;
            let value = loss.item()?;
            if !value.is_finite() {
                return Err(Error::invalid(
                    "train_classifier",
                    format!(
                        "non-finite loss {value} at step {} (try a lower lr)",
                        step + 1
                    ),
                ));
            }
            optimizer.step(&loss.backward()?)?;
            step += 1;
            loss_sum += value;
            on_event(TrainEvent::Step {
                step,
                total,
                loss: value,
            });
        }
        model.set_training(false);
        let record = EpochRecord {
            epoch,
            loss: loss_sum / steps_per_epoch as f64,
            train_accuracy: right as f64 / (steps_per_epoch * batch) as f64,
            held_out_accuracy: accuracy(&model, &held_out.images, &held_out.labels)?,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_event(TrainEvent::Epoch(record));
        records.push(record);
    }
    Ok((model, records))
}

/// The images `ids` of `train`, shifted, and their labels, as tensors.
fn augmented_batch(
    cfg: &ClassifierTraining,
    train: &ImageDataset,
    ids: &[i64],
    gen: &mut Generator,
) -> Result<(Tensor, Tensor)> {
    let mut pixels = Vec::with_capacity(ids.len() * train.dim());
    let mut labels = Vec::with_capacity(ids.len());
    for &i in ids {
        pixels.extend_from_slice(train.image(i as usize));
        labels.push(train.labels[i as usize]);
    }
    let pixels = random_shifts(&pixels, train.rows, train.cols, cfg.max_shift, gen)?;
    Ok((
        Tensor::from_vec(pixels, &[ids.len(), train.dim()], Device::Cpu)?,
        Tensor::from_vec(labels, &[ids.len()], Device::Cpu)?,
    ))
}

/// How many rows of `logits` have their largest value at the label.
fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let classes = logits.shape()[1];
    let values = logits.to_vec::<f32>()?;
    let labels = labels.to_vec::<i64>()?;
    Ok(values
        .chunks_exact(classes)
        .zip(&labels)
        .filter(|(row, &label)| {
            let top = row[label as usize];
            row.iter().all(|&v| v <= top)
        })
        .count())
}
