//! Mixed precision on the CPU (bf16/f16 storage emulated): the autocast scope's casting
//! rules, gradients arriving in f32 through the recorded casts, the f16 loss scaler
//! (growth, back-off, step skipping, state) and the trainer's `precision` key. Every
//! test name contains `autocast`, which is how CI selects them.

use twinflow::engine::{
    autocast, autocast_dtype, jvp, scaled_dot_product_attention, AutocastGuard, DType, Device,
    Gradients, PreNorm, Result, Tensor,
};
use twinflow::flow::method::Batch;
use twinflow::flow::train::{Precision, TrainConfig, Trainer};
use twinflow::nn::{LossScaler, LossScalerConfig, LossScalerState, Module};

use crate::common::randn_as;

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn autocast_products_run_in_and_return_the_low_dtype() -> Result<()> {
    for low in [DType::BF16, DType::F16] {
        let a = randn_as(1, &[3, 5, 8], DType::F32);
        let b = randn_as(2, &[8, 4], DType::F32);
        let bias = randn_as(3, &[4], DType::F32);
        let w = b.t()?.contiguous()?;
        let (q, k, v) = (
            randn_as(4, &[2, 2, 7, 8], DType::F32),
            randn_as(5, &[2, 2, 5, 8], DType::F32),
            randn_as(6, &[2, 2, 5, 8], DType::F32),
        );
        let lowered = |t: &Tensor| t.to_dtype(low).unwrap();
        let (mm, lin, att, chained) = autocast(low, || -> Result<_> {
            let lin = a.linear(&w, Some(&bias))?;
            Ok((
                a.matmul(&b)?,
                lin.clone(),
                scaled_dot_product_attention(&q, &k, &v, None, true)?,
                // An operand already in the low dtype is taken as it is.
                lin.matmul(&b.t()?)?,
            ))
        })??;
        // The same products written out with explicit casts, outside any scope.
        let want_mm = lowered(&a).matmul(&lowered(&b))?;
        let want_lin = lowered(&a).linear(&lowered(&w), Some(&lowered(&bias)))?;
        let want_att =
            scaled_dot_product_attention(&lowered(&q), &lowered(&k), &lowered(&v), None, true)?;
        let want_chained = want_lin.matmul(&lowered(&b.t()?))?;
        for (got, want) in [
            (&mm, &want_mm),
            (&lin, &want_lin),
            (&att, &want_att),
            (&chained, &want_chained),
        ] {
            assert_eq!(got.dtype(), low);
            assert_eq!(got.to_vec_f64()?, want.to_vec_f64()?, "{low}");
        }
        // Rounded to the low dtype: close to, but not the same as, the f32 product.
        let exact = a.matmul(&b)?;
        let mm = mm.to_dtype(DType::F32)?;
        assert_ne!(f32s(&mm), f32s(&exact), "{low}");
        assert!(rel_err(&mm, &exact) < 1e-2, "{low}");
    }
    Ok(())
}

#[test]
fn autocast_runs_norms_softmax_sums_and_losses_in_f32() -> Result<()> {
    for low in [DType::BF16, DType::F16] {
        let h = randn_as(11, &[4, 6], DType::F32).to_dtype(low)?;
        let w = randn_as(12, &[6], DType::F32);
        let run = |x: &Tensor| -> Result<Vec<Tensor>> {
            Ok(vec![
                x.softmax()?,
                x.log_softmax()?,
                x.layer_norm(Some(&w), Some(&w), 1e-5)?,
                x.rms_norm(Some(&w), 1e-5)?,
                x.sum_all()?,
                x.mean(&[1], false)?,
                x.var(&[1], 1, false)?,
                x.mse(&x.mul_scalar(0.5)?)?,
                x.exp()?,
                x.abs()?.log()?,
                x.powf(3.0)?,
                x.abs()?.rsqrt()?,
                x.recip()?,
            ])
        };
        let scoped = autocast(low, || run(&h))??;
        // The same ops on the operand cast to f32 by hand, outside any scope.
        let want = run(&h.to_dtype(DType::F32)?)?;
        for (i, (s, w)) in scoped.iter().zip(&want).enumerate() {
            assert_eq!(s.dtype(), DType::F32, "{low} op {i}");
            assert_eq!(f32s(s), f32s(w), "{low} op {i}");
        }
        // Ops outside the lists keep their operand's dtype.
        let kept = autocast(low, || -> Result<_> {
            Ok([
                h.gelu()?,
                h.silu()?,
                h.square()?,
                h.mul_scalar(2.0)?,
                h.max(&[1], false)?,
            ])
        })??;
        assert!(kept.iter().all(|t| t.dtype() == low), "{low}");
    }
    Ok(())
}

