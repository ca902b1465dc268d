//! MeanFlow (`twinflow::flow::method::MeanFlow`, docs/method.md §10) on a tiny f64
//! `MlpVelocity`: the target against a central difference of the network along the
//! tangent `(v, 0, 1)` of `(z, r, t)`, the whole loss (draws, guidance, class dropout,
//! target, adaptive weight) recomputed by hand, `r = t` as flow matching, the adaptive
//! weight's value and gradient, the `(r, t)` sampler's share, ordering and
//! distribution, the settings' errors, and the sampler a MeanFlow run gets by default
//! (`z_r = z_t − (t − r)·u(z_t, r, t)` on a uniform grid at 1, 2 and 4 NFE).

use crate::common::{f64_builder, randomize};
use twinflow::engine::{no_grad, DType, Device, Generator, Tensor};
use twinflow::flow::method::{
    average_velocity_and_target, Batch, FlowMethod, MeanFlow, MeanFlowConfig, MethodConfig,
    MethodSettings, StepContext, StepLoss, TimeDistribution,
};
use twinflow::flow::sampler::{sample, JumpTarget, SamplerMethod, Start};
use twinflow::flow::train::TrainConfig;
use twinflow::nn::{MlpVelocity, MlpVelocityConfig, Module, VelocityModel};

const B: usize = 8;
const D: usize = 3;
const F64: DType = DType::F64;
const CPU: Device = Device::Cpu;
const LABELS: [i64; B] = [0, 1, 2, 1, 0, 2, 2, 1];
/// The step of the central differences. The time embedding's fastest angle is 1000·t,
/// so the truncation error (∝ ε²·1000³) needs a small step: measured against the JVP
/// target, the relative error falls as ε² down to 2·10⁻⁷ at ε = 10⁻⁶ and 3·10⁻⁹ at
/// 10⁻⁷, where rounding (∝ 10⁻¹⁶/ε) takes over.
const EPS: f64 = 1e-7;
/// The relative tolerance of values built from central differences.
const DIFF_TOL: f64 = 1e-7;

/// A tiny MLP velocity net (3 classes, time-gated skip) with every parameter random.
fn mlp(seed: u64) -> MlpVelocity {
    let cfg = MlpVelocityConfig {
        data_dim: D,
        width: 16,
        depth: 2,
        emb_dim: 4,
        num_classes: 3,
        label_dropout: 0.0,
        time_gated_skip: true,
        ..MlpVelocityConfig::default()
    };
    let mut m = MlpVelocity::new(&mut f64_builder(seed), cfg).unwrap();
    let mut g = Generator::new(seed + 1000);
    m.visit_params_mut(&mut |name, p| {
        if name.starts_with("out.") || name.starts_with("skip.") {
            p.assign(&g.normal(p.shape(), 0.0, 0.5, F64, CPU).unwrap())
                .unwrap();
        }
    });
    m
}

fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, CPU).unwrap()
}

fn labels(c: &[i64]) -> Tensor {
    Tensor::from_vec(c.to_vec(), &[c.len()], CPU).unwrap()
}

fn batch() -> Batch {
    let x = Generator::new(77).randn(&[B, D], F64, CPU).unwrap();
    Batch::new(x, labels(&LABELS))
}

/// `u(z, r, t | c) = F(z, t, r, c)` as plain numbers, without gradient.
fn u_at(m: &MlpVelocity, z: &[f64], t: &[f64], r: &[f64], c: &[i64]) -> Vec<f64> {
    let n = t.len();
    no_grad(|| {
        m.velocity(
            &tensor(z, &[n, D]),
            &tensor(t, &[n]),
            &tensor(r, &[n]),
            &labels(c),
        )
    })
    .unwrap()
    .to_vec_f64()
    .unwrap()
}

