//! The training methods of `twinflow::flow::method` (docs/method.md §1–§3a) on a tiny f64
//! `MlpVelocity`: every loss term against a value recomputed here from the same draws
//! and model outputs in plain Rust, the analytic gradients docs/method.md states
//! (dL_base/dF = 2·clamp(Δ)/D, dL_rect/dF₁ = 2Δv/D, per sample; the batch mean adds 1/B),
//! N = 0 as flow matching, the finite `t = tt` branch, guidance with w = 0,
//! reproducibility and configuration errors; the time distribution `t ~ Beta(a, b)·s`
//! (moments, a Kolmogorov–Smirnov test, the scale, the default's exact uniform draw, and
//! every method drawing its `t` from it).

use twinflow::engine::{no_grad, DType, Device, Generator, Result, Tensor};
use twinflow::flow::method::{
    by_name, enhance_velocity, rcgm_target, rectification_delta, Batch, FlowMatching,
    FlowMatchingConfig, FlowMethod, LossFn, MethodConfig, Rcgm, RcgmConfig, Recipe, SplitConfig,
    StepContext, StepLoss, TimeDistribution, TwinFlow, TwinFlowConfig, Unconditional, METHOD_NAMES,
};
use twinflow::nn::{
    impl_module, ForwardRng, MlpVelocity, MlpVelocityConfig, Module, ParamBuilder, VelocityArgs,
    VelocityModel,
};

const B: usize = 4;
const D: usize = 3;
const F64: DType = DType::F64;
const CPU: Device = Device::Cpu;
const LABELS: [i64; B] = [0, 1, 2, 1];

/// A tiny MLP whose zero-initialised output layer is refilled with random values.
fn mlp(seed: u64) -> MlpVelocity {
    let mut pb = ParamBuilder::new(seed).with_dtype(F64);
    let cfg = MlpVelocityConfig {
        data_dim: D,
        width: 16,
        depth: 1,
        emb_dim: 4,
        num_classes: 3,
        label_dropout: 0.0,
        time_gated_skip: false,
        ..MlpVelocityConfig::default()
    };
    let mut m = MlpVelocity::new(&mut pb, cfg).unwrap();
    let mut g = Generator::new(seed + 1000);
    m.visit_params_mut(&mut |name, t| {
        if name.starts_with("out.") {
            t.assign(&g.normal(t.shape(), 0.0, 0.5, F64, CPU).unwrap())
                .unwrap();
        }
    });
    m
}

fn batch() -> Batch {
    let x = Generator::new(77).randn(&[B, D], F64, CPU).unwrap();
    Batch::new(x, Tensor::from_vec(LABELS.to_vec(), &[B], CPU).unwrap())
}

fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, CPU).unwrap()
}

/// `F(x, t, tt, c)` as plain numbers, without gradient (batch size from `t`).
fn fwd<M: VelocityModel>(m: &M, x: &[f64], t: &[f64], tt: &[f64], c: &[i64]) -> Vec<f64> {
    let n = t.len();
    no_grad(|| {
        let labels = Tensor::from_vec(c.to_vec(), &[n], CPU).unwrap();
        m.velocity(
            &tensor(x, &[n, D]),
            &tensor(t, &[n]),
            &tensor(tt, &[n]),
            &labels,
        )
        .unwrap()
        .to_vec_f64()
        .unwrap()
    })
}

/// `a + k·(b − a)` elementwise per sample, i.e. the path `(1 − k)·a + k·b`.
fn lerp(a: &[f64], b: &[f64], k: &[f64]) -> Vec<f64> {
    (0..a.len())
        .map(|i| a[i] + k[i / D] * (b[i] - a[i]))
        .collect()
}

fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
        "{what}: got {a}, expected {b}"
    );
}

fn close_all(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        close(*x, *y, &format!("{what}[{i}]"));
    }
}

/// The per-sample pieces of the RCGM target (docs/method.md §2, step 4), written out: returns
/// (target, Δ unclamped).
#[allow(clippy::too_many_arguments)]
fn rcgm_ref<M: VelocityModel>(
    ema: &M,
    order: usize,
    delta: f64,
    xt: &[f64],
    t: &[f64],
    tt: &[f64],
    v: &[f64],
    f: &[f64],
    c: &[i64],
) -> (Vec<f64>, Vec<f64>) {
    let n_rows = t.len();
    if order == 0 {
        return (v.to_vec(), sub(f, v));
    }
    let tm: Vec<f64> = (0..n_rows).map(|i| (t[i] - delta).max(tt[i])).collect();
    let mut x: Vec<f64> = (0..n_rows * D).map(|i| xt[i] - delta * v[i]).collect();
    let mut p = vec![0.0; n_rows * D];
    let n = order as f64;
    for k in 0..order {
        let grid = |k: f64| -> Vec<f64> {
            (0..n_rows)
                .map(|i| tm[i] * (1.0 - k / n) + tt[i] * (k / n))
                .collect()
        };
        let (s, sn) = (grid(k as f64), grid(k as f64 + 1.0));
        let fk = fwd(ema, &x, &s, &sn, c);
        for i in 0..n_rows * D {
            let r = i / D;
            let xh = x[i] - s[r].abs() * fk[i];
            let zh = x[i] + (1.0 - s[r].abs()) * fk[i];
            x[i] = sn[r] * zh + (1.0 - sn[r]) * xh;
            p[i] += fk[i] * (s[r] - sn[r]);
        }
    }
    let mut target = vec![0.0; n_rows * D];
    let mut delta_raw = vec![0.0; n_rows * D];
    for i in 0..n_rows * D {
        let r = i / D;
        let (a, bp) = if t[r] < tt[r] + delta {
            // The sub-steps have zero length up to rounding (t − δ vs tt), P ≈ 0, and
            // b·P is taken as 0 (also at t = tt, where 1/(t − tt) is infinite).
            assert!(p[i].abs() < 1e-12);
            (1.0, 0.0)
        } else {
            ((t[r] - tt[r]) / delta, p[i] / delta)
        };
        delta_raw[i] = a * f[i] - bp - v[i];
        target[i] = f[i] - delta_raw[i].clamp(-1.0, 1.0);
    }
    (target, delta_raw)
}

/// The draws of RCGM / TwinFlow in their documented order.
struct Draws {
    z: Vec<f64>,
    t: Vec<f64>,
    tt: Vec<f64>,
    uncond: Option<Vec<i64>>,
    z2: Vec<f64>,
    t2: Vec<f64>,
}

fn draws(seed: u64, uncond: Option<Unconditional>) -> Draws {
    draws_with(seed, uncond, None)
}

/// `t` drawn by `time` when given, else by the test itself as `U(0, 1)` (the draw every
/// method made before the time distribution existed).
fn draw_times(g: &mut Generator, n: usize, time: Option<&TimeDistribution>) -> Vec<f64> {
    match time {
        Some(time) => time.sample(g, n, F64, CPU),
        None => g.uniform(&[n], 0.0, 1.0, F64, CPU),
    }
    .unwrap()
    .to_vec_f64()
    .unwrap()
}

/// A Beta time distribution with a < 1 (the boosted Gamma) and a scale below 1.
const BETA_TIME: TimeDistribution = TimeDistribution {
    beta_a: 0.6,
    beta_b: 2.0,
    scale: 0.8,
};

fn draws_with(seed: u64, uncond: Option<Unconditional>, time: Option<&TimeDistribution>) -> Draws {
    let mut g = Generator::new(seed);
    let f = |g: &mut Generator, shape: &[usize], normal: bool| {
        let t = if normal {
            g.randn(shape, F64, CPU)
        } else {
            g.uniform(shape, 0.0, 1.0, F64, CPU)
        };
        t.unwrap().to_vec_f64().unwrap()
    };
    let z = f(&mut g, &[B, D], true);
    let t = draw_times(&mut g, B, time);
    let u = f(&mut g, &[B], false);
    let tt = (0..B).map(|i| t[i] - t[i] * u[i]).collect();
    let uncond = uncond.map(|u| uncond_labels(&mut g, u, &LABELS));
    let z2 = f(&mut g, &[B, D], true);
    let t2 = f(&mut g, &[B], false);
    Draws {
        z,
        t,
        tt,
        uncond,
        z2,
        t2,
    }
}