#[test]
fn autocast_promotes_mixed_operands_to_the_widest_dtype() -> Result<()> {
    let a = randn_as(13, &[3, 4], DType::F32);
    let b = randn_as(14, &[4], DType::F32).to_dtype(DType::BF16)?;
    let c = randn_as(15, &[3, 4], DType::F32).to_dtype(DType::F16)?;
    let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let mask = a.gt(&f32_of(&b))?;
    let run = |b: &Tensor, c: &Tensor| -> Result<Vec<Tensor>> {
        Ok(vec![
            a.add(b)?,
            b.sub(&a)?,
            b.mul(c)?,
            a.div(c)?,
            a.maximum(b)?,
            c.minimum(&a)?,
            a.addcmul(b, c)?,
            Tensor::cat(&[&a, c], 0)?,
            Tensor::stack(&[b, &a.sum(&[0], false)?], 0)?,
            a.gt(b)?,
            mask.where_cond(b, &a)?,
        ])
    };
    let scoped = autocast(DType::BF16, || run(&b, &c))??;
    let want = run(&f32_of(&b), &f32_of(&c))?;
    for (i, (s, w)) in scoped.iter().zip(&want).enumerate() {
        // bf16 with f16 meets in f32, as does anything with f32.
        assert_eq!(s.dtype(), DType::F32, "op {i}");
        assert_eq!(f32s(s), f32s(w), "op {i}");
    }
    // Operands that agree are left alone.
    let same = autocast(DType::BF16, || b.add(&b))??;
    assert_eq!(same.dtype(), DType::BF16);
    // f64 stays the widest.
    let wide = randn_as(16, &[4], DType::F64);
    assert_eq!(autocast(DType::F16, || b.mul(&wide))??.dtype(), DType::F64);
    // Outside a scope mixed dtypes are an error that names the op and the dtypes.
    let err = a.add(&b).expect_err("mixed dtypes refused");
    let msg = err.to_string();
    assert!(
        msg.contains("add") && msg.contains("f32") && msg.contains("bf16"),
        "{msg}"
    );
    Ok(())
}

/// `h·wᵀ·wᵀ + h·wᵀ` summed for `h = 2x`: a variable and an activation each used by two
/// products. `cast` lowers `h` and `w` by hand (the identity inside a scope).
fn twice_through(x: &Tensor, w: &Tensor, cast: impl Fn(&Tensor) -> Tensor) -> Result<Tensor> {
    let (h, w) = (cast(&x.mul_scalar(2.0)?), cast(w));
    let both = h.linear(&w, None)?.linear(&w, None)?;
    both.add(&h.linear(&w, None)?)?.sum_all()
}

#[test]
fn autocast_casts_each_tensor_once_and_gradients_stay_exact() -> Result<()> {
    for low in [DType::BF16, DType::F16] {
        let w = randn_as(17, &[8, 8], DType::F32)
            .mul_scalar(0.3)?
            .into_variable()?;
        let x = randn_as(18, &[4, 8], DType::F32).into_variable()?;
        let lowered = |t: &Tensor| t.to_dtype(low).unwrap();
        let same = |t: &Tensor| t.clone();
        // The reference: one low copy of w and of h, each used twice, cast by hand.
        let mut want = twice_through(&x, &w, lowered)?.backward()?;
        let want = [
            want.remove(&w).expect("grad"),
            want.remove(&x).expect("grad"),
        ];
        let _scope = AutocastGuard::new(Some(low))?;
        // A cast made under no_grad has no graph node; a recorded use must not reuse it.
        twinflow::engine::no_grad(|| twice_through(&x, &w, same))?;
        for round in 0..2 {
            // The second round runs after a backward freed the first round's casts.
            let mut got = twice_through(&x, &w, same)?.backward()?;
            for (v, want) in [&w, &x].into_iter().zip(&want) {
                let got = got.remove(v).expect("grad");
                assert_eq!(got.dtype(), DType::F32);
                assert_eq!(f32s(&got), f32s(want), "{low} round {round}");
            }
        }
        // Written in place inside the scope: the next product sees the new values.
        let before = twice_through(&x, &w, same)?.item()?;
        x.assign(&x.mul_scalar(2.0)?)?;
        let after = twice_through(&x, &w, same)?.item()?;
        assert!((after / before - 2.0).abs() < 0.05, "{before} → {after}");
    }
    Ok(())
}

