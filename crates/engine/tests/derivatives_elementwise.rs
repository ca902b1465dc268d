//! Derivative checks (analytic vs central differences, in f64) of every differentiable
//! elementwise op and reduction, on random shapes, values, broadcasts and strided views.
//!
//! Two proptests per op from one body (`derivative_checks!`, in `common`):
//! `gradcheck_<op>` checks the gradient from `backward`, `jvpcheck_<op>` the tangent
//! from `jvp`, on the same cases. Inputs are kept inside each op's domain and away from
//! its kinks: the finite-difference step is 1e-6, so a value within that distance of a
//! kink would make the numeric derivative meaningless.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use twinflow_engine::gradcheck::GradcheckOptions;
use twinflow_engine::{jvp, DType, Device, Generator, Result, Tensor};

mod common;
use common::elementwise::{
    arg_of, broadcast_shapes, nonzero, positive, reduction, shape, view, Arg, Reduction, View,
};
use common::{config, derivative_checks, Mode};

// ---------------------------------------------------------------------------------------
// Shared strategies and helpers
// ---------------------------------------------------------------------------------------

/// Few cases per op: each case already checks every element of every input (gradients)
/// or of the output (tangents).
const CASES: u32 = 24;

/// How far values are kept from a kink (relu/abs at 0, clamp bounds, ties).
const MARGIN: f64 = 1e-2;

/// This file's methods of the shared `Arg`.
impl Arg {
    /// The stored f64 tensor, standard normal values mapped through `domain`.
    fn tensor(&self, domain: impl Fn(f64) -> f64) -> Tensor {
        let stored = self.view.stored_shape(&self.shape);
        Tensor::from_vec(self.values(domain), &stored, Device::Cpu).expect("input tensor")
    }

    /// The stored f64 tensor with all values distinct, at least 0.15 apart (so maximum,
    /// minimum and their reductions never meet a tie).
    fn distinct_tensor(&self) -> Tensor {
        let stored = self.view.stored_shape(&self.shape);
        let n: usize = stored.iter().product();
        let mut g = Generator::new(self.seed);
        let rank = g.permutation(n);
        let jitter = g
            .uniform(&[n], 0.0, 0.1, DType::F64, Device::Cpu)
            .and_then(|t| t.to_vec_f64())
            .expect("random values");
        let values = rank
            .iter()
            .zip(jitter)
            .map(|(&r, j)| (r as f64 - n as f64 / 2.0) * 0.25 + j)
            .collect();
        Tensor::from_vec(values, &stored, Device::Cpu).expect("input tensor")
    }

    /// The input as the op sees it.
    fn view(&self, stored: &Tensor) -> Result<Tensor> {
        self.view.apply(stored)
    }
}

/// An input of rank 0..=3.
fn arg() -> impl Strategy<Value = Arg> {
    arg_of(shape(0, 3))
}

/// Two inputs whose shapes broadcast together, each with its own view and values.
fn arg_pair() -> impl Strategy<Value = (Arg, Arg)> {
    (broadcast_shapes(2), view(), view(), any::<u64>()).prop_map(|(mut s, va, vb, seed)| {
        let b = Arg {
            shape: s.pop().unwrap(),
            view: vb,
            seed: seed.wrapping_add(1),
        };
        let a = Arg {
            shape: s.pop().unwrap(),
            view: va,
            seed,
        };
        (a, b)
    })
}

// Domains: maps from standard normal values into an op's domain.

fn any_real(x: f64) -> f64 {
    x
}

/// `x` moved out of the `MARGIN`-neighbourhood of each kink.
fn avoid(x: f64, kinks: &[f64]) -> f64 {
    kinks.iter().fold(x, |x, &k| match x - k {
        d if d.abs() >= MARGIN => x,
        d if d < 0.0 => k - MARGIN,
        _ => k + MARGIN,
    })
}

