//! Optimizers, gradient clipping and cleaning, learning-rate schedules and the EMA,
//! checked against the formulas (PyTorch's semantics) computed independently here in
//! f64.

use twinflow::engine::{DType, Device, Gradients, Tensor};
use twinflow::nn::{
    clean_and_clip_grad_norm, clip_grad_norm, impl_module, zero_non_finite, Adam, AdamConfig, Ema,
    Forward, Linear, LinearConfig, LrSchedule, Module, Optimizer, ParamBuilder, Sgd, SgdConfig,
};

use crate::common::vals;

fn param(values: &[f64], dtype: DType) -> Tensor {
    Tensor::from_f64s(values, &[values.len()], dtype, Device::Cpu)
        .unwrap()
        .into_variable()
        .unwrap()
}

/// Gradients of `Σ p·c`, i.e. exactly `c`, whatever p is.
fn grads_equal_to(p: &Tensor, c: &[f64]) -> Gradients {
    let c = Tensor::from_f64s(c, p.shape(), p.dtype(), Device::Cpu).unwrap();
    p.mul(&c).unwrap().sum_all().unwrap().backward().unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
        );
    }
}

const P0: [f64; 3] = [0.5, -1.25, 2.0];
const GRADS: [[f64; 3]; 4] = [
    [0.1, -0.3, 0.7],
    [-0.2, 0.4, 0.05],
    [0.3, 0.3, -0.6],
    [1.5, -0.01, 0.2],
];

/// PyTorch's SGD, written out.
fn sgd_reference(cfg: &SgdConfig) -> Vec<f64> {
    let mut p = P0.to_vec();
    let mut buf: Option<Vec<f64>> = None;
    for g in GRADS {
        let d: Vec<f64> = (0..3).map(|i| g[i] + cfg.weight_decay * p[i]).collect();
        let d = if cfg.momentum == 0.0 {
            d
        } else {
            let b: Vec<f64> = match &buf {
                None => d.clone(),
                Some(b) => (0..3)
                    .map(|i| cfg.momentum * b[i] + (1.0 - cfg.dampening) * d[i])
                    .collect(),
            };
            buf = Some(b.clone());
            match cfg.nesterov {
                true => (0..3).map(|i| d[i] + cfg.momentum * b[i]).collect(),
                false => b,
            }
        };
        p = (0..3).map(|i| p[i] - cfg.lr * d[i]).collect();
    }
    p
}

/// PyTorch's Adam / AdamW, written out.
fn adam_reference(cfg: &AdamConfig) -> Vec<f64> {
    let (mut p, mut m, mut v) = (P0.to_vec(), [0.0; 3], [0.0; 3]);
    for (t, g) in GRADS.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..3 {
            let mut g = g[i];
            if cfg.decoupled_weight_decay {
                p[i] *= 1.0 - cfg.lr * cfg.weight_decay;
            } else {
                g += cfg.weight_decay * p[i];
            }
            m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
            v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
            let m_hat = m[i] / (1.0 - cfg.beta1.powi(t));
            let v_hat = v[i] / (1.0 - cfg.beta2.powi(t));
            p[i] -= cfg.lr * m_hat / (v_hat.sqrt() + cfg.eps);
        }
    }
    p
}

/// Runs `opt` over the four fixed gradients.
fn run(p: &Tensor, opt: &mut dyn Optimizer) {
    for g in GRADS {
        opt.step(&grads_equal_to(p, &g)).unwrap();
    }
}

fn check_sgd(cfg: SgdConfig) {
    let p = param(&P0, DType::F64);
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], cfg).unwrap();
    run(&p, &mut opt);
    assert_close(&vals(&p), &sgd_reference(&cfg), 1e-14);
}

#[test]
fn sgd_steps_match_the_formula_with_and_without_weight_decay() {
    check_sgd(SgdConfig {
        lr: 0.1,
        ..SgdConfig::default()
    });
    check_sgd(SgdConfig {
        lr: 0.1,
        weight_decay: 0.3,
        ..SgdConfig::default()
    });
}

