//! What generated samples are compared with: fresh draws of a toy distribution, or real
//! images seen through the classifier.

use crate::classifier::{accuracy, features, EvalSplit};
use crate::data::Toy2d;
use crate::metrics::{frechet_distance, Metric, Samples, SlicedWasserstein};
use std::collections::BTreeMap;
use twinflow_engine::{Error, Generator, Result};
use twinflow_nn::Classifier;

/// Seed offsets of the two real toy sets, unrelated to the noise seed and to training's.
const REFERENCE_SEED: u64 = 0xE7A1_0000_0000_00A1;
const FLOOR_SEED: u64 = 0xE7A1_0000_0000_00B2;

/// Metrics by name, as printed and written to JSON.
pub type Metrics = BTreeMap<String, f64>;

/// The real data a sample set is scored against, with everything precomputed.
pub enum Reference<'a> {
    /// A 2-D toy: energy distance and sliced W2 to `n` fresh true samples.
    Toy {
        /// The true samples.
        real: Samples,
        /// Energy and sliced W2 between `real` and a second independent draw.
        floor: Metrics,
    },
    /// Images: the classifier's accuracy on the samples' labels and the Fréchet distance
    /// of its features to those of the training-split images.
    Images {
        /// The classifier.
        classifier: &'a Classifier,
        /// Features of the training split (all but the held-out last images).
        real_features: Samples,
        /// Accuracy on the held-out images, and their Fréchet distance to the training
        /// split.
        floor: Metrics,
        /// Which images are held out, in words.
        held_out: String,
    },
}

fn toy_metrics() -> [Metric; 2] {
    [
        Metric::Energy,
        Metric::SlicedWasserstein(SlicedWasserstein::default()),
    ]
}

impl<'a> Reference<'a> {
    /// `n` true samples of `dist` drawn from a generator seeded by `seed` (with a fixed
    /// offset, so they differ from the training stream), and the floor from a second
    /// draw of `n`.
    pub fn toy(dist: Toy2d, n: usize, seed: u64) -> Result<Reference<'a>> {
        let draw = |s: u64| -> Result<Samples> {
            let (x, _) = dist.sample(n, &mut Generator::new(s))?;
            Samples::from_f32(&x, dist.dim())
        };
        let real = draw(seed ^ REFERENCE_SEED)?;
        let second = draw(seed ^ FLOOR_SEED)?;
        let floor = toy_metrics()
            .iter()
            .map(|m| Ok((m.name().to_string(), m.compute(&second, &real)?)))
            .collect::<Result<Metrics>>()?;
        Ok(Reference::Toy { real, floor })
    }

    /// Images of a dataset seen by `classifier`, trained on that dataset: the reference
    /// features are those of the split's training images; the floor is the
    /// classifier's accuracy on the held-out images and their Fréchet distance to the
    /// training images.
    pub fn images(classifier: &'a Classifier, split: &EvalSplit) -> Result<Reference<'a>> {
        let (train, held_out) = (&split.train, &split.held_out);
        if classifier.config().input_dim() != train.dim() {
            return Err(Error::invalid(
                "eval",
                format!(
                    "the classifier takes {}-value images but the data have {} values",
                    classifier.config().input_dim(),
                    train.dim()
                ),
            ));
        }
        let real_features = features(classifier, &train.images)?;
        let held_out_features = features(classifier, &held_out.images)?;
        let floor = Metrics::from([
            (
                "accuracy".to_string(),
                accuracy(classifier, &held_out.images, &held_out.labels)?,
            ),
            (
                "frechet".to_string(),
                frechet_distance(&held_out_features, &real_features)?,
            ),
        ]);
        Ok(Reference::Images {
            classifier,
            real_features,
            floor,
            held_out: split.description.clone(),
        })
    }

    /// The real-vs-real values of the metrics.
    pub fn floor(&self) -> &Metrics {
        match self {
            Reference::Toy { floor, .. } | Reference::Images { floor, .. } => floor,
        }
    }

    /// The metrics of generated samples (row-major, `dim` values each) drawn with
    /// `labels`.
    pub fn score(&self, samples: &[f32], labels: &[i64], dim: usize) -> Result<Metrics> {
        match self {
            Reference::Toy { real, .. } => {
                let generated = Samples::from_f32(samples, dim)?;
                toy_metrics()
                    .iter()
                    .map(|m| Ok((m.name().to_string(), m.compute(&generated, real)?)))
                    .collect()
            }
            Reference::Images {
                classifier,
                real_features,
                ..
            } => Ok(Metrics::from([
                (
                    "accuracy".to_string(),
                    accuracy(classifier, samples, labels)?,
                ),
                (
                    "frechet".to_string(),
                    frechet_distance(&features(classifier, samples)?, real_features)?,
                ),
            ])),
        }
    }

    /// One sentence saying what the samples are compared with.
    pub fn describe(&self, n: usize) -> String {
        match self {
            Reference::Toy { .. } => format!(
                "{n} fresh true samples (energy distance, sliced W2 over 256 directions); \
                 floor: a second independent draw of {n}"
            ),
            Reference::Images { held_out, .. } => format!(
                "classifier accuracy w.r.t. the conditioning labels and Fréchet distance \
                 of classifier features to the {} training-split images; floor: {held_out}",
                self.real_len()
            ),
        }
    }

    fn real_len(&self) -> usize {
        match self {
            Reference::Toy { real, .. } => real.len(),
            Reference::Images { real_features, .. } => real_features.len(),
        }
    }
}
