//! CUDA throughput beside PyTorch on the same GPU (`benches/torch_cuda.py` measures the
//! same shapes): matrix products in TFLOP/s (f32, TF32, bf16; n = 1024…8192), an
//! elementwise add and a last-dim sum in GB/s beside the measured device copy
//! bandwidth, a DiT training step (batch 128 and 1024), the fused attention in bf16
//! (forward, and forward + backward with the two-kernel and the single-pass backward, in
//! TFLOP/s; b·h = 64, head dim 64 and 128, T = 256, 1024, 4096 and 16,384, causal too
//! from T = 1024 on; on sm_90 cards also the Hopper forward, alone and with the
//! two-kernel backward) and a DiT-S/2-sized training step under bf16 autocast (dim 384,
//! depth 12, 6 heads, 32×32×3 images, patch 2, batch 256; also with cuBLASLt's gradient
//! epilogues, with the single-pass attention backward, and with the Hopper forward,
//! which is the default step's on other cards).
//! Every number is the median of several timed runs after warm-up, with the device
//! synchronised around each. Within a group the paths not yet run on a GPU (the
//! single-pass backward, the Hopper forwards) come last, after every default figure
//! and profile: a kernel fault ends the process. Prints
//! `skipping: no CUDA driver/device` and exits 0 without a GPU.
//!
//! ```text
//! cargo bench --features cuda --bench cuda              # table
//! cargo bench --features cuda --bench cuda -- --json    # one JSON object per line
//! cargo bench --features cuda --bench cuda -- attention dit_bf16   # only these groups
//! ```

use std::time::Instant;
use twinflow::engine::{
    autocast,
    cuda::{self, HopperAttention},
    profile::{profile_with, Timing},
    scaled_dot_product_attention, DType, Device, Generator, Result, Tensor,
};
use twinflow::nn::{
    Adam, AdamConfig, Dit, DitConfig, Module, Optimizer, ParamBuilder, VelocityModel,
};

const WARMUP: usize = 3;
const RUNS: usize = 10;

