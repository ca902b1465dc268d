//! Energy distance.

use super::{check_pair, Samples};
use twinflow_engine::Result;

/// Euclidean distance between two equal-length vectors.
fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q) * (p - q))
        .sum::<f64>()
        .sqrt()
}

/// Mean distance over unordered pairs `i < j` of one set (equal to the U-statistic
/// mean over ordered pairs `i ≠ j`).
fn within_mean(s: &Samples) -> f64 {
    let n = s.len();
    let mut total = 0.0;
    for i in 0..n {
        let a = s.row(i);
        let mut row_sum = 0.0;
        for j in i + 1..n {
            row_sum += dist(a, s.row(j));
        }
        total += row_sum;
    }
    total / (n * (n - 1) / 2) as f64
}

/// The energy distance between the distributions behind `x` `[N, D]` and `y` `[M, D]`:
///
/// `E = 2·E|X−Y| − E|X−X'| − E|Y−Y'|` with Euclidean norms,
///
/// where `E|X−Y|` is the mean over all `N·M` cross pairs and the within-set terms are
/// the unbiased U-statistics `Σ_{i≠j} |x_i − x_j| / (N(N−1))` (pairs `i = j` excluded).
/// This is the squared form (Székely's E-statistic, not its square root); it is zero in
/// population exactly when the distributions agree, and the estimate itself can be
/// slightly negative for two draws of one distribution. It is symmetric in `x`, `y`.
///
/// Cost `O((N + M)²·D)`. Needs at least 2 samples per set (the U-statistic), equal
/// dimensions and finite values.
pub fn energy_distance(x: &Samples, y: &Samples) -> Result<f64> {
    check_pair("energy_distance", x, y, 2)?;
    let mut cross = 0.0;
    for a in x.rows() {
        let mut row_sum = 0.0;
        for b in y.rows() {
            row_sum += dist(a, b);
        }
        cross += row_sum;
    }
    let cross = cross / (x.len() * y.len()) as f64;
    Ok(2.0 * cross - within_mean(x) - within_mean(y))
}
