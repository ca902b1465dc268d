//! MeanFlow (docs/method.md §10): Zhengyang Geng, Mingyang Deng, Xingjian Bai, J. Zico
//! Kolter, Kaiming He, "Mean Flows for One-step Generative Modeling", arXiv:2505.13447;
//! the authors' JAX code is <https://github.com/Gsunshine/meanflow> (`meanflow.py`).
//!
//! The network learns the *average* velocity over an interval `[r, t]`,
//! `u(z_t, r, t) = 1/(t − r)·∫_r^t v(z_τ, τ) dτ` (paper Eq. 3), from the MeanFlow
//! identity `u = v − (t − r)·du/dt` (Eq. 6), whose total derivative along the path is
//! `du/dt = v·∂_z u + ∂_t u` (Eq. 8): the Jacobian-vector product of `u` along the
//! tangent `(v, 0, 1)` of `(z, r, t)`.
//!
//! **The paper's notation in this project's.** The two agree on the path: the paper's
//! `z_t = (1 − t)·x + t·ε` with `t = 1` noise is this project's `x_t = t·z + (1 − t)·x`
//! (docs/method.md §1; the paper's `ε` is our `z`, and its `v = ε − x` our
//! `velocity_target`). Its `u_θ(z_t, r, t)` is our `F_θ(x_t, t, tt = r, c)`: `t` in
//! the network's current-time slot, `r` in its jump-target slot. That is exactly how
//! this project already reads `F` (§1: a jump from `t` to `s` moves `x_t − (t − s)·F`),
//! so no sign changes: the paper's one- and few-step sampler
//! `z_r = z_t − (t − r)·u(z_t, r, t)` (Eq. 12) is the UCGM sampler with the `any_step`
//! jump and ρ = 0 on a uniform grid, which MeanFlow runs get by default
//! ([`MethodSettings::SAMPLER_JUMP`]). The paper finds embedding `(t, t − r)` slightly
//! better than `(r, t)` (Sec. 5.1, Fig. 4c); the networks here embed their two time
//! slots, so they see `(t, r)`, which the paper reports "performs almost as well".
//!
//! **One step of training** ([`MeanFlow`]'s rustdoc lists the draws):
//! 1. `(r, t)` from a logit-normal, sorted so that `r ≤ t`, with `r = t` on a share of
//!    the batch (Sec. 4.3, "Sampling time steps"; [`MeanFlowConfig::sample_times`]).
//! 2. `x_t = t·z + (1 − t)·x`, `v = z − x` (Eq. 1–2 with `a_t = 1 − t`, `b_t = t`).
//! 3. Guidance (Sec. 4.2; off by default): `ṽ = ω·v + κ·u_θ(x_t, t, t | c) +
//!    (1 − ω − κ)·u_θ(x_t, t, t | ∅)` (Eq. 19 with the mixing scale κ of App. B.1 and
//!    the code's `guidance_fn`), without gradient, with θ itself (not θ⁻) as the code
//!    does; samples outside the guidance interval or with a dropped label keep `v`.
//! 4. One forward of `u = u_θ(x_t, r, t)` under [`jvp`] along `(ṽ, 0, 1)`: the primal
//!    `u` keeps its graph and is the prediction the loss trains, the tangent is `du/dt`
//!    (Eq. 8, Alg. 1).
//! 5. `u_tgt = sg(ṽ − (t − r)·du/dt)` (Eq. 10, conditional form Eq. 11; with guidance
//!    Eq. 18). The code clips `t − r` to `[0, 1]`, where it already lies.
//! 6. The adaptively weighted loss (Sec. 4.3, "Loss metrics"): with `Δ = u − u_tgt`,
//!    `L = mean_b sg(w)·‖Δ‖²`, `w = 1/(‖Δ‖² + c)^p`, `‖Δ‖²` the sum of squares over the
//!    sample's values as in the code ([`MeanFlowConfig::adaptive_loss`]).
//!
//! With `r = t` the JVP term vanishes and the target is `ṽ`: flow matching (Sec. 4.1).

