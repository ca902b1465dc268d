//! Steps of a training run from a config, as `twinflow train` takes them: the whole
//! step of the method (TwinFlow by default: its several forwards, the backward, the
//! gradient clipping and the optimizer), on the CPU.
//!
//! ```sh
//! cargo bench --bench train_step                                  # configs/mnist-twinflow.toml
//! cargo bench --bench train_step -- --config configs/mnist-dit-twinflow.toml
//! cargo bench --bench train_step -- --profile                     # plus the per-op table
//! ```
//!
//! Reports the median step time over `STEPS` steps after `WARMUP` untimed ones (data
//! loading included, as in training; sample pictures and checkpoints excluded), the
//! steps per second it implies and the process's peak resident memory. `--json`
//! prints one JSON object per line; `--profile` adds, on stderr, the per-op table
//! (`engine::profile`) of ten more steps.

use twinflow::engine::profile::profile;
use twinflow::flow::train::Trainer;

#[path = "common/mod.rs"]
mod common;
use common::{rayon_threads, status_mib, time_ms};

type BenchResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BenchResult<()> {
    // As the command line does: the engine is driven from a worker of its CPU pool.
    twinflow::engine::cpu::on_worker_thread(run)
}

fn run() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let config = match args.iter().position(|a| a == "--config") {
        Some(i) => args.get(i + 1).ok_or("--config needs a file")?.clone(),
        None => "configs/mnist-twinflow.toml".into(),
    };
    // Configs name their data relative to the repository root.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR"))?;
    let mut trainer = Trainer::from_config_file(&config)?;
    let step_ms = time_ms(|| trainer.step().map(drop))?;
    let threads = rayon_threads();
    let peak = status_mib("VmHWM").unwrap_or(f64::NAN);
    if flag("--json") {
        println!(
            "{{\"bench\":\"train_step\",\"impl\":\"twinflow\",\"config\":\"{config}\",\
             \"threads\":{threads},\"step_ms\":{step_ms:.2},\"steps_per_sec\":{:.3},\
             \"peak_rss_mib\":{peak:.0}}}",
            1e3 / step_ms
        );
    }
    println!("# ours: {config}, {threads} threads");
    println!("| measurement | value |");
    println!("|---|---:|");
    println!("| training step (ms) | {step_ms:.1} |");
    println!("| steps per second | {:.2} |", 1e3 / step_ms);
    println!("| peak RSS of the process (MiB) | {peak:.0} |");
    if flag("--profile") {
        let (steps, table) = profile(false, || (0..10).try_for_each(|_| trainer.step().map(drop)));
        steps?;
        eprintln!(
            "## op profile: ten training steps of {config}\n\n{}\n",
            table.table()
        );
        eprintln!(
            "## products by shape: the same ten steps\n\n{}",
            table.products_table()
        );
    }
    Ok(())
}
