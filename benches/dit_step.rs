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

use twinflow::engine::profile::profile;
use twinflow::engine::{no_grad, DType, Device, Generator, Result, Tensor};
use twinflow::nn::{
    Adam, AdamConfig, Dit, DitConfig, Module, Optimizer, ParamBuilder, VelocityModel,
};

#[path = "common/mod.rs"]
mod common;
use common::{rayon_threads, status_mib, time_ms};

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
            "## op profile: no-grad forward\n\n{}",
            forward_profile.table()
        );
    }
    let peak = status_mib("VmHWM").unwrap_or(f64::NAN);
    let threads = rayon_threads();
    if json {
        println!(
            "{{\"bench\":\"dit\",\"impl\":\"twinflow\",\"batch\":{n},\"params\":{},\"threads\":{threads},\"train_step_ms\":{train_ms:.1},\"forward_nograd_ms\":{forward_ms:.1},\"peak_rss_mib\":{peak:.0}}}",
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
    }
    Ok(())
}