use super::{check_batch, interpolate, mse_per_sample, per_sample, replay, velocity_target};
use super::{Batch, FlowMethod, Method, MethodSettings, StepContext, StepLoss, TimeDistribution};
use crate::sampler::JumpTarget;
use serde::{Deserialize, Serialize};
use twinflow_engine::{jvp, no_grad, DType, Device, Error, Generator, GeneratorState};
use twinflow_engine::{Result, Tensor};
use twinflow_nn::VelocityModel;

const OP: &str = "meanflow";

/// Settings of [`MeanFlow`], the `[method.meanflow]` table. The defaults are the
/// paper's (its ablation's best values, which its code ships) with guidance off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeanFlowConfig {
    /// Mean μ of the logit-normal times, `sigmoid(N(μ, σ²))` (paper: −0.4).
    pub time_mean: f64,
    /// Standard deviation σ of the logit-normal times (paper: 1.0).
    pub time_std: f64,
    /// The share of the batch trained on an interval `r < t`; the rest have `r = t`
    /// (paper: 0.25, Fig. 4a).
    pub interval_share: f64,
    /// The power p of the adaptive loss weight `1/(‖Δ‖² + c)^p` (paper: 1; 0 is the
    /// plain squared error, 0.5 close to the Pseudo-Huber loss).
    pub weight_power: f64,
    /// The offset c of the adaptive loss weight (paper: 10⁻³; the authors' code ships
    /// 10⁻²).
    pub weight_offset: f64,
    /// The guidance scale ω of the target velocity; 1 with `guidance_mix` 0 is no
    /// guidance (the default).
    pub guidance_scale: f64,
    /// The mixing scale κ (App. B.1): the share of the class-conditional
    /// `u_θ(x_t, t, t | c)` in the guided velocity (the authors' code: 0.5 with ω = 1).
    pub guidance_mix: f64,
    /// Guidance applies where `lo ≤ t ≤ hi` (the code's `t_start`, `t_end`).
    pub guidance_range: [f64; 2],
    /// The probability of replacing a sample's label by the model's null class, whose
    /// target velocity is then the unguided `v` (paper: 0.1 when training with guidance;
    /// default 0). Configs set the model's own `label_dropout` to 0 instead.
    pub class_dropout: f64,
    /// The model's null class, set from the model when the trainer builds the method
    /// ([`MethodSettings::for_model`]); not a config key.
    #[serde(skip)]
    pub null_label: Option<i64>,
}

impl Default for MeanFlowConfig {
    /// The paper's settings: `lognorm(−0.4, 1.0)` times, 25% of the batch with `r ≠ t`,
    /// `p = 1`, `c = 10⁻³`; no guidance and no class dropout.
    fn default() -> Self {
        MeanFlowConfig {
            time_mean: -0.4,
            time_std: 1.0,
            interval_share: 0.25,
            weight_power: 1.0,
            weight_offset: 1e-3,
            guidance_scale: 1.0,
            guidance_mix: 0.0,
            guidance_range: [0.0, 1.0],
            class_dropout: 0.0,
            null_label: None,
        }
    }
}

impl MethodSettings for MeanFlowConfig {
    const NAME: &'static str = "meanflow";
    const SAMPLER_JUMP: JumpTarget = JumpTarget::AnyStep;