/// `v − (t − r)·du/dt` with `du/dt` the central difference of `u` along `(v, 0, 1)`.
fn target_by_difference(
    m: &MlpVelocity,
    z: &[f64],
    t: &[f64],
    r: &[f64],
    v: &[f64],
    c: &[i64],
) -> Vec<f64> {
    let shift = |sign: f64| -> Vec<f64> {
        let zs: Vec<f64> = z.iter().zip(v).map(|(z, v)| z + sign * EPS * v).collect();
        let ts: Vec<f64> = t.iter().map(|t| t + sign * EPS).collect();
        u_at(m, &zs, &ts, r, c)
    };
    let (up, down) = (shift(1.0), shift(-1.0));
    (0..z.len())
        .map(|i| {
            let du_dt = (up[i] - down[i]) / (2.0 * EPS);
            v[i] - (t[i / D] - r[i / D]) * du_dt
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, expected {w}"
        );
    }
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// MeanFlow built for `m` (its null class resolved, as the trainer builds it).
fn method(cfg: MeanFlowConfig, m: &MlpVelocity) -> MeanFlow {
    MeanFlow::new(cfg.for_model(m.null_label())).unwrap()
}

fn run(method: &MeanFlow, m: &MlpVelocity, seed: u64) -> StepLoss {
    let mut rng = Generator::new(seed);
    let mut ctx = StepContext::new(m, m, &mut rng);
    FlowMethod::<MlpVelocity>::loss(method, &mut ctx, &batch()).unwrap()
}

#[test]
fn the_target_is_v_minus_the_interval_times_the_time_derivative() {
    let m = mlp(3);
    let mut g = Generator::new(5);
    let mut draw = |shape: &[usize]| g.uniform(shape, 0.0, 1.0, F64, CPU).unwrap();
    let (a, b) = (
        draw(&[B]).to_vec_f64().unwrap(),
        draw(&[B]).to_vec_f64().unwrap(),
    );
    let t: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a.max(*b)).collect();
    let r: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a.min(*b)).collect();
    let z = Generator::new(6).randn(&[B, D], F64, CPU).unwrap();
    let v = Generator::new(7).randn(&[B, D], F64, CPU).unwrap();
    let (u, target) = average_velocity_and_target(
        &m,
        &z,
        &tensor(&t, &[B]),
        &tensor(&r, &[B]),
        &v,
        &labels(&LABELS),
    )
    .unwrap();
    let (zv, vv) = (z.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());
    // The primal is the plain forward, and it carries the graph the loss trains.
    assert_close(
        &u.to_vec_f64().unwrap(),
        &u_at(&m, &zv, &t, &r, &LABELS),
        1e-14,
        "u",
    );
    assert!(u.requires_grad() && !target.requires_grad());
    let want = target_by_difference(&m, &zv, &t, &r, &vv, &LABELS);
    assert_close(&target.to_vec_f64().unwrap(), &want, DIFF_TOL, "u_tgt");

    // The backward pass runs through the primal only: the gradients of the loss are
    // those of a plain forward against the same (constant) target.
    let cfg = MeanFlowConfig::default();
    let grads = |u: &Tensor| {
        let g = cfg.adaptive_loss(u, &target).unwrap().backward().unwrap();
        let mut out = Vec::new();
        m.visit_params(&mut |_, p| out.extend(g.get(p).unwrap().to_vec_f64().unwrap()));
        out
    };
    let (tt, rr) = (tensor(&t, &[B]), tensor(&r, &[B]));
    let plain = m.velocity(&z, &tt, &rr, &labels(&LABELS)).unwrap();
    assert_close(&grads(&u), &grads(&plain), 1e-12, "parameter gradients");
}

#[test]
fn equal_times_give_the_flow_matching_target() {
    let m = mlp(4);
    let z = Generator::new(8).randn(&[B, D], F64, CPU).unwrap();
    let v = Generator::new(9).randn(&[B, D], F64, CPU).unwrap();
    let t = Generator::new(10)
        .uniform(&[B], 0.0, 1.0, F64, CPU)
        .unwrap();
    let (_, target) = average_velocity_and_target(&m, &z, &t, &t, &v, &labels(&LABELS)).unwrap();
    assert_eq!(target.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());

    // The whole method with no interval: flow matching under the adaptive weight.
    let cfg = MeanFlowConfig {
        interval_share: 0.0,
        ..MeanFlowConfig::default()
    };
    let out = run(&method(cfg, &m), &m, 11);
    let mut g = Generator::new(11);
    let zv = g.randn(&[B, D], F64, CPU).unwrap().to_vec_f64().unwrap();
    let x = batch().x.to_vec_f64().unwrap();
    let t = hand_times(&mut g, &cfg).0;
    let x_t: Vec<f64> = (0..B * D)
        .map(|i| x[i] + t[i / D] * (zv[i] - x[i]))
        .collect();
    let v: Vec<f64> = (0..B * D).map(|i| zv[i] - x[i]).collect();
    let u = u_at(&m, &x_t, &t, &t, &LABELS);
    let want = hand_loss(&cfg, &u, &v);
    assert_close(&[out.value().unwrap()], &[want.0], 1e-12, "loss");
    assert_close(&[out.term("mse").unwrap()], &[want.1], 1e-12, "mse");
}

