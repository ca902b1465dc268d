//! The samplers of `twinflow::flow::sampler` (docs/method.md §5) against a velocity model
//! whose answers are known in closed form: per-class Gaussian data `N(μ_c, σ²I)` on the
//! linear path `x_t = t·z + (1 − t)·x`, whose flow is linear in `x` so that the exact
//! instantaneous velocity, the exact any-step jump and the exact sample `μ_c + σ·z` of
//! each noise `z` are all available. With `σ = 0` (data at a point) every UCGM setting
//! must return the point exactly; Euler/Heun must converge to `μ + σ·z` as K grows,
//! Heun faster. Also: the documented time grids, guidance, seeded stochastic sampling,
//! and configuration errors.

use twinflow::engine::{DType, Device, Generator, Result, Tensor};
use twinflow::flow::sampler::{
    euler, heun, kumaraswamy, sample, time_grid, ucgm, Guidance, JumpTarget, SamplerConfig,
    SamplerMethod, Start, UcgmOptions,
};
use twinflow::nn::{
    impl_module, ForwardRng, MlpVelocity, MlpVelocityConfig, Module, ParamBuilder, VelocityModel,
};

/// Data of class `c` is `N(means[c], σ²I)`; the last row of `means` is the null class.
/// `F(x, t, tt, c)` is the exact velocity: instantaneous when `tt = t`, otherwise the
/// average velocity `(x − Φ_{t→tt}(x)) / (t − tt)` of the exact flow map `Φ`.
struct GaussianToy {
    means: Vec<Vec<f64>>,
    sigma: f64,
    rng: ForwardRng,
}

impl GaussianToy {
    fn new(means: Vec<Vec<f64>>, sigma: f64) -> Self {
        GaussianToy {
            means,
            sigma,
            rng: ForwardRng::new(0),
        }
    }

    fn dim(&self) -> usize {
        self.means[0].len()
    }

    fn null_label(&self) -> i64 {
        self.means.len() as i64 - 1
    }

    /// Standard deviation of `x_t` around `(1 − t)·μ`.
    fn s(&self, t: f64) -> f64 {
        (t * t + (1.0 - t) * (1.0 - t) * self.sigma * self.sigma).sqrt()
    }

    /// The exact velocity for one coordinate.
    fn exact(&self, x: f64, mu: f64, t: f64, tt: f64) -> f64 {
        let m = |t: f64| (1.0 - t) * mu;
        if tt == t {
            let s2 = self.s(t).powi(2);
            -mu + (t - (1.0 - t) * self.sigma * self.sigma) / s2 * (x - m(t))
        } else {
            let phi = m(tt) + self.s(tt) / self.s(t) * (x - m(t));
            (x - phi) / (t - tt)
        }
    }

    /// The exact sample `μ_c + σ·z` of each noise row.
    fn target(&self, z: &Tensor, labels: &[i64]) -> Vec<f64> {
        let d = self.dim();
        let z = z.to_vec_f64().unwrap();
        z.iter()
            .enumerate()
            .map(|(i, zi)| self.means[labels[i / d] as usize][i % d] + self.sigma * zi)
            .collect()
    }
}

impl_module! { GaussianToy {} }

impl VelocityModel for GaussianToy {
    fn velocity(&self, x: &Tensor, t: &Tensor, tt: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let d = self.dim();
        let b = labels.shape()[0];
        assert_eq!(x.shape(), [b, d]);
        assert_eq!(t.shape(), [b]);
        assert_eq!(tt.shape(), [b]);
        let (xs, ts, tts) = (x.to_vec_f64()?, t.to_vec_f64()?, tt.to_vec_f64()?);
        let ls = labels.to_vec::<i64>()?;
        let out: Vec<f64> = (0..b * d)
            .map(|i| {
                let (r, j) = (i / d, i % d);
                let mu = self.means[ls[r] as usize][j];
                self.exact(xs[i], mu, ts[r], tts[r])
            })
            .collect();
        Tensor::from_f64s(&out, &[b, d], x.dtype(), x.device())
    }

    fn forward_rng(&self) -> &ForwardRng {
        &self.rng
    }
}

/// Two classes in 3-D plus the null class.
fn toy(sigma: f64) -> GaussianToy {
    GaussianToy::new(
        vec![
            vec![1.0, -2.0, 0.5],
            vec![-1.5, 0.25, 2.0],
            vec![0.0, 0.5, -1.0],
        ],
        sigma,
    )
}