#[test]
fn sgd_momentum_with_dampening_and_weight_decay_matches_the_formula() {
    check_sgd(SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.25,
        weight_decay: 0.1,
        nesterov: false,
    });
}

#[test]
fn sgd_nesterov_matches_the_formula() {
    check_sgd(SgdConfig {
        lr: 0.05,
        momentum: 0.8,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: true,
    });
    check_sgd(SgdConfig {
        lr: 0.05,
        momentum: 0.8,
        dampening: 0.0,
        weight_decay: 0.2,
        nesterov: true,
    });
}

fn check_adam(cfg: AdamConfig) {
    let p = param(&P0, DType::F32);
    let mut opt = Adam::new(vec![("p".into(), p.clone())], cfg).unwrap();
    run(&p, &mut opt);
    assert_close(&vals(&p), &adam_reference(&cfg), 2e-6);
}

#[test]
fn adam_steps_match_the_formula_with_bias_correction() {
    check_adam(AdamConfig {
        lr: 0.1,
        ..AdamConfig::default()
    });
    // Large eps and unusual betas make every term of the formula visible.
    check_adam(AdamConfig {
        lr: 0.05,
        beta1: 0.5,
        beta2: 0.7,
        eps: 0.1,
        ..AdamConfig::default()
    });
}

#[test]
fn adam_weight_decay_is_added_to_the_gradient() {
    check_adam(AdamConfig {
        lr: 0.1,
        weight_decay: 0.5,
        ..AdamConfig::default()
    });
}

#[test]
fn adamw_weight_decay_is_decoupled() {
    check_adam(AdamConfig {
        lr: 0.1,
        weight_decay: 0.5,
        ..AdamConfig::adamw()
    });
    let (adam, adamw) = (
        adam_reference(&AdamConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..AdamConfig::default()
        }),
        adam_reference(&AdamConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..AdamConfig::adamw()
        }),
    );
    assert!(
        (adam[0] - adamw[0]).abs() > 1e-3,
        "the two decays must differ"
    );
}

/// Minimises Σ (p − target)² and returns the final distance to the target.
fn minimise(opt: &mut dyn Optimizer, p: &Tensor, steps: usize) -> f64 {
    let target = Tensor::from_f64s(&[3.0, -2.0, 0.5, 1.0], &[4], DType::F32, Device::Cpu).unwrap();
    for _ in 0..steps {
        let loss = p.sub(&target).unwrap().square().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let d = p.sub(&target).unwrap().square().unwrap().sum_all().unwrap();
    d.item().unwrap().sqrt()
}

#[test]
fn every_optimizer_minimises_a_quadratic() {
    let fresh = || param(&[0.0; 4], DType::F32);
    let p = fresh();
    let sgd = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], sgd).unwrap();
    assert!(minimise(&mut opt, &p, 200) < 1e-4);
    let p = fresh();
    let adam = AdamConfig {
        lr: 0.1,
        ..AdamConfig::default()
    };
    let mut opt = Adam::new(vec![("p".into(), p.clone())], adam).unwrap();
    assert!(minimise(&mut opt, &p, 400) < 1e-2);
    let p = fresh();
    let adamw = AdamConfig {
        lr: 0.1,
        weight_decay: 1e-4,
        ..AdamConfig::adamw()
    };
    let mut opt = Adam::new(vec![("p".into(), p.clone())], adamw).unwrap();
    assert!(minimise(&mut opt, &p, 400) < 1e-2);
}

