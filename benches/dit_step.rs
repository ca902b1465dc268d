//! A DiT training step and a no-grad forward, the workload the trainer runs.
//!
//! The model is the module library's default `Dit` (dim 128, depth 4, 4 heads, patch 4
//! on 28×28×1: 49 tokens, 1,298,320 parameters), batch 128, as in
//! `benches/torch_dit.py` (PyTorch eager, the project's reference DiT, whose names and
//! operations `Dit` follows: docs/nn.md). A training step is forward, MSE against
//! the input, backward and an AdamW update; times are medians over several steps after
//! warm-up. The peak resident memory of the process (VmHWM) is reported too.
//! `--json` prints one JSON object per line; `--batch N` changes the batch; `--profile`
//! adds, on stderr, the per-op table of one more step and forward (`engine::profile`).
//! It also reports the floating-point work of the products (see [`product_gflop`]),
//! from which `benches/run.sh` computes the *matmul floor*: that work at the run's best
//! measured GEMM rate.

use twinflow::engine::profile::profile;
use twinflow::engine::{no_grad, DType, Device, Generator, Result, Tensor};
use twinflow::nn::{
    Adam, AdamConfig, Dit, DitConfig, Module, Optimizer, ParamBuilder, VelocityModel,
};

#[path = "common/mod.rs"]
mod common;
use common::{rayon_threads, status_mib, time_ms};

/// The product flops (in GFLOP) of one no-grad forward and of one training step of
/// `cfg` at batch `n`: every linear layer over the tokens (patch embedding, `qkv`,
/// `proj`, `fc1`, `fc2`, the output layer), attention's two products per head
/// (`q·kᵀ` and `P·v`), and the adaLN projections over the conditioning vectors; the
/// time embeddings' small MLPs are left out (under 0.5 % of the total at the default
/// size). A training step counts three times the forward (each product's input and
/// weight gradients are products of the same size) less the input gradient of the
/// patch embedding, which the images do not need; the recomputation of attention's
/// scores in the backward is not counted.
fn product_gflop(cfg: &DitConfig, n: usize) -> (f64, f64) {
    let tokens = (cfg.image_size / cfg.patch).pow(2) as f64;
    let (d, hidden) = (cfg.dim as f64, (cfg.mlp_ratio * cfg.dim) as f64);
    let patch_in = (cfg.channels * cfg.patch * cfg.patch) as f64;
    let block = 2.0 * tokens * d * (3.0 * d + d + 2.0 * hidden)
        + 4.0 * tokens * tokens * d
        + 2.0 * d * 6.0 * d;
    let per_sample = 2.0 * tokens * patch_in * d
        + cfg.depth as f64 * block
        + 2.0 * d * 2.0 * d
        + 2.0 * tokens * d * patch_in;
    let forward = n as f64 * per_sample / 1e9;
    let images_gradient = n as f64 * 2.0 * tokens * patch_in * d / 1e9;
    (forward, 3.0 * forward - images_gradient)
}

struct Batch {
    x: Tensor,
    t: Tensor,
    tt: Tensor,
    labels: Tensor,
}

fn batch(n: usize) -> Result<Batch> {
    let mut g = Generator::new(1);
    let x = g.randn(&[n, 784], DType::F32, Device::Cpu)?;
    let t = g.uniform(&[n], 0.0, 1.0, DType::F32, Device::Cpu)?;
    let tt = g
        .uniform(&[n], 0.0, 1.0, DType::F32, Device::Cpu)?
        .mul(&t)?;
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let labels = Tensor::from_vec(labels, &[n], Device::Cpu)?;
    Ok(Batch { x, t, tt, labels })
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // As the command line does: the engine is driven from a worker of its CPU pool.
    twinflow::engine::cpu::on_worker_thread(run)
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let n = match args.iter().position(|a| a == "--batch") {
        Some(i) => args.get(i + 1).ok_or("--batch needs a value")?.parse()?,
        None => 128,
    };
    let model = Dit::new(&mut ParamBuilder::new(0), DitConfig::default())?;
    let mut opt = Adam::new(
        model.named_params(),
        AdamConfig {
            lr: 1e-4,
            ..AdamConfig::adamw()
        },
    )?;
    let b = batch(n)?;
    let mut train_step = || {
        let out = model.velocity(&b.x, &b.t, &b.tt, &b.labels)?;
        opt.step(&out.mse(&b.x)?.backward()?)
    };
    let mut forward = || no_grad(|| model.velocity(&b.x, &b.t, &b.tt, &b.labels)).map(drop);
    let train_ms = time_ms(&mut train_step)?;
    let forward_ms = time_ms(&mut forward)?;
    if args.iter().any(|a| a == "--profile") {
        let (done, train_profile) = profile(false, train_step);
        done?;
        let (done, forward_profile) = profile(false, forward);
        done?;
        eprintln!("## op profile: train step\n\n{}\n", train_profile.table());
        eprintln!(
            "## products by shape: train step (outside the fused feed-forward and \
             attention ops)\n\n{}\n",
            train_profile.products_table()
        );
        eprintln!(
            "## op profile: no-grad forward\n\n{}",
            forward_profile.table()
        );
    }
    let peak = status_mib("VmHWM").unwrap_or(f64::NAN);
    let threads = rayon_threads();
    let (forward_gflop, train_gflop) = product_gflop(model.config(), n);
    if json {
        println!(
            "{{\"bench\":\"dit\",\"impl\":\"twinflow\",\"batch\":{n},\"params\":{},\"threads\":{threads},\"train_step_ms\":{train_ms:.1},\"forward_nograd_ms\":{forward_ms:.1},\"peak_rss_mib\":{peak:.0},\"train_step_gflop\":{train_gflop:.3},\"forward_gflop\":{forward_gflop:.3}}}",
            model.param_count()
        );
    } else {
        println!(
            "# ours: DiT {} params, batch {n}, {threads} threads",
            model.param_count()
        );
        println!("| measurement | ms |");
        println!("|---|---:|");
        println!("| train step (fwd, MSE, bwd, AdamW) | {train_ms:.1} |");
        println!("| no-grad forward | {forward_ms:.1} |");
        println!("| peak RSS (MiB) | {peak:.0} |");
        println!("product GFLOP: train step {train_gflop:.2}, no-grad forward {forward_gflop:.2}");
    }
    Ok(())
}
