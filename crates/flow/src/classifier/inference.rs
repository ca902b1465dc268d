//! Batched, gradient-free use of a trained classifier.

use crate::metrics::Samples;
use twinflow_engine::{no_grad, Device, Error, Result, Tensor};
use twinflow_nn::{Classifier, Forward, Module};

/// Rows per forward pass: bounds the memory of the conv activations.
const BATCH: usize = 500;

/// Runs `f` on the eval-mode `model` over `images` (row-major, `dim` values each) in
/// batches, under `no_grad`, and concatenates the outputs' values.
fn batched(
    model: &Classifier,
    images: &[f32],
    f: impl Fn(&Classifier, &Tensor) -> Result<Tensor>,
) -> Result<(Vec<f32>, usize)> {
    let dim = model.config().input_dim();
    if images.is_empty() || !images.len().is_multiple_of(dim) {
        return Err(Error::invalid(
            "classifier",
            format!(
                "{} values are not a whole number of {dim}-value images",
                images.len()
            ),
        ));
    }
    let mut model = model.clone();
    model.set_training(false);
    no_grad(|| {
        let (mut out, mut width) = (Vec::new(), 0);
        for chunk in images.chunks(BATCH * dim) {
            let x = Tensor::from_slice(chunk, &[chunk.len() / dim, dim], Device::Cpu)?;
            let y = f(&model, &x)?;
            width = y.shape()[1];
            out.extend(y.to_vec::<f32>()?);
        }
        Ok((out, width))
    })
}

/// The predicted class (arg-max logit) of each image.
pub fn predict(model: &Classifier, images: &[f32]) -> Result<Vec<i64>> {
    let (logits, classes) = batched(model, images, |m, x| m.forward(x))?;
    Ok(logits
        .chunks_exact(classes)
        .map(|row| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            best as i64
        })
        .collect())
}

/// The fraction of images whose predicted class equals its label.
pub fn accuracy(model: &Classifier, images: &[f32], labels: &[i64]) -> Result<f64> {
    let predicted = predict(model, images)?;
    if predicted.len() != labels.len() {
        return Err(Error::invalid(
            "accuracy",
            format!("{} images but {} labels", predicted.len(), labels.len()),
        ));
    }
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(right as f64 / labels.len() as f64)
}

/// The penultimate features ([`Classifier::features`]) of each image, for a Fréchet
/// distance.
pub fn features(model: &Classifier, images: &[f32]) -> Result<Samples> {
    let (values, width) = batched(model, images, |m, x| m.features(x))?;
    Samples::from_f32(&values, width)
}