/// `linear(norm(x)·(1 + s) + t)` summed, the pre-norm of a DiT's adaLN branch: `norm`
/// returns the tensor the product reads.
fn prenorm_branch(
    x: &Tensor,
    (s, t, w): (&Tensor, &Tensor, &Tensor),
    norm: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let y = norm(x, &s.add_scalar(1.0)?, t)?;
    y.linear(w, None)?.to_dtype(DType::F32)?.sum_all()
}

#[test]
fn autocast_prenorm_writes_the_low_dtype_with_the_casts_bits() -> Result<()> {
    for low in [DType::BF16, DType::F16] {
        let variable = |seed, shape: &[usize]| randn_as(seed, shape, DType::F32).into_variable();
        let x = variable(61, &[3, 5, 16])?;
        let (s, t) = (variable(62, &[3, 1, 16])?, variable(63, &[3, 1, 16])?);
        let w = variable(64, &[8, 16])?;
        let inputs = [&x, &s, &t, &w];
        // The pre-norm writes its output in the scope's dtype; by hand, the f32 norm
        // and the cast that the product would make.
        let prenorm = |x: &Tensor, s: &Tensor, t: &Tensor| {
            let y = PreNorm {
                weight: Some(s),
                bias: Some(t),
                eps: 1e-6,
            }
            .apply(x)?;
            assert_eq!(y.dtype(), low);
            Ok(y)
        };
        let by_hand = |x: &Tensor, s: &Tensor, t: &Tensor| {
            x.layer_norm(Some(s), Some(t), 1e-6)?.to_dtype(low)
        };
        let run = |norm: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<_> {
            let loss = autocast(low, || prenorm_branch(&x, (&s, &t, &w), norm))??;
            let grads = loss.backward()?;
            let grads: Vec<Vec<f32>> = inputs
                .iter()
                .map(|v| f32s(grads.get(v).expect("grad")))
                .collect();
            Ok((loss.item()?, grads))
        };
        let (got, want) = (run(&prenorm)?, run(&by_hand)?);
        assert_eq!(got.0.to_bits(), want.0.to_bits(), "{low} loss");
        for (i, (got, want)) in got.1.iter().zip(&want.1).enumerate() {
            assert_eq!(got, want, "{low} gradient {i}");
        }
        // f64 is never lowered.
        let x64 = x.to_dtype(DType::F64)?;
        let (s64, t64) = (s.to_dtype(DType::F64)?, t.to_dtype(DType::F64)?);
        let norm64 = PreNorm {
            weight: Some(&s64),
            bias: Some(&t64),
            eps: 1e-6,
        };
        assert_eq!(autocast(low, || norm64.apply(&x64))??.dtype(), DType::F64);
        // Outside a scope it is the layer norm.
        let plain = PreNorm {
            weight: Some(&s),
            bias: Some(&t),
            eps: 1e-6,
        }
        .apply(&x)?;
        assert_eq!(f32s(&plain), f32s(&x.layer_norm(Some(&s), Some(&t), 1e-6)?));
    }
    Ok(())
}

