//! The cost of a MeanFlow-class training step (one forward under `jvp`) against a plain
//! flow-matching step, on the DiT of `benches/dit_step.rs`.
//!
//! Same model (the module library's default `Dit`: dim 128, depth 4, 4 heads, patch 4
//! on 28×28×1, 1,298,320 parameters) and batch (128) as `dit_step`; the PyTorch twin
//! is `benches/torch_jvp.py`. Data `x ~ N(0, I)`, noise `z ~ N(0, I)`, `t ~ U(0, 1)`,
//! `r = U(0, 1)·t`, labels `i mod 10`; the path point `x_t = t·z + (1 − t)·x` and its
//! velocity `v = z − x` are made once, outside the timed steps. The two steps:
//!
//! - **FM**: `u = F(x_t, t, t, c)`, `loss = mse(u, v)`, backward.
//! - **MeanFlow**: `(u, du/dt) = jvp(F(·, ·, ·, c), (x_t, t, r), (v, 1, 0))` (the
//!   network's time slots are (current `t`, target `r`): docs/method.md §1, as
//!   `crates/flow`'s MeanFlow calls it), `target = sg(v − (t − r)·du/dt)`,
//!   `loss = mse(u, target)`, backward.
//!
//! Neither step runs an optimiser (the update costs the same in both). Times are
//! medians of 10 steps after 3 warm-up steps. Each step runs in a child process of its
//! own, so that its memory is its own (the engine's buffer pool keeps freed buffers for
//! reuse): the child reads its resident set after building the model and the batch,
//! resets the process's high-water mark (`/proc/self/clear_refs`), runs the warm-up and
//! timed steps, and reports the peak growth (VmHWM minus that baseline) and the peak
//! itself. `--json` prints one JSON object per line; `--batch N` changes the batch;
//! `--profile` adds, on stderr, the per-op table of one more step of each kind.

use std::process::Command;
use twinflow::engine::profile::profile;
use twinflow::engine::{jvp, no_grad, DType, Device, Generator, Result, Tensor};
use twinflow::nn::{Dit, DitConfig, Module, ParamBuilder, VelocityModel};

const CASES: [&str; 2] = ["fm", "meanflow"];

#[path = "common/mod.rs"]
mod common;
use common::{rayon_threads, status_mib, time_ms};

/// Resets the process's peak resident set (VmHWM) to its current one; false where the
/// kernel does not allow it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

struct Batch {
    /// The path point `x_t = t·z + (1 − t)·x`.
    x_t: Tensor,
    /// The path's velocity `v = z − x`.
    v: Tensor,
    t: Tensor,
    r: Tensor,
    /// `t − r` as `[B, 1]`, to scale each sample's row.
    t_minus_r: Tensor,
    labels: Tensor,
}

fn batch(n: usize) -> Result<Batch> {
    let mut g = Generator::new(1);
    let x = g.randn(&[n, 784], DType::F32, Device::Cpu)?;
    let z = g.randn(&[n, 784], DType::F32, Device::Cpu)?;
    let t = g.uniform(&[n], 0.0, 1.0, DType::F32, Device::Cpu)?;
    let r = g
        .uniform(&[n], 0.0, 1.0, DType::F32, Device::Cpu)?
        .mul(&t)?;
    let tc = t.unsqueeze(1)?;
    let x_t = z.mul(&tc)?.add(&x.mul(&tc.affine(-1.0, 1.0)?)?)?;
    let v = z.sub(&x)?;
    let t_minus_r = t.sub(&r)?.unsqueeze(1)?;
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let labels = Tensor::from_vec(labels, &[n], Device::Cpu)?;
    Ok(Batch {
        x_t,
        v,
        t,
        r,
        t_minus_r,
        labels,
    })
}

/// One flow-matching step: forward at `(t, t)`, MSE against `v`, backward.
fn fm_step(model: &Dit, b: &Batch) -> Result<()> {
    let u = model.velocity(&b.x_t, &b.t, &b.t, &b.labels)?;
    u.mse(&b.v)?.backward().map(drop)
}

/// One MeanFlow step: forward under `jvp` along `(v, 1, 0)` for `(x_t, t, r)`, the
/// stop-gradient target `v − (t − r)·du/dt`, MSE, backward.
fn meanflow_step(model: &Dit, b: &Batch) -> Result<()> {
    let primals = [b.x_t.clone(), b.t.clone(), b.r.clone()];
    let tangents = [b.v.clone(), b.t.ones_like()?, b.r.zeros_like()?];
    let forward = |p: &[Tensor]| Ok(vec![model.velocity(&p[0], &p[1], &p[2], &b.labels)?]);
    let (mut u, mut du_dt) = jvp(forward, &primals, &tangents)?;
    let (u, du_dt) = (u.remove(0), du_dt.remove(0));
    let target = no_grad(|| b.v.sub(&du_dt.mul(&b.t_minus_r)?))?.detach();
    u.mse(&target)?.backward().map(drop)
}