/// `(t, r)` drawn as the method documents: two logit-normal draws of B, sorted, the
/// first ⌊B·(1 − share)⌋ with `r = t`.
fn hand_times(g: &mut Generator, cfg: &MeanFlowConfig) -> (Vec<f64>, Vec<f64>) {
    let mut logit_normal = || -> Vec<f64> {
        let xi = g
            .normal(&[B], cfg.time_mean, cfg.time_std, F64, CPU)
            .unwrap();
        xi.to_vec_f64().unwrap().into_iter().map(logistic).collect()
    };
    let (a, b) = (logit_normal(), logit_normal());
    let equal = (B as f64 * (1.0 - cfg.interval_share)).floor() as usize;
    let t: Vec<f64> = (0..B).map(|i| a[i].max(b[i])).collect();
    let r = (0..B)
        .map(|i| if i < equal { t[i] } else { a[i].min(b[i]) })
        .collect();
    (t, r)
}

/// `(mean_b ‖Δ_b‖²/(‖Δ_b‖² + c)^p, mean of Δ²)` for `Δ = u − target`.
fn hand_loss(cfg: &MeanFlowConfig, u: &[f64], target: &[f64]) -> (f64, f64) {
    let n = u.len() / D;
    let sq: Vec<f64> = (0..n)
        .map(|b| {
            (0..D)
                .map(|j| (u[b * D + j] - target[b * D + j]).powi(2))
                .sum()
        })
        .collect();
    let loss = sq
        .iter()
        .map(|s| s / (s + cfg.weight_offset).powf(cfg.weight_power))
        .sum::<f64>()
        / n as f64;
    (loss, sq.iter().sum::<f64>() / (n * D) as f64)
}

/// The whole step by hand, from the same draws: guidance, class dropout, the target by
/// central differences, the adaptive weight.
fn check_loss_by_hand(cfg: MeanFlowConfig, seed: u64) {
    let m = mlp(12);
    let null = m.null_label();
    let out = run(&method(cfg, &m), &m, seed);

    let mut g = Generator::new(seed);
    let z = g.randn(&[B, D], F64, CPU).unwrap().to_vec_f64().unwrap();
    let (t, r) = hand_times(&mut g, &cfg);
    let dropped = match cfg.class_dropout {
        0.0 => 0,
        p => {
            let u = g.uniform(&[B], 0.0, 1.0, F64, CPU).unwrap();
            u.to_vec_f64().unwrap().iter().filter(|&&u| u < p).count()
        }
    };
    let x = batch().x.to_vec_f64().unwrap();
    let x_t: Vec<f64> = (0..B * D)
        .map(|i| x[i] + t[i / D] * (z[i] - x[i]))
        .collect();
    let v: Vec<f64> = (0..B * D).map(|i| z[i] - x[i]).collect();
    let cond = u_at(&m, &x_t, &t, &t, &LABELS);
    let free = u_at(&m, &x_t, &t, &t, &[null; B]);
    let [lo, hi] = cfg.guidance_range;
    let v_g: Vec<f64> = (0..B * D)
        .map(|i| {
            let b = i / D;
            let (w, k) = match b >= dropped && lo <= t[b] && t[b] <= hi {
                true => (cfg.guidance_scale, cfg.guidance_mix),
                false => (1.0, 0.0),
            };
            w * v[i] + k * cond[i] + (1.0 - w - k) * free[i]
        })
        .collect();
    let c: Vec<i64> = (0..B)
        .map(|b| if b < dropped { null } else { LABELS[b] })
        .collect();
    let u = u_at(&m, &x_t, &t, &r, &c);
    let target = target_by_difference(&m, &x_t, &t, &r, &v_g, &c);
    let (loss, mse) = hand_loss(&cfg, &u, &target);
    assert_close(&[out.value().unwrap()], &[loss], DIFF_TOL, "loss");
    assert_close(&[out.term("mf").unwrap()], &[loss], DIFF_TOL, "mf");
    assert_close(&[out.term("mse").unwrap()], &[mse], DIFF_TOL, "mse");
}