#[test]
fn autocast_residual_reads_the_half_product_with_the_casts_bits() -> Result<()> {
    for low in [DType::BF16, DType::F16] {
        let variable = |seed, shape: &[usize]| randn_as(seed, shape, DType::F32).into_variable();
        // 128 groups: the gate's and the product's gradients come from the fused pass
        // (at least two groups a thread); a shared gate `[16]` takes the composition.
        // The gate f32 or, cast in the scope, half as a DiT's (a chunk of its adaLN
        // product).
        let (x, h, w) = (
            variable(81, &[128, 3, 16])?,
            variable(82, &[128, 3, 8])?,
            variable(83, &[16, 8])?,
        );
        let gates = [
            (variable(84, &[128, 1, 16])?, false),
            (variable(84, &[128, 1, 16])?, true),
            (variable(85, &[16])?, false),
        ];
        for (gate, half_gate) in gates {
            let inputs = [&x, &h, &w, &gate];
            // x + gate·linear(h) and x + linear(h)·gate, the product in the scope's dtype
            // read as it is, or cast to f32 by hand first (the widest-dtype rule).
            let run = |by_hand: bool, gate_first: bool| -> Result<(u32, Vec<Vec<f32>>)> {
                let loss = autocast(low, || -> Result<Tensor> {
                    let mut gate = match half_gate {
                        true => gate.to_dtype(low)?,
                        false => gate.clone(),
                    };
                    let mut y = h.linear(&w, None)?;
                    assert_eq!(y.dtype(), low);
                    if by_hand {
                        y = y.to_dtype(DType::F32)?;
                        gate = gate.to_dtype(DType::F32)?;
                    }
                    let out = match gate_first {
                        true => x.addcmul(&gate, &y)?,
                        false => x.addcmul(&y, &gate)?,
                    };
                    assert_eq!(out.dtype(), DType::F32);
                    out.square()?.sum_all()
                })??;
                let grads = loss.backward()?;
                let grads = inputs
                    .iter()
                    .map(|v| f32s(grads.get(v).expect("grad")))
                    .collect();
                Ok(((loss.item()? as f32).to_bits(), grads))
            };
            for gate_first in [true, false] {
                let (got, want) = (run(false, gate_first)?, run(true, gate_first)?);
                let shape = gate.shape();
                let case = format!("{low} gate {shape:?} half {half_gate} first {gate_first}");
                assert_eq!(got.0, want.0, "{case}: loss");
                for (i, (got, want)) in got.1.iter().zip(&want.1).enumerate() {
                    assert_eq!(got, want, "{case}: gradient {i}");
                }
            }
        }
    }
    Ok(())
}

/// Forward mode through both: a DiT block's branch `x + g·linear(prenorm(x))` under
/// autocast carries the tangents the cast path gives, bit for bit.
#[test]
fn autocast_prenorm_and_half_residual_tangents_match_the_casts() -> Result<()> {
    let f32s_of = |t: &[Tensor]| t.iter().map(f32s).collect::<Vec<_>>();
    for low in [DType::BF16, DType::F16] {
        let (s, t) = (
            randn_as(91, &[8, 1, 16], DType::F32),
            randn_as(92, &[8, 1, 16], DType::F32),
        );
        let (w, gate) = (
            randn_as(93, &[16, 16], DType::F32),
            randn_as(94, &[8, 1, 16], DType::F32),
        );
        let (x, tx) = (
            randn_as(95, &[8, 3, 16], DType::F32),
            randn_as(96, &[8, 3, 16], DType::F32),
        );
        let (s, t, w, gate) = (&s, &t, &w, &gate);
        let branch = |by_hand: bool| {
            move |p: &[Tensor]| -> Result<Vec<Tensor>> {
                let x = &p[0];
                let norm = PreNorm {
                    weight: Some(s),
                    bias: Some(t),
                    eps: 1e-6,
                };
                let (mut y, mut g) = match by_hand {
                    true => (
                        x.layer_norm(Some(s), Some(t), 1e-6)?.to_dtype(low)?,
                        gate.clone(),
                    ),
                    false => (norm.apply(x)?, gate.to_dtype(low)?),
                };
                y = y.linear(w, None)?;
                if by_hand {
                    y = y.to_dtype(DType::F32)?;
                    g = g.to_dtype(low)?.to_dtype(DType::F32)?;
                }
                Ok(vec![x.addcmul(&g, &y)?])
            }
        };
        let run = |by_hand| {
            autocast(low, || {
                jvp(
                    branch(by_hand),
                    std::slice::from_ref(&x),
                    std::slice::from_ref(&tx),
                )
            })
        };
        let ((out, tan), (want_out, want_tan)) = (run(false)??, run(true)??);
        assert_eq!(tan[0].dtype(), DType::F32);
        assert_eq!(f32s_of(&out), f32s_of(&want_out), "{low} output");
        assert_eq!(f32s_of(&tan), f32s_of(&want_tan), "{low} tangent");
    }
    Ok(())
}

