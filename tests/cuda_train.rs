//! Whole training steps on CUDA against the same steps on the CPU: the moons MLP config
//! and a small DiT on MNIST, same seed. Every random draw comes from the CPU generator
//! (and is copied to the device), so the two runs see the same data, noise and times and
//! differ only by float rounding: losses and final weights must agree closely. Skips,
//! with a message, where no CUDA driver or device exists.
#![cfg(feature = "cuda")]

use twinflow::flow::train::{TrainConfig, Trainer};
use twinflow::nn::Module;

mod common;

/// `steps` losses and the final flattened weights of `cfg` on `device`.
fn run(cfg: &TrainConfig, device: &str, steps: usize) -> (Vec<f64>, Vec<f64>) {
    let mut cfg = cfg.clone();
    cfg.device = device.into();
    let mut trainer = Trainer::new(cfg).unwrap();
    let losses = (0..steps).map(|_| trainer.step().unwrap().loss).collect();
    let mut weights = Vec::new();
    trainer
        .model()
        .visit_params(&mut |_, p| weights.extend(p.to_vec_f64().unwrap()));
    (losses, weights)
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn compare(name: &str, cfg: &TrainConfig, steps: usize, tol: f64) {
    if common::gpu().is_none() {
        return;
    }
    let (loss_cpu, w_cpu) = run(cfg, "cpu", steps);
    let (loss_gpu, w_gpu) = run(cfg, "cuda", steps);
    for (i, (c, g)) in loss_cpu.iter().zip(&loss_gpu).enumerate() {
        let e = (c - g).abs() / c.abs().max(1e-12);
        assert!(e <= tol, "{name} step {}: loss cpu {c} cuda {g}", i + 1);
    }
    let e = rel_err(&w_gpu, &w_cpu);
    assert!(
        e <= tol,
        "{name}: weights differ by {e:e} after {steps} steps"
    );
}

#[test]
fn moons_twinflow_steps_match_the_cpu() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/moons-twinflow.toml");
    let cfg = TrainConfig::load(path).unwrap();
    compare("moons-twinflow", &cfg, 20, 1e-3);
}

/// A small DiT TwinFlow config on the shipped MNIST, `heads` attention heads of a
/// 64-wide model, in `precision`.
fn dit_config(heads: usize, precision: &str) -> TrainConfig {
    let toml = format!(
        r#"
steps = 10
precision = "{precision}"
[model]
kind = "dit"
[model.dit]
image_size = 28
channels = 1
patch = 4
dim = 64
depth = 2
heads = {heads}
num_classes = 10
label_dropout = 0.1
[method]
name = "twinflow"
[method.twinflow]
recipe = "split"
[data]
dataset = "mnist"
batch_size = 32
root = {:?}
"#,
        env!("CARGO_MANIFEST_DIR")
    );
    TrainConfig::from_toml(&toml, "dit test config").unwrap()
}

#[test]
fn dit_twinflow_steps_match_the_cpu() {
    compare("dit-twinflow", &dit_config(4, "f32"), 5, 1e-3);
}

/// Under bf16 autocast (activations in bf16 between products, the fused attention at
/// head dim 32) both devices round to bf16 at the same places; the products'
/// summation orders differ, so the tolerance is bf16's.
#[test]
fn dit_twinflow_bf16_steps_match_the_cpu() {
    compare("dit-twinflow-bf16", &dit_config(2, "bf16"), 5, 2e-2);
}