/// Median seconds of `f` (device synchronised before and after each run).
fn time(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    cuda::synchronize(0)?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        f()?;
        cuda::synchronize(0)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

/// A process-wide path switch of `cuda` (`set_single_pass_attention_backward`, …).
type Switch = fn(bool);

/// `f` run with a path switched on by `set(true)`, then off again (the default of every
/// switch timed here).
fn switched<T>(set: Switch, f: impl FnOnce() -> T) -> T {
    set(true);
    let out = f();
    set(false);
    out
}

/// `f` run with the Hopper forward `mode`, then with the default forward again.
fn hopper<T>(mode: HopperAttention, f: impl FnOnce() -> T) -> T {
    cuda::set_hopper_attention(mode);
    let out = f();
    cuda::set_hopper_attention(HopperAttention::Off);
    out
}

/// The Hopper forwards and the names of their cases.
const HOPPER_FORWARDS: [(HopperAttention, &str); 3] = [
    (HopperAttention::CpAsync, "sm90 cp.async"),
    (HopperAttention::Tma, "sm90 tma"),
    (HopperAttention::TmaPingPong, "sm90 tma-pingpong"),
];

fn report(json: bool, bench: &str, what: &str, value: f64, unit: &str) {
    match json {
        true => println!(
            "{{\"bench\":\"{bench}\",\"impl\":\"twinflow\",\"case\":\"{what}\",\"value\":{value:.3},\"unit\":\"{unit}\"}}"
        ),
        false => println!("| {bench} | {what} | {value:.2} {unit} |"),
    }
}

fn matmuls(dev: Device, json: bool) -> Result<()> {
    for (label, dt, tf32) in [
        ("f32", DType::F32, false),
        ("tf32", DType::F32, true),
        ("bf16", DType::BF16, false),
    ] {
        cuda::set_allow_tf32(tf32);
        for n in [1024, 2048, 4096, 8192] {
            let mut g = Generator::new(n as u64);
            let a = g.randn(&[n, n], dt, Device::Cpu)?.to_device(dev)?;
            let b = g.randn(&[n, n], dt, Device::Cpu)?.to_device(dev)?;
            let s = time(|| a.matmul(&b).map(drop))?;
            report(
                json,
                "matmul",
                &format!("{label} {n}"),
                2.0 * (n as f64).powi(3) / s / 1e12,
                "TFLOP/s",
            );
        }
    }
    cuda::set_allow_tf32(false);
    Ok(())
}

fn bandwidth(dev: Device, json: bool) -> Result<()> {
    let n = 1 << 28; // 1 GiB of f32 per operand
    let a = Tensor::ones(&[n / 4096, 4096], DType::F32, dev)?;
    let b = Tensor::ones(&[n / 4096, 4096], DType::F32, dev)?;
    let bytes = (n * 4) as f64;
    // A read and a write per element, as a copy (the engine has no public copy op).
    let copy = time(|| a.affine(1.0, 0.0).map(drop))?;
    let strided_copy = time(|| a.t()?.contiguous().map(drop))?;
    let add = time(|| a.add(&b).map(drop))?;
    let sum = time(|| a.sum(&[1], false).map(drop))?;
    report(
        json,
        "bandwidth",
        "copy (x·1 + 0)",
        2.0 * bytes / copy / 1e9,
        "GB/s",
    );
    report(
        json,
        "bandwidth",
        "copy (transposed)",
        2.0 * bytes / strided_copy / 1e9,
        "GB/s",
    );
    report(json, "bandwidth", "add", 3.0 * bytes / add / 1e9, "GB/s");
    report(json, "bandwidth", "sum last dim", bytes / sum / 1e9, "GB/s");
    Ok(())
}

fn dit_step(dev: Device, json: bool) -> Result<()> {
    for batch in [128, 1024] {
        let model = Dit::new(
            &mut ParamBuilder::new(0).with_device(dev),
            DitConfig::default(),
        )?;
        let mut opt = Adam::new(
            model.named_params(),
            AdamConfig {
                lr: 1e-4,
                ..AdamConfig::adamw()
            },
        )?;
        let mut g = Generator::new(1);
        let x = g.randn(&[batch, 784], DType::F32, dev)?;
        let t = g.uniform(&[batch], 0.0, 1.0, DType::F32, dev)?;
        let tt = g.uniform(&[batch], 0.0, 1.0, DType::F32, dev)?.mul(&t)?;
        let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
        let labels = Tensor::from_vec(labels, &[batch], dev)?;
        let mut step = || {
            let out = model.velocity(&x, &t, &tt, &labels)?;
            let grads = out.mse(&x)?.backward()?;
            opt.step(&grads)
        };
        let s = time(&mut step)?;
        report(json, "dit_step", &format!("batch {batch}"), s * 1e3, "ms");
        // The same step with attention on cuBLAS products and row kernels: at T = 49 the
        // f32 fused kernels (plain FMAs, few warps) may lose to them.
        cuda::set_fused_attention(false);
        let unfused = time(&mut step);
        cuda::set_fused_attention(true);
        let case = format!("batch {batch}, unfused attention");
        report(json, "dit_step", &case, unfused? * 1e3, "ms");
        print_profile(&format!("f32 DiT step, batch {batch}"), step)?;
    }
    let stats = cuda::memory_stats(0)?;
    report(
        json,
        "memory",
        "peak in use",
        stats.peak_in_use as f64 / (1 << 20) as f64,
        "MiB",
    );
    Ok(())
}

/// FLOPs of one attention forward: two products of 2·t²·d per (batch, head); the
/// backward does five, 2.5 times as many (FlashAttention's convention, as PyTorch's
/// benchmarks count them). Under the causal mask half the scores are skipped, so half
/// the FLOPs count.
fn attention_flops(bh: usize, t: usize, d: usize, causal: bool) -> f64 {
    let full = 4.0 * bh as f64 * (t as f64).powi(2) * d as f64;
    if causal {
        full / 2.0
    } else {
        full
    }
}

/// The attention cases: head dims 64 and 128, T from 256 to 16k at b·h = 64, the causal
/// mask from T = 1024 on.
const ATTENTION_LENGTHS: [usize; 4] = [256, 1024, 4096, 16384];

fn attention(dev: Device, json: bool) -> Result<()> {
    let (b, h) = (4, 16);
    let sm90 = cuda::arch(0)? == "sm_90";
    // Every case on the default kernels first, then on the paths not yet run on a GPU
    // (the single-pass backward, the Hopper forwards): a fault there ends the process,
    // a CUDA error being the whole context's, and must not take the default figures
    // with it.
    for untried in [false, true] {
        for d in [64, 128] {
            for t in ATTENTION_LENGTHS {
                for causal in [false, true] {
                    if causal && t < 1024 {
                        continue;
                    }
                    let mut g = Generator::new(t as u64);
                    let mut draw = || g.randn(&[b, h, t, d], DType::BF16, dev);
                    let (q, k, v, dout) = (draw()?, draw()?, draw()?, draw()?);
                    let attend = |q: &Tensor, k: &Tensor, v: &Tensor| {
                        scaled_dot_product_attention(q, k, v, None, causal)
                    };
                    let flops = attention_flops(b * h, t, d, causal);
                    let mask = if causal { " causal" } else { "" };
                    let tflops = |what: &str, passes: f64, secs: f64| {
                        let case = format!("{what} bf16 d{d} T{t}{mask}");
                        report(
                            json,
                            "attention",
                            &case,
                            passes * flops / secs / 1e12,
                            "TFLOP/s",
                        );
                    };
                    let mut fwd = || attend(&q, &k, &v).map(drop);
                    let (qv, kv, vv) = (
                        q.clone().into_variable()?,
                        k.clone().into_variable()?,
                        v.clone().into_variable()?,
                    );
                    let mut fwd_bwd = || attend(&qv, &kv, &vv)?.backward_with(&dout).map(drop);
                    if !untried {
                        tflops("fwd", 1.0, time(&mut fwd)?);
                        tflops("fwd+bwd", 3.5, time(&mut fwd_bwd)?);
                        continue;
                    }
                    // The backward in one pass (off by default until it has run on a GPU).
                    let single = switched(cuda::set_single_pass_attention_backward, || {
                        time(&mut fwd_bwd)
                    })?;
                    tflops("fwd+bwd single-pass", 3.5, single);
                    // The Hopper forwards (sm_90 cards; off by default until they have
                    // run on one), alone and with the two-kernel backward.
                    for (mode, name) in HOPPER_FORWARDS.iter().filter(|_| sm90) {
                        tflops(
                            &format!("fwd {name}"),
                            1.0,
                            hopper(*mode, || time(&mut fwd))?,
                        );
                        let both = hopper(*mode, || time(&mut fwd_bwd))?;
                        tflops(&format!("fwd+bwd {name}"), 3.5, both);
                    }
                }
            }
        }
    }
    Ok(())
}

/// One training step (forward under bf16 autocast, MSE, backward, AdamW) of a
/// DiT-S/2-sized model on 32×32×3 images, batch 256.
fn dit_step_bf16(dev: Device, json: bool) -> Result<()> {
    let cfg = DitConfig::s2(32, 3);
    let batch = 256;
    let model = Dit::new(&mut ParamBuilder::new(0).with_device(dev), cfg)?;
    let adam = AdamConfig {
        lr: 1e-4,
        ..AdamConfig::adamw()
    };
    let mut opt = Adam::new(model.named_params(), adam)?;
    let mut g = Generator::new(1);
    let x = g.randn(&[batch, 3 * 32 * 32], DType::F32, dev)?;
    let t = g.uniform(&[batch], 0.0, 1.0, DType::F32, dev)?;
    let tt = g.uniform(&[batch], 0.0, 1.0, DType::F32, dev)?.mul(&t)?;
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let labels = Tensor::from_vec(labels, &[batch], dev)?;
    let mut step = || {
        let loss = autocast(DType::BF16, || {
            model.velocity(&x, &t, &tt, &labels)?.mse(&x)
        })??;
        opt.step(&loss.backward()?)
    };
    let s = time(&mut step)?;
    report(json, "dit_step", "bf16 S/2 32x32 batch 256", s * 1e3, "ms");
    // The same step with cuBLASLt's gradient epilogues (off by default: slower on an
    // H200 in December 2026, see `cuda::set_half_gradient_epilogues`).
    let case = |what: &str| format!("bf16 S/2 32x32 batch 256, {what}");
    let what = "cuBLASLt gradient epilogues";
    let ms = switched(cuda::set_half_gradient_epilogues, || time(&mut step))? * 1e3;
    report(json, "dit_step", &case(what), ms, "ms");
    // The default step's profile, then the paths not yet run on a GPU (the single-pass
    // attention backward, the Hopper forwards): a fault there ends the process.
    print_profile("bf16 DiT-S/2 step, batch 256", &mut step)?;
    let what = "single-pass attention backward";
    let ms = switched(cuda::set_single_pass_attention_backward, || time(&mut step))? * 1e3;
    report(json, "dit_step", &case(what), ms, "ms");
    let sm90 = cuda::arch(0)? == "sm_90";
    for (mode, name) in HOPPER_FORWARDS.iter().filter(|_| sm90) {
        let ms = hopper(*mode, || time(&mut step))? * 1e3;
        report(
            json,
            "dit_step",
            &case(&format!("attention forward {name}")),
            ms,
            "ms",
        );
    }
    Ok(())
}

/// Two more calls of `step` under the op profiler, with the per-op tables on stderr
/// (`scripts/gpu-check.sh` copies them into its summary): each op waiting for the GPU
/// (as in every earlier run's summary), and each op's time on the GPU's clock while
/// the step runs unhindered (comparable with PyTorch's kernel table).
fn print_profile(what: &str, mut step: impl FnMut() -> Result<()>) -> Result<()> {
    let (done, report) = profile_with(Timing::Synchronised, &mut step);
    done?;
    eprintln!(
        "\n## op profile: {what} (each op synchronised)\n\n{}",
        report.table()
    );
    let (done, report) = profile_with(Timing::DeviceEvents, step);
    done?;
    eprintln!(
        "\n## op profile: {what} (GPU clock, not synchronised)\n\n{}",
        report.table()
    );
    Ok(())
}

/// Whether bench group `name` runs: every group when none is named on the command line.
fn selected(name: &str) -> bool {
    let groups: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    groups.is_empty() || groups.iter().any(|g| g == name)
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let json = std::env::args().any(|a| a == "--json");
    let dev = match cuda::driver_present().then(|| Device::cuda(0)) {
        Some(Ok(dev)) => dev,
        other => {
            let why = match other {
                Some(Err(e)) => format!(" ({e})"),
                _ => String::new(),
            };
            println!("skipping: no CUDA driver/device{why}");
            return Ok(());
        }
    };
    if !json {
        println!("| bench | case | ours |");
        println!("|---|---|---:|");
    }
    type Group = fn(Device, bool) -> Result<()>;
    let groups: [(&str, Group); 5] = [
        ("matmul", matmuls),
        ("bandwidth", bandwidth),
        ("dit", dit_step),
        ("attention", attention),
        ("dit_bf16", dit_step_bf16),
    ];
    for (name, run) in groups {
        if selected(name) {
            run(dev, json)?;
        }
    }
    Ok(())
}
