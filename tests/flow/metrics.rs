//! Sample-quality metrics: energy distance, sliced Wasserstein, Fréchet distance, the
//! Jacobi eigen-decomposition behind it, the real-vs-real floor and input errors.

use twinflow::engine::{DType, Device, Generator, Tensor};
use twinflow::flow::metrics::{
    energy_distance, frechet_distance, gaussian_frechet, random_directions, real_floor,
    sliced_wasserstein, sliced_wasserstein_along, split_floor, symmetric_eigen, GaussianStats,
    Metric, Samples, SlicedWasserstein, WassersteinOrder,
};

/// `n` Gaussian samples in `dim` dimensions with the given mean and per-axis std.
fn gaussian(n: usize, mean: &[f64], std: &[f64], seed: u64) -> Samples {
    let d = mean.len();
    let z = Generator::new(seed)
        .randn(&[n, d], DType::F64, Device::Cpu)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let v = z
        .chunks_exact(d)
        .flat_map(|r| (0..d).map(move |j| mean[j] + std[j] * r[j]))
        .collect();
    Samples::new(v, d).unwrap()
}

fn err_text<T: std::fmt::Debug>(r: twinflow::engine::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn samples_constructors_and_views() {
    let s = Samples::new(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2).unwrap();
    assert_eq!(s.shape(), [3, 2]);
    assert_eq!(s.row(1), &[3.0, 4.0]);
    assert_eq!(s.rows().count(), 3);
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2], Device::Cpu).unwrap();
    assert_eq!(Samples::from_tensor(&t).unwrap(), s);
    assert_eq!(
        Samples::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2).unwrap(),
        s
    );
    let rows = vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]];
    assert_eq!(Samples::from_rows(&rows).unwrap(), s);
    let (a, b) = s.split_halves();
    assert_eq!((a.shape(), b.shape()), ([1, 2], [2, 2]));
    assert_eq!(b.row(0), &[3.0, 4.0]);
}

#[test]
fn energy_distance_point_masses_closed_form() {
    // X ≡ a, Y ≡ b in 1-D: E = 2|a − b| (within terms vanish).
    let x = Samples::new(vec![0.5; 4], 1).unwrap();
    let y = Samples::new(vec![-1.25; 3], 1).unwrap();
    let e = energy_distance(&x, &y).unwrap();
    assert!((e - 3.5).abs() < 1e-12, "{e}");
    // Two-point sets in 1-D, U-statistic within terms: X = {0, 1}, Y = {0, 1} → 0.
    let z = Samples::new(vec![0.0, 1.0], 1).unwrap();
    // cross mean = (0 + 1 + 1 + 0)/4 = 0.5; within (i ≠ j) = 1 each → 2·0.5 − 1 − 1 = −1.
    assert!((energy_distance(&z, &z).unwrap() + 1.0).abs() < 1e-12);
}

#[test]
fn energy_distance_zero_for_same_distribution_and_grows_with_shift() {
    let (n, std) = (1500, [1.0, 1.0]);
    let x = gaussian(n, &[0.0, 0.0], &std, 1);
    let y = gaussian(n, &[0.0, 0.0], &std, 2);
    let e0 = energy_distance(&x, &y).unwrap();
    assert!(e0.abs() < 0.01, "same distribution: {e0}");
    let mut prev = e0;
    for (k, shift) in [0.25, 0.5, 1.0, 2.0].into_iter().enumerate() {
        let y = gaussian(n, &[shift, 0.0], &std, 10 + k as u64);
        let e = energy_distance(&x, &y).unwrap();
        assert!(e > 0.0 && e > prev, "shift {shift}: {e} after {prev}");
        // Symmetric.
        let back = energy_distance(&y, &x).unwrap();
        assert!((e - back).abs() < 1e-12 * e.max(1.0));
        prev = e;
    }
}