#[test]
fn autocast_leaves_other_ops_and_f64_alone() -> Result<()> {
    let x = randn_as(7, &[4, 6], DType::F32);
    let w = randn_as(8, &[6], DType::F32);
    let run = || -> Result<Vec<Tensor>> {
        Ok(vec![
            x.softmax()?,
            x.layer_norm(Some(&w), None, 1e-5)?,
            x.sum_all()?,
            x.exp()?.mul(&x)?,
            x.mse(&x.mul_scalar(0.5)?)?,
        ])
    };
    let plain = run()?;
    let scoped = autocast(DType::BF16, run)??;
    for (p, s) in plain.iter().zip(&scoped) {
        assert_eq!(s.dtype(), DType::F32);
        assert_eq!(f32s(p), f32s(s));
    }
    // f64 operands are never lowered.
    let (a, b) = (
        randn_as(9, &[3, 3], DType::F64),
        randn_as(10, &[3, 3], DType::F64),
    );
    let exact = a.matmul(&b)?.to_vec_f64()?;
    let scoped = autocast(DType::F16, || a.matmul(&b))??;
    assert_eq!(scoped.dtype(), DType::F64);
    assert_eq!(scoped.to_vec_f64()?, exact);
    Ok(())
}

#[test]
fn autocast_scope_nests_restores_and_refuses_wide_dtypes() -> Result<()> {
    assert_eq!(autocast_dtype(), None);
    {
        let _outer = AutocastGuard::new(Some(DType::BF16))?;
        assert_eq!(autocast_dtype(), Some(DType::BF16));
        {
            let _off = AutocastGuard::new(None)?;
            assert_eq!(autocast_dtype(), None);
        }
        assert_eq!(autocast_dtype(), Some(DType::BF16));
        let _inner = AutocastGuard::new(Some(DType::F16))?;
        assert_eq!(autocast_dtype(), Some(DType::F16));
    }
    assert_eq!(autocast_dtype(), None);
    for wide in [DType::F32, DType::F64, DType::I64] {
        let err = AutocastGuard::new(Some(wide)).err().expect("refused");
        assert!(err.to_string().contains("bf16 or f16"), "{err}");
    }
    assert_eq!(autocast_dtype(), None);
    Ok(())
}

/// The variables of a two-layer network with attention in between (see [`net_loss`]).
fn net_params(seed: u64) -> Result<Vec<Tensor>> {
    Ok(vec![
        randn_as(seed, &[16, 8], DType::F32)
            .mul_scalar(0.3)?
            .into_variable()?,
        randn_as(seed + 1, &[16], DType::F32).into_variable()?,
        randn_as(seed + 2, &[8, 16], DType::F32)
            .mul_scalar(0.3)?
            .into_variable()?,
        randn_as(seed + 3, &[16], DType::F32).into_variable()?,
    ])
}

/// The network's loss on input `x` `[2, 6, 8]`: linear, GELU, layer norm, two-head
/// self-attention, linear, mean square.
fn net_loss(p: &[Tensor], x: &Tensor) -> Result<Tensor> {
    let h = x.linear(&p[0], Some(&p[1]))?.gelu()?;
    let h = h.layer_norm(Some(&p[3]), None, 1e-5)?;
    let heads = h.reshape(&[2, 6, 2, 8])?.permute(&[0, 2, 1, 3])?;
    let a = scaled_dot_product_attention(&heads, &heads, &heads, None, false)?;
    let a = a.permute(&[0, 2, 1, 3])?.reshape(&[2, 6, 16])?;
    a.matmul(&p[2].t()?)?.square()?.mean_all()
}

#[test]
fn autocast_gradients_arrive_in_f32_close_to_f32_gradients() -> Result<()> {
    for low in [DType::BF16, DType::F16] {
        let params = net_params(20)?;
        let x = randn_as(24, &[2, 6, 8], DType::F32);
        let exact = net_loss(&params, &x)?.backward()?;
        let mixed_loss = autocast(low, || net_loss(&params, &x))??;
        assert_eq!(mixed_loss.dtype(), DType::F32);
        // Backward inside a scope too: autocast is off while it runs.
        let mixed = autocast(low, || mixed_loss.backward())??;
        for p in &params {
            let (g, e) = (mixed.get(p).expect("grad"), exact.get(p).expect("grad"));
            assert_eq!(g.dtype(), DType::F32, "{low}");
            let err = rel_err(g, e);
            assert!(err < 3e-2 && err > 0.0, "{low}: relative error {err}");
        }
    }
    Ok(())
}

fn scaler(interval: u64) -> LossScaler {
    LossScaler::new(LossScalerConfig {
        init_scale: 1024.0,
        growth_interval: interval,
        ..LossScalerConfig::default()
    })
    .unwrap()
}