#[test]
fn the_loss_matches_a_hand_computation() {
    check_loss_by_hand(MeanFlowConfig::default(), 20);
    // Every sample on an interval, the plain squared error.
    let all_intervals = MeanFlowConfig {
        interval_share: 1.0,
        weight_power: 0.0,
        ..MeanFlowConfig::default()
    };
    check_loss_by_hand(all_intervals, 21);
    // Guidance without the mixing scale (the unconditional forward only).
    let cfg = MeanFlowConfig {
        guidance_scale: 1.5,
        weight_power: 0.5,
        ..MeanFlowConfig::default()
    };
    check_loss_by_hand(cfg, 22);
    // The authors' ImageNet setting, with heavy class dropout and a guidance interval
    // that leaves some samples out.
    let cfg = MeanFlowConfig {
        guidance_scale: 1.0,
        guidance_mix: 0.5,
        guidance_range: [0.2, 0.9],
        class_dropout: 0.5,
        interval_share: 0.5,
        ..MeanFlowConfig::default()
    };
    for seed in [23, 24, 25] {
        check_loss_by_hand(cfg, seed);
    }
}

#[test]
fn the_adaptive_weight_scales_the_squared_error_without_gradient() {
    let u = Generator::new(30).randn(&[B, D], F64, CPU).unwrap();
    let target = Generator::new(31).randn(&[B, D], F64, CPU).unwrap();
    let (uv, tv) = (u.to_vec_f64().unwrap(), target.to_vec_f64().unwrap());
    for (p, c) in [(1.0, 1e-3), (0.5, 1e-2), (0.0, 1e-3), (2.0, 0.5)] {
        let cfg = MeanFlowConfig {
            weight_power: p,
            weight_offset: c,
            ..MeanFlowConfig::default()
        };
        let leaf = u.clone().into_variable().unwrap();
        let loss = cfg.adaptive_loss(&leaf, &target).unwrap();
        assert_close(
            &[loss.item().unwrap()],
            &[hand_loss(&cfg, &uv, &tv).0],
            1e-13,
            "L",
        );
        // dL/du_b = 2·w_b·Δ_b/B: the weight is a constant of the backward pass.
        let grad = loss
            .backward()
            .unwrap()
            .get(&leaf)
            .unwrap()
            .to_vec_f64()
            .unwrap();
        let want: Vec<f64> = (0..B * D)
            .map(|i| {
                let b = i / D;
                let sq: f64 = (0..D)
                    .map(|j| (uv[b * D + j] - tv[b * D + j]).powi(2))
                    .sum();
                let w = (sq + c).powf(-p);
                2.0 * w * (uv[i] - tv[i]) / B as f64
            })
            .collect();
        assert_close(&grad, &want, 1e-12, &format!("gradient (p = {p})"));
    }
}