/// The `mode` check of `f` at `inputs`, as a proptest assertion.
fn check(
    mode: Mode,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> std::result::Result<(), TestCaseError> {
    let r = mode.check(f, inputs, &GradcheckOptions::default());
    prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    Ok(())
}

/// The `mode` check of a unary op on one input with values in `domain`.
fn check_unary(
    mode: Mode,
    a: &Arg,
    domain: impl Fn(f64) -> f64,
    op: impl Fn(&Tensor) -> Result<Tensor>,
) -> std::result::Result<(), TestCaseError> {
    check(mode, |x| op(&a.view(&x[0])?), &[a.tensor(domain)])
}

/// The `mode` check of a binary op, `rhs` with values in `rhs_domain`.
fn check_binary(
    mode: Mode,
    (a, b): &(Arg, Arg),
    rhs_domain: impl Fn(f64) -> f64,
    op: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> std::result::Result<(), TestCaseError> {
    let inputs = [a.tensor(any_real), b.tensor(rhs_domain)];
    check(mode, |x| op(&a.view(&x[0])?, &b.view(&x[1])?), &inputs)
}

/// The `mode` check of a reduction of `input` (stored values of `r.arg`).
fn check_reduction(
    mode: Mode,
    r: &Reduction,
    input: Tensor,
    op: impl Fn(&Tensor, &[isize], bool) -> Result<Tensor>,
) -> std::result::Result<(), TestCaseError> {
    check(
        mode,
        |x| op(&r.arg.view(&x[0])?, &r.dims, r.keepdim),
        &[input],
    )
}

// ---------------------------------------------------------------------------------------
// Binary ops (with broadcasting)
// ---------------------------------------------------------------------------------------

derivative_checks! {
    #![proptest_config(config(CASES))]

    fn gradcheck_add / jvpcheck_add (mode, args in arg_pair()) {
        check_binary(mode, &args, any_real, |a, b| a.add(b))?;
    }

    fn gradcheck_sub / jvpcheck_sub (mode, args in arg_pair()) {
        check_binary(mode, &args, any_real, |a, b| a.sub(b))?;
    }

    fn gradcheck_mul / jvpcheck_mul (mode, args in arg_pair()) {
        check_binary(mode, &args, any_real, |a, b| a.mul(b))?;
    }

    fn gradcheck_div / jvpcheck_div (mode, args in arg_pair()) {
        check_binary(mode, &args, nonzero, |a, b| a.div(b))?;
    }

    // maximum/minimum: no ties between the operands, whatever the broadcast pairs up:
    // a lies on the grid k·0.1 + 0.025 and b on k·0.1 + 0.075, so |a − b| ≥ 0.05.
    fn gradcheck_maximum / jvpcheck_maximum (mode, (a, b) in arg_pair()) {
        let inputs = [a.tensor(|x| grid(x, 0.025)), b.tensor(|x| grid(x, 0.075))];
        check(mode, |x| a.view(&x[0])?.maximum(&b.view(&x[1])?), &inputs)?;
    }

    fn gradcheck_minimum / jvpcheck_minimum (mode, (a, b) in arg_pair()) {
        let inputs = [a.tensor(|x| grid(x, 0.025)), b.tensor(|x| grid(x, 0.075))];
        check(mode, |x| a.view(&x[0])?.minimum(&b.view(&x[1])?), &inputs)?;
    }

    // where_cond: the mask is a constant built inside the function (a mask input would
    // be perturbed by the check and flip at 0); only the two branches are checked.
    fn gradcheck_where_cond / jvpcheck_where_cond (
        mode,
        shapes in broadcast_shapes(3),
        views in (view(), view()),
        seed in any::<u64>(),
    ) {
        let arg = |i: usize, view: View| Arg {
            shape: shapes[i].clone(),
            view,
            seed: seed.wrapping_add(i as u64),
        };
        let (t, f) = (arg(1, views.0), arg(2, views.1));
        let mask_src = arg(0, View::Plain).tensor(any_real);
        let zero = Tensor::zeros(&[], DType::F64, Device::Cpu).expect("zero");
        let mask = mask_src.gt(&zero).expect("mask");
        check(
            mode,
            |x| mask.where_cond(&t.view(&x[0])?, &f.view(&x[1])?),
            &[t.tensor(any_real), f.tensor(any_real)],
        )?;
    }

    // addcmul: x + a·b with all three broadcast together, each possibly a strided view.
    fn gradcheck_addcmul / jvpcheck_addcmul (
        mode,
        shapes in broadcast_shapes(3),
        views in (view(), view(), view()),
        seed in any::<u64>(),
    ) {
        let arg = |i: usize, view: View| Arg {
            shape: shapes[i].clone(),
            view,
            seed: seed.wrapping_add(i as u64),
        };
        let (x, a, b) = (arg(0, views.0), arg(1, views.1), arg(2, views.2));
        check(
            mode,
            |v| x.view(&v[0])?.addcmul(&a.view(&v[1])?, &b.view(&v[2])?),
            &[x.tensor(any_real), a.tensor(any_real), b.tensor(any_real)],
        )?;
    }

    // addcmul as a gated residual, x + gate·y with gate [B, 1, D] (first or second
    // factor): at two threads and four or more groups, its backward takes the fused
    // pass that sums the gate's gradient beside y's.
    fn gradcheck_addcmul_gated / jvpcheck_addcmul_gated (
        mode,
        (groups, tokens, d) in (4usize..=6, 1usize..=3, 1usize..=4),
        gate_first in any::<bool>(),
        views in (view(), view()),
        seed in any::<u64>(),
    ) {
        let full = vec![groups, tokens, d];
        let arg = |i: usize, shape: &[usize], view: View| Arg {
            shape: shape.to_vec(),
            view,
            seed: seed.wrapping_add(i as u64),
        };
        let x = arg(0, &full, View::Plain);
        let (y, gate) = (arg(1, &full, views.0), arg(2, &[groups, 1, d], views.1));
        let inputs = [x.tensor(any_real), y.tensor(any_real), gate.tensor(any_real)];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        pool.install(|| {
            check(
                mode,
                |v| {
                    let (y, gate) = (y.view(&v[1])?, gate.view(&v[2])?);
                    match gate_first {
                        true => x.view(&v[0])?.addcmul(&gate, &y),
                        false => x.view(&v[0])?.addcmul(&y, &gate),
                    }
                },
                &inputs,
            )
        })?;
    }
}

/// `x` snapped onto the grid `k·0.1 + offset`.
fn grid(x: f64, offset: f64) -> f64 {
    (x * 10.0).floor() / 10.0 + offset
}

// ---------------------------------------------------------------------------------------
// Unary ops
// ---------------------------------------------------------------------------------------

derivative_checks! {
    #![proptest_config(config(CASES))]

    fn gradcheck_neg / jvpcheck_neg (mode, a in arg()) {
        check_unary(mode, &a, any_real, |x| x.neg())?;
    }

    fn gradcheck_exp / jvpcheck_exp (mode, a in arg()) {
        check_unary(mode, &a, any_real, |x| x.exp())?;
    }

    fn gradcheck_log / jvpcheck_log (mode, a in arg()) {
        check_unary(mode, &a, positive, |x| x.log())?;
    }

    fn gradcheck_sqrt / jvpcheck_sqrt (mode, a in arg()) {
        check_unary(mode, &a, positive, |x| x.sqrt())?;
    }

    fn gradcheck_rsqrt / jvpcheck_rsqrt (mode, a in arg()) {
        check_unary(mode, &a, positive, |x| x.rsqrt())?;
    }

    fn gradcheck_recip / jvpcheck_recip (mode, a in arg()) {
        check_unary(mode, &a, nonzero, |x| x.recip())?;
    }

    fn gradcheck_square / jvpcheck_square (mode, a in arg()) {
        check_unary(mode, &a, any_real, |x| x.square())?;
    }

    fn gradcheck_powf / jvpcheck_powf (mode, a in arg(), p in -2.5f64..3.5) {
        check_unary(mode, &a, positive, |x| x.powf(p))?;
    }

    fn gradcheck_abs / jvpcheck_abs (mode, a in arg()) {
        check_unary(mode, &a, |x| avoid(x, &[0.0]), |x| x.abs())?;
    }

    fn gradcheck_sin / jvpcheck_sin (mode, a in arg()) {
        check_unary(mode, &a, |x| 2.0 * x, |x| x.sin())?;
    }

    fn gradcheck_cos / jvpcheck_cos (mode, a in arg()) {
        check_unary(mode, &a, |x| 2.0 * x, |x| x.cos())?;
    }

    fn gradcheck_tanh / jvpcheck_tanh (mode, a in arg()) {
        check_unary(mode, &a, any_real, |x| x.tanh())?;
    }

    fn gradcheck_sigmoid / jvpcheck_sigmoid (mode, a in arg()) {
        check_unary(mode, &a, |x| 2.0 * x, |x| x.sigmoid())?;
    }

    fn gradcheck_relu / jvpcheck_relu (mode, a in arg()) {
        check_unary(mode, &a, |x| avoid(x, &[0.0]), |x| x.relu())?;
    }

    fn gradcheck_gelu / jvpcheck_gelu (mode, a in arg()) {
        check_unary(mode, &a, |x| 2.0 * x, |x| x.gelu())?;
    }

    fn gradcheck_gelu_erf / jvpcheck_gelu_erf (mode, a in arg()) {
        check_unary(mode, &a, |x| 2.0 * x, |x| x.gelu_erf())?;
    }

    fn gradcheck_silu / jvpcheck_silu (mode, a in arg()) {
        check_unary(mode, &a, |x| 2.0 * x, |x| x.silu())?;
    }

    // Bounds at least 0.2 apart, so moving a value off one bound cannot land it on
    // the other.
    fn gradcheck_clamp / jvpcheck_clamp (mode, a in arg(), lo in -1.5f64..-0.1, hi in 0.1f64..1.5) {
        check_unary(mode, &a, |x| avoid(x, &[lo, hi]), |x| x.clamp(lo, hi))?;
    }

    fn gradcheck_affine / jvpcheck_affine (
        mode,
        a in arg(),
        scale in -3.0f64..3.0,
        shift in -3.0f64..3.0,
    ) {
        check_unary(mode, &a, any_real, |x| x.affine(scale, shift))?;
    }

    // Casting f64 to f64 is the identity and must pass derivatives through unchanged;
    // composed with `mul` so the tensor is also used by a second op. Through f32 the
    // round trip is too lossy for finite differences, so there the derivative is
    // checked directly: d/dx Σ f32(x)·c = c, delivered as f64; the tangent of
    // f32(x)·c along v is f32(v)·c.
    fn gradcheck_to_dtype / jvpcheck_to_dtype (mode, a in arg(), c_seed in any::<u64>()) {
        check_unary(mode, &a, any_real, |x| x.to_dtype(DType::F64)?.mul(&x.sin()?))?;
        match mode {
            Mode::Gradient => to_f32_gradient_is_cast_back(&a, c_seed)?,
            Mode::Jvp => to_f32_tangent_is_cast(&a, c_seed)?,
        }
    }
}

/// The tangent of to_dtype(view(x), F32)·c along v is f32(view(v))·c, in f32.
fn to_f32_tangent_is_cast(a: &Arg, c_seed: u64) -> std::result::Result<(), TestCaseError> {
    let x = a.tensor(any_real);
    let mut g = Generator::new(c_seed);
    let c = g.randn(&a.shape, DType::F32, Device::Cpu)?;
    let v = g.randn(x.shape(), DType::F64, Device::Cpu)?;
    let f = |p: &[Tensor]| Ok(vec![a.view(&p[0])?.to_dtype(DType::F32)?.mul(&c)?]);
    let (_, tangents) = jvp(f, &[x], std::slice::from_ref(&v))?;
    prop_assert_eq!(tangents[0].dtype(), DType::F32);
    prop_assert_eq!(tangents[0].shape(), a.shape.as_slice());
    let want: Vec<f64> = (a.view(&v)?.to_vec_f64()?.into_iter())
        .zip(c.to_vec::<f32>()?)
        .map(|(v, c)| f64::from(v as f32 * c))
        .collect();
    // Exact: one rounding to f32, one f32 product, and f32 -> f64 is exact.
    prop_assert_eq!(tangents[0].to_vec_f64()?, want);
    Ok(())
}

/// d/dx Σ to_dtype(view(x), F32)·c is c (an f32 tensor) at the positions the view
/// reads, 0 elsewhere, and arrives as an f64 gradient of x's stored shape.
fn to_f32_gradient_is_cast_back(a: &Arg, c_seed: u64) -> std::result::Result<(), TestCaseError> {
    let x = a.tensor(any_real).into_variable()?;
    let c = Generator::new(c_seed).randn(&a.shape, DType::F32, Device::Cpu)?;
    let loss = a.view(&x)?.to_dtype(DType::F32)?.mul(&c)?.sum_all()?;
    let grads = loss.backward()?;
    let g = grads.get(&x).expect("gradient of x");
    prop_assert_eq!(g.dtype(), DType::F64);
    prop_assert_eq!(g.shape(), x.shape());
    // Which stored element each element of the view reads: the view of 0, 1, 2, ...
    let n = x.elem_count();
    let positions = Tensor::arange(n, DType::F64, Device::Cpu)?.reshape(x.shape())?;
    let mut want = vec![0.0; n];
    for (p, c) in a
        .view(&positions)?
        .to_vec_f64()?
        .into_iter()
        .zip(c.to_vec_f64()?)
    {
        want[p as usize] = c;
    }
    // Exact: Σ's backward times c is 1·c in f32, and f32 -> f64 is exact.
    prop_assert_eq!(g.to_vec_f64()?, want);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------

derivative_checks! {
    #![proptest_config(config(CASES))]

    fn gradcheck_sum / jvpcheck_sum (mode, r in reduction()) {
        check_reduction(mode, &r, r.arg.tensor(any_real), |x, d, k| x.sum(d, k))?;
    }

    // The second factor has the first's shape with the dims of `ones` broadcast (size 1).
    fn gradcheck_sum_product / jvpcheck_sum_product (
        mode,
        r in reduction(),
        view in view(),
        ones in any::<u8>(),
    ) {
        let shape = (r.arg.shape.iter().enumerate())
            .map(|(d, &n)| if ones >> d & 1 == 1 { 1 } else { n })
            .collect();
        let other = Arg { shape, view, seed: r.arg.seed.wrapping_add(1) };
        check(
            mode,
            |x| r.arg.view(&x[0])?.sum_product(&other.view(&x[1])?, &r.dims, r.keepdim),
            &[r.arg.tensor(any_real), other.tensor(any_real)],
        )?;
    }

    fn gradcheck_mean / jvpcheck_mean (mode, r in reduction()) {
        check_reduction(mode, &r, r.arg.tensor(any_real), |x, d, k| x.mean(d, k))?;
    }

    // max/min: all values distinct, so no reduction has a tie (where the gradient
    // would be shared and the central difference one-sided).
    fn gradcheck_max / jvpcheck_max (mode, r in reduction()) {
        check_reduction(mode, &r, r.arg.distinct_tensor(), |x, d, k| x.max(d, k))?;
    }

    fn gradcheck_min / jvpcheck_min (mode, r in reduction()) {
        check_reduction(mode, &r, r.arg.distinct_tensor(), |x, d, k| x.min(d, k))?;
    }

    // With a single element per reduction only correction 0 is defined.
    fn gradcheck_var / jvpcheck_var (mode, r in reduction(), correction in 0usize..=1) {
        let correction = if r.count() > 1 { correction } else { 0 };
        check_reduction(mode, &r, r.arg.tensor(any_real), |x, d, k| x.var(d, correction, k))?;
    }

    fn gradcheck_logsumexp / jvpcheck_logsumexp (mode, r in reduction()) {
        check_reduction(mode, &r, r.arg.tensor(|x| 2.0 * x), |x, d, k| x.logsumexp(d, k))?;
    }
}