#[test]
fn autocast_loss_scaler_unscales_exactly() -> Result<()> {
    let w = randn_as(30, &[5], DType::F32).into_variable()?;
    let s = scaler(10);
    let loss = w.square()?.sum_all()?;
    let mut grads = s.scale(&loss)?.backward()?;
    assert!(!s.unscale_and_check(&mut grads, [&w])?);
    // Powers of two scale and unscale exactly: the gradient is 2w to the bit.
    assert_eq!(f32s(grads.get(&w).unwrap()), f32s(&w.mul_scalar(2.0)?));
    Ok(())
}

#[test]
fn autocast_loss_scaler_grows_after_clean_steps() {
    let mut s = scaler(3);
    for _ in 0..2 {
        s.update(false);
        assert_eq!(s.scale_factor(), 1024.0);
    }
    s.update(false);
    assert_eq!(s.scale_factor(), 2048.0);
    assert_eq!(s.state().clean_steps, 0);
}

#[test]
fn autocast_loss_scaler_backs_off_and_reports_overflow() -> Result<()> {
    let w = Tensor::from_vec(vec![1.0f32, 2.0], &[2], Device::Cpu)?.into_variable()?;
    let v = Tensor::from_vec(vec![3.0f32], &[1], Device::Cpu)?.into_variable()?;
    let mut s = scaler(3);
    s.update(false);
    s.update(false);
    let mut grads = Gradients::default();
    grads.insert(
        &w,
        Tensor::from_vec(vec![1.0f32, f32::INFINITY], &[2], Device::Cpu)?,
    );
    assert!(s.unscale_and_check(&mut grads, [&w, &v])?);
    s.update(true);
    assert_eq!(s.scale_factor(), 512.0);
    assert_eq!(s.state().clean_steps, 0);
    let mut nan = Gradients::default();
    nan.insert(&v, Tensor::from_vec(vec![f32::NAN], &[1], Device::Cpu)?);
    assert!(s.unscale_and_check(&mut nan, [&v])?);
    // Large but finite gradients are no overflow.
    let mut big = Gradients::default();
    big.insert(
        &w,
        Tensor::from_vec(vec![3e38f32, 3e38], &[2], Device::Cpu)?,
    );
    assert!(!s.unscale_and_check(&mut big, [&w])?);
    Ok(())
}

#[test]
fn autocast_loss_scaler_state_and_config_checks() {
    let mut s = scaler(5);
    s.update(false);
    let saved = s.state();
    let mut t = scaler(5);
    t.load_state(saved).unwrap();
    assert_eq!(s, t);
    let bad = LossScalerState {
        scale: f64::INFINITY,
        clean_steps: 0,
    };
    assert!(t.load_state(bad).is_err());
    for cfg in [
        LossScalerConfig {
            init_scale: 0.0,
            ..LossScalerConfig::default()
        },
        LossScalerConfig {
            growth_factor: 1.0,
            ..LossScalerConfig::default()
        },
        LossScalerConfig {
            backoff_factor: 1.0,
            ..LossScalerConfig::default()
        },
        LossScalerConfig {
            growth_interval: 0,
            ..LossScalerConfig::default()
        },
    ] {
        assert!(LossScaler::new(cfg).is_err(), "{cfg:?}");
    }
}

/// A tiny gradient (2⁻²⁸) flushes to zero in f16 unless the loss is scaled first.
#[test]
fn autocast_f16_loss_scaling_keeps_small_gradients() -> Result<()> {
    let w = randn_as(40, &[4, 4], DType::F32).into_variable()?;
    let x = randn_as(41, &[4, 4], DType::F32);
    let loss = || -> Result<Tensor> {
        autocast(DType::F16, || {
            x.matmul(&w)?.sum_all()?.mul_scalar(2f64.powi(-28))
        })?
    };
    let plain = loss()?.backward()?;
    assert!(f32s(plain.get(&w).unwrap()).iter().all(|&g| g == 0.0));
    let s = LossScaler::new(LossScalerConfig::default())?;
    let mut scaled = s.scale(&loss()?)?.backward()?;
    assert!(!s.unscale_and_check(&mut scaled, [&w])?);
    assert!(f32s(scaled.get(&w).unwrap()).iter().any(|&g| g != 0.0));
    Ok(())
}