#[test]
fn time_pairs_keep_the_share_the_order_and_the_logit_normal() {
    let n = 20_000;
    for share in [0.0, 0.25, 0.7, 1.0] {
        let cfg = MeanFlowConfig {
            interval_share: share,
            ..MeanFlowConfig::default()
        };
        let (t, r) = cfg.sample_times(&mut Generator::new(40), n).unwrap();
        let equal = (n as f64 * (1.0 - share)).floor() as usize;
        assert!(t.iter().chain(&r).all(|&s| s > 0.0 && s < 1.0));
        assert!((0..n).all(|i| r[i] <= t[i]), "r ≤ t");
        // The leading samples have r = t, every later one an interval r < t.
        assert!((0..equal).all(|i| r[i] == t[i]));
        assert!((equal..n).all(|i| r[i] < t[i]));
    }
    // Rounding as the authors' code: ⌊B·(1 − share)⌋ samples with r = t.
    let cfg = MeanFlowConfig::default();
    let (t, r) = cfg.sample_times(&mut Generator::new(41), 10).unwrap();
    assert_eq!((0..10).filter(|&i| r[i] == t[i]).count(), 7);

    // With every sample on an interval, {t, r} is the two draws: their logits pool to
    // N(μ, σ²), and t is the larger logit of each pair.
    let cfg = MeanFlowConfig {
        interval_share: 1.0,
        time_mean: 0.3,
        time_std: 0.8,
        ..MeanFlowConfig::default()
    };
    let (t, r) = cfg.sample_times(&mut Generator::new(42), n).unwrap();
    let logit = |s: f64| (s / (1.0 - s)).ln();
    let pooled: Vec<f64> = t.iter().chain(&r).map(|&s| logit(s)).collect();
    let mean = pooled.iter().sum::<f64>() / pooled.len() as f64;
    let var = pooled.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / pooled.len() as f64;
    assert!((mean - 0.3).abs() < 0.02, "mean {mean}");
    assert!((var.sqrt() - 0.8).abs() < 0.02, "std {}", var.sqrt());
    // E[max of two N(μ, σ²)] = μ + σ/√π.
    let t_mean = t.iter().map(|&s| logit(s)).sum::<f64>() / n as f64;
    let want = 0.3 + 0.8 / std::f64::consts::PI.sqrt();
    assert!(
        (t_mean - want).abs() < 0.02,
        "mean logit t {t_mean}, expected {want}"
    );
}

#[test]
fn a_fixed_seed_reproduces_the_step() {
    let m = mlp(50);
    let cfg = MeanFlowConfig {
        guidance_mix: 0.5,
        class_dropout: 0.2,
        ..MeanFlowConfig::default()
    };
    let bits = |seed| {
        let out = run(&method(cfg, &m), &m, seed);
        (out.value().unwrap().to_bits(), out.terms.clone())
    };
    assert_eq!(bits(51), bits(51));
    assert_ne!(bits(51).0, bits(52).0);
}

