//! How the benches with a twin in `benches/torch_reference.py` (`matmul`, `op_chain`)
//! time their work, as that script does: untimed warm-up calls, by count and for a
//! minimum time, then the median wall time of several timed calls.
//!
//! Included by those two benches only (`#[path]`), apart from `common/mod.rs`, whose
//! step timing the other benches share.

use std::time::Instant;
use twinflow::engine::Result;

/// The median of `xs` (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        0.5 * (xs[m - 1] + xs[m])
    }
}

/// The median seconds of `reps` timed calls of `f` after at least `warmup` untimed
/// calls and `warmup_secs` seconds of them. What `f` returns is dropped after its
/// clock stops, so freeing it (a graph, a product) is not counted.
pub fn median_secs<T>(
    mut f: impl FnMut() -> Result<T>,
    (warmup, warmup_secs): (usize, f64),
    reps: usize,
) -> Result<f64> {
    let start = Instant::now();
    let mut done = 0;
    while done < warmup || start.elapsed().as_secs_f64() < warmup_secs {
        std::hint::black_box(f()?);
        done += 1;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        let out = f()?;
        let dt = t0.elapsed().as_secs_f64();
        std::hint::black_box(&out);
        drop(out);
        times.push(dt);
    }
    Ok(median(times))
}