fn moons(precision: &str, steps: u64) -> TrainConfig {
    let toml = format!(
        r#"
steps = {steps}
seed = 3
ema_decay = 0.99
log_every = 0
precision = "{precision}"

[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = 64
depth = 2
emb_dim = 16
num_classes = 2

[method]
name = "flow_matching"

[optimizer]
lr = 2e-3

[data]
dataset = "moons"
batch_size = 128
"#
    );
    TrainConfig::from_toml(&toml, "test.toml").unwrap()
}

#[test]
fn autocast_precision_key_parses_and_defaults_to_f32() {
    assert_eq!(moons("bf16", 1).precision, Precision::Bf16);
    assert_eq!(moons("f16", 1).precision, Precision::F16);
    assert_eq!(moons("f32", 1).precision, Precision::F32);
    let toml = moons("f32", 1).to_toml().unwrap();
    assert!(
        !toml.contains("precision"),
        "f32 is the default, not written"
    );
    assert!(moons("bf16", 1)
        .to_toml()
        .unwrap()
        .contains("precision = \"bf16\""));
    let bad = TrainConfig::from_toml(
        &moons("f32", 1)
            .to_toml()
            .unwrap()
            // The first key only (`skip_fraction_min_steps` holds the word too).
            .replacen("steps", "precision = \"f8\"\nsteps", 1),
        "bad.toml",
    );
    assert!(bad.unwrap_err().to_string().contains("precision"));
}

/// The same moons run in f32 and in bf16 (emulated): the loss curves stay close.
#[test]
fn autocast_bf16_training_tracks_f32_on_cpu() -> Result<()> {
    let steps = 60;
    let curve = |p: &str| -> Result<Vec<f64>> {
        let mut t = Trainer::new(moons(p, steps))?;
        (0..steps).map(|_| t.step().map(|r| r.loss)).collect()
    };
    let (f32_curve, bf16_curve) = (curve("f32")?, curve("bf16")?);
    assert_ne!(f32_curve, bf16_curve, "bf16 must actually round");
    // Mean of 10-step windows: single steps are noisy, the trend must agree.
    for (w32, w16) in f32_curve.chunks(10).zip(bf16_curve.chunks(10)) {
        let (m32, m16) = (
            w32.iter().sum::<f64>() / 10.0,
            w16.iter().sum::<f64>() / 10.0,
        );
        assert!((m32 - m16).abs() < 0.05 * m32, "f32 {m32} vs bf16 {m16}");
    }
    Ok(())
}

/// f16 with the loss scaler: an overflowing step is skipped (parameters untouched)
/// and halves the scale; the scale survives a checkpoint; normal steps go on.
#[test]
fn autocast_f16_trainer_skips_overflowing_steps() -> Result<()> {
    let mut t = Trainer::new(moons("f16", 10))?;
    assert_eq!(t.loss_scale(), Some(65536.0));
    let before: Vec<Vec<f32>> = t
        .model()
        .named_params()
        .iter()
        .map(|(_, p)| f32s(p))
        .collect();
    // Targets of magnitude 300 keep the f32 loss finite, but its scaled gradient
    // (×65536) exceeds f16's range of 65504 in the backward products.
    let x = Tensor::full(300.0, &[64, 2], DType::F32, Device::Cpu)?;
    let labels = Tensor::from_vec(vec![0i64; 64], &[64], Device::Cpu)?;
    let r = t.step_on(&Batch::new(x, labels))?;
    assert!(r.loss.is_finite() && r.skipped, "{r:?}");
    assert_eq!((t.skipped(), t.step_count()), (1, 1));
    assert_eq!(t.loss_scale(), Some(32768.0));
    let after: Vec<Vec<f32>> = t
        .model()
        .named_params()
        .iter()
        .map(|(_, p)| f32s(p))
        .collect();
    assert_eq!(before, after);
    let r = t.step()?;
    assert!(!r.skipped && r.loss.is_finite(), "{r:?}");
    let dir = std::env::temp_dir().join(format!("twinflow-autocast-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    t.save(&dir)?;
    let resumed = Trainer::resume(&dir)?;
    assert_eq!(resumed.loss_scale(), Some(32768.0));
    assert_eq!(resumed.config().precision, Precision::F16);
    std::fs::remove_dir_all(&dir).ok();
    // Without f16 there is no scaler.
    assert_eq!(Trainer::new(moons("bf16", 1))?.loss_scale(), None);
    Ok(())
}
