//! The sampling time grid of docs/method.md §5: a (possibly gapped) uniform grid,
//! warped by the Kumaraswamy transform, reversed so that it runs from noise (t near 1)
//! to data, and closed with `t = 0`.

use twinflow_engine::{Error, Result};

/// `n` evenly spaced values from `start` to `end`, both included (`[start]` for
/// `n = 1`, like `torch.linspace`).
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => (0..n)
            .map(|i| {
                if i == n - 1 {
                    end
                } else {
                    start + (end - start) * i as f64 / (n - 1) as f64
                }
            })
            .collect(),
    }
}

/// The Kumaraswamy warp `κ(s) = (1 − (1 − s^a)^b)^c` of `s ∈ [0, 1]`; the identity for
/// `a = b = c = 1`.
pub fn kumaraswamy(s: f64, [a, b, c]: [f64; 3]) -> f64 {
    (1.0 - (1.0 - s.powf(a)).powf(b)).powf(c)
}

/// The most steps a sampler takes: far more than a flow model is ever sampled with
/// (a thousand is a lot), and a bound on the time grid a config or a flag can ask for.
pub const MAX_SAMPLER_STEPS: usize = 1_000_000;

/// The `steps + 1` times of a `steps`-step sampler, strictly decreasing from at most 1
/// down to a final 0.
///
/// With gaps `[g₀, g₁]`: `u = linspace(g₀, 1, K+1)[:K]` when `g₁ = 0` (with no gaps the
/// uniform grid `j/K`), otherwise `u = linspace(g₀, 1 − g₁, K)` (K points, the last one
/// `1 − g₁`); the times are `1 − κ(u_j)` for the warp `κ` of [`kumaraswamy`] with
/// parameters `warp = [a, b, c]`, followed by 0. So `K = 1` without gaps gives `[1, 0]`,
/// `K = 2` with gaps `(0.001, 0.6)` gives `[0.999, 0.6, 0]`.
///
/// Errors when `steps = 0` or above [`MAX_SAMPLER_STEPS`], a gap is negative or not
/// finite, `g₀ + g₁ ≥ 1`, a warp
/// parameter is not a finite positive number, or the warped grid is not strictly
/// decreasing (an extreme warp that rounds neighbouring times together).
pub fn time_grid(steps: usize, warp: [f64; 3], gaps: [f64; 2]) -> Result<Vec<f64>> {
    const OP: &str = "sampler time grid";
    if steps == 0 || steps > MAX_SAMPLER_STEPS {
        return Err(Error::invalid(
            OP,
            format!("steps must lie in 1..={MAX_SAMPLER_STEPS}, got {steps}"),
        ));
    }
    let [g0, g1] = gaps;
    if !(g0.is_finite() && g1.is_finite() && g0 >= 0.0 && g1 >= 0.0) {
        return Err(Error::invalid(
            OP,
            format!("gaps must be finite and non-negative, got [{g0}, {g1}]"),
        ));
    }
    if g0 + g1 >= 1.0 {
        return Err(Error::invalid(
            OP,
            format!("gaps must leave room for the grid (g0 + g1 < 1), got [{g0}, {g1}]"),
        ));
    }
    if !warp.iter().all(|p| p.is_finite() && *p > 0.0) {
        return Err(Error::invalid(
            OP,
            format!("kumaraswamy parameters [a, b, c] must be finite and positive, got {warp:?}"),
        ));
    }
    let u = if g1 == 0.0 {
        let mut u = linspace(g0, 1.0, steps + 1);
        u.truncate(steps);
        u
    } else {
        linspace(g0, 1.0 - g1, steps)
    };
    let mut times: Vec<f64> = u.iter().map(|&s| 1.0 - kumaraswamy(s, warp)).collect();
    times.push(0.0);
    let ok = times[0] <= 1.0 && times.windows(2).all(|w| w[0] > w[1]);
    if !ok {
        return Err(Error::invalid(
            OP,
            format!(
                "the grid for {steps} steps, warp {warp:?} and gaps {gaps:?} is not strictly \
                 decreasing in (0, 1]: {times:?}"
            ),
        ));
    }
    Ok(times)
}
