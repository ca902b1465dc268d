//! f32 matrix-product throughput on the CPU: `C = A·B` for square `n×n` operands, then
//! the products of the default DiT's linear layers at batch 128 in the three layouts a
//! training step runs them in.
//!
//! For each size: fresh standard-normal inputs, untimed warm-up products (at least a
//! few, and for at least half a second: the first tens of milliseconds of parallel
//! work in a fresh process on this VM run at up to half speed), then the median wall
//! time of several timed products; GFLOP/s = 2n³ / t. The same measurement in PyTorch
//! is `benches/torch_reference.py`; `benches/run.sh` runs both and prints them side by
//! side (see `docs/benchmarks.md`).
//!
//! The DiT's products show where the square sizes' rate does and does not carry over:
//! each layer `x·Wᵀ` (forward), `g·W` (the input's gradient) and `gᵀ·x` (the weight's
//! gradient, a long inner dimension with a transposed left operand), on the kernels'
//! own layouts. In the training step the feed-forward's products run inside the fused
//! `gelu_mlp` (in row blocks) and the weight gradients add the bias gradient, so these
//! are the kernels' rates, not the ops'.
//!
//! ```text
//! cargo bench --bench matmul              # table
//! cargo bench --bench matmul -- --json    # also one JSON object per line
//! TWINFLOW_BENCH_JSON=1 cargo bench --bench matmul
//! ```
//!
//! Threads: the engine's CPU backend uses rayon's global pool (one thread per core
//! unless `RAYON_NUM_THREADS` says otherwise).

#[path = "common/twin_timing.rs"]
mod twin_timing;
use twin_timing::median_secs;
use twinflow::engine::{DType, Device, Generator, Tensor};

/// Minimum warm-up time per size, in seconds.
const WARMUP_SECS: f64 = 0.5;

/// (n, minimum warm-up products, timed products).
const SIZES: [(usize, usize, usize); 4] =
    [(256, 10, 50), (512, 5, 30), (1024, 3, 15), (2048, 2, 7)];

/// Token rows of the default DiT at batch 128 (49 tokens a sample).
const DIT_ROWS: usize = 128 * 49;
/// The default DiT's linear layers over the tokens: (name, inputs, outputs).
const DIT_LAYERS: [(&str, usize, usize); 4] = [
    ("qkv", 128, 384),
    ("proj", 128, 128),
    ("fc1", 128, 512),
    ("fc2", 512, 128),
];
/// Minimum warm-up products and timed products of each DiT product.
const DIT_REPS: (usize, usize) = (3, 15);

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
        let t = median_secs(|| a.matmul(&b), (warmup, WARMUP_SECS), reps)?;
        let gflops = 2.0 * (n as f64).powi(3) / t / 1e9;
        println!("| {n} | {:.3} | {gflops:.1} |", t * 1e3);
        if json {
            println!(
                "{{\"bench\":\"matmul\",\"impl\":\"twinflow\",\"n\":{n},\"median_s\":{t:.9},\
                 \"gflops\":{gflops:.3},\"threads\":{threads}}}"
            );
        }
    }
    dit_products(&mut gen, json, threads)
}

/// The DiT's products (see the module docs): a table, and JSON lines when asked.
fn dit_products(
    gen: &mut Generator,
    json: bool,
    threads: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    println!();
    println!("# the DiT's products at batch 128 ({DIT_ROWS} token rows)");
    println!("| product | m × k × n | median ms | GFLOP/s |");
    println!("|---|---:|---:|---:|");
    for (layer, inputs, outputs) in DIT_LAYERS {
        let x = gen.randn(&[DIT_ROWS, inputs], DType::F32, Device::Cpu)?;
        let w = gen.randn(&[outputs, inputs], DType::F32, Device::Cpu)?;
        let g = gen.randn(&[DIT_ROWS, outputs], DType::F32, Device::Cpu)?;
        let (w_t, g_t) = (w.t()?, g.t()?);
        let products: [(&str, &Tensor, &Tensor, [usize; 3]); 3] = [
            ("forward", &x, &w_t, [DIT_ROWS, inputs, outputs]),
            ("input grad", &g, &w, [DIT_ROWS, outputs, inputs]),
            ("weight grad", &g_t, &x, [outputs, DIT_ROWS, inputs]),
        ];
        for (kind, lhs, rhs, [m, k, n]) in products {
            let t = median_secs(|| lhs.matmul(rhs), (DIT_REPS.0, WARMUP_SECS), DIT_REPS.1)?;
            let gflops = 2.0 * (m * k * n) as f64 / t / 1e9;
            let product = format!("{layer} {kind}");
            println!(
                "| {product} | {m} × {k} × {n} | {:.3} | {gflops:.1} |",
                t * 1e3
            );
            if json {
                println!(
                    "{{\"bench\":\"dit_products\",\"impl\":\"twinflow\",\"product\":\"{product}\",\
                     \"m\":{m},\"k\":{k},\"n\":{n},\"median_s\":{t:.9},\"gflops\":{gflops:.3},\
                     \"threads\":{threads}}}"
                );
            }
        }
    }
    Ok(())
}
