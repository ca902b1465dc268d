//! The forward-mode machinery itself (`twinflow_engine::jvp`): what it returns, how it
//! meets reverse mode, no_grad and autocast, and the errors it gives. Each op's JVP rule
//! has its own `jvpcheck_<op>` test beside its `gradcheck_<op>`.

use twinflow_engine::gradcheck::GradcheckOptions;
use twinflow_engine::jvpcheck::jvpcheck;
use twinflow_engine::{
    autocast, jvp, no_grad, scaled_dot_product_attention, DType, Device, Generator, Result, Tensor,
};

fn t(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, Device::Cpu).expect("tensor")
}

#[test]
fn jvp_gives_outputs_and_directional_derivatives() -> Result<()> {
    let x = t(&[1.0, 2.0, 3.0], &[3]);
    let v = t(&[1.0, -1.0, 0.5], &[3]);
    let (out, tan) = jvp(|p| Ok(vec![p[0].square()?.sum_all()?]), &[x], &[v])?;
    assert_eq!(out[0].item()?, 14.0);
    // d/dε Σ (x + εv)² = 2·Σ x·v = 2·(1 − 2 + 1.5)
    assert_eq!(tan[0].item()?, 1.0);
    Ok(())
}

#[test]
fn outputs_independent_of_the_primals_get_zero_tangents() -> Result<()> {
    let x = t(&[1.0, 2.0], &[2]);
    let c = t(&[5.0, 6.0], &[2]);
    let (_, tan) = jvp(|_| Ok(vec![c.exp()?]), &[x], &[t(&[1.0, 1.0], &[2])])?;
    assert_eq!(tan[0].to_vec::<f64>()?, vec![0.0, 0.0]);
    Ok(())
}

/// MeanFlow's use: the primal output keeps its graph to the weights while the tangent
/// is a constant target.
#[test]
fn primal_outputs_backpropagate_and_tangents_are_constants() -> Result<()> {
    let w = t(&[0.5, -2.0], &[2]).into_variable()?;
    let x = t(&[3.0, 4.0], &[2]);
    let v = t(&[1.0, 1.0], &[2]);
    let (out, tan) = jvp(
        |p| Ok(vec![p[0].mul(&w)?.tanh()?]),
        std::slice::from_ref(&x),
        &[v],
    )?;
    assert!(out[0].requires_grad());
    assert!(!tan[0].requires_grad());
    let grads = out[0].sub(&tan[0])?.square()?.sum_all()?.backward()?;
    // The same loss with the tangent given as a constant, without forward mode.
    let w2 = t(&[0.5, -2.0], &[2]).into_variable()?;
    let y = x.mul(&w2)?.tanh()?;
    let expected = y.sub(&tan[0])?.square()?.sum_all()?.backward()?;
    assert_eq!(
        grads.get(&w).expect("grad").to_vec::<f64>()?,
        expected.get(&w2).expect("grad").to_vec::<f64>()?
    );
    Ok(())
}

#[test]
fn gradients_flow_through_the_primals_too() -> Result<()> {
    let x = t(&[3.0, 4.0], &[2]).into_variable()?;
    let (out, _) = jvp(
        |p| Ok(vec![p[0].square()?]),
        std::slice::from_ref(&x),
        &[x.ones_like()?],
    )?;
    let grads = out[0].sum_all()?.backward()?;
    assert_eq!(
        grads.get(&x).expect("grad").to_vec::<f64>()?,
        vec![6.0, 8.0]
    );
    Ok(())
}

#[test]
fn jvp_works_under_no_grad_and_records_nothing() -> Result<()> {
    let w = t(&[2.0], &[1]).into_variable()?;
    let (out, tan) = no_grad(|| {
        jvp(
            |p| Ok(vec![p[0].mul(&w)?]),
            &[t(&[3.0], &[1])],
            &[t(&[1.0], &[1])],
        )
    })?;
    assert!(!out[0].requires_grad());
    assert_eq!(tan[0].to_vec::<f64>()?, vec![2.0]);
    Ok(())
}

#[test]
fn tangents_do_not_leak_out_of_the_call() -> Result<()> {
    let mut kept = None;
    let (out, _) = jvp(
        |p| {
            kept = Some(p[0].exp()?);
            Ok(vec![p[0].clone()])
        },
        &[t(&[1.0], &[1])],
        &[t(&[1.0], &[1])],
    )?;
    // Ops after the call see plain tensors: a second jvp starts from scratch.
    let inner = kept.expect("kept");
    let (_, tan) = jvp(
        |p| Ok(vec![p[0].mul(&inner)?]),
        &[out[0].clone()],
        &[t(&[0.0], &[1])],
    )?;
    assert_eq!(tan[0].to_vec::<f64>()?, vec![0.0]);
    Ok(())
}

#[test]
fn detach_stops_the_tangent() -> Result<()> {
    let (_, tan) = jvp(
        |p| Ok(vec![p[0].detach().add(&p[0])?]),
        &[t(&[1.0], &[1])],
        &[t(&[1.0], &[1])],
    )?;
    assert_eq!(tan[0].to_vec::<f64>()?, vec![1.0]);
    Ok(())
}