#[test]
fn frozen_parameters_and_parameters_without_gradient_are_skipped() {
    let trained = param(&[1.0, 2.0], DType::F32);
    let frozen = param(&[3.0, 4.0], DType::F32).detach();
    let unreached = param(&[5.0, 6.0], DType::F32);
    let params = vec![
        ("trained".to_string(), trained.clone()),
        ("frozen".to_string(), frozen.clone()),
        ("unreached".to_string(), unreached.clone()),
    ];
    let mut adam = Adam::new(params.clone(), AdamConfig::adamw()).unwrap();
    let sgd_cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.1,
        ..SgdConfig::default()
    };
    let mut sgd = Sgd::new(params, sgd_cfg).unwrap();
    for opt in [&mut adam as &mut dyn Optimizer, &mut sgd] {
        let mut grads = grads_equal_to(&trained, &[1.0, 1.0]);
        // Even a gradient handed in for a frozen parameter is ignored.
        grads.insert(&frozen, frozen.ones_like().unwrap());
        opt.step(&grads).unwrap();
        let state = opt.state();
        let names: Vec<&str> = state.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.iter().all(|n| n.starts_with("trained.")), "{names:?}");
        assert_eq!(state.record.steps.keys().collect::<Vec<_>>(), ["trained"]);
    }
    assert_ne!(vals(&trained), vec![1.0, 2.0]);
    assert_eq!(vals(&frozen), vec![3.0, 4.0]);
    assert_eq!(vals(&unreached), vec![5.0, 6.0]);
}

#[test]
fn invalid_configurations_are_refused_with_a_reason() {
    let p = || vec![("w".to_string(), param(&[1.0], DType::F32))];
    let nesterov = SgdConfig {
        nesterov: true,
        ..SgdConfig::default()
    };
    let err = Sgd::new(p(), nesterov).unwrap_err().to_string();
    assert!(err.contains("Nesterov"), "{err}");
    let beta = AdamConfig {
        beta2: 1.0,
        ..AdamConfig::default()
    };
    let err = Adam::new(p(), beta).unwrap_err().to_string();
    assert!(err.contains("beta2"), "{err}");
    let mut opt = Adam::new(p(), AdamConfig::default()).unwrap();
    let err = opt.set_learning_rate(-1.0).unwrap_err().to_string();
    assert!(err.contains("lr"), "{err}");
    let f64_param = vec![("w64".to_string(), param(&[1.0], DType::F64))];
    let err = Adam::new(f64_param, AdamConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`w64` is f64"), "{err}");
    let twice = vec![
        ("w".to_string(), param(&[1.0], DType::F32)),
        ("w".to_string(), param(&[2.0], DType::F32)),
    ];
    let err = Sgd::new(twice, SgdConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`w` appears twice"), "{err}");
}

#[test]
fn the_learning_rate_can_be_changed_between_steps() {
    let p = param(&[1.0], DType::F64);
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], SgdConfig::default()).unwrap();
    opt.set_learning_rate(0.5).unwrap();
    assert_eq!(opt.learning_rate(), 0.5);
    opt.step(&grads_equal_to(&p, &[1.0])).unwrap();
    assert_eq!(vals(&p), vec![0.5]);
}

#[test]
fn exported_state_resumes_identically_and_bad_state_is_reported() {
    let make = || param(&P0, DType::F32);
    let (a, b) = (make(), make());
    let cfg = AdamConfig {
        lr: 0.05,
        ..AdamConfig::adamw()
    };
    let mut first = Adam::new(vec![("p".into(), a.clone())], cfg).unwrap();
    for g in &GRADS[..2] {
        first.step(&grads_equal_to(&a, g)).unwrap();
    }
    b.assign(&a).unwrap();
    let mut second = Adam::new(vec![("p".into(), b.clone())], AdamConfig::default()).unwrap();
    second.load_state(&first.state()).unwrap();
    assert_eq!(second.config(), first.config());
    for g in &GRADS[2..] {
        first.step(&grads_equal_to(&a, g)).unwrap();
        second.step(&grads_equal_to(&b, g)).unwrap();
    }
    assert_eq!(vals(&a), vals(&b));

    let mut bad = first.state();
    bad.tensors[0].1 = Tensor::zeros(&[5], DType::F32, Device::Cpu).unwrap();
    bad.tensors
        .push(("q.exp_avg".into(), a.zeros_like().unwrap()));
    let err = second.load_state(&bad).unwrap_err().to_string();
    assert!(err.contains("`p.exp_avg` has shape [5]"), "{err}");
    assert!(err.contains("unexpected tensor `q.exp_avg`"), "{err}");
    let mut sgd = Sgd::new(vec![("p".into(), b)], SgdConfig::default()).unwrap();
    let err = sgd.load_state(&first.state()).unwrap_err().to_string();
    assert!(err.contains("`adamw`"), "{err}");
}

