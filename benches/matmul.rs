//! f32 matrix-product throughput on the CPU: `C = A·B` for square `n×n` operands.
//!
//! For each size: fresh standard-normal inputs, untimed warm-up products (at least a
//! few, and for at least half a second: the first tens of milliseconds of parallel
//! work in a fresh process on this VM run at up to half speed), then the median wall
//! time of several timed products; GFLOP/s = 2n³ / t. The same measurement in PyTorch
//! is `benches/torch_reference.py`; `benches/run.sh` runs both and prints them side by
//! side (see `docs/benchmarks.md`).
//!
//! ```text
//! cargo bench --bench matmul              # table
//! cargo bench --bench matmul -- --json    # also one JSON object per line
//! TWINFLOW_BENCH_JSON=1 cargo bench --bench matmul
//! ```
//!
//! Threads: the engine's CPU backend uses rayon's global pool (one thread per core
//! unless `RAYON_NUM_THREADS` says otherwise).

use std::time::Instant;
use twinflow::engine::{DType, Device, Generator, Tensor};

/// Minimum warm-up time per size, in seconds.
const WARMUP_SECS: f64 = 0.5;

/// (n, minimum warm-up products, timed products).
const SIZES: [(usize, usize, usize); 4] =
    [(256, 10, 50), (512, 5, 30), (1024, 3, 15), (2048, 2, 7)];

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        0.5 * (xs[m - 1] + xs[m])
    }
}

/// The size of rayon's global pool: `RAYON_NUM_THREADS` when set, else one per core.
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn json_wanted() -> bool {
    std::env::args().any(|a| a == "--json")
        || std::env::var("TWINFLOW_BENCH_JSON").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // As the command line does: the engine is driven from a worker of its CPU pool.
    twinflow::engine::cpu::on_worker_thread(run)
}

fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let json = json_wanted();
    let threads = rayon_threads();
    println!("# twinflow matmul, f32, CPU, {threads} threads");
    println!("| n | median ms | GFLOP/s |");
    println!("|---:|---:|---:|");
    let mut gen = Generator::new(0);
    for (n, warmup, reps) in SIZES {
        let a = gen.randn(&[n, n], DType::F32, Device::Cpu)?;
        let b = gen.randn(&[n, n], DType::F32, Device::Cpu)?;
        let start = Instant::now();
        let mut done = 0;
        while done < warmup || start.elapsed().as_secs_f64() < WARMUP_SECS {
            let c: Tensor = a.matmul(&b)?;
            std::hint::black_box(&c);
            done += 1;
        }
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t0 = Instant::now();
            let c = a.matmul(&b)?;
            let dt = t0.elapsed().as_secs_f64();
            std::hint::black_box(&c);
            drop(c);
            times.push(dt);
        }
        let t = median(times);
        let gflops = 2.0 * (n as f64).powi(3) / t / 1e9;
        println!("| {n} | {:.3} | {gflops:.1} |", t * 1e3);
        if json {
            println!(
                "{{\"bench\":\"matmul\",\"impl\":\"twinflow\",\"n\":{n},\"median_s\":{t:.9},\
                 \"gflops\":{gflops:.3},\"threads\":{threads}}}"
            );
        }
    }
    Ok(())
}