    /// Errors naming the setting: σ and c must be positive, p non-negative, the shares
    /// in `[0, 1]` (class dropout below 1), the guidance range ordered, all finite.
    fn validate(&self) -> Result<()> {
        let finite = [
            ("time_mean", self.time_mean),
            ("guidance_scale", self.guidance_scale),
            ("guidance_mix", self.guidance_mix),
        ];
        for (key, value) in finite {
            require(key, value.is_finite(), "must be finite", value)?;
        }
        for (key, value) in [
            ("time_std", self.time_std),
            ("weight_offset", self.weight_offset),
        ] {
            require(
                key,
                value > 0.0 && value.is_finite(),
                "must be positive",
                value,
            )?;
        }
        let p = self.weight_power;
        require("weight_power", p >= 0.0 && p.is_finite(), "must be ≥ 0", p)?;
        let share = self.interval_share;
        let share_ok = (0.0..=1.0).contains(&share);
        require("interval_share", share_ok, "must lie in [0, 1]", share)?;
        let drop = self.class_dropout;
        let drop_ok = (0.0..1.0).contains(&drop);
        require("class_dropout", drop_ok, "must lie in [0, 1)", drop)?;
        let [lo, hi] = self.guidance_range;
        let range_ok = lo.is_finite() && hi.is_finite() && lo <= hi;
        let range = format!("[{lo}, {hi}]");
        require(
            "guidance_range",
            range_ok,
            "must be finite [lo, hi], lo ≤ hi",
            range,
        )
    }

    /// MeanFlow draws `(r, t)` from its own logit-normal, so the run's `[time]` table
    /// must be the default.
    fn check_time(&self, time: &TimeDistribution) -> Result<()> {
        if time.is_uniform() {
            return Ok(());
        }
        Err(Error::invalid(
            OP,
            format!(
                "meanflow draws its times (r, t) from its own logit-normal (`time_mean`, \
                 `time_std` of [method.meanflow]); remove the [time] table ({time:?})"
            ),
        ))
    }

    fn for_model(self, null_label: i64) -> Self {
        MeanFlowConfig {
            null_label: Some(null_label),
            ..self
        }
    }
}

/// Errors with "`key` `what`, got `value`" unless `ok`.
fn require(key: &str, ok: bool, what: &str, value: impl std::fmt::Display) -> Result<()> {
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(OP, format!("{key} {what}, got {value}"))),
    }
}

impl MeanFlowConfig {
    /// Whether the target velocity is guided (ω ≠ 1 or κ ≠ 0).
    pub fn guides(&self) -> bool {
        self.guidance_scale != 1.0 || self.guidance_mix != 0.0
    }