const LABELS: [i64; 4] = [0, 1, 1, 0];

fn labels() -> Tensor {
    Tensor::from_slice(&LABELS, &[4], Device::Cpu).unwrap()
}

fn noise(seed: u64, dtype: DType) -> Tensor {
    Generator::new(seed)
        .randn(&[4, 3], dtype, Device::Cpu)
        .unwrap()
}

fn max_err(x: &Tensor, want: &[f64]) -> f64 {
    let x = x.to_vec_f64().unwrap();
    assert_eq!(x.len(), want.len());
    x.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{got:?} vs {want:?} (tol {tol})");
    }
}

fn ucgm_cfg(steps: usize, jump: JumpTarget) -> SamplerConfig {
    SamplerConfig {
        steps,
        jump: Some(jump),
        ..SamplerConfig::default()
    }
}

fn run(model: &GaussianToy, z: &Tensor, cfg: &SamplerConfig) -> Tensor {
    let start = Start::Noise { z, seed: 7 };
    sample(model, start, &labels(), Some(model.null_label()), cfg).unwrap()
}

// ---------------------------------------------------------------------------------------
// Time grid
// ---------------------------------------------------------------------------------------

#[test]
fn uniform_grid_without_gaps() {
    assert_eq!(time_grid(1, [1.0; 3], [0.0; 2]).unwrap(), vec![1.0, 0.0]);
    assert_eq!(
        time_grid(4, [1.0; 3], [0.0; 2]).unwrap(),
        vec![1.0, 0.75, 0.5, 0.25, 0.0]
    );
    assert_eq!(
        SamplerConfig::default().time_grid().unwrap(),
        vec![1.0, 0.0]
    );
}

#[test]
fn documented_2nfe_grid() {
    // docs/method.md §5: gaps (0.001, 0.6) give the times 0.999, 0.6, 0.
    let cfg = SamplerConfig::ucgm_2nfe();
    assert_eq!(cfg.stochastic_ratio, 1.0);
    let times = cfg.time_grid().unwrap();
    assert_close(&times, &[0.999, 0.6, 0.0], 1e-12);
}

#[test]
fn documented_4nfe_grid() {
    // docs/method.md §5: gaps (0.001, 0.5) give 0.999, 0.8327, 0.6663, 0.5, 0. The formula
    // u = linspace(0.001, 0.5, 4) gives exactly 1 − (0.001 + j·0.499/3): 0.999,
    // 0.832667, 0.666333, 0.5, 0. Rounded to three decimals, as the times are often
    // quoted, the third reads 0.667 (off by 6.7e-4), which the second check accepts.
    let times = SamplerConfig::ucgm_4nfe().time_grid().unwrap();
    let exact: Vec<f64> = (0..4)
        .map(|j| 1.0 - (0.001 + j as f64 * 0.499 / 3.0))
        .chain([0.0])
        .collect();
    assert_close(&times, &exact, 1e-12);
    assert_close(&times, &[0.999, 0.833, 0.667, 0.5, 0.0], 1e-3);
}

#[test]
fn only_leading_gap_keeps_k_plus_one_spacing() {
    // g₁ = 0: u = linspace(g₀, 1, K+1)[:K].
    let times = time_grid(2, [1.0; 3], [0.1, 0.0]).unwrap();
    assert_close(&times, &[0.9, 0.45, 0.0], 1e-12);
    // K = 1 with a trailing gap: u = [g₀].
    let times = time_grid(1, [1.0; 3], [0.001, 0.6]).unwrap();
    assert_close(&times, &[0.999, 0.0], 1e-12);
}

#[test]
fn kumaraswamy_warp() {
    assert!((kumaraswamy(0.3, [1.0; 3]) - 0.3).abs() < 1e-15);
    let w = [2.0, 1.5, 0.5];
    let k = |s: f64| (1.0 - (1.0 - s.powf(2.0)).powf(1.5)).powf(0.5);
    let times = time_grid(4, w, [0.0; 2]).unwrap();
    let want: Vec<f64> = [0.0, 0.25, 0.5, 0.75]
        .iter()
        .map(|&s| 1.0 - k(s))
        .chain([0.0])
        .collect();
    assert_close(&times, &want, 1e-12);
    assert!(times.windows(2).all(|p| p[0] > p[1]));
}

