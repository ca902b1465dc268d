//! Per-op overhead: a chain of 1,000 cheap ops on `[128]`-element f32 tensors, where
//! the bookkeeping around each kernel (allocation, dispatch, graph recording) dominates
//! the arithmetic.
//!
//! `x` is a `[128]` variable, `c` and `b` constant `[128]` tensors. Starting from
//! `y = x`, op `i` of the chain is, by `i % 4`: `y·c`, `y + b`, `tanh y`, `sin y`
//! (two binary and two unary ops; `c ≈ 1`, `b ≈ 0`, so values and gradients stay well
//! inside the normal f32 range). Then `loss = Σ y`.
//!
//! Three measurements, each the median of several runs after warm-up, reported as
//! µs per chain op (total time / 1,000):
//! - `forward`: the chain and the sum, recording the graph;
//! - `forward+backward`: the same plus `loss.backward()`;
//! - `no-grad forward`: the chain and the sum inside `no_grad`.
//!
//! The same measurement in PyTorch is `benches/torch_reference.py`; `benches/run.sh`
//! runs both (see `docs/benchmarks.md`). `--json` (or `TWINFLOW_BENCH_JSON=1`) also
//! prints one JSON object per line.

#[path = "common/twin_timing.rs"]
mod twin_timing;
use twin_timing::median_secs;
use twinflow::engine::{no_grad, DType, Device, Generator, Result, Tensor};

const CHAIN: usize = 1000;
const LEN: usize = 128;
const WARMUP: usize = 20;
/// Minimum warm-up time per measurement, in seconds.
const WARMUP_SECS: f64 = 0.3;
const REPS: usize = 200;

fn chain(x: &Tensor, c: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    for i in 0..CHAIN {
        y = match i % 4 {
            0 => y.mul(c)?,
            1 => y.add(b)?,
            2 => y.tanh()?,
            _ => y.sin()?,
        };
    }
    y.sum_all()
}

/// Median seconds of `REPS` timed calls of `f` after at least `WARMUP` untimed ones
/// and `WARMUP_SECS` of warm-up.
fn time<T>(f: impl FnMut() -> Result<T>) -> Result<f64> {
    median_secs(f, (WARMUP, WARMUP_SECS), REPS)
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // As the command line does: the engine is driven from a worker of its CPU pool.
    twinflow::engine::cpu::on_worker_thread(run)
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let json = std::env::args().any(|a| a == "--json")
        || std::env::var("TWINFLOW_BENCH_JSON").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut gen = Generator::new(0);
    let x = gen
        .randn(&[LEN], DType::F32, Device::Cpu)?
        .into_variable()?;
    let c = gen.normal(&[LEN], 1.0, 0.1, DType::F32, Device::Cpu)?;
    let b = gen.normal(&[LEN], 0.0, 0.1, DType::F32, Device::Cpu)?;

    // Sanity: the gradient exists and is finite (the chain is not optimised away).
    let g = chain(&x, &c, &b)?.backward()?;
    let gx = g.get(&x).ok_or("no gradient for x")?.to_vec::<f32>()?;
    assert!(gx.iter().all(|v| v.is_finite()), "non-finite gradient");

    let results = [
        ("forward", time(|| chain(&x, &c, &b))?),
        (
            "forward+backward",
            time(|| {
                let loss = chain(&x, &c, &b)?;
                let grads = loss.backward()?;
                Ok((loss, grads))
            })?,
        ),
        ("no-grad forward", time(|| no_grad(|| chain(&x, &c, &b)))?),
    ];

    println!("# twinflow op chain: {CHAIN} ops on [{LEN}] f32 (mul, add, tanh, sin)");
    println!("| measurement | median ms per chain | µs per op |");
    println!("|---|---:|---:|");
    for (name, t) in results {
        let us_per_op = t * 1e6 / CHAIN as f64;
        println!("| {name} | {:.3} | {us_per_op:.3} |", t * 1e3);
        if json {
            println!(
                "{{\"bench\":\"op_chain\",\"impl\":\"twinflow\",\"mode\":\"{name}\",\
                 \"median_s\":{t:.9},\"us_per_op\":{us_per_op:.4},\"ops\":{CHAIN}}}"
            );
        }
    }
    Ok(())
}