    /// `n` time pairs `(t, r)` (paper Sec. 4.3): two logit-normal draws per sample,
    /// `sigmoid(μ + σ·ξ)`, all `n` of the first then all `n` of the second (each one
    /// [`Generator::normal`] of `n` f64 values); `t` is the larger, `r` the smaller of
    /// the two, and the first `⌊n·(1 − interval_share)⌋` samples take `r = t`, as the
    /// authors' code does. Returns `(t, r)`.
    pub fn sample_times(&self, rng: &mut Generator, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let mut logit_normal = || -> Result<Vec<f64>> {
            let xi = rng.normal(&[n], self.time_mean, self.time_std, DType::F64, Device::Cpu)?;
            Ok(xi.to_vec_f64()?.into_iter().map(logistic).collect())
        };
        let (a, b) = (logit_normal()?, logit_normal()?);
        let equal = (n as f64 * (1.0 - self.interval_share)).floor() as usize;
        let t: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a.max(*b)).collect();
        let r = (0..n)
            .map(|i| if i < equal { t[i] } else { a[i].min(b[i]) })
            .collect();
        Ok((t, r))
    }

    /// The number of samples whose label is dropped, `Binomial(n, class_dropout)`, drawn
    /// as `n` uniforms (none when the dropout is 0). The authors' code drops that many
    /// *leading* samples, which therefore fall among the `r = t` ones whenever there are
    /// enough of them; this does the same.
    pub fn draw_dropped(&self, rng: &mut Generator, n: usize) -> Result<usize> {
        if self.class_dropout == 0.0 {
            return Ok(0);
        }
        let u = rng.uniform(&[n], 0.0, 1.0, DType::F64, Device::Cpu)?;
        Ok(u.to_vec_f64()?
            .iter()
            .filter(|&&u| u < self.class_dropout)
            .count())
    }

    /// The model's null class; errors when the method was built without a model.
    fn null_class(&self) -> Result<i64> {
        self.null_label.ok_or_else(|| {
            Error::invalid(
                OP,
                "guidance and class dropout need the model's null class: build the method \
                 for the model (MethodSettings::for_model; the trainer does)",
            )
        })
    }

    /// The loss `mean_b sg(w_b)·‖Δ_b‖²` with `Δ = u − target`, `‖Δ_b‖²` the sum of
    /// squares over sample b's values and `w_b = 1/(‖Δ_b‖² + c)^p` (paper Sec. 4.3).
    /// The gradient with respect to `u_b` is `2·w_b·Δ_b/B`. Keeps the graph of `u`.
    pub fn adaptive_loss(&self, u: &Tensor, target: &Tensor) -> Result<Tensor> {
        let n = u.dim(0)?;
        let squares = u.sub(target)?.square()?;
        let sum = squares
            .reshape(&[n, u.elem_count() / n.max(1)])?
            .sum(&[1], false)?;
        let weight = sum
            .detach()
            .add_scalar(self.weight_offset)?
            .powf(-self.weight_power)?;
        sum.mul(&weight)?.mean_all()
    }

    /// The guided velocity `ṽ = ω_b·v + κ_b·u_θ(x_t, t, t | c) + (1 − ω_b − κ_b)·
    /// u_θ(x_t, t, t | ∅)` of step 3 (detached), with `(ω_b, κ_b) = (ω, κ)` where
    /// `lo ≤ t_b ≤ hi` and the label is kept, `(1, 0)` (so `ṽ = v`) elsewhere. Both
    /// forwards run without gradient and replay the model's forward-stream state
    /// `state`; the conditional one only when κ ≠ 0. `v` itself without guidance.
    #[allow(clippy::too_many_arguments)]
    fn guided_velocity<M: VelocityModel>(
        &self,
        model: &M,
        state: GeneratorState,
        x_t: &Tensor,
        t: &Tensor,
        v: &Tensor,
        labels: &Tensor,
        dropped: usize,
    ) -> Result<Tensor> {
        if !self.guides() {
            return Ok(v.detach());
        }
        let null = self.null_class()?;
        let [lo, hi] = self.guidance_range;
        let (omega, kappa): (Vec<f64>, Vec<f64>) = t
            .to_vec_f64()?
            .iter()
            .enumerate()
            .map(|(i, &t)| match i >= dropped && lo <= t && t <= hi {
                true => (self.guidance_scale, self.guidance_mix),
                false => (1.0, 0.0),
            })
            .unzip();
        let uncond_share: Vec<f64> = omega.iter().zip(&kappa).map(|(w, k)| 1.0 - w - k).collect();
        let coefficient = |c: &[f64]| -> Result<Tensor> {
            per_sample(&Tensor::from_f64s(c, &[c.len()], v.dtype(), v.device())?, v)
        };
        no_grad(|| {
            let b = labels.elem_count();
            let nulls = Tensor::from_vec(vec![null; b], &[b], labels.device())?;
            let uncond = replay(model, state, || model.velocity(x_t, t, t, &nulls))?;
            let mut guided = v
                .mul(&coefficient(&omega)?)?
                .add(&uncond.mul(&coefficient(&uncond_share)?)?)?;
            if self.guidance_mix != 0.0 {
                let cond = replay(model, state, || model.velocity(x_t, t, t, labels))?;
                guided = guided.add(&cond.mul(&coefficient(&kappa)?)?)?;
            }
            Ok(guided)
        })
        .map(|v| v.detach())
    }

    /// The batch's labels with the first `dropped` replaced by the null class.
    fn drop_labels(&self, labels: &Tensor, dropped: usize) -> Result<Tensor> {
        if dropped == 0 {
            return Ok(labels.clone());
        }
        let null = self.null_class()?;
        let mut values = labels.to_vec::<i64>()?;
        values.iter_mut().take(dropped).for_each(|y| *y = null);
        Tensor::from_vec(values, labels.shape(), labels.device())
    }
}

