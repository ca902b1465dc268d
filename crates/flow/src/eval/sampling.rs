//! Drawing many samples from a trainer's model in bounded-memory batches.

use crate::sampler::{sample, SamplerConfig, Start};
use crate::train::Trainer;
use twinflow_engine::{DType, Device, Error, Generator, Result, Tensor};
use twinflow_nn::Module;

/// `n` samples `[n, D]` (row-major f32) and their labels from θ (or θ⁻ with `ema`), in
/// eval mode, `batch` at a time, so memory does not grow with `n` or the number of
/// steps. Sample `i` has label `i mod num_classes` and starts from row `i` of one
/// `N(0, I)` draw `[n, D]` on the CPU from `Generator::new(seed)`, so the result does not depend
/// on `batch` (for the deterministic sampler; up to the float rounding of matrix products
/// of other shapes) and every NFE starts from the same noise.
/// `on_batch(done)` is called after each batch with the samples drawn so far.
pub fn sample_batched(
    trainer: &Trainer,
    sampler: &SamplerConfig,
    n: usize,
    seed: u64,
    ema: bool,
    batch: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<(Vec<f32>, Vec<i64>)> {
    if n == 0 || batch == 0 {
        return Err(Error::invalid(
            "sample_batched",
            format!("the sample count ({n}) and batch size ({batch}) must be positive"),
        ));
    }
    let mut model = match ema {
        true => trainer.ema_model().clone(),
        false => trainer.model().clone(),
    };
    model.set_training(false);
    let dim = trainer.data().dim();
    let classes = trainer.data().num_classes().max(1);
    let labels: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    let noise = Generator::new(seed).randn(&[n, dim], DType::F32, Device::Cpu)?;
    let mut out = Vec::with_capacity(n * dim);
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let z = noise.narrow(0, start, len)?.to_device(trainer.device())?;
        let y = Tensor::from_slice(&labels[start..start + len], &[len], Device::Cpu)?
            .to_device(trainer.device())?;
        // The stochastic sampler's ε stream differs per batch (unused when ρ = 0).
        let begin = Start::Noise {
            z: &z,
            seed: seed.wrapping_add(start as u64),
        };
        let x = sample(&model, begin, &y, Some(model.null_label()), sampler)?;
        out.extend(x.to_vec::<f32>()?);
        on_batch(start + len);
    }
    Ok((out, labels))
}