#[test]
fn sliced_w2_of_shifted_gaussians_matches_projected_shift() {
    let n = 4000;
    let delta = [1.5, -0.5];
    let x = gaussian(n, &[0.0, 0.0], &[1.0, 1.0], 3);
    let y = gaussian(n, &delta, &[1.0, 1.0], 4);
    // Exact expectation over the directions actually used: for a pure mean shift the
    // 1-D W2² along θ is (θ·δ)².
    let p = 200;
    let dirs = random_directions(p, 2, &mut Generator::new(7)).unwrap();
    for d in dirs.chunks_exact(2) {
        assert!((d[0] * d[0] + d[1] * d[1] - 1.0).abs() < 1e-12);
    }
    let expect = (dirs
        .chunks_exact(2)
        .map(|d| (d[0] * delta[0] + d[1] * delta[1]).powi(2))
        .sum::<f64>()
        / p as f64)
        .sqrt();
    let sw = sliced_wasserstein_along(&x, &y, &dirs, WassersteinOrder::W2).unwrap();
    assert!((sw - expect).abs() < 0.05 * expect, "{sw} vs {expect}");
    // The seeded entry point: the same directions from the same seed, ≈ |δ|/√2 overall.
    let cfg = SlicedWasserstein {
        projections: p,
        order: WassersteinOrder::W2,
        seed: 7,
    };
    assert_eq!(sliced_wasserstein(&x, &y, &cfg).unwrap(), sw);
    let norm = (delta[0] * delta[0] + delta[1] * delta[1]).sqrt();
    assert!((sw - norm / 2f64.sqrt()).abs() < 0.1 * norm);
    // Same distribution: small; symmetric; W1 ≤ W2.
    let z = gaussian(n, &[0.0, 0.0], &[1.0, 1.0], 5);
    let s0 = sliced_wasserstein(&x, &z, &cfg).unwrap();
    assert!(s0 < 0.06, "{s0}");
    assert!((sliced_wasserstein(&y, &x, &cfg).unwrap() - sw).abs() < 1e-12);
    let w1 = SlicedWasserstein {
        order: WassersteinOrder::W1,
        ..cfg.clone()
    };
    assert!(sliced_wasserstein(&x, &y, &w1).unwrap() <= sw + 1e-12);
}

#[test]
fn sliced_wasserstein_unequal_sizes_interpolates_quantiles() {
    // 1-D, direction +1: X = {0, 1} and Y = {0, 0.5, 1} on the grid (i + ½)/3:
    // X's quantiles: pos = u·2 − ½ = {−1/6→0, 1/2, 7/6→1} → {0, 0.5, 1}; equal to Y's.
    let x = Samples::new(vec![0.0, 1.0], 1).unwrap();
    let y = Samples::new(vec![1.0, 0.0, 0.5], 1).unwrap();
    let sw = sliced_wasserstein_along(&x, &y, &[1.0], WassersteinOrder::W2).unwrap();
    assert!(sw.abs() < 1e-12, "{sw}");
    // A pure shift c with unequal sizes gives exactly |c|.
    let y2 = Samples::new(vec![2.0, 3.0, 2.5], 1).unwrap();
    let sw = sliced_wasserstein_along(&x, &y2, &[1.0], WassersteinOrder::W1).unwrap();
    assert!((sw - 2.0).abs() < 1e-12, "{sw}");
    // Equal sizes: one-to-one pairing of the sorted values.
    let a = Samples::new(vec![3.0, 0.0, 1.0], 1).unwrap();
    let b = Samples::new(vec![1.0, 2.0, 0.0], 1).unwrap();
    // sorted {0,1,3} vs {0,1,2}: W2² = 1/3.
    let sw = sliced_wasserstein_along(&a, &b, &[-1.0], WassersteinOrder::W2).unwrap();
    assert!((sw - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
}

/// A random symmetric `n × n` matrix.
fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
    let r = Generator::new(seed)
        .randn(&[n, n], DType::F64, Device::Cpu)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = r[i * n + j] + r[j * n + i];
        }
    }
    a
}