/// The logistic function `1/(1 + e^(−x))`.
fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The prediction `u = u_θ(z_t, r, t) = F_θ(z_t, t, r, c)` (with its graph, for the
/// loss) and the MeanFlow target `u_tgt = v − (t − r)·du/dt` (detached; paper Eq. 10),
/// from one forward of `model` under [`jvp`]: the tangent of `(z_t, t, r)` is
/// `(v, 1, 0)`, so the output tangent is `du/dt = v·∂_z u + ∂_t u` (Eq. 8). `t`, `r`
/// are `[B]`, `z_t` and `v` `[B, D]`; `v` is the (guided) velocity of the path.
pub fn average_velocity_and_target<M: VelocityModel>(
    model: &M,
    z_t: &Tensor,
    t: &Tensor,
    r: &Tensor,
    v: &Tensor,
    labels: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let primals = [z_t.clone(), t.clone(), r.clone()];
    let tangents = [v.detach(), t.ones_like()?, r.zeros_like()?];
    let forward = |p: &[Tensor]| Ok(vec![model.velocity(&p[0], &p[1], &p[2], labels)?]);
    let (outputs, output_tangents) = jvp(forward, &primals, &tangents)?;
    let (Some(u), Some(du_dt)) = (
        outputs.into_iter().next(),
        output_tangents.into_iter().next(),
    ) else {
        return Err(Error::invalid(
            OP,
            "jvp returned no output for the network's velocity",
        ));
    };
    let target = no_grad(|| v.sub(&du_dt.mul(&per_sample(&t.sub(r)?, &du_dt)?)?))?;
    Ok((u, target.detach()))
}

/// MeanFlow (docs/method.md §10; the module's rustdoc derives each step from the paper).
///
/// Draws, in order: `z ~ N(0, I)` `[B, D]`; the two logit-normal time draws of
/// [`MeanFlowConfig::sample_times`] (`B` values each); with class dropout on, `B`
/// uniforms ([`MeanFlowConfig::draw_dropped`]). The run's `[time]` table must be the
/// default (MeanFlow's times are its own).
///
/// Forwards per step: one with gradient under [`jvp`] (the prediction and its time
/// derivative; the backward pass then runs through the primal only), plus, with
/// guidance, one (κ = 0) or two (κ ≠ 0) without gradient. All of them use θ
/// (`ctx.online`), as the authors' code does; θ⁻ only serves sampling.
///
/// Reports the terms `mf`, the adaptively weighted loss that is optimised (near 1 per
/// sample for p = 1), and `mse`, the plain mean squared error between `u` and `u_tgt`
/// (averaged over values and samples), to follow the fit.
pub type MeanFlow = Method<MeanFlowConfig>;

impl<M: VelocityModel> FlowMethod<M> for MeanFlow {
    fn name(&self) -> &'static str {
        MeanFlowConfig::NAME
    }

    fn loss(&self, ctx: &mut StepContext<'_, M>, batch: &Batch) -> Result<StepLoss> {
        let b = check_batch(OP, batch)?;
        let cfg = &self.cfg;
        let x = &batch.x;
        let z = ctx.rng.randn(x.shape(), x.dtype(), x.device())?;
        let (t, r) = cfg.sample_times(ctx.rng, b)?;
        let dropped = cfg.draw_dropped(ctx.rng, b)?;
        let t = Tensor::from_f64s(&t, &[b], x.dtype(), x.device())?;
        let r = Tensor::from_f64s(&r, &[b], x.dtype(), x.device())?;
        let x_t = interpolate(x, &z, &t)?;
        let v = velocity_target(x, &z)?;
        let state = ctx.online.forward_rng().state();
        let v_g = cfg.guided_velocity(ctx.online, state, &x_t, &t, &v, &batch.labels, dropped)?;
        let labels = cfg.drop_labels(&batch.labels, dropped)?;
        let (u, target) = average_velocity_and_target(ctx.online, &x_t, &t, &r, &v_g, &labels)?;
        let loss = cfg.adaptive_loss(&u, &target)?;
        let mse = no_grad(|| mse_per_sample(&u, &target)?.mean_all())?.item()?;
        Ok(StepLoss {
            terms: vec![("mf", loss.item()?), ("mse", mse)],
            loss,
        })
    }
}