#[test]
fn bad_grids_are_clear_errors() {
    let msg = |r: Result<Vec<f64>>| r.unwrap_err().to_string();
    assert!(msg(time_grid(0, [1.0; 3], [0.0; 2])).contains("steps must lie in 1..="));
    assert!(msg(time_grid(2, [1.0; 3], [-0.1, 0.0])).contains("non-negative"));
    assert!(msg(time_grid(2, [1.0; 3], [0.5, 0.5])).contains("g0 + g1 < 1"));
    assert!(msg(time_grid(2, [1.0; 3], [f64::NAN, 0.0])).contains("finite"));
    assert!(msg(time_grid(2, [0.0, 1.0, 1.0], [0.0; 2])).contains("kumaraswamy"));
}

// ---------------------------------------------------------------------------------------
// UCGM
// ---------------------------------------------------------------------------------------

#[test]
fn ucgm_returns_the_data_point_at_any_step_count() {
    // σ = 0: F = (x − x₀)/t for every tt, so every x̂ is x₀.
    let model = toy(0.0);
    let z = noise(1, DType::F32);
    let want = model.target(&z, &LABELS);
    for jump in [
        JumpTarget::FewStep,
        JumpTarget::AnyStep,
        JumpTarget::MultiStep,
    ] {
        for steps in [1, 2, 4] {
            let x = run(&model, &z, &ucgm_cfg(steps, jump));
            assert_eq!(x.shape(), [4, 3]);
            assert_eq!(x.dtype(), DType::F32);
            let err = max_err(&x, &want);
            assert!(err < 1e-5, "{jump:?} K={steps}: error {err}");
        }
    }
    // With the documented gapped grids, stochastic ρ = 1 included.
    for cfg in [SamplerConfig::ucgm_2nfe(), SamplerConfig::ucgm_4nfe()] {
        let err = max_err(&run(&model, &z, &cfg), &want);
        assert!(err < 1e-5, "{cfg:?}: error {err}");
    }
}

#[test]
fn ucgm_one_step_jumps_to_zero() {
    // σ > 0: one step with tt = 0 is the exact flow map, μ + σ·z (tt = 1 would give μ).
    let model = toy(0.5);
    let z = noise(2, DType::F64);
    let x = run(&model, &z, &ucgm_cfg(1, JumpTarget::FewStep));
    assert_eq!(x.dtype(), DType::F64);
    assert!(max_err(&x, &model.target(&z, &LABELS)) < 1e-12);
}

#[test]
fn ucgm_any_step_follows_the_exact_flow() {
    // With exact jumps to the next time, x stays on the ODE trajectory of z at every K.
    let model = toy(0.5);
    let z = noise(3, DType::F64);
    let want = model.target(&z, &LABELS);
    for steps in [1, 2, 4, 7] {
        let err = max_err(
            &run(&model, &z, &ucgm_cfg(steps, JumpTarget::AnyStep)),
            &want,
        );
        assert!(err < 1e-12, "K={steps}: error {err}");
    }
}

#[test]
fn ucgm_multi_step_is_euler() {
    let model = toy(0.5);
    let z = noise(4, DType::F64);
    let times = time_grid(5, [1.0; 3], [0.0; 2]).unwrap();
    let g = Guidance::none();
    let a = euler(&model, &z, &labels(), &times, &g).unwrap();
    let options = UcgmOptions {
        jump: JumpTarget::MultiStep,
        stochastic_ratio: 0.0,
    };
    let mut rng = Generator::new(0);
    let b = ucgm(&model, &z, &labels(), &times, options, &g, &mut rng).unwrap();
    assert!(max_err(&a, &b.to_vec_f64().unwrap()) < 1e-12);
}

#[test]
fn stochastic_ucgm_is_reproducible_per_seed() {
    let model = toy(0.5);
    let cfg = SamplerConfig {
        steps: 4,
        stochastic_ratio: 0.5,
        ..SamplerConfig::default()
    };
    let go = |seed| {
        let start = Start::Seed { n: 4, dim: 3, seed };
        sample(&model, start, &labels(), None, &cfg)
            .unwrap()
            .to_vec_f64()
            .unwrap()
    };
    let (a, b, c) = (go(11), go(11), go(12));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Same z, different ε seeds: the noise matters when ρ > 0 and not when ρ = 0.
    let z = noise(5, DType::F32);
    let with = |seed, rho| {
        let cfg = SamplerConfig {
            stochastic_ratio: rho,
            ..cfg
        };
        sample(&model, Start::Noise { z: &z, seed }, &labels(), None, &cfg)
            .unwrap()
            .to_vec_f64()
            .unwrap()
    };
    assert_ne!(with(1, 0.5), with(2, 0.5));
    assert_eq!(with(1, 0.0), with(2, 0.0));
}