#[test]
fn settings_errors_name_the_key() {
    let d = MeanFlowConfig::default();
    let cases = [
        (MeanFlowConfig { time_std: 0.0, ..d }, "time_std"),
        (
            MeanFlowConfig {
                time_mean: f64::NAN,
                ..d
            },
            "time_mean",
        ),
        (
            MeanFlowConfig {
                interval_share: 1.5,
                ..d
            },
            "interval_share",
        ),
        (
            MeanFlowConfig {
                weight_power: -1.0,
                ..d
            },
            "weight_power",
        ),
        (
            MeanFlowConfig {
                weight_offset: 0.0,
                ..d
            },
            "weight_offset",
        ),
        (
            MeanFlowConfig {
                guidance_scale: f64::INFINITY,
                ..d
            },
            "guidance_scale",
        ),
        (
            MeanFlowConfig {
                guidance_mix: f64::NAN,
                ..d
            },
            "guidance_mix",
        ),
        (
            MeanFlowConfig {
                guidance_range: [0.8, 0.2],
                ..d
            },
            "guidance_range",
        ),
        (
            MeanFlowConfig {
                guidance_range: [f64::NAN, 1.0],
                ..d
            },
            "guidance_range",
        ),
        (
            MeanFlowConfig {
                class_dropout: 1.0,
                ..d
            },
            "class_dropout",
        ),
    ];
    for (bad, key) in cases {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{bad:?}: {err}");
        assert!(MeanFlow::new(bad).is_err());
        assert!(MethodConfig::from(bad).validate().is_err());
    }
    // Its times are its own: a [time] table other than the default is refused.
    let beta = TimeDistribution {
        beta_a: 2.0,
        ..TimeDistribution::default()
    };
    let err = MeanFlow::new(d)
        .unwrap()
        .with_time(beta)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[time]"), "{err}");
    assert!(MeanFlow::new(d)
        .unwrap()
        .with_time(TimeDistribution::default())
        .is_ok());
    // Guidance and class dropout need the model's null class, which the trainer gives.
    let m = mlp(60);
    let guided = MeanFlowConfig {
        guidance_scale: 2.0,
        ..d
    };
    let mut rng = Generator::new(61);
    let mut ctx = StepContext::new(&m, &m, &mut rng);
    let unresolved =
        FlowMethod::<MlpVelocity>::loss(&MeanFlow::new(guided).unwrap(), &mut ctx, &batch());
    assert!(unresolved.unwrap_err().to_string().contains("null class"));
    assert!(run(&method(guided, &m), &m, 61)
        .value()
        .unwrap()
        .is_finite());
    // Serde: every key optional, unknown keys (the null label among them) refused.
    let partial: MeanFlowConfig = serde_json::from_str(r#"{"interval_share": 0.5}"#).unwrap();
    assert_eq!(
        partial,
        MeanFlowConfig {
            interval_share: 0.5,
            ..d
        }
    );
    for unknown in [r#"{"ratio": 0.5}"#, r#"{"null_label": 3}"#] {
        assert!(
            serde_json::from_str::<MeanFlowConfig>(unknown).is_err(),
            "{unknown}"
        );
    }
}

/// configs/moons-meanflow.toml with `extra` appended.
fn moons_config(extra: &str) -> TrainConfig {
    let text = std::fs::read_to_string("configs/moons-meanflow.toml").unwrap();
    TrainConfig::from_toml(&format!("{text}\n{extra}"), "moons-meanflow").unwrap()
}

#[test]
fn meanflow_runs_sample_with_average_velocity_steps_on_a_uniform_grid() {
    let cfg = moons_config("");
    assert_eq!(cfg.method.name(), "meanflow");
    let base = cfg.sampler();
    assert_eq!(
        (base.jump, base.presets),
        (Some(JumpTarget::AnyStep), Some(false))
    );

    // The model's u(z, r, t) = F(z, t, r, c) on the 2-D data of the moons config.
    let mut model_cfg = match cfg.model.mlp {
        Some(mlp) => mlp,
        None => panic!("the moons config trains an MLP"),
    };
    model_cfg.width = 16;
    let mut m = MlpVelocity::new(&mut f64_builder(70), model_cfg).unwrap();
    randomize(&mut m, 71, 0.3);
    let n = 6;
    let z = Generator::new(72).randn(&[n, 2], F64, CPU).unwrap();
    let c = labels(&[0, 1, 0, 1, 1, 0]);
    for nfe in [1, 2, 4] {
        let sampler = base.at_steps(nfe);
        let grid: Vec<f64> = (0..=nfe).map(|k| 1.0 - k as f64 / nfe as f64).collect();
        assert_eq!(
            sampler.time_grid().unwrap(),
            grid,
            "uniform grid at {nfe} NFE"
        );
        let got = sample(&m, Start::Noise { z: &z, seed: 0 }, &c, None, &sampler).unwrap();
        // z_r = z_t − (t − r)·u(z_t, r, t) from grid time to grid time (paper Eq. 12).
        let mut x = z.clone();
        for w in grid.windows(2) {
            let (t, r) = (w[0], w[1]);
            let full = |s: f64| Tensor::full(s, &[n], F64, CPU).unwrap();
            let u = no_grad(|| m.velocity(&x, &full(t), &full(r), &c)).unwrap();
            x = x.sub(&u.mul_scalar(t - r).unwrap()).unwrap();
        }
        let (got, want) = (got.to_vec_f64().unwrap(), x.to_vec_f64().unwrap());
        assert_close(&got, &want, 1e-12, &format!("{nfe} NFE"));
    }

    // A [sampler] table still decides: its jump, or another sampler without one.
    let few = moons_config("[sampler]\njump = \"few_step\"\n").sampler();
    assert_eq!(few.jump, Some(JumpTarget::FewStep));
    let euler = moons_config("[sampler]\nmethod = \"euler\"\n").sampler();
    assert_eq!((euler.method, euler.jump), (SamplerMethod::Euler, None));
    euler.validate().unwrap();
    // Other methods keep the few-step jump.
    let twinflow = TrainConfig::load("configs/moons-twinflow.toml").unwrap();
    assert_eq!(twinflow.sampler().jump, Some(JumpTarget::FewStep));
}