#[test]
fn jacobi_reconstructs_and_is_orthonormal() {
    for (n, seed) in [(1, 1), (2, 2), (7, 3), (40, 4)] {
        let a = random_symmetric(n, seed);
        let e = symmetric_eigen(&a, n).unwrap();
        let v = &e.vectors;
        assert!(e.values.windows(2).all(|w| w[0] <= w[1]));
        let scale = a.iter().map(|x| x.abs()).fold(0.0, f64::max);
        for i in 0..n {
            for j in 0..n {
                let rec: f64 = (0..n)
                    .map(|k| v[i * n + k] * e.values[k] * v[j * n + k])
                    .sum();
                assert!(
                    (rec - a[i * n + j]).abs() < 1e-10 * scale,
                    "A[{i},{j}] n={n}"
                );
                let dot: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-10, "VᵀV[{i},{j}] n={n}");
            }
        }
        let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
        assert!((e.values.iter().sum::<f64>() - trace).abs() < 1e-9 * scale.max(1.0) * n as f64);
    }
    // Known spectrum: [[2, 1], [1, 2]] → {1, 3}; a diagonal matrix sorts its diagonal.
    let e = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
    assert!((e.values[0] - 1.0).abs() < 1e-14 && (e.values[1] - 3.0).abs() < 1e-14);
    let e = symmetric_eigen(&[5.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0], 3).unwrap();
    assert_eq!(e.values, vec![-1.0, 0.0, 5.0]);
}