// ---------------------------------------------------------------------------------------
// Euler and Heun
// ---------------------------------------------------------------------------------------

#[test]
fn euler_and_heun_converge() {
    let model = toy(0.5);
    let z = noise(6, DType::F64);
    let want = model.target(&z, &LABELS);
    let err = |method, steps| {
        let cfg = SamplerConfig {
            method,
            steps,
            ..SamplerConfig::default()
        };
        max_err(&run(&model, &z, &cfg), &want)
    };
    let ks = [2, 4, 8, 16, 32];
    let e: Vec<f64> = ks.iter().map(|&k| err(SamplerMethod::Euler, k)).collect();
    let h: Vec<f64> = ks.iter().map(|&k| err(SamplerMethod::Heun, k)).collect();
    for i in 1..ks.len() {
        assert!(e[i] < e[i - 1], "Euler errors {e:?}");
        assert!(h[i] < h[i - 1], "Heun errors {h:?}");
        assert!(h[i] < e[i], "Heun {h:?} vs Euler {e:?}");
    }
    // First order halves the error per doubling, second order quarters it.
    assert!(e[4] / e[3] > 0.4 && e[4] / e[3] < 0.6, "Euler errors {e:?}");
    assert!(h[4] / h[3] < 0.3, "Heun errors {h:?}");
    assert!(
        h[4] < 2e-3 && h[4] < e[4] / 10.0,
        "Heun {h:?} vs Euler {e:?}"
    );
}

#[test]
fn euler_is_exact_for_a_data_point() {
    // Straight trajectories (σ = 0) are integrated exactly by Euler and Heun.
    let model = toy(0.0);
    let z = noise(7, DType::F64);
    let want = model.target(&z, &LABELS);
    for method in [SamplerMethod::Euler, SamplerMethod::Heun] {
        for steps in [1, 3] {
            let cfg = SamplerConfig {
                method,
                steps,
                ..SamplerConfig::default()
            };
            assert!(max_err(&run(&model, &z, &cfg), &want) < 1e-12);
        }
    }
}

#[test]
fn heun_spends_2k_minus_1_evaluations() {
    struct Counting(GaussianToy, std::cell::Cell<usize>);
    impl_module! { Counting {} }
    impl VelocityModel for Counting {
        fn velocity(&self, x: &Tensor, t: &Tensor, tt: &Tensor, l: &Tensor) -> Result<Tensor> {
            self.1.set(self.1.get() + 1);
            self.0.velocity(x, t, tt, l)
        }
        fn forward_rng(&self) -> &ForwardRng {
            self.0.forward_rng()
        }
    }
    let model = Counting(toy(0.5), Default::default());
    let z = noise(8, DType::F32);
    let times = time_grid(5, [1.0; 3], [0.0; 2]).unwrap();
    heun(&model, &z, &labels(), &times, &Guidance::none()).unwrap();
    assert_eq!(model.1.get(), 9);
    model.1.set(0);
    euler(&model, &z, &labels(), &times, &Guidance::new(3.0, 2)).unwrap();
    assert_eq!(
        model.1.get(),
        5,
        "guidance doubles the batch, not the calls"
    );
}

// ---------------------------------------------------------------------------------------
// Guidance
// ---------------------------------------------------------------------------------------

#[test]
fn guidance_weight_one_is_unguided() {
    let model = toy(0.5);
    let z = noise(9, DType::F32);
    for method in [
        SamplerMethod::Ucgm,
        SamplerMethod::Euler,
        SamplerMethod::Heun,
    ] {
        let cfg = SamplerConfig {
            method,
            steps: 3,
            ..SamplerConfig::default()
        };
        let start = Start::Noise { z: &z, seed: 0 };
        let plain = sample(&model, start, &labels(), None, &cfg).unwrap();
        let guided = sample(&model, start, &labels(), Some(2), &cfg).unwrap();
        assert_eq!(
            plain.to_vec::<f32>().unwrap(),
            guided.to_vec::<f32>().unwrap()
        );
    }
}

