//! Transposed copies: `x.t().contiguous()` of f32 and bf16 matrices and the two
//! channel permutes of an image batch, in GB/s (bytes read and written over the
//! median time). These are what a gather of a strided view costs when each output row
//! is a column of the source (`cpu/strided.rs`, `gather_transposed`).
//!
//! The same measurement in PyTorch is `benches/torch_reference.py --bench transpose`;
//! `benches/run.sh` runs both. `--json` (or `TWINFLOW_BENCH_JSON=1`) also prints one
//! JSON object per line.

#[path = "common/twin_timing.rs"]
mod twin_timing;
use twin_timing::median_secs;
use twinflow::engine::{DType, Device, Generator, Result, Tensor};

/// Minimum warm-up time per case, in seconds.
const WARMUP_SECS: f64 = 0.3;

/// (case, source shape, dtype, permutation of the source's dims), as in the twin.
const CASES: [(&str, &[usize], DType, &[usize]); 6] = [
    ("f32 [6272, 512]ᵀ", &[6272, 512], DType::F32, &[1, 0]),
    ("f32 [1000, 1000]ᵀ", &[1000, 1000], DType::F32, &[1, 0]),
    ("f32 [4096, 4096]ᵀ", &[4096, 4096], DType::F32, &[1, 0]),
    ("bf16 [4096, 4096]ᵀ", &[4096, 4096], DType::BF16, &[1, 0]),
    (
        "f32 NCHW → NHWC [64, 32, 28, 28]",
        &[64, 32, 28, 28],
        DType::F32,
        &[0, 2, 3, 1],
    ),
    (
        "f32 NHWC → NCHW [64, 28, 28, 32]",
        &[64, 28, 28, 32],
        DType::F32,
        &[0, 3, 1, 2],
    ),
];

fn main() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // As the command line does: the engine is driven from a worker of its CPU pool.
    twinflow::engine::cpu::on_worker_thread(run)
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let json = std::env::args().any(|a| a == "--json")
        || std::env::var("TWINFLOW_BENCH_JSON").is_ok_and(|v| !v.is_empty() && v != "0");
    let threads = rayon::current_num_threads();
    println!("# twinflow transposed copies, CPU, {threads} threads");
    println!("| case | median ms | GB/s |");
    println!("|---|---:|---:|");
    let mut gen = Generator::new(0);
    for (case, shape, dtype, perm) in CASES {
        let x = gen.randn(shape, dtype, Device::Cpu)?;
        let copy = || -> Result<Tensor> { x.permute(perm)?.contiguous() };
        let t = median_secs(copy, (3, WARMUP_SECS), 15)?;
        let bytes = 2 * x.elem_count() * dtype.size_in_bytes();
        let gbps = bytes as f64 / t / 1e9;
        println!("| {case} | {:.3} | {gbps:.2} |", t * 1e3);
        if json {
            println!(
                "{{\"bench\":\"transpose\",\"impl\":\"twinflow\",\"case\":\"{case}\",\
                 \"median_s\":{t:.9},\"gbps\":{gbps:.3},\"threads\":{threads}}}"
            );
        }
    }
    Ok(())
}
