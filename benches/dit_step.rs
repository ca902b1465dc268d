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

use std::time::Instant;
use twinflow::engine::profile::profile;
use twinflow::engine::{no_grad, DType, Device, Generator, Result, Tensor};
use twinflow::nn::{
    Adam, AdamConfig, Dit, DitConfig, Module, Optimizer, ParamBuilder, VelocityModel,
};

const WARMUP: usize = 3;
const STEPS: usize = 10;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median milliseconds of `STEPS` calls of `f` after `WARMUP` untimed ones.
fn time_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    let mut times = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Peak resident set size of this process in MiB, from /proc (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
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
    let peak = peak_rss_mib().unwrap_or(f64::NAN);
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

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