#[test]
fn bad_calls_are_errors_that_say_why() {
    let x = t(&[1.0, 2.0], &[2]);
    let e = jvp(|p| Ok(p.to_vec()), std::slice::from_ref(&x), &[]).unwrap_err();
    assert!(e.to_string().contains("1 primals but 0 tangents"), "{e}");
    let e = jvp(
        |p| Ok(p.to_vec()),
        std::slice::from_ref(&x),
        &[t(&[1.0], &[1])],
    )
    .unwrap_err();
    assert!(e.to_string().contains("tangent 0 has shape [1]"), "{e}");
    let ids = Tensor::from_vec(vec![1i64], &[1], Device::Cpu).expect("ids");
    let e = jvp(
        |p| Ok(p.to_vec()),
        std::slice::from_ref(&ids),
        std::slice::from_ref(&ids),
    )
    .unwrap_err();
    assert!(e.to_string().contains("only float tensors"), "{e}");
    let e = jvp(
        |p| {
            jvp(|q| Ok(q.to_vec()), p, p)?;
            Ok(p.to_vec())
        },
        std::slice::from_ref(&x),
        std::slice::from_ref(&x),
    )
    .unwrap_err();
    assert!(e.to_string().contains("do not nest"), "{e}");
}

/// The tangent takes its primal's dtype: f32 tangents of an f32 primal, and inside
/// autocast the lowered ops carry bf16 tangents like their bf16 outputs.
#[test]
fn tangents_follow_the_primal_dtype_under_autocast() -> Result<()> {
    let mut g = Generator::new(3);
    let x = g.randn(&[4, 8], DType::F32, Device::Cpu)?;
    let w = g.randn(&[6, 8], DType::F32, Device::Cpu)?;
    let v = g.randn(&[4, 8], DType::F64, Device::Cpu)?;
    let (out, tan) = autocast(DType::BF16, || {
        jvp(
            |p| Ok(vec![p[0].linear(&w, None)?]),
            std::slice::from_ref(&x),
            std::slice::from_ref(&v),
        )
    })??;
    assert_eq!(out[0].dtype(), DType::BF16);
    assert_eq!(tan[0].dtype(), DType::BF16);
    // J·v = v·wᵀ, up to bf16 rounding of both operands and the result.
    let exact = v.to_dtype(DType::F32)?.linear(&w, None)?.to_vec_f64()?;
    for (a, e) in tan[0].to_vec_f64()?.iter().zip(exact) {
        assert!((a - e).abs() <= 0.05 * (1.0 + e.abs()), "{a} vs {e}");
    }
    Ok(())
}

/// The fused attention tangent against the same function written with unfused ops.
#[test]
fn fused_attention_tangent_matches_the_composite() -> Result<()> {
    for causal in [false, true] {
        let mut g = Generator::new(11);
        let mut r = |s: &[usize]| g.randn(s, DType::F64, Device::Cpu);
        let (q, k, v) = (r(&[2, 3, 5, 4])?, r(&[2, 3, 7, 4])?, r(&[2, 3, 7, 6])?);
        let (tq, tk, tv) = (r(&[2, 3, 5, 4])?, r(&[2, 3, 7, 4])?, r(&[2, 3, 7, 6])?);
        let primals = [q, k, v];
        let tangents = [tq, tk, tv];
        let fused = |p: &[Tensor]| {
            Ok(vec![scaled_dot_product_attention(
                &p[0], &p[1], &p[2], None, causal,
            )?])
        };
        let composite = |p: &[Tensor]| -> Result<Vec<Tensor>> {
            let s = p[0].matmul(&p[1].t()?)?.mul_scalar(0.5)?;
            let s = match causal {
                false => s,
                true => {
                    let (rows, keys) = (5, 7);
                    let mask: Vec<f64> = (0..rows * keys)
                        .map(|i| if i % keys > i / keys { -1e300 } else { 0.0 })
                        .collect();
                    s.add(&t(&mask, &[rows, keys]))?
                }
            };
            Ok(vec![s.softmax()?.matmul(&p[2])?])
        };
        let (o1, t1) = jvp(fused, &primals, &tangents)?;
        let (o2, t2) = jvp(composite, &primals, &tangents)?;
        for (a, b) in [(&o1[0], &o2[0]), (&t1[0], &t2[0])] {
            for (x, y) in a.to_vec_f64()?.iter().zip(b.to_vec_f64()?) {
                assert!((x - y).abs() < 1e-12, "causal {causal}: {x} vs {y}");
            }
        }
    }
    Ok(())
}

#[test]
fn jvpcheck_catches_a_wrong_derivative() {
    // detach hides the dependence from forward mode but not from finite differences.
    let x = t(&[0.3, -0.7], &[2]);
    let r = jvpcheck(|p| p[0].detach().sin(), &[x], &GradcheckOptions::default());
    assert!(r.is_err());
}