/// The unconditional labels of guidance for `labels`, drawn from `g` as the methods
/// draw them (a permutation of the labels for `Shuffle`).
fn uncond_labels(g: &mut Generator, uncond: Unconditional, labels: &[i64]) -> Vec<i64> {
    match uncond {
        Unconditional::Shuffle => g
            .permutation(labels.len())
            .iter()
            .map(|&j| labels[j as usize])
            .collect(),
        Unconditional::Null(k) => vec![k; labels.len()],
        Unconditional::NullClass => unreachable!("the trainer resolves it"),
    }
}

fn run<M: VelocityModel>(method: &dyn FlowMethod<M>, online: &M, ema: &M, seed: u64) -> StepLoss {
    let mut rng = Generator::new(seed);
    let mut ctx = StepContext::new(online, ema, &mut rng);
    method.loss(&mut ctx, &batch()).unwrap()
}

fn x_vec() -> Vec<f64> {
    batch().x.to_vec_f64().unwrap()
}

/// The enhanced velocity by hand.
fn guided(ema: &MlpVelocity, d: &Draws, xt: &[f64], v: &[f64], w: f64) -> Vec<f64> {
    match &d.uncond {
        None => v.to_vec(),
        Some(u) => {
            let cond = fwd(ema, xt, &d.t, &d.t, &LABELS);
            let free = fwd(ema, xt, &d.t, &d.t, u);
            (0..B * D).map(|i| v[i] + w * (cond[i] - free[i])).collect()
        }
    }
}

#[test]
fn flow_matching_loss_matches_hand_computation() {
    check_flow_matching(None);
}

fn check_flow_matching(time: Option<TimeDistribution>) {
    let m = mlp(1);
    let mut method = FlowMatching::new(FlowMatchingConfig::default()).unwrap();
    if let Some(time) = time {
        method = method.with_time(time).unwrap();
    }
    let out = run(&method, &m, &m, 5);
    let mut g = Generator::new(5);
    let z = g.randn(&[B, D], F64, CPU).unwrap().to_vec_f64().unwrap();
    let t = draw_times(&mut g, B, time.as_ref());
    let x = x_vec();
    let xt = lerp(&x, &z, &t);
    let expected = mse(&fwd(&m, &xt, &t, &t, &LABELS), &sub(&z, &x));
    close(out.value().unwrap(), expected, "fm loss");
    close(out.term("fm").unwrap(), expected, "fm term");
}

#[test]
fn rcgm_loss_matches_hand_computation_with_guidance_and_ema() {
    check_rcgm(None);
}

fn check_rcgm(time: Option<TimeDistribution>) {
    let (online, ema) = (mlp(1), mlp(2));
    let x = x_vec();
    for (order, uncond, w) in [
        (2, Unconditional::Shuffle, 0.5),
        (3, Unconditional::Null(3), 0.7),
        (1, Unconditional::Shuffle, 0.0),
    ] {
        let cfg = RcgmConfig {
            order,
            guidance: w,
            uncond,
            ..RcgmConfig::default()
        };
        let mut method = Rcgm::new(cfg).unwrap();
        if let Some(time) = time {
            method = method.with_time(time).unwrap();
        }
        let out = run(&method, &online, &ema, 9);
        let d = draws_with(9, (w != 0.0).then_some(uncond), time.as_ref());
        let xt = lerp(&x, &d.z, &d.t);
        let v = guided(&ema, &d, &xt, &sub(&d.z, &x), w);
        let f = fwd(&online, &xt, &d.t, &d.tt, &LABELS);
        let (target, _) = rcgm_ref(&ema, order, 0.01, &xt, &d.t, &d.tt, &v, &f, &LABELS);
        let expected = mse(&f, &target);
        close(out.value().unwrap(), expected, &format!("rcgm N={order}"));
        close(out.term("base").unwrap(), expected, "base term");
    }
}

#[test]
fn twinflow_terms_match_hand_computation() {
    check_twinflow_full(None);
}

fn check_twinflow_full(time: Option<TimeDistribution>) {
    let (online, ema) = (mlp(1), mlp(2));
    let cfg = TwinFlowConfig::default();
    let mut method = TwinFlow::new(cfg).unwrap();
    if let Some(time) = time {
        method = method.with_time(time).unwrap();
    }
    let out = run(&method, &online, &ema, 11);
    let d = draws_with(11, Some(Unconditional::Shuffle), time.as_ref());
    let x = x_vec();
    let xt = lerp(&x, &d.z, &d.t);
    let v = sub(&d.z, &x);
    // L_base with guidance (θ⁻ = ema).
    let vg = guided(&ema, &d, &xt, &v, 0.5);
    let f = fwd(&online, &xt, &d.t, &d.tt, &LABELS);
    let base = mse(
        &f,
        &rcgm_ref(&ema, 2, 0.01, &xt, &d.t, &d.tt, &vg, &f, &LABELS).0,
    );
    // L_real with the guided v, as the reference's tutorial.
    let real = mse(&fwd(&online, &xt, &d.t, &d.t, &LABELS), &vg);
    // One-step fakes and the fake trajectory at −t.
    let (ones, zeros) = ([1.0; B], [0.0; B]);
    let f1 = fwd(&online, &d.z, &ones, &zeros, &LABELS);
    let x_fake = sub(&d.z, &f1);
    let xf_t = lerp(&x_fake, &d.z, &d.t);
    let neg_t: Vec<f64> = d.t.iter().map(|t| -t).collect();
    let adv = mse(
        &fwd(&online, &xf_t, &neg_t, &neg_t, &LABELS),
        &sub(&d.z, &x_fake),
    );
    // Rectification at fresh (z', t').
    let y = lerp(&x_fake, &d.z2, &d.t2);
    let neg_t2: Vec<f64> = d.t2.iter().map(|t| -t).collect();
    let dv = sub(
        &fwd(&online, &y, &neg_t2, &neg_t2, &LABELS),
        &fwd(&online, &y, &d.t2, &d.t2, &LABELS),
    );
    let rect = mse(&f1, &sub(&f1, &dv));
    // Consistency of the one-step map: RCGM target at (z, 1, 0) from the guided v, θ⁻.
    let cons = mse(
        &f1,
        &rcgm_ref(&ema, 2, 0.01, &d.z, &ones, &zeros, &vg, &f1, &LABELS).0,
    );
    let expected = [
        ("base", base),
        ("real", real),
        ("adv", adv),
        ("rect", rect),
        ("cons", cons),
    ];
    for (name, value) in expected {
        close(out.term(name).unwrap(), value, name);
    }
    let total: f64 = expected.iter().map(|(_, v)| v).sum();
    close(out.value().unwrap(), total, "total");
    assert!(rect > 0.0 && adv > 0.0 && cons > 0.0);
}

/// `F = f + t·a`: a variable `f` `[B, D]` (so dL/dF = dL/df) plus a fixed dependence on
/// the signed time, so that fake and real velocities differ.
struct Fixed {
    f: Tensor,
    a: Tensor,
    rng: ForwardRng,
}

impl Fixed {
    fn new(seed: u64) -> Self {
        let mut g = Generator::new(seed);
        Fixed {
            f: g.normal(&[B, D], 0.0, 2.0, F64, CPU)
                .unwrap()
                .into_variable()
                .unwrap(),
            a: g.randn(&[1, D], F64, CPU).unwrap(),
            rng: ForwardRng::new(0),
        }
    }

