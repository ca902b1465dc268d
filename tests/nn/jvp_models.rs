//! Forward mode against reverse mode through whole velocity networks, in f64: for the
//! DiT and the MLP velocity network, the tangent J·v from `jvp` and the gradient Jᵀ·w
//! from `backward_with` satisfy ⟨J·v, w⟩ = ⟨v, Jᵀ·w⟩ for random v (tangents of x, t
//! and tt) and random w. No finite differences, so the times take part too (their
//! `sincos` features multiply them by up to 1000, beyond finite differences).
//!
//! Each input is checked alone (the other tangents zero) and then all together, so a
//! wrong rule on one path cannot be hidden by another. Parameters are re-filled with
//! small random values (adaLN-Zero gates and output layers start at zero), label
//! dropout is 0 and the models are in eval mode.

use twinflow::engine::{jvp, DType, Device, Generator, Result, Tensor};
use twinflow::nn::{Dit, DitConfig, MlpVelocity, MlpVelocityConfig, Module, VelocityModel};

use crate::common::{f64_builder, labels, randomize};

/// ⟨a, b⟩ over all elements.
fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    a.mul(b)?.sum_all()?.item()
}

/// Checks ⟨J·v, w⟩ = ⟨v, Jᵀ·w⟩ for `m.velocity` at random x `[b, dim]`, t and tt `[b]`
/// (the labels fixed), with the tangent of each input alone and of all three, for a few
/// draws of v and w. Returns the largest relative disagreement.
fn adjoint_identity(m: &dyn VelocityModel, b: usize, dim: usize, y: &Tensor) -> Result<f64> {
    let mut worst: f64 = 0.0;
    for seed in 0..3 {
        let mut g = Generator::new(100 + seed);
        let mut randn = |shape: &[usize]| g.randn(shape, DType::F64, Device::Cpu);
        let primals = [randn(&[b, dim])?, randn(&[b])?, randn(&[b])?];
        let v = [randn(&[b, dim])?, randn(&[b])?, randn(&[b])?];
        let w = randn(&[b, dim])?;

        // Jᵀ·w, once for the three inputs.
        let vars = primals
            .iter()
            .map(|p| p.detach().into_variable())
            .collect::<Result<Vec<_>>>()?;
        let out = m.velocity(&vars[0], &vars[1], &vars[2], y)?;
        let grads = out.backward_with(&w)?;
        let jtw = vars
            .iter()
            .map(|x| grads.get(x).cloned().expect("gradient of an input"))
            .collect::<Vec<_>>();

        // Each input alone, then all three.
        for only in [Some(0), Some(1), Some(2), None] {
            let tangents = (0..3)
                .map(|i| match only.is_none_or(|o| o == i) {
                    true => Ok(v[i].clone()),
                    false => v[i].zeros_like(),
                })
                .collect::<Result<Vec<_>>>()?;
            let f = |p: &[Tensor]| Ok(vec![m.velocity(&p[0], &p[1], &p[2], y)?]);
            let (outs, jv) = jvp(f, &primals, &tangents)?;
            // The primal output (attention's comes from its fused JVP kernel here).
            for (a, e) in outs[0].to_vec_f64()?.iter().zip(out.to_vec_f64()?) {
                assert!(
                    (a - e).abs() <= 1e-12 * (1.0 + e.abs()),
                    "primal {a} vs {e}"
                );
            }
            let forward = dot(&jv[0], &w)?;
            let reverse = (0..3)
                .map(|i| dot(&tangents[i], &jtw[i]))
                .sum::<Result<f64>>()?;
            let err = (forward - reverse).abs() / (1.0 + forward.abs().max(reverse.abs()));
            assert!(
                err <= 1e-10,
                "seed {seed}, tangent of input {only:?}: ⟨J·v, w⟩ = {forward:.15e}, \
                 ⟨v, Jᵀ·w⟩ = {reverse:.15e}"
            );
            // Every input matters: a vanishing term would make the identity trivial.
            assert!(
                forward.abs() > 1e-6,
                "seed {seed}, input {only:?}: ⟨J·v, w⟩ ≈ 0"
            );
            worst = worst.max(err);
        }
    }
    Ok(worst)
}

#[test]
fn dit_forward_mode_is_the_adjoint_of_reverse_mode() -> Result<()> {
    let cfg = DitConfig {
        image_size: 4,
        channels: 2,
        patch: 2,
        dim: 8,
        depth: 2,
        heads: 2,
        mlp_ratio: 2,
        num_classes: 3,
        label_dropout: 0.0,
        ..DitConfig::default()
    };
    let mut dit = Dit::new(&mut f64_builder(0), cfg)?;
    randomize(&mut dit, 1, 0.3);
    dit.set_training(false);
    let worst = adjoint_identity(&dit, 3, 32, &labels(&[0, 2, 3]))?;
    eprintln!("dit: largest relative disagreement {worst:.2e}");
    Ok(())
}

#[test]
fn mlp_velocity_forward_mode_is_the_adjoint_of_reverse_mode() -> Result<()> {
    for time_gated_skip in [false, true] {
        let cfg = MlpVelocityConfig {
            data_dim: 3,
            width: 8,
            depth: 2,
            emb_dim: 4,
            num_classes: 3,
            label_dropout: 0.0,
            time_gated_skip,
            ..MlpVelocityConfig::default()
        };
        let mut m = MlpVelocity::new(&mut f64_builder(0), cfg)?;
        randomize(&mut m, 1, 0.3);
        m.set_training(false);
        let worst = adjoint_identity(&m, 4, 3, &labels(&[0, 1, 3, 2]))?;
        eprintln!(
            "mlp (time_gated_skip {time_gated_skip}): largest relative disagreement {worst:.2e}"
        );
    }
    Ok(())
}