#[test]
fn guidance_mixes_conditional_and_null() {
    // σ = 0: F_null + w·(F_cond − F_null) = (x − (μ_n + w·(μ_c − μ_n)))/t, so one UCGM
    // step lands on μ_n + w·(μ_c − μ_n).
    let model = toy(0.0);
    let z = noise(10, DType::F64);
    for w in [0.0, 2.5] {
        let cfg = SamplerConfig {
            guidance: w,
            ..SamplerConfig::default()
        };
        let x = run(&model, &z, &cfg);
        let null = &model.means[2];
        let want: Vec<f64> = (0..12)
            .map(|i| {
                let cond = model.means[LABELS[i / 3] as usize][i % 3];
                null[i % 3] + w * (cond - null[i % 3])
            })
            .collect();
        assert!(max_err(&x, &want) < 1e-12, "w = {w}");
    }
}

#[test]
fn guidance_on_a_real_network() {
    // The doubled-batch path through an `MlpVelocity`: the guided velocity matches two
    // separate forwards mixed by hand.
    let cfg = MlpVelocityConfig {
        data_dim: 3,
        width: 16,
        depth: 1,
        emb_dim: 8,
        num_classes: 2,
        label_dropout: 0.0,
        time_gated_skip: false,
        ..MlpVelocityConfig::default()
    };
    let mut net = MlpVelocity::new(&mut ParamBuilder::new(3).with_dtype(DType::F64), cfg).unwrap();
    // The output layer starts at zero: perturb it so the velocity depends on the label.
    let mut g = Generator::new(4);
    net.visit_params_mut(&mut |_, p| {
        let r = g.randn(p.shape(), p.dtype(), p.device()).unwrap();
        *p = r.mul_scalar(0.3).unwrap();
    });
    let null = net.null_label();
    let z = noise(11, DType::F64);
    let w = 1.7;
    let got = Guidance::new(w, null)
        .velocity(&net, &z, 0.6, 0.2, &labels())
        .unwrap();
    let t = |v| Tensor::full(v, &[4], DType::F64, Device::Cpu).unwrap();
    let cond = net.velocity(&z, &t(0.6), &t(0.2), &labels()).unwrap();
    let nulls = Tensor::from_vec(vec![null; 4], &[4], Device::Cpu).unwrap();
    let unc = net.velocity(&z, &t(0.6), &t(0.2), &nulls).unwrap();
    let (c, u) = (cond.to_vec_f64().unwrap(), unc.to_vec_f64().unwrap());
    let want: Vec<f64> = c.iter().zip(&u).map(|(c, u)| u + w * (c - u)).collect();
    assert!(max_err(&got, &want) < 1e-10);
    assert_ne!(c, u);
    let x = sample(
        &net,
        Start::Noise { z: &z, seed: 0 },
        &labels(),
        Some(null),
        &SamplerConfig {
            steps: 2,
            guidance: w,
            ..SamplerConfig::default()
        },
    )
    .unwrap();
    assert_eq!(x.shape(), [4, 3]);
}

// ---------------------------------------------------------------------------------------
// Configuration and operand errors
// ---------------------------------------------------------------------------------------