    fn value(&self, t: &[f64]) -> Vec<f64> {
        let (f, a) = (self.f.to_vec_f64().unwrap(), self.a.to_vec_f64().unwrap());
        (0..B * D).map(|i| f[i] + t[i / D] * a[i % D]).collect()
    }
}

impl_module! { Fixed { f } }

impl VelocityModel for Fixed {
    fn velocity(&self, x: &Tensor, t: &Tensor, _tt: &Tensor, _c: &Tensor) -> Result<Tensor> {
        assert_eq!(x.shape(), [B, D]);
        self.f.add(&t.unsqueeze(1)?.mul(&self.a)?)
    }
    /// One forward per input: `f` holds one row per sample, so a stacked batch has no
    /// meaning here (and no forward draws anything).
    fn velocity_stacked(&self, inputs: &[VelocityArgs]) -> Result<Vec<Tensor>> {
        inputs
            .iter()
            .map(|&(x, t, tt, c)| self.velocity(x, t, tt, c))
            .collect()
    }
    fn forward_rng(&self) -> &ForwardRng {
        &self.rng
    }
}

#[test]
fn base_loss_gradient_is_two_clamped_delta_over_d() {
    let m = Fixed::new(3);
    let cfg = RcgmConfig {
        guidance: 0.0,
        ..RcgmConfig::default()
    };
    let out = run(&Rcgm::new(cfg).unwrap(), &m, &m, 21);
    let grad = out
        .loss
        .backward()
        .unwrap()
        .get(&m.f)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let d = draws(21, None);
    let x = x_vec();
    let xt = lerp(&x, &d.z, &d.t);
    let f = m.value(&d.t);
    let (_, delta) = rcgm_ref(&m, 2, 0.01, &xt, &d.t, &d.tt, &sub(&d.z, &x), &f, &LABELS);
    let expected: Vec<f64> = delta
        .iter()
        .map(|dl| 2.0 * dl.clamp(-1.0, 1.0) / D as f64 / B as f64)
        .collect();
    close_all(&grad, &expected, "dL_base/dF");
    // The draws exercise both the clamped and the linear part.
    assert!(delta.iter().any(|d| d.abs() > 1.0) && delta.iter().any(|d| d.abs() < 1.0));
}

#[test]
fn rectification_gradient_is_two_delta_v_over_d() {
    let m = Fixed::new(4);
    let mut g = Generator::new(8);
    let z = g.randn(&[B, D], F64, CPU).unwrap();
    let z2 = g.randn(&[B, D], F64, CPU).unwrap();
    let t2 = g.uniform(&[B], 0.0, 1.0, F64, CPU).unwrap();
    let labels = batch().labels;
    let (ones, zeros) = (
        Tensor::ones(&[B], F64, CPU).unwrap(),
        Tensor::zeros(&[B], F64, CPU).unwrap(),
    );
    let f1 = m.velocity(&z, &ones, &zeros, &labels).unwrap();
    let x_fake = z.sub(&f1).unwrap();
    let dv = rectification_delta(&m, &x_fake, &z2, &t2, &labels).unwrap();
    assert!(!dv.requires_grad());
    // Fake minus real velocity of F = f + t·a at (−t', t') is −2t'·a.
    let (t2v, a) = (t2.to_vec_f64().unwrap(), m.a.to_vec_f64().unwrap());
    let dv_ref: Vec<f64> = (0..B * D).map(|i| -2.0 * t2v[i / D] * a[i % D]).collect();
    close_all(&dv.to_vec_f64().unwrap(), &dv_ref, "Δv");
    let l_rect = LossFn::L2
        .mean(&f1, &f1.detach().sub(&dv).unwrap())
        .unwrap();
    let grad = l_rect
        .backward()
        .unwrap()
        .get(&m.f)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let expected: Vec<f64> = dv_ref
        .iter()
        .map(|d| 2.0 * d / D as f64 / B as f64)
        .collect();
    close_all(&grad, &expected, "dL_rect/dF1");
}

#[test]
fn twinflow_gradient_is_the_sum_of_the_stated_term_gradients() {
    let m = Fixed::new(5);
    let cfg = TwinFlowConfig {
        base: RcgmConfig {
            guidance: 0.0,
            ..RcgmConfig::default()
        },
        ..TwinFlowConfig::default()
    };
    let out = run(&TwinFlow::new(cfg).unwrap(), &m, &m, 31);
    let grad = out
        .loss
        .backward()
        .unwrap()
        .get(&m.f)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let d = draws(31, None);
    let x = x_vec();
    let xt = lerp(&x, &d.z, &d.t);
    let v = sub(&d.z, &x);
    let (ones, zeros) = ([1.0; B], [0.0; B]);
    let (_, d_base) = rcgm_ref(&m, 2, 0.01, &xt, &d.t, &d.tt, &v, &m.value(&d.t), &LABELS);
    let f1 = m.value(&ones);
    let x_fake = sub(&d.z, &f1);
    let neg_t: Vec<f64> = d.t.iter().map(|t| -t).collect();
    let (_, d_cons) = rcgm_ref(&m, 2, 0.01, &d.z, &ones, &zeros, &v, &f1, &LABELS);
    let (f_real, f_adv) = (m.value(&d.t), m.value(&neg_t));
    let vf = sub(&d.z, &x_fake);
    let a = m.a.to_vec_f64().unwrap();
    let k = 2.0 / (B * D) as f64;
    let expected: Vec<f64> = (0..B * D)
        .map(|i| {
            let dv = -2.0 * d.t2[i / D] * a[i % D];
            k * (d_base[i].clamp(-1.0, 1.0)
                + (f_real[i] - v[i])
                + (f_adv[i] - vf[i])
                + dv
                + d_cons[i].clamp(-1.0, 1.0))
        })
        .collect();
    close_all(&grad, &expected, "dL/df");
}

#[test]
fn order_zero_is_flow_matching() {
    // With a model that ignores tt, RCGM N = 0 and flow matching see the same z and t
    // (drawn first, in the same order) and must give the same loss.
    let m = Fixed::new(6);
    let rcgm = Rcgm::new(RcgmConfig {
        order: 0,
        guidance: 0.0,
        ..RcgmConfig::default()
    })
    .unwrap();
    let fm = FlowMatching::new(FlowMatchingConfig::default()).unwrap();
    close(
        run(&rcgm, &m, &m, 41).value().unwrap(),
        run(&fm, &m, &m, 41).value().unwrap(),
        "N = 0 vs flow matching",
    );
    // On the MLP (which sees tt) it is mse(F(x_t, t, tt), z − x).
    let mlp = mlp(1);
    let out = run(&rcgm, &mlp, &mlp, 42);
    let d = draws(42, None);
    let x = x_vec();
    let xt = lerp(&x, &d.z, &d.t);
    let expected = mse(&fwd(&mlp, &xt, &d.t, &d.tt, &LABELS), &sub(&d.z, &x));
    close(out.value().unwrap(), expected, "N = 0 on the MLP");
}

#[test]
fn equal_times_give_the_finite_flow_matching_target() {
    let m = mlp(1);
    let mut g = Generator::new(50);
    let xt = g.randn(&[B, D], F64, CPU).unwrap();
    let v = g.randn(&[B, D], F64, CPU).unwrap();
    let f = g.normal(&[B, D], 0.0, 2.0, F64, CPU).unwrap();
    // t = tt exactly (the literal formula's ∞·0), t − tt < δ, and t = tt = 0.
    let t = tensor(&[0.3, 0.7, 0.5, 0.0], &[B]);
    let tt = tensor(&[0.3, 0.7, 0.495, 0.0], &[B]);
    let labels = batch().labels;
    let state = m.forward_rng().state();
    let target = rcgm_target(&m, state, 2, 0.01, &xt, &t, &tt, &v, &f, &labels)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    assert!(target.iter().all(|x| x.is_finite()), "{target:?}");
    let (fv, vv) = (f.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());
    let expected: Vec<f64> = (0..B * D)
        .map(|i| fv[i] - (fv[i] - vv[i]).clamp(-1.0, 1.0))
        .collect();
    close_all(&target, &expected, "t < tt + δ target");
    // Where the clamp is inactive this is exactly v.
}

