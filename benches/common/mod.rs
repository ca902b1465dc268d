//! What the CPU step benchmarks share: how a step is timed, the thread count they
//! report, and the process's memory as Linux reports it.

use std::time::Instant;
use twinflow::engine::Result;

/// Untimed calls before the timed ones.
pub const WARMUP: usize = 3;
/// Timed calls; their median is reported.
pub const STEPS: usize = 10;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median milliseconds of `STEPS` calls of `f` after `WARMUP` untimed ones.
pub fn time_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
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

/// The threads rayon runs with: `RAYON_NUM_THREADS`, else one per core.
pub fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A field of /proc/self/status in MiB (Linux only): `VmRSS`, `VmHWM`.
pub fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
