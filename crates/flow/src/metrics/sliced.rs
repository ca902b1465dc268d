//! Sliced Wasserstein distance.

use super::{check_pair, Samples};
use twinflow_engine::{DType, Device, Error, Generator, Result};

/// Which Wasserstein distance is averaged over the slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WassersteinOrder {
    /// W1: the mean over directions of the 1-D `W1`.
    W1,
    /// W2 (default): the square root of the mean over directions of the 1-D `W2²`.
    #[default]
    W2,
}

/// Configuration of [`sliced_wasserstein`].
#[derive(Debug, Clone, PartialEq)]
pub struct SlicedWasserstein {
    /// Number of random unit directions `P`.
    pub projections: usize,
    /// W1 or W2.
    pub order: WassersteinOrder,
    /// Seed of the [`Generator`] the directions are drawn from.
    pub seed: u64,
}

impl Default for SlicedWasserstein {
    /// 256 directions, W2, seed 0.
    fn default() -> Self {
        SlicedWasserstein {
            projections: 256,
            order: WassersteinOrder::W2,
            seed: 0,
        }
    }
}

/// `p` random unit directions in `dim` dimensions, row-major `[p, dim]`: standard
/// normal draws from `gen` (in f64), each row normalised to length 1 (uniform on the
/// sphere). A row that happens to be all zeros is replaced by the first axis.
pub fn random_directions(p: usize, dim: usize, gen: &mut Generator) -> Result<Vec<f64>> {
    if p == 0 || dim == 0 {
        return Err(Error::invalid(
            "random_directions",
            format!("need a positive count and dimension, got {p} directions in {dim} dimensions"),
        ));
    }
    let mut v = gen
        .randn(&[p, dim], DType::F64, Device::Cpu)?
        .to_vec_f64()?;
    for row in v.chunks_exact_mut(dim) {
        let norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|a| *a /= norm);
        } else {
            row[0] = 1.0;
        }
    }
    Ok(v)
}

/// The sorted projections of every sample onto `dir`.
fn sorted_projection(s: &Samples, dir: &[f64]) -> Vec<f64> {
    let mut p: Vec<f64> = s
        .rows()
        .map(|r| r.iter().zip(dir).map(|(a, b)| a * b).sum())
        .collect();
    p.sort_by(f64::total_cmp);
    p
}

/// The empirical quantile function of sorted values `s` at level `u ∈ (0, 1)`: the
/// piecewise-linear interpolation through `(k + ½)/n ↦ s[k]`, constant beyond the end
/// points.
fn quantile(s: &[f64], u: f64) -> f64 {
    let pos = (u * s.len() as f64 - 0.5).clamp(0.0, (s.len() - 1) as f64);
    let k = (pos.floor() as usize).min(s.len() - 1);
    let frac = pos - k as f64;
    if k + 1 < s.len() {
        s[k] + frac * (s[k + 1] - s[k])
    } else {
        s[k]
    }
}

/// Sliced Wasserstein distance along given unit directions (row-major `[P, D]`; they
/// are used as given, not normalised). See [`sliced_wasserstein`] for the definition.
pub fn sliced_wasserstein_along(
    x: &Samples,
    y: &Samples,
    directions: &[f64],
    order: WassersteinOrder,
) -> Result<f64> {
    const OP: &str = "sliced_wasserstein";
    check_pair(OP, x, y, 1)?;
    let d = x.dim();
    if directions.is_empty() || !directions.len().is_multiple_of(d) {
        return Err(Error::invalid(
            OP,
            format!(
                "{} direction values do not form a non-empty [P, {d}] set for shapes {:?} and {:?}",
                directions.len(),
                x.shape(),
                y.shape()
            ),
        ));
    }
    let p = directions.len() / d;
    let mut total = 0.0;
    for dir in directions.chunks_exact(d) {
        let (px, py) = (sorted_projection(x, dir), sorted_projection(y, dir));
        let cost = |a: f64, b: f64| match order {
            WassersteinOrder::W1 => (a - b).abs(),
            WassersteinOrder::W2 => (a - b) * (a - b),
        };
        let mean = if px.len() == py.len() {
            px.iter().zip(&py).map(|(&a, &b)| cost(a, b)).sum::<f64>() / px.len() as f64
        } else {
            let k = px.len().max(py.len());
            (0..k)
                .map(|i| {
                    let u = (i as f64 + 0.5) / k as f64;
                    cost(quantile(&px, u), quantile(&py, u))
                })
                .sum::<f64>()
                / k as f64
        };
        total += mean;
    }
    let avg = total / p as f64;
    Ok(match order {
        WassersteinOrder::W1 => avg,
        WassersteinOrder::W2 => avg.sqrt(),
    })
}

/// The sliced Wasserstein distance between `x` `[N, D]` and `y` `[M, D]` over
/// `config.projections` random unit directions θ drawn by [`random_directions`] from a
/// fresh `Generator::new(config.seed)` (so repeated calls use the same directions):
///
/// - W2 (default): `SW2 = ( mean_θ W2²(θ·X, θ·Y) )^{1/2}`,
/// - W1: `SW1 = mean_θ W1(θ·X, θ·Y)`,
///
/// where the 1-D distances compare quantiles: for `N = M`, the sorted projections pair
/// up one to one (`W2² = mean_k (x_(k) − y_(k))²`). For `N ≠ M`, both empirical quantile
/// functions (linear interpolation through `(k + ½)/n ↦ k-th smallest`, constant past
/// the ends) are evaluated on the common grid `u_i = (i + ½)/max(N, M)` and averaged
/// there; for `N = M` this grid gives exactly the one-to-one pairing.
///
/// For a pure mean shift `δ` in `D` dimensions, `SW2 → |δ|/√D` as `P, N → ∞`.
pub fn sliced_wasserstein(x: &Samples, y: &Samples, config: &SlicedWasserstein) -> Result<f64> {
    check_pair("sliced_wasserstein", x, y, 1)?;
    if config.projections == 0 {
        return Err(Error::invalid(
            "sliced_wasserstein",
            format!(
                "need at least one projection (shapes {:?} and {:?})",
                x.shape(),
                y.shape()
            ),
        ));
    }
    let dirs = random_directions(
        config.projections,
        x.dim(),
        &mut Generator::new(config.seed),
    )?;
    sliced_wasserstein_along(x, y, &dirs, config.order)
}