/// Runs one case in this process and prints its JSON line (the parent reads it).
fn run_case(
    case: &str,
    n: usize,
    with_profile: bool,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let model = Dit::new(&mut ParamBuilder::new(0), DitConfig::default())?;
    let b = batch(n)?;
    let step = match case {
        "fm" => fm_step,
        "meanflow" => meanflow_step,
        other => return Err(format!("unknown case {other:?}").into()),
    };
    let base = status_mib("VmRSS").unwrap_or(f64::NAN);
    let reset = reset_peak_rss();
    let ms = time_ms(|| step(&model, &b))?;
    let peak = status_mib("VmHWM").unwrap_or(f64::NAN);
    if with_profile {
        let (done, table) = profile(false, || step(&model, &b));
        done?;
        eprintln!("## op profile: {case} step\n\n{}\n", table.table());
    }
    println!(
        "{{\"case\":\"{case}\",\"ms\":{ms:.3},\"base_rss_mib\":{base:.1},\"peak_rss_mib\":{peak:.1},\"hwm_reset\":{reset},\"params\":{}}}",
        model.param_count()
    );
    Ok(())
}

struct CaseResult {
    ms: f64,
    growth_mib: f64,
    peak_mib: f64,
    params: u64,
}

/// Runs `case` in a child process of this executable.
fn spawn_case(
    case: &str,
    n: usize,
    with_profile: bool,
) -> std::result::Result<CaseResult, Box<dyn std::error::Error + Send + Sync>> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--case", case, "--batch", &n.to_string()]);
    if with_profile {
        cmd.arg("--profile");
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("the {case} child failed: {}", out.status).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("the {case} child printed no result: {text:?}"))?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| format!("{case}: no {k} in {line}"))
    };
    if v["hwm_reset"] != serde_json::Value::Bool(true) {
        eprintln!("warning: could not reset VmHWM; the {case} peak includes the setup");
    }
    Ok(CaseResult {
        ms: num("ms")?,
        growth_mib: num("peak_rss_mib")? - num("base_rss_mib")?,
        peak_mib: num("peak_rss_mib")?,
        params: num("params")? as u64,
    })
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // As the command line does: the engine is driven from a worker of its CPU pool.
    twinflow::engine::cpu::on_worker_thread(run)
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let with_profile = args.iter().any(|a| a == "--profile");
    let value = |flag: &str| -> std::result::Result<Option<&String>, String> {
        match args.iter().position(|a| a == flag) {
            Some(i) => args
                .get(i + 1)
                .map(Some)
                .ok_or(format!("{flag} needs a value")),
            None => Ok(None),
        }
    };
    let n: usize = match value("--batch")? {
        Some(v) => v.parse()?,
        None => 128,
    };
    if let Some(case) = value("--case")? {
        return run_case(case, n, with_profile);
    }
    let fm = spawn_case(CASES[0], n, with_profile)?;
    let mf = spawn_case(CASES[1], n, with_profile)?;
    let threads = rayon_threads();
    let ratio = mf.ms / fm.ms;
    if json {
        println!(
            "{{\"bench\":\"jvp\",\"impl\":\"twinflow\",\"batch\":{n},\"params\":{},\"threads\":{threads},\"fm_step_ms\":{:.1},\"meanflow_step_ms\":{:.1},\"meanflow_over_fm\":{ratio:.3},\"fm_peak_growth_mib\":{:.0},\"meanflow_peak_growth_mib\":{:.0},\"fm_peak_rss_mib\":{:.0},\"meanflow_peak_rss_mib\":{:.0}}}",
            fm.params, fm.ms, mf.ms, fm.growth_mib, mf.growth_mib, fm.peak_mib, mf.peak_mib
        );
    } else {
        println!(
            "# ours: DiT {} params, batch {n}, {threads} threads; each step in its own process",
            fm.params
        );
        println!("| step (no optimiser) | ms | peak RSS growth (MiB) | peak RSS (MiB) |");
        println!("|---|---:|---:|---:|");
        println!(
            "| FM (fwd, MSE, bwd) | {:.1} | {:.0} | {:.0} |",
            fm.ms, fm.growth_mib, fm.peak_mib
        );
        println!(
            "| MeanFlow (jvp fwd, MSE, bwd) | {:.1} | {:.0} | {:.0} |",
            mf.ms, mf.growth_mib, mf.peak_mib
        );
        println!("| MeanFlow / FM | {ratio:.2} | | |");
    }
    Ok(())
}