#[test]
fn guidance_with_zero_weight_leaves_the_target_unchanged() {
    let m = mlp(1);
    let mut g = Generator::new(60);
    let xt = g.randn(&[B, D], F64, CPU).unwrap();
    let v = g.randn(&[B, D], F64, CPU).unwrap();
    let t = g.uniform(&[B], 0.0, 1.0, F64, CPU).unwrap();
    let labels = batch().labels;
    let uncond = Tensor::from_vec(vec![3i64; B], &[B], CPU).unwrap();
    let state = m.forward_rng().state();
    let same = enhance_velocity(&m, state, &xt, &t, &v, &labels, &uncond, 0.0).unwrap();
    assert_eq!(same.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());
    let moved = enhance_velocity(&m, state, &xt, &t, &v, &labels, &uncond, 1.0).unwrap();
    assert_ne!(moved.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());
    // The method with w = 0 equals the hand computation without guidance.
    let cfg = RcgmConfig {
        guidance: 0.0,
        uncond: Unconditional::Null(3),
        ..RcgmConfig::default()
    };
    let out = run(&Rcgm::new(cfg).unwrap(), &m, &m, 61);
    let d = draws(61, None);
    let x = x_vec();
    let xt = lerp(&x, &d.z, &d.t);
    let f = fwd(&m, &xt, &d.t, &d.tt, &LABELS);
    let (target, _) = rcgm_ref(&m, 2, 0.01, &xt, &d.t, &d.tt, &sub(&d.z, &x), &f, &LABELS);
    close(out.value().unwrap(), mse(&f, &target), "w = 0");
}

#[test]
fn a_fixed_seed_reproduces_the_step() {
    let (online, ema) = (mlp(1), mlp(2));
    let method = TwinFlow::new(TwinFlowConfig::default()).unwrap();
    let a = run(&method, &online, &ema, 70);
    let b = run(&method, &online, &ema, 70);
    let c = run(&method, &online, &ema, 71);
    assert_eq!(a.terms, b.terms);
    assert_eq!(a.value().unwrap(), b.value().unwrap());
    assert_ne!(a.terms, c.terms);
    let names: Vec<&str> = a.terms.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["base", "real", "adv", "rect", "cons"]);
}

#[test]
fn barron_loss_matches_its_formula() {
    let mut g = Generator::new(80);
    let p = g.randn(&[B, D], F64, CPU).unwrap();
    let q = g.randn(&[B, D], F64, CPU).unwrap();
    let (alpha, c) = (1.0, 1e-3);
    let got = LossFn::barron_default()
        .per_sample(&p, &q)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let (pv, qv) = (p.to_vec_f64().unwrap(), q.to_vec_f64().unwrap());
    for r in 0..B {
        let m = mse(&pv[r * D..(r + 1) * D], &qv[r * D..(r + 1) * D]);
        // The reference divides by c² + 10⁻⁸, not c².
        let w = (m / ((c * c + 1e-8) * f64::abs(alpha - 2.0)) + 1.0).powf((alpha - 2.0) / 2.0);
        close(got[r], m * w / c, "barron");
    }
    let l2 = LossFn::L2.per_sample(&p, &q).unwrap().to_vec_f64().unwrap();
    close(l2[0], mse(&pv[..D], &qv[..D]), "l2");
}

#[test]
fn methods_by_name_and_config_errors() {
    for &name in METHOD_NAMES {
        let method = by_name::<MlpVelocity>(name).unwrap();
        assert_eq!(method.name(), name);
        let m = mlp(1);
        let out = run(method.as_ref(), &m, &m, 90);
        assert!(out.value().unwrap().is_finite());
    }
    let err = by_name::<MlpVelocity>("gan").err().unwrap().to_string();
    assert!(err.contains("flow_matching, rcgm, twinflow"), "{err}");
    assert!(MethodConfig::default_of("gan").is_none());
}