#[test]
fn jacobi_and_frechet_fast_at_dim_256() {
    let n = 256;
    let a = random_symmetric(n, 9);
    let start = std::time::Instant::now();
    let e = symmetric_eigen(&a, n).unwrap();
    // Spot-check A·v = λ·v for a few eigenpairs.
    for j in [0, 100, 255] {
        for i in [0, 17, 255] {
            let av: f64 = (0..n).map(|k| a[i * n + k] * e.vectors[k * n + j]).sum();
            assert!((av - e.values[j] * e.vectors[i * n + j]).abs() < 1e-9);
        }
    }
    let x = gaussian(600, &vec![0.0; n], &vec![1.0; n], 11);
    let y = gaussian(600, &vec![0.1; n], &vec![1.0; n], 12);
    let f = frechet_distance(&x, &y).unwrap();
    assert!(f > 0.0);
    assert!(
        start.elapsed().as_secs_f64() < 10.0,
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn frechet_identical_sets_is_zero() {
    let x = gaussian(
        500,
        &[0.3, -1.0, 2.0, 0.0, 1.0],
        &[1.0, 0.5, 2.0, 0.1, 1.0],
        21,
    );
    let f = frechet_distance(&x, &x).unwrap();
    assert!(f.abs() < 1e-9, "{f}");
    // Rank-deficient features (a constant coordinate, two equal ones) still give 0.
    let v: Vec<f64> = x.rows().flat_map(|r| [r[0], r[0], 4.0, r[1]]).collect();
    let s = Samples::new(v, 4).unwrap();
    assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-9);
}

#[test]
fn frechet_matches_gaussian_closed_form() {
    // Diagonal covariances: F = ‖μ₁ − μ₂‖² + Σᵢ (σ₁ᵢ − σ₂ᵢ)².
    let (mu1, mu2) = ([0.0, 1.0, -2.0], [1.0, 1.0, 0.0]);
    let (s1, s2) = ([1.0, 2.0, 0.5], [2.0, 1.0, 0.5]);
    let diag = |s: &[f64; 3]| {
        let mut c = vec![0.0; 9];
        (0..3).for_each(|i| c[i * 4] = s[i] * s[i]);
        c
    };
    let closed = 1.0 + 4.0 + (1.0 + 1.0 + 0.0);
    let f = gaussian_frechet(&mu1, &diag(&s1), &mu2, &diag(&s2)).unwrap();
    assert!((f - closed).abs() < 1e-12, "{f}");
    // Full covariances, equal: only the mean term; rotated diagonal vs itself: 0.
    let c = [2.0, 0.5, 0.0, 0.5, 1.0, 0.3, 0.0, 0.3, 1.5];
    let f = gaussian_frechet(&mu1, &c, &mu2, &c).unwrap();
    assert!((f - 5.0).abs() < 1e-12, "{f}");
    // 1-D: (μ₁−μ₂)² + (σ₁−σ₂)².
    let f = gaussian_frechet(&[1.0], &[4.0], &[0.0], &[9.0]).unwrap();
    assert!((f - 2.0).abs() < 1e-12);
    // From samples: large N approaches the closed form.
    let x = gaussian(20000, &mu1, &s1, 31);
    let y = gaussian(20000, &mu2, &s2, 32);
    let f = frechet_distance(&x, &y).unwrap();
    assert!((f - closed).abs() < 0.1, "{f} vs {closed}");
    let st = GaussianStats::fit(&x).unwrap();
    assert_eq!(st.dim, 3);
    assert!((st.cov[4] - 4.0).abs() < 0.15 && (st.mean[2] + 2.0).abs() < 0.05);
}

#[test]
fn real_floor_helpers() {
    let metric = Metric::Energy;
    let mut seed = 40;
    let floor = real_floor(&metric, || {
        seed += 1;
        Ok(gaussian(800, &[0.0, 0.0], &[1.0, 1.0], seed))
    })
    .unwrap();
    let x = gaussian(800, &[0.0, 0.0], &[1.0, 1.0], 50);
    let y = gaussian(800, &[1.0, 0.0], &[1.0, 1.0], 51);
    let score = metric.compute(&x, &y).unwrap();
    assert!(
        floor.abs() < 0.02 && score > 10.0 * floor.abs(),
        "{floor} {score}"
    );
    let sw = Metric::SlicedWasserstein(SlicedWasserstein::default());
    assert_eq!(sw.name(), "sliced_w2");
    assert_eq!(Metric::Frechet.name(), "frechet");
    let both = Samples::new([x.as_slice(), y.as_slice()].concat(), 2).unwrap();
    assert!(split_floor(&sw, &x).unwrap() < split_floor(&sw, &both).unwrap());
    // An error from the draw propagates.
    let r = real_floor(&metric, || {
        Err(twinflow::engine::Error::invalid("draw", "no data"))
    });
    assert!(err_text(r).contains("no data"));
}

#[test]
fn bad_inputs_fail_naming_metric_and_shapes() {
    let a = Samples::new(vec![0.0; 6], 2).unwrap();
    let b = Samples::new(vec![0.0; 6], 3).unwrap();
    let empty = Samples::new(vec![], 2).unwrap();
    let cfg = SlicedWasserstein::default();
    let msg = err_text(energy_distance(&a, &b));
    assert!(
        msg.contains("energy_distance") && msg.contains("[3, 2]") && msg.contains("[2, 3]"),
        "{msg}"
    );
    let msg = err_text(energy_distance(&a, &empty));
    assert!(
        msg.contains("energy_distance") && msg.contains("[0, 2]"),
        "{msg}"
    );
    let msg = err_text(sliced_wasserstein(&a, &b, &cfg));
    assert!(
        msg.contains("sliced_wasserstein") && msg.contains("[3, 2]"),
        "{msg}"
    );
    let msg = err_text(sliced_wasserstein(&empty, &a, &cfg));
    assert!(
        msg.contains("sliced_wasserstein") && msg.contains("[0, 2]"),
        "{msg}"
    );
    let msg = err_text(frechet_distance(&a, &b));
    assert!(
        msg.contains("frechet_distance") && msg.contains("[2, 3]"),
        "{msg}"
    );
    let one = Samples::new(vec![1.0, 2.0], 2).unwrap();
    let msg = err_text(frechet_distance(&one, &a));
    assert!(
        msg.contains("frechet_distance") && msg.contains("[1, 2]"),
        "{msg}"
    );
    let nan = Samples::new(vec![0.0, f64::NAN, 1.0, 1.0], 2).unwrap();
    assert!(err_text(energy_distance(&a, &nan)).contains("non-finite"));
    let zero = SlicedWasserstein {
        projections: 0,
        ..cfg
    };
    assert!(sliced_wasserstein(&a, &a, &zero).is_err());
    assert!(sliced_wasserstein_along(&a, &a, &[1.0, 0.0, 1.0], WassersteinOrder::W2).is_err());
    assert!(gaussian_frechet(&[0.0], &[1.0], &[0.0, 1.0], &[1.0]).is_err());
    assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(symmetric_eigen(&[1.0, f64::INFINITY, 0.0, 1.0], 2).is_err());
    assert!(Samples::new(vec![1.0; 5], 2).is_err());
    assert!(Samples::new(vec![1.0; 4], 0).is_err());
    assert!(Samples::from_rows(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    let t = Tensor::from_vec(vec![1.0f32; 8], &[2, 2, 2], Device::Cpu).unwrap();
    assert!(err_text(Samples::from_tensor(&t)).contains("[2, 2, 2]"));
}
