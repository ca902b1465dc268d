//! Fréchet distance between Gaussians fitted to two feature sets.

use super::linalg::{matmul, symmetric_eigen};
use super::{check_pair, Samples};
use twinflow_engine::{Error, Result};

/// Mean and covariance of a feature set: the Gaussian it is fitted to.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    /// Feature dimension `D`.
    pub dim: usize,
    /// The mean, length `D`.
    pub mean: Vec<f64>,
    /// The unbiased covariance (divisor `N − 1`, as `numpy.cov`), row-major `D × D`.
    pub cov: Vec<f64>,
}

impl GaussianStats {
    /// Fits mean and unbiased covariance to `s` (needs at least 2 samples and finite
    /// values).
    pub fn fit(s: &Samples) -> Result<GaussianStats> {
        check_pair("gaussian_stats", s, s, 2)?;
        Ok(fit_unchecked(s))
    }
}

fn fit_unchecked(s: &Samples) -> GaussianStats {
    let (n, d) = (s.len(), s.dim());
    let mut mean = vec![0.0; d];
    for r in s.rows() {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    // Upper triangle of Σ (x − μ)(x − μ)ᵀ, then mirrored.
    let mut cov = vec![0.0; d * d];
    let mut c = vec![0.0; d];
    for r in s.rows() {
        c.iter_mut()
            .zip(r.iter().zip(&mean))
            .for_each(|(c, (v, m))| *c = v - m);
        for i in 0..d {
            let ci = c[i];
            if ci == 0.0 {
                continue;
            }
            cov[i * d + i..(i + 1) * d]
                .iter_mut()
                .zip(&c[i..])
                .for_each(|(a, cj)| *a += ci * cj);
        }
    }
    let denom = (n - 1) as f64;
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / denom;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    GaussianStats { dim: d, mean, cov }
}

/// The Fréchet (2-Wasserstein²) distance between `N(μ₁, Σ₁)` and `N(μ₂, Σ₂)`:
///
/// `‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})`,
///
/// with the trace term computed stably through symmetric eigen-decompositions
/// ([`symmetric_eigen`](super::symmetric_eigen)): `√Σ₁ = V·diag(√max(λ, 0))·Vᵀ` from
/// `Σ₁`'s decomposition, then `Tr((Σ₁Σ₂)^{1/2}) = Σᵢ √max(λᵢ, 0)` over the eigenvalues
/// of the symmetric PSD matrix `√Σ₁·Σ₂·√Σ₁` (same spectrum as `Σ₁Σ₂`). Tiny negative
/// eigenvalues from rounding are clamped to 0. The result is clamped at 0 too.
///
/// The covariances are row-major `D × D` and are symmetrised first. Fails when lengths
/// disagree with `D = μ₁.len()` or a value is not finite.
pub fn gaussian_frechet(mu1: &[f64], cov1: &[f64], mu2: &[f64], cov2: &[f64]) -> Result<f64> {
    const OP: &str = "gaussian_frechet";
    let d = mu1.len();
    if d == 0 || mu2.len() != d || cov1.len() != d * d || cov2.len() != d * d {
        return Err(Error::invalid(
            OP,
            format!(
                "expected two means of one length D > 0 and two D×D covariances, got means \
                 of length {} and {} and covariances of {} and {} values",
                d,
                mu2.len(),
                cov1.len(),
                cov2.len()
            ),
        ));
    }
    if [mu1, mu2, cov1, cov2]
        .iter()
        .any(|v| v.iter().any(|x| !x.is_finite()))
    {
        return Err(Error::invalid(
            OP,
            format!("non-finite mean or covariance entry (D = {d})"),
        ));
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |c: &[f64]| (0..d).map(|i| c[i * d + i]).sum::<f64>();
    let sym = |c: &[f64]| {
        let mut s = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] = 0.5 * (c[i * d + j] + c[j * d + i]);
            }
        }
        s
    };
    let (c1, c2) = (sym(cov1), sym(cov2));
    let sqrt1 = symmetric_eigen(&c1, d)?.map(|l| l.max(0.0).sqrt());
    let m = matmul(&matmul(&sqrt1, &c2, d), &sqrt1, d);
    let cross: f64 = symmetric_eigen(&m, d)?
        .values
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    Ok((mean_term + trace(&c1) + trace(&c2) - 2.0 * cross).max(0.0))
}

/// The Fréchet distance between Gaussians fitted ([`GaussianStats::fit`]: mean and
/// unbiased covariance) to the feature sets `x` `[N, D]` and `y` `[M, D]` — the FID
/// formula, see [`gaussian_frechet`]. Needs at least 2 samples per set, equal
/// dimensions and finite values. Identical sets give 0 up to rounding.
pub fn frechet_distance(x: &Samples, y: &Samples) -> Result<f64> {
    check_pair("frechet_distance", x, y, 2)?;
    let (a, b) = (fit_unchecked(x), fit_unchecked(y));
    gaussian_frechet(&a.mean, &a.cov, &b.mean, &b.cov)
}