#[test]
fn the_method_table_is_tagged_by_the_methods_name() {
    for &name in METHOD_NAMES {
        let cfg = MethodConfig::default_of(name).unwrap();
        assert_eq!(cfg.name(), name);
        // The serde tag, the settings' NAME and the table key are one name.
        let json = serde_json::to_value(cfg).unwrap();
        assert_eq!(json, serde_json::json!({ "name": name }));
        let with_table = serde_json::json!({ "name": name, name: {} });
        let parsed: MethodConfig = serde_json::from_value(with_table).unwrap();
        assert_eq!(parsed.name(), name);
        let method = parsed.build::<MlpVelocity>(TimeDistribution::default(), 2);
        assert_eq!(method.unwrap().name(), name);
    }
    // As checkpoints of earlier versions store it.
    let saved = r#"{"name": "twinflow", "twinflow": {"recipe": "split", "base": {"order": 1}}}"#;
    let cfg: MethodConfig = serde_json::from_str(saved).unwrap();
    let mut want = TwinFlowConfig {
        recipe: Recipe::Split,
        ..TwinFlowConfig::default()
    };
    want.base.order = 1;
    assert_eq!(cfg, MethodConfig::from(want));
    assert!(cfg.few_step_presets());
    assert!(!MethodConfig::from(RcgmConfig::default()).few_step_presets());
    // Another method's table, an unknown name, bad settings.
    let other = r#"{"name": "rcgm", "twinflow": {}}"#;
    let err = serde_json::from_str::<MethodConfig>(other).unwrap_err();
    assert!(err.to_string().contains("twinflow"), "{err}");
    assert!(serde_json::from_str::<MethodConfig>(r#"{"name": "gan"}"#).is_err());
    let bad = MethodConfig::from(RcgmConfig {
        delta: 2.0,
        ..RcgmConfig::default()
    });
    assert!(bad.validate().unwrap_err().to_string().contains("delta"));
    // The null class resolves to the model's null label when the method is built.
    let null_class = MethodConfig::from(RcgmConfig {
        uncond: Unconditional::NullClass,
        ..RcgmConfig::default()
    });
    let m = mlp(1);
    let method = null_class.build::<MlpVelocity>(TimeDistribution::default(), m.null_label());
    let out = run(method.unwrap().as_ref(), &m, &m, 91);
    assert!(out.value().unwrap().is_finite());
    let cfg: TwinFlowConfig =
        serde_json::from_str(r#"{"base": {"order": 1, "uncond": {"null": 10}}}"#).unwrap();
    assert_eq!(cfg.base.order, 1);
    assert_eq!(cfg.base.uncond, Unconditional::Null(10));
    assert!(serde_json::from_str::<RcgmConfig>(r#"{"ordr": 1}"#).is_err());
    assert!(serde_json::from_str::<FlowMatchingConfig>(r#"{"loss": "l1"}"#).is_err());
    let barron: FlowMatchingConfig =
        serde_json::from_str(r#"{"loss": {"barron": {"alpha": 1.0, "c": 0.001}}}"#).unwrap();
    assert_eq!(barron.loss, LossFn::barron_default());
    let bad = RcgmConfig {
        delta: 0.0,
        ..RcgmConfig::default()
    };
    assert!(Rcgm::new(bad).is_err());
}

const SPLIT_LABELS: [i64; 8] = [0, 1, 2, 1, 0, 2, 1, 0];

fn split_method(split: SplitConfig, order: usize) -> TwinFlow {
    TwinFlow::new(TwinFlowConfig {
        base: RcgmConfig {
            order,
            ..RcgmConfig::default()
        },
        recipe: Recipe::Split,
        split,
        ..TwinFlowConfig::default()
    })
    .unwrap()
}

fn split_run_ctx(
    method: &TwinFlow,
    online: &MlpVelocity,
    ema: &MlpVelocity,
    seed: u64,
    ema_frozen: bool,
) -> StepLoss {
    let x = Generator::new(77).randn(&[8, D], F64, CPU).unwrap();
    let labels = Tensor::from_vec(SPLIT_LABELS.to_vec(), &[8], CPU).unwrap();
    let mut rng = Generator::new(seed);
    let mut ctx = StepContext::new(online, ema, &mut rng).with_frozen_ema(ema_frozen);
    FlowMethod::<MlpVelocity>::loss(method, &mut ctx, &Batch::new(x, labels)).unwrap()
}

/// The per-sample loss ℓ of one sample by hand: mse, or Barron's reweighting of it with
/// the reference's `c² + 10⁻⁸`.
fn ell(loss: LossFn, a: &[f64], b: &[f64]) -> f64 {
    let m = mse(a, b);
    match loss {
        LossFn::L2 => m,
        LossFn::Barron { alpha, c } => {
            let w = (m / ((c * c + 1e-8) * (alpha - 2.0).abs()) + 1.0).powf((alpha - 2.0) / 2.0);
            m * w / c
        }
    }
}

/// The `split` terms `(base, rect)` by hand for a batch of 8, following the draw order
/// documented on `TwinFlow`; `consistency` builds the RCGM target.
fn split_by_hand(
    cfg: &TwinFlowConfig,
    time: Option<&TimeDistribution>,
    online: &MlpVelocity,
    ema: &MlpVelocity,
    consistency: &MlpVelocity,
    seed: u64,
) -> (f64, f64) {
    let n = 8;
    let split = cfg.split_in_force();
    let [ne, nm, na, nv] = split.group_sizes(n);
    let nn = ne + nm + na;
    let r = split.consistency_ratio;
    let base = cfg.base;
    let rect_on = cfg.adversarial && cfg.rectify && ne > 0 && split.ratios[3] > 0.0 && r == 1.0;
    let x = Generator::new(77)
        .randn(&[n, D], F64, CPU)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let mut g = Generator::new(seed);
    let draw = |g: &mut Generator, shape: &[usize], normal: bool| {
        let t = if normal {
            g.randn(shape, F64, CPU)
        } else {
            g.uniform(shape, 0.0, 1.0, F64, CPU)
        };
        t.unwrap().to_vec_f64().unwrap()
    };
    let z = draw(&mut g, &[n, D], true);
    let t0 = draw_times(&mut g, n, time);
    let u = draw(&mut g, &[n], false);
    let z_adv = (nv > 0).then(|| draw(&mut g, &[nv, D], true));
    let c_na = &SPLIT_LABELS[..nn];
    let c_u = (nn > 0 && base.guidance != 0.0).then(|| uncond_labels(&mut g, base.uncond, c_na));
    let rect_draws = rect_on.then(|| (draw(&mut g, &[ne, D], true), draw(&mut g, &[ne], false)));

    let (mut t, mut tt) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (ti, tti) = if i < ne {
            (1.0, 0.0)
        } else if i < ne + nm {
            (t0[i], t0[i] - u[i] * t0[i] * r.min(0.05))
        } else if i < nn {
            (t0[i], t0[i] - u[i] * t0[i] * r)
        } else {
            (-t0[i], -t0[i])
        };
        t.push(ti);
        tt.push(tti);
    }
    let mut x_data = x[..nn * D].to_vec();
    if let Some(z_adv) = &z_adv {
        let fake = fwd(
            online,
            z_adv,
            &vec![1.0; nv],
            &vec![0.0; nv],
            &SPLIT_LABELS[nn..],
        );
        x_data.extend(sub(z_adv, &fake));
    }
    let t_abs: Vec<f64> = t.iter().map(|v| v.abs()).collect();
    let x_t = lerp(&x_data, &z, &t_abs);
    let v = sub(&z, &x_data);
    let f = fwd(online, &x_t, &t, &tt, &SPLIT_LABELS);

    let m = nn * D;
    let mut v_na = v[..m].to_vec();
    if let Some(c_u) = &c_u {
        let cond = fwd(ema, &x_t[..m], &t[..nn], &t[..nn], c_na);
        let free = fwd(ema, &x_t[..m], &t[..nn], &t[..nn], c_u);
        let [lo, hi] = split.enhanced_range;
        for i in 0..m {
            let ti = t[i / D];
            if lo < ti && ti < hi {
                v_na[i] += base.guidance * (cond[i] - free[i]);
            }
        }
    }
    let jumps = ne + na > 0 && r != 0.0;
    let target_na = if base.order > 0 && jumps && nn > 0 {
        let (xt_na, t_na, tt_na) = (&x_t[..m], &t[..nn], &tt[..nn]);
        rcgm_ref(
            consistency,
            base.order,
            base.delta,
            xt_na,
            t_na,
            tt_na,
            &v_na,
            &f[..m],
            c_na,
        )
        .0
    } else {
        v_na
    };
    let target: Vec<f64> = target_na.iter().chain(&v[m..]).copied().collect();
    let (mut sum, mut count) = (0.0, 0);
    for i in 0..n {
        let (is_mul, is_adv) = (i >= ne && i < ne + nm, i >= nn);
        if base.order == 0 && !is_mul && !is_adv {
            continue;
        }
        let w = if is_adv || !split.time_weighting {
            1.0
        } else {
            ((1.0 - (t[i].abs() - tt[i].abs())) * std::f64::consts::PI / 2.5).tan() + 1.0
        };
        sum += w * ell(
            base.loss.unwrap_or(LossFn::barron_default()),
            &f[i * D..(i + 1) * D],
            &target[i * D..(i + 1) * D],
        );
        count += 1;
    }
    let main = if count == 0 { 0.0 } else { sum / count as f64 };
    // Rectification on e2e at sg(x̂) = x_t − F (|t| = 1), Δv clamped, λ·mean ℓ(F, F − Δv).
    let rect = match rect_draws {
        None => 0.0,
        Some((z_r, t_r)) => {
            let x_hat = sub(&x_t[..ne * D], &f[..ne * D]);
            let y = lerp(&x_hat, &z_r, &t_r);
            let neg: Vec<f64> = t_r.iter().map(|t| -t).collect();
            let c_e = &SPLIT_LABELS[..ne];
            let dv: Vec<f64> = sub(
                &fwd(online, &y, &neg, &neg, c_e),
                &fwd(online, &y, &t_r, &t_r, c_e),
            )
            .iter()
            .map(|d| d.clamp(-1.0, 1.0))
            .collect();
            let fe = &f[..ne * D];
            let shifted = sub(fe, &dv);
            let per: f64 = (0..ne)
                .map(|i| {
                    let row = i * D..(i + 1) * D;
                    ell(
                        base.loss.unwrap_or(LossFn::barron_default()),
                        &fe[row.clone()],
                        &shifted[row],
                    )
                })
                .sum();
            split.rect_weight * per / ne as f64
        }
    };
    (main, rect)
}

/// Runs the method on the split batch and checks both terms and the total against
/// [`split_by_hand`]; returns `(base, rect)`.
fn check_split_cfg(
    cfg: TwinFlowConfig,
    time: Option<&TimeDistribution>,
    seed: u64,
    ema_frozen: bool,
) -> (f64, f64) {
    let (online, ema) = (mlp(1), mlp(2));
    let mut method = TwinFlow::new(cfg).unwrap();
    if let Some(time) = time {
        method = method.with_time(*time).unwrap();
    }
    let out = split_run_ctx(&method, &online, &ema, seed, ema_frozen);
    let consistency = if ema_frozen { &online } else { &ema };
    let (main, rect) = split_by_hand(&cfg, time, &online, &ema, consistency, seed);
    let what = format!("{cfg:?}");
    close(out.term("base").unwrap(), main, &format!("base of {what}"));
    close(out.term("rect").unwrap(), rect, &format!("rect of {what}"));
    close(
        out.value().unwrap(),
        main + rect,
        &format!("total of {what}"),
    );
    (main, rect)
}

fn split_cfg() -> TwinFlowConfig {
    TwinFlowConfig {
        recipe: Recipe::Split,
        ..TwinFlowConfig::default()
    }
}

#[test]
fn split_recipe_matches_hand_computation() {
    check_split(None);
}

fn check_split(time: Option<TimeDistribution>) {
    assert_eq!(SplitConfig::default().group_sizes(8), [2, 2, 2, 2]);
    let (main, rect) = check_split_cfg(split_cfg(), time.as_ref(), 13, false);
    assert!(main > 0.0 && rect > 0.0);
}

#[test]
fn split_recipe_with_the_l2_loss_matches_hand_computation() {
    // The split recipe defaults to Barron (the reference's production loss); l2 on request.
    let mut cfg = split_cfg();
    cfg.base.loss = Some(LossFn::L2);
    let (main, rect) = check_split_cfg(cfg, None, 14, false);
    assert!(main > 0.0 && rect > 0.0);
}

#[test]
fn each_switch_removes_exactly_its_term() {
    let full = split_cfg();
    let (base_all, rect_all) = check_split_cfg(full, None, 31, false);
    assert!(rect_all > 0.0);
    // rectify = false: the same base loss (its draws come last), no rectification.
    let no_rect = TwinFlowConfig {
        rectify: false,
        ..full
    };
    let (base, rect) = check_split_cfg(no_rect, None, 31, false);
    assert_eq!((base, rect), (base_all, 0.0));
    // adversarial = false: no adv group (its share goes to the others) and no
    // rectification; exactly RCGM's time-weighted base loss on e2e, mul and any.
    let rcgm = full.without_twinflow_terms();
    assert_eq!(rcgm.split_in_force().group_sizes(8), [3, 3, 2, 0]);
    let (base, rect) = check_split_cfg(rcgm, None, 31, false);
    assert!(base > 0.0 && rect == 0.0);
    for (adversarial, rectify) in [(false, true), (false, false)] {
        let cfg = TwinFlowConfig {
            adversarial,
            rectify,
            ..full
        };
        assert_eq!(check_split_cfg(cfg, None, 31, false), (base, 0.0));
    }
    // An adv ratio of 0 is the same as adversarial = false.
    let mut zero_adv = full;
    zero_adv.split.ratios = [1.0, 1.0, 1.0, 0.0];
    assert_eq!(check_split_cfg(zero_adv, None, 31, false), (base, 0.0));
    // An e2e ratio of 0 removes the rectification too (it lives on e2e).
    let mut zero_e2e = full;
    zero_e2e.split.ratios = [0.0, 1.0, 1.0, 1.0];
    assert_eq!(check_split_cfg(zero_e2e, None, 31, false).1, 0.0);
    // The reference rectifies only with r = 1.
    let mut r_half = full;
    r_half.split.consistency_ratio = 0.5;
    assert_eq!(check_split_cfg(r_half, None, 31, false).1, 0.0);
}

#[test]
fn split_recipe_handles_group_ratios_and_order_zero() {
    for ratios in [
        [1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],
    ] {
        for order in [0, 2] {
            let mut cfg = split_cfg();
            cfg.split.ratios = ratios;
            cfg.base.order = order;
            check_split_cfg(cfg, None, 17, false);
        }
    }
    // With N = 0 the loss averages over the mul and adv samples only, not the batch.
    let mut cfg = split_cfg();
    cfg.base.order = 0;
    cfg.split.ratios = [1.0, 1.0, 1.0, 0.0];
    let (main, _) = check_split_cfg(cfg, None, 18, false);
    assert!(main > 0.0);
    // Only e2e and any, N = 0: no sample carries the base loss.
    cfg.split.ratios = [1.0, 0.0, 1.0, 0.0];
    assert_eq!(check_split_cfg(cfg, None, 18, false).0, 0.0);
    let bad = SplitConfig {
        ratios: [0.0; 4],
        ..SplitConfig::default()
    };
    assert!(TwinFlow::new(TwinFlowConfig {
        split: bad,
        ..TwinFlowConfig::default()
    })
    .is_err());
    // adversarial = false on an adv-only split leaves no group: refused.
    let mut adv_only = split_cfg();
    adv_only.split.ratios = [0.0, 0.0, 0.0, 1.0];
    adv_only.adversarial = false;
    let err = TwinFlow::new(adv_only).unwrap_err().to_string();
    assert!(err.contains("adversarial = false"), "{err}");
}

#[test]
fn group_sizes_round_as_the_reference() {
    let sizes = |ratios: [f64; 4], n: usize| {
        SplitConfig {
            ratios,
            ..SplitConfig::default()
        }
        .group_sizes(n)
    };
    let equal = [1.0; 4];
    // round(n/4) each (halves to even), the adv group takes the rest.
    assert_eq!(sizes(equal, 8), [2, 2, 2, 2]);
    assert_eq!(sizes(equal, 6), [2, 2, 2, 0]);
    assert_eq!(sizes(equal, 10), [2, 2, 2, 4]);
    assert_eq!(sizes(equal, 5), [1, 1, 1, 2]);
    assert_eq!(sizes(equal, 7), [2, 2, 2, 1]);
    assert_eq!(sizes(equal, 128), [32; 4]);
    // A ratio of 0 gets no sample; the last positive group takes the rest.
    assert_eq!(sizes([1.0, 1.0, 1.0, 0.0], 8), [3, 3, 2, 0]);
    assert_eq!(sizes([1.0, 1.0, 1.0, 0.0], 128), [43, 43, 42, 0]);
    assert_eq!(sizes([0.0, 1.0, 0.0, 0.0], 9), [0, 9, 0, 0]);
    // The running total never passes n.
    assert_eq!(sizes([1.0, 1.0, 1.0, 1e-9], 5), [2, 2, 1, 0]);
    for n in 4..40 {
        assert_eq!(sizes([2.0, 1.0, 0.5, 1.0], n).iter().sum::<usize>(), n);
    }
}

#[test]
fn a_frozen_ema_builds_the_split_target_with_the_online_model() {
    // ema_decay = 1: guidance still uses θ⁻, the RCGM target uses θ (the reference).
    let frozen = check_split_cfg(split_cfg(), None, 41, true);
    let following = check_split_cfg(split_cfg(), None, 41, false);
    assert_ne!(frozen.0, following.0);
}

#[test]
fn full_recipe_switches_remove_their_terms() {
    let (online, ema) = (mlp(1), mlp(2));
    let all = run(
        &TwinFlow::new(TwinFlowConfig::default()).unwrap(),
        &online,
        &ema,
        11,
    );
    let names = |out: &StepLoss| out.terms.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    let no_rect = TwinFlowConfig {
        rectify: false,
        ..TwinFlowConfig::default()
    };
    let out = run(&TwinFlow::new(no_rect).unwrap(), &online, &ema, 11);
    assert_eq!(names(&out), ["base", "real", "adv", "cons"]);
    for name in ["base", "real", "adv", "cons"] {
        assert_eq!(out.term(name), all.term(name), "{name}");
    }
    let rcgm_only = TwinFlowConfig::default().without_twinflow_terms();
    let out = run(&TwinFlow::new(rcgm_only).unwrap(), &online, &ema, 11);
    assert_eq!(names(&out), ["base", "real", "cons"]);
    for name in ["base", "real", "cons"] {
        assert_eq!(out.term(name), all.term(name), "{name}");
    }
    let total: f64 = out.terms.iter().map(|(_, v)| v).sum();
    close(out.value().unwrap(), total, "total without adv and rect");
}

#[test]
fn null_class_resolves_to_the_models_null_label() {
    assert_eq!(
        Unconditional::NullClass.resolve(10),
        Unconditional::Null(10)
    );
    assert_eq!(Unconditional::Shuffle.resolve(10), Unconditional::Shuffle);
    let cfg: RcgmConfig = serde_json::from_str(r#"{"uncond": "null_class"}"#).unwrap();
    assert_eq!(cfg.uncond, Unconditional::NullClass);
    // Unresolved, a method refuses to guess the label.
    let m = mlp(1);
    let method = Rcgm::new(cfg).unwrap();
    let mut rng = Generator::new(1);
    let mut ctx = StepContext::new(&m, &m, &mut rng);
    let err = FlowMethod::<MlpVelocity>::loss(&method, &mut ctx, &batch())
        .unwrap_err()
        .to_string();
    assert!(err.contains("null_class"), "{err}");
}

/// `F = e + t·a` where `e` holds one uniform draw of the forward stream per sample (a
/// stand-in for dropout), or fixed values when `fixed` is set.
struct Noisy {
    a: Tensor,
    rng: ForwardRng,
    fixed: Option<Tensor>,
}

impl_module! { Noisy {} }

impl VelocityModel for Noisy {
    fn velocity(&self, x: &Tensor, t: &Tensor, _tt: &Tensor, _c: &Tensor) -> Result<Tensor> {
        let e = match &self.fixed {
            Some(e) => e.clone(),
            None => self
                .rng
                .uniform("noisy", &x.shape()[..1], (0.0, 1.0), F64, CPU)?,
        };
        x.zeros_like()?
            .add(&e.unsqueeze(1)?)?
            .add(&t.unsqueeze(1)?.mul(&self.a)?)
    }
    fn forward_rng(&self) -> &ForwardRng {
        &self.rng
    }
}

#[test]
fn target_forwards_replay_the_draws_of_the_gradient_forward() {
    let a = Generator::new(99).randn(&[1, D], F64, CPU).unwrap();
    let noisy = Noisy {
        a: a.clone(),
        rng: ForwardRng::new(5),
        fixed: None,
    };
    let e0 = ForwardRng::new(5)
        .uniform("noisy", &[B], (0.0, 1.0), F64, CPU)
        .unwrap();
    let method = Rcgm::new(RcgmConfig::default()).unwrap();
    let out = run(&method, &noisy, &noisy, 23);
    // The gradient forward drew once; the guidance pair and the N sub-steps replayed it
    // and left the stream where it was.
    let after = ForwardRng::new(5);
    after.uniform("noisy", &[B], (0.0, 1.0), F64, CPU).unwrap();
    assert_eq!(noisy.rng.state(), after.state());
    let fixed = Noisy {
        a,
        rng: ForwardRng::new(0),
        fixed: Some(e0),
    };
    let d = draws(23, Some(Unconditional::Shuffle));
    let x = x_vec();
    let xt = lerp(&x, &d.z, &d.t);
    let f = fwd(&fixed, &xt, &d.t, &d.tt, &LABELS);
    // Labels are ignored, so with equal draws the guidance pair cancels: v stays z − x.
    let (target, _) = rcgm_ref(
        &fixed,
        2,
        0.01,
        &xt,
        &d.t,
        &d.tt,
        &sub(&d.z, &x),
        &f,
        &LABELS,
    );
    close(out.value().unwrap(), mse(&f, &target), "replayed draws");
}

fn beta(beta_a: f64, beta_b: f64, scale: f64) -> TimeDistribution {
    TimeDistribution {
        beta_a,
        beta_b,
        scale,
    }
}

fn sample_times(time: &TimeDistribution, seed: u64, n: usize) -> Vec<f64> {
    time.sample(&mut Generator::new(seed), n, F64, CPU)
        .unwrap()
        .to_vec_f64()
        .unwrap()
}

/// The raw moments `E[X^k]`, k = 1..=4, of Beta(a, b): `Π_{r<k} (a + r)/(a + b + r)`.
fn beta_raw_moments(a: f64, b: f64) -> [f64; 4] {
    let mut m = [0.0; 4];
    let mut p = 1.0;
    for (k, m) in m.iter_mut().enumerate() {
        p *= (a + k as f64) / (a + b + k as f64);
        *m = p;
    }
    m
}

#[test]
fn beta_times_match_the_mean_and_variance_of_beta() {
    // With n samples the sample mean has standard error σ/√n and the sample variance
    // √((μ₄ − σ⁴)/n) (to first order; μ₄ the fourth central moment): each must lie
    // within 5 standard errors (a two-sided 5σ band, p ≈ 6·10⁻⁷ per check).
    let n = 20_000;
    let nf = n as f64;
    let cases = [
        (0.5, 0.5),
        (0.3, 2.0),
        (0.05, 0.2),
        (1.0, 3.0),
        (2.0, 5.0),
        (5.0, 1.0),
        (40.0, 60.0),
    ];
    for (k, &(a, b)) in cases.iter().enumerate() {
        let t = sample_times(&beta(a, b, 1.0), 100 + k as u64, n);
        assert!(
            t.iter().all(|v| (0.0..=1.0).contains(v)),
            "Beta({a}, {b}) outside [0, 1]"
        );
        let mean = a / (a + b);
        let var = a * b / ((a + b).powi(2) * (a + b + 1.0));
        let [m1, m2, m3, m4] = beta_raw_moments(a, b);
        assert!((m1 - mean).abs() < 1e-12 && (m2 - m1 * m1 - var).abs() < 1e-12);
        let mu4 = m4 - 4.0 * m1 * m3 + 6.0 * m1 * m1 * m2 - 3.0 * m1.powi(4);
        let got_mean = t.iter().sum::<f64>() / nf;
        let got_var = t.iter().map(|v| (v - got_mean).powi(2)).sum::<f64>() / (nf - 1.0);
        let (se_mean, se_var) = ((var / nf).sqrt(), ((mu4 - var * var) / nf).sqrt());
        assert!(
            (got_mean - mean).abs() < 5.0 * se_mean,
            "Beta({a}, {b}) mean {got_mean}, expected {mean} ± 5·{se_mean}"
        );
        assert!(
            (got_var - var).abs() < 5.0 * se_var,
            "Beta({a}, {b}) variance {got_var}, expected {var} ± 5·{se_var}"
        );
    }
}

/// The Beta(a, b) CDF for b ≥ 1 by numerical integration: with `t = w^(1/a)`,
/// `I_x(a, b) = G(x^a)/G(1)`, `G(y) = ∫₀^y (1 − w^(1/a))^(b−1) dw` (a bounded integrand,
/// no singularity at 0 even for a < 1), by the trapezoid rule on 200,000 cells and
/// linear interpolation inside a cell.
fn beta_cdf(a: f64, b: f64) -> impl Fn(f64) -> f64 {
    let cells = 200_000;
    let h = 1.0 / cells as f64;
    let f = |w: f64| (1.0 - w.powf(1.0 / a)).max(0.0).powf(b - 1.0);
    let mut g = vec![0.0; cells + 1];
    for i in 1..=cells {
        g[i] = g[i - 1] + 0.5 * h * (f((i - 1) as f64 * h) + f(i as f64 * h));
    }
    move |x: f64| {
        let y = x.clamp(0.0, 1.0).powf(a) * cells as f64;
        let i = (y.floor() as usize).min(cells - 1);
        (g[i] + (y - i as f64) * (g[i + 1] - g[i])) / g[cells]
    }
}

/// The Kolmogorov–Smirnov statistic `sup |F_n − F|` of `samples` against `cdf`.
fn ks_statistic(samples: &[f64], cdf: impl Fn(f64) -> f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max)
}

#[test]
fn beta_times_pass_a_kolmogorov_smirnov_test() {
    // The integrated CDF against closed forms: I_½(2, 5) = 57/64, I_x(1, 1) = x.
    close_to(beta_cdf(2.0, 5.0)(0.5), 57.0 / 64.0, 1e-7, "I_0.5(2, 5)");
    close_to(beta_cdf(1.0, 1.0)(0.3), 0.3, 1e-9, "I_0.3(1, 1)");
    // n = 20,000: the 0.1 % critical value of D_n is 1.949/√n ≈ 0.0138.
    let n = 20_000;
    let critical = 1.949 / (n as f64).sqrt();
    for (k, (a, b)) in [(0.7, 2.5), (2.0, 5.0)].into_iter().enumerate() {
        let cdf = beta_cdf(a, b);
        let d = ks_statistic(&sample_times(&beta(a, b, 1.0), 200 + k as u64, n), &cdf);
        assert!(d < critical, "Beta({a}, {b}): KS D = {d} ≥ {critical}");
        // The test has power: uniform times are far from this Beta.
        let uniform = sample_times(&TimeDistribution::default(), 300, n);
        assert!(ks_statistic(&uniform, &cdf) > 10.0 * critical);
    }
}

fn close_to(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: got {a}, expected {b}");
}

#[test]
fn the_scale_multiplies_the_times() {
    let n = 1000;
    for (a, b) in [(1.0, 1.0), (0.6, 2.0), (3.0, 1.5)] {
        // The draws do not depend on s, so one seed gives the same Beta values.
        let unit = sample_times(&beta(a, b, 1.0), 7, n);
        let half = sample_times(&beta(a, b, 0.5), 7, n);
        let s = 0.3;
        let scaled = sample_times(&beta(a, b, s), 7, n);
        for i in 0..n {
            assert_eq!(half[i], 0.5 * unit[i], "Beta({a}, {b})·0.5 [{i}]");
            assert!(
                (scaled[i] - s * unit[i]).abs() <= 4.0 * f64::EPSILON * s * unit[i],
                "Beta({a}, {b})·{s} [{i}]: {} vs {}",
                scaled[i],
                s * unit[i]
            );
            assert!((0.0..=s).contains(&scaled[i]));
        }
    }
}

#[test]
fn the_default_time_distribution_is_the_former_uniform_draw() {
    assert_eq!(TimeDistribution::default(), TimeDistribution::UNIFORM);
    assert_eq!(TimeDistribution::UNIFORM, beta(1.0, 1.0, 1.0));
    assert!(TimeDistribution::default().is_uniform() && !BETA_TIME.is_uniform());
    // Bit for bit the same values and the same generator state afterwards.
    for dtype in [F64, DType::F32] {
        let (mut g1, mut g2) = (Generator::new(3), Generator::new(3));
        g1.randn(&[5], F64, CPU).unwrap();
        g2.randn(&[5], F64, CPU).unwrap();
        let got = TimeDistribution::default()
            .sample(&mut g1, 37, dtype, CPU)
            .unwrap();
        let want = g2.uniform(&[37], 0.0, 1.0, dtype, CPU).unwrap();
        assert_eq!(got.dtype(), dtype);
        let bits = |t: &Tensor| -> Vec<u64> {
            t.to_vec_f64()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&got), bits(&want), "{dtype:?}");
        assert_eq!(g1.state(), g2.state());
    }
    // Every method with the default set explicitly reproduces `new`'s step bit for bit.
    let (online, ema) = (mlp(1), mlp(2));
    let u = TimeDistribution::default();
    let split = TwinFlowConfig {
        recipe: Recipe::Split,
        ..TwinFlowConfig::default()
    };
    type Method = Box<dyn FlowMethod<MlpVelocity>>;
    let pairs: Vec<(Method, Method)> = vec![
        (
            Box::new(FlowMatching::new(FlowMatchingConfig::default()).unwrap()),
            Box::new(
                FlowMatching::new(FlowMatchingConfig::default())
                    .unwrap()
                    .with_time(u)
                    .unwrap(),
            ),
        ),
        (
            Box::new(Rcgm::new(RcgmConfig::default()).unwrap()),
            Box::new(
                Rcgm::new(RcgmConfig::default())
                    .unwrap()
                    .with_time(u)
                    .unwrap(),
            ),
        ),
        (
            Box::new(TwinFlow::new(TwinFlowConfig::default()).unwrap()),
            Box::new(
                TwinFlow::new(TwinFlowConfig::default())
                    .unwrap()
                    .with_time(u)
                    .unwrap(),
            ),
        ),
        (
            Box::new(split_method(SplitConfig::default(), 2)),
            Box::new(TwinFlow::new(split).unwrap().with_time(u).unwrap()),
        ),
    ];
    for (a, b) in &pairs {
        let bits = |m: &dyn FlowMethod<MlpVelocity>| -> Vec<u64> {
            let r = run(m, &online, &ema, 70);
            let mut bits: Vec<u64> = r.terms.iter().map(|(_, v)| v.to_bits()).collect();
            bits.push(r.value().unwrap().to_bits());
            bits
        };
        assert_eq!(bits(a.as_ref()), bits(b.as_ref()), "{}", a.name());
    }
}

#[test]
fn every_method_draws_its_times_from_the_time_distribution() {
    // The hand computations above, with `t` drawn by the time distribution in the
    // documented place of each method's draws: a < 1 (the boosted Gamma) with s < 1,
    // and a, b > 1 with s = 1.
    for time in [BETA_TIME, beta(3.0, 1.5, 1.0)] {
        check_flow_matching(Some(time));
        check_rcgm(Some(time));
        check_twinflow_full(Some(time));
        check_split(Some(time));
    }
    // Those times are not the uniform ones.
    let (beta_t, uniform_t) = (draws_with(9, None, Some(&BETA_TIME)).t, draws(9, None).t);
    assert_ne!(beta_t, uniform_t);
    assert!(beta_t.iter().all(|t| (0.0..=0.8).contains(t)));
}

#[test]
fn time_distribution_errors_name_the_key() {
    let cases = [
        (beta(0.0, 1.0, 1.0), "time.beta_a"),
        (beta(-2.0, 1.0, 1.0), "time.beta_a"),
        (beta(f64::NAN, 1.0, 1.0), "time.beta_a"),
        (beta(f64::INFINITY, 1.0, 1.0), "time.beta_a"),
        (beta(1.0, 0.0, 1.0), "time.beta_b"),
        (beta(2.0, f64::NAN, 1.0), "time.beta_b"),
        (beta(1.0, 1.0, 0.0), "time.scale"),
        (beta(1.0, 1.0, 1.5), "time.scale"),
        (beta(2.0, 2.0, -0.5), "time.scale"),
        (beta(2.0, 2.0, f64::NAN), "time.scale"),
    ];
    for (bad, key) in cases {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{bad:?}: {err}");
        assert!(bad.sample(&mut Generator::new(0), 4, F64, CPU).is_err());
        let fm = FlowMatching::new(FlowMatchingConfig::default()).unwrap();
        assert!(fm.with_time(bad).is_err());
        assert!(Rcgm::new(RcgmConfig::default())
            .unwrap()
            .with_time(bad)
            .is_err());
        assert!(TwinFlow::new(TwinFlowConfig::default())
            .unwrap()
            .with_time(bad)
            .is_err());
    }
    for good in [beta(0.01, 100.0, 1e-3), beta(1e3, 1.0, 1.0), BETA_TIME] {
        good.validate().unwrap();
    }
    // Serde: every key optional, unknown keys refused.
    let partial: TimeDistribution = serde_json::from_str(r#"{"beta_a": 2.0}"#).unwrap();
    assert_eq!(partial, beta(2.0, 1.0, 1.0));
    let err = serde_json::from_str::<TimeDistribution>(r#"{"beta_c": 2.0}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("beta_c"), "{err}");
}