#[test]
fn clipping_scales_to_the_max_norm_and_returns_the_norm_before() {
    let (a, b) = (param(&[0.0, 0.0], DType::F32), param(&[0.0], DType::F32));
    let loss = a.mul(&Tensor::from_slice(&[3.0f32, 4.0], &[2], Device::Cpu).unwrap());
    let loss = loss.unwrap().sum_all().unwrap();
    let loss = loss
        .add(&b.mul_scalar(12.0).unwrap().sum_all().unwrap())
        .unwrap();
    let mut grads = loss.backward().unwrap();
    let norm = clip_grad_norm(&mut grads, [&a, &b], 6.5).unwrap();
    assert!((norm - 13.0).abs() < 1e-12, "{norm}");
    let scale = 6.5 / (13.0 + 1e-6);
    assert_close(
        &vals(grads.get(&a).unwrap()),
        &[3.0 * scale, 4.0 * scale],
        1e-6,
    );
    assert_close(&vals(grads.get(&b).unwrap()), &[12.0 * scale], 1e-6);
    let after = clip_grad_norm(&mut grads, [&a, &b], f64::INFINITY).unwrap();
    assert!((after - 6.5).abs() < 1e-5, "{after}");
}

#[test]
fn clipping_leaves_gradients_within_the_norm_untouched() {
    let a = param(&[0.0, 0.0], DType::F32);
    let mut grads = grads_equal_to(&a, &[0.3, 0.4]);
    let before = grads.get(&a).unwrap().clone();
    let norm = clip_grad_norm(&mut grads, [&a], 1.0).unwrap();
    assert!((norm - 0.5).abs() < 1e-7);
    assert!(grads.get(&a).unwrap().shares_storage(&before));
    let err = clip_grad_norm(&mut grads, [&a], -1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_norm"), "{err}");
}

#[test]
fn non_finite_gradient_entries_are_replaced_with_zero() {
    let a = param(&[0.0; 5], DType::F32);
    let b = param(&[0.0; 2], DType::F32);
    let big = f32::MAX as f64;
    let mut grads = grads_equal_to(&a, &[1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, big]);
    let clean = b
        .mul_scalar(2.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    grads.insert(&b, clean.get(&b).unwrap().clone());
    let b_before = grads.get(&b).unwrap().clone();
    let replaced = zero_non_finite(&mut grads, [&a, &b]).unwrap();
    assert_eq!(replaced, 3);
    assert_eq!(vals(grads.get(&a).unwrap()), vec![1.0, 0.0, 0.0, 0.0, big]);
    assert!(grads.get(&b).unwrap().shares_storage(&b_before));
}

/// `clean_and_clip_grad_norm` gives the norm, count and gradients (as bits) of
/// `zero_non_finite` then `clip_grad_norm`: with NaN and ±∞ entries, with finite
/// entries whose squares overflow (1e20 in f32), in bf16, and clean, clipped or not.
#[test]
fn cleaning_and_clipping_in_one_call_matches_the_two_calls() {
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    let cases: [&[(&[f64], DType)]; 3] = [
        &[
            (&[1.0, nan, inf, -inf, 3.0], DType::F32),
            (&[0.5, -2.0], DType::F32),
            (&[4.0, nan, 1.0], DType::BF16),
            (&[2.0, -inf], DType::F32),
        ],
        &[(&[1e20, 1.0], DType::F32), (&[0.25, 0.5], DType::F32)],
        &[(&[0.3, 0.4], DType::F32), (&[1.5], DType::BF16)],
    ];
    let bits = |t: &Tensor| vals(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for case in cases {
        let params: Vec<Tensor> = case
            .iter()
            .map(|(v, d)| param(&vec![0.0; v.len()], *d))
            .collect();
        let fresh = || {
            let terms = params.iter().zip(case).map(|(p, (c, _))| {
                let c = Tensor::from_f64s(c, p.shape(), p.dtype(), Device::Cpu).unwrap();
                p.mul(&c)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            });
            let loss = terms.reduce(|a, b| a.add(&b).unwrap()).unwrap();
            loss.backward().unwrap()
        };
        for max_norm in [0.5, f64::INFINITY] {
            let (mut two, mut one) = (fresh(), fresh());
            let replaced = zero_non_finite(&mut two, &params).unwrap();
            let norm = clip_grad_norm(&mut two, &params, max_norm).unwrap();
            let (fused_norm, fused_replaced) =
                clean_and_clip_grad_norm(&mut one, &params, max_norm).unwrap();
            assert_eq!(fused_norm.to_bits(), norm.to_bits(), "{case:?} {max_norm}");
            assert_eq!(fused_replaced, replaced, "{case:?} {max_norm}");
            for p in &params {
                let (a, b) = (two.get(p).unwrap(), one.get(p).unwrap());
                assert_eq!(bits(a), bits(b), "{case:?} {max_norm}");
            }
        }
    }
}

#[test]
fn warmup_cosine_schedule_hits_its_key_values() {
    let s = LrSchedule::WarmupCosine {
        peak_lr: 1e-3,
        warmup_steps: 100,
        total_steps: 1100,
        min_lr: 1e-5,
    };
    s.validate().unwrap();
    assert_eq!(s.lr_at(0), 0.0);
    assert!((s.lr_at(50) - 5e-4).abs() < 1e-15);
    assert_eq!(s.lr_at(100), 1e-3);
    assert!((s.lr_at(600) - (1e-3 + 1e-5) / 2.0).abs() < 1e-15);
    let quarter = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos());
    assert!((s.lr_at(350) - quarter).abs() < 1e-15);
    assert_eq!(s.lr_at(1100), 1e-5);
    assert_eq!(s.lr_at(5000), 1e-5);
    assert_eq!(LrSchedule::Constant { lr: 2e-4 }.lr_at(123), 2e-4);
}

#[test]
fn schedules_are_configured_from_json_and_validated() {
    let s: LrSchedule = serde_json::from_str(
        r#"{"kind": "warmup_cosine", "peak_lr": 0.001, "warmup_steps": 10,
            "total_steps": 20, "min_lr": 0.0}"#,
    )
    .unwrap();
    assert_eq!(s.lr_at(10), 0.001);
    let back: LrSchedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let c: LrSchedule = serde_json::from_str(r#"{"kind": "constant", "lr": 0.5}"#).unwrap();
    assert_eq!(c, LrSchedule::Constant { lr: 0.5 });
    let typo = serde_json::from_str::<LrSchedule>(r#"{"kind": "constant", "rate": 0.5}"#);
    assert!(typo.is_err());
    let long_warmup = LrSchedule::WarmupCosine {
        peak_lr: 1.0,
        warmup_steps: 30,
        total_steps: 20,
        min_lr: 0.0,
    };
    let err = long_warmup.validate().unwrap_err().to_string();
    assert!(err.contains("warmup_steps"), "{err}");
    assert!(LrSchedule::Constant { lr: f64::NAN }.validate().is_err());
}

/// A one-parameter model for the EMA tests.
#[derive(Clone)]
struct Single(Tensor);

impl_module! { Single { 0 as "w" } }

#[test]
fn ema_warms_up_its_decay_and_averages_as_computed_by_hand() {
    let online = Single(param(&[1.0, -2.0], DType::F64));
    let mut ema = Ema::new(&online, 0.99).unwrap();
    // m: 0; 0 + 1·0.99·0.5 = 0.495; 0.495 + 0.505·0.495·0.5 = 0.6199875;
    // 0.6199875 + 0.3800125·0.3700125·0.5 = 0.690292...
    let m = [
        0.0,
        0.495,
        0.6199875,
        0.6199875 + 0.3800125 * 0.3700125 * 0.5,
    ];
    // θ after each online "step", and θ⁻ by hand: the first update copies θ.
    let thetas = [[2.0, 0.0], [4.0, 2.0], [0.0, 8.0]];
    let mut avg = [0.0; 2];
    for (k, theta) in thetas.iter().enumerate() {
        assert!(
            (ema.decay() - m[k]).abs() < 1e-15,
            "m_{k} = {}",
            ema.decay()
        );
        online
            .0
            .assign(&Tensor::from_slice(theta, &[2], Device::Cpu).unwrap())
            .unwrap();
        ema.update(&online).unwrap();
        for i in 0..2 {
            avg[i] = m[k] * avg[i] + (1.0 - m[k]) * theta[i];
        }
    }
    assert!((ema.decay() - m[3]).abs() < 1e-15);
    // By hand: [2, 0] → [0.495·2 + 0.505·4, 0.505·2] = [3.01, 1.01]
    // → [0.6199875·3.01 + 0.3800125·0, 0.6199875·1.01 + 0.3800125·8].
    let by_hand = [0.6199875 * 3.01, 0.6199875 * 1.01 + 0.3800125 * 8.0];
    assert_close(&avg, &by_hand, 1e-15);
    let shadow = ema.shadow().unwrap();
    assert_close(&vals(&shadow.0), &by_hand, 1e-14);
    assert!(!shadow.0.is_variable() && !shadow.0.shares_storage(&online.0));
    assert_eq!(ema.updates(), 3);
}

#[test]
fn ema_target_zero_is_the_online_model_and_one_a_frozen_copy() {
    let online = Single(param(&[1.0], DType::F64));
    let mut same = Ema::new(&online, 0.0).unwrap();
    let mut frozen = Ema::new(&online, 1.0).unwrap();
    for step in 2..5 {
        online
            .0
            .assign(&Tensor::from_slice(&[step as f64], &[1], Device::Cpu).unwrap())
            .unwrap();
        same.update(&online).unwrap();
        frozen.update(&online).unwrap();
    }
    assert!(same.shadow().is_none());
    assert!(std::ptr::eq(same.model(&online), &online));
    assert_eq!(same.decay(), 0.0);
    assert_eq!(vals(&frozen.model(&online).0), vec![1.0]);
    assert_eq!(frozen.decay(), 1.0);
    assert!(Ema::new(&online, 1.5).is_err());
    assert!(Ema::new(&online, f64::NAN).is_err());
}

#[test]
fn the_ema_copy_is_a_usable_model_without_gradients() {
    let mut pb = ParamBuilder::new(3);
    let online = Linear::new(&mut pb, 3, 2, LinearConfig::default()).unwrap();
    let mut ema = Ema::new(&online, 0.9).unwrap();
    ema.update(&online).unwrap();
    let x = Tensor::from_f64s(&[0.5, -1.0, 2.0], &[1, 3], DType::F32, Device::Cpu).unwrap();
    let theta_minus = ema.model(&online);
    let y = theta_minus.forward(&x).unwrap();
    assert_eq!(vals(&y), vals(&online.forward(&x).unwrap()));
    assert!(!y.requires_grad());
    assert!(theta_minus
        .named_params()
        .iter()
        .all(|(_, t)| !t.is_variable()));
}