#[test]
fn config_serde_roundtrip_and_unknown_fields() {
    let cfg = SamplerConfig {
        method: SamplerMethod::Ucgm,
        steps: 2,
        guidance: 1.5,
        kumaraswamy: [1.0, 2.0, 1.0],
        gaps: [0.001, 0.6],
        stochastic_ratio: 1.0,
        jump: Some(JumpTarget::AnyStep),
        presets: Some(false),
    };
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(
        json.contains("\"any_step\"") && json.contains("\"ucgm\""),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<SamplerConfig>(&json).unwrap(), cfg);
    let partial: SamplerConfig = serde_json::from_str(r#"{"method": "heun", "steps": 8}"#).unwrap();
    assert_eq!(partial.method, SamplerMethod::Heun);
    assert_eq!(partial.steps, 8);
    assert_eq!(partial.guidance, 1.0);
    let err = serde_json::from_str::<SamplerConfig>(r#"{"step": 2}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn bad_configs_are_clear_errors() {
    let model = toy(0.0);
    let z = noise(12, DType::F32);
    let fail = |cfg: SamplerConfig, null: Option<i64>| {
        let start = Start::Noise { z: &z, seed: 0 };
        sample(&model, start, &labels(), null, &cfg)
            .unwrap_err()
            .to_string()
    };
    let d = SamplerConfig::default();
    let e = fail(SamplerConfig { steps: 0, ..d }, None);
    assert!(e.contains("steps must lie in 1..="), "{e}");
    let e = fail(
        SamplerConfig {
            gaps: [0.3, 0.7],
            ..d
        },
        None,
    );
    assert!(e.contains("g0 + g1 < 1"), "{e}");
    let e = fail(
        SamplerConfig {
            gaps: [-0.1, 0.0],
            ..d
        },
        None,
    );
    assert!(e.contains("non-negative"), "{e}");
    let e = fail(
        SamplerConfig {
            stochastic_ratio: 1.5,
            ..d
        },
        None,
    );
    assert!(e.contains("stochastic_ratio must lie in [0, 1]"), "{e}");
    let e = fail(
        SamplerConfig {
            guidance: f64::INFINITY,
            ..d
        },
        None,
    );
    assert!(e.contains("guidance must be finite"), "{e}");
    let e = fail(SamplerConfig { guidance: 2.0, ..d }, None);
    assert!(e.contains("null label"), "{e}");
    let euler_rho = SamplerConfig {
        method: SamplerMethod::Euler,
        stochastic_ratio: 0.5,
        ..d
    };
    assert!(fail(euler_rho, None).contains("UCGM settings"));
    let heun_jump = SamplerConfig {
        method: SamplerMethod::Heun,
        jump: Some(JumpTarget::AnyStep),
        ..d
    };
    assert!(fail(heun_jump, None).contains("UCGM settings"));
}

#[test]
fn bad_operands_are_clear_errors() {
    let model = toy(0.0);
    let z = noise(13, DType::F32);
    let g = Guidance::none();
    let good = time_grid(2, [1.0; 3], [0.0; 2]).unwrap();
    let short = Tensor::from_slice(&[0i64, 1], &[2], Device::Cpu).unwrap();
    let e = euler(&model, &z, &short, &good, &g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels must be i64 [4]"), "{e}");
    let e = heun(&model, &z, &labels(), &[1.0, 0.5], &g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("times must decrease"), "{e}");
    let flat = z.reshape(&[12]).unwrap();
    let e = euler(&model, &flat, &labels(), &good, &g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("z must be float [B, D]"), "{e}");
}

#[test]
fn presets_give_the_reference_few_step_settings_at_2_and_4_steps() {
    let on = SamplerConfig {
        presets: Some(true),
        ..SamplerConfig::default()
    };
    let settings = |cfg: SamplerConfig| (cfg.steps, cfg.stochastic_ratio, cfg.gaps);
    assert_eq!(settings(on.at_steps(1)), (1, 0.0, [0.0, 0.0]));
    assert_eq!(settings(on.at_steps(2)), (2, 1.0, [0.001, 0.6]));
    assert_eq!(settings(on.at_steps(3)), (3, 0.0, [0.0, 0.0]));
    assert_eq!(settings(on.at_steps(4)), (4, 1.0, [0.001, 0.5]));
    assert_eq!(on.at_steps(2).time_grid().unwrap(), vec![0.999, 0.6, 0.0]);
    // Off, unset, or another sampler: only the step count changes.
    for cfg in [
        SamplerConfig::default(),
        SamplerConfig {
            presets: Some(false),
            ..SamplerConfig::default()
        },
        SamplerConfig {
            method: SamplerMethod::Euler,
            ..on
        },
    ] {
        for k in [2, 4] {
            assert_eq!(cfg.at_steps(k), SamplerConfig { steps: k, ..cfg });
        }
    }
}

#[test]
fn twinflow_runs_sample_with_the_presets_unless_told_otherwise() {
    use twinflow::flow::train::TrainConfig;
    let load = |name: &str| TrainConfig::load(format!("configs/{name}.toml")).unwrap();
    assert_eq!(load("mnist-twinflow").sampler().presets, Some(true));
    assert_eq!(load("mnist-rcgm").sampler().presets, Some(true));
    assert_eq!(load("mnist-fm").sampler().presets, Some(false));
    let text = std::fs::read_to_string("configs/moons-twinflow.toml").unwrap();
    let off =
        TrainConfig::from_toml(&format!("{text}\n[sampler]\npresets = false\n"), "t").unwrap();
    assert_eq!(off.sampler().presets, Some(false));
}
