//! Finite-difference checks of forward-mode derivatives, the twin of
//! [`gradcheck`](crate::gradcheck::gradcheck) for [`jvp`]: public so that modules and
//! user code can be checked the same way as the engine's ops.
//!
//! Every float input gets a fixed random tangent `v`. The analytic directional
//! derivative J·v comes from [`jvp`]; the numeric one from central differences along
//! the same direction, `(f(x + ε·v) − f(x − ε·v)) / 2ε`, in f64, compared element by
//! element of the output. The primal output of [`jvp`] is compared with a plain call.
//! With several float inputs the check runs once with all of them carrying their
//! tangents and once for each alone (the others then carry none, which a rule must
//! treat as zero).

use crate::error::{Error, Result};
use crate::gradcheck::{require_f64, GradcheckOptions, GradcheckReport};
use crate::{jvp, no_grad, DType, Generator, Tensor};

/// Checks the JVP of `f` along random tangents of every float input against central
/// differences. Inputs must be f64 (integer inputs, e.g. indices, carry no tangent).
/// Returns an error naming the output element and both values at the first one out of
/// tolerance (see [`GradcheckOptions`]).
pub fn jvpcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: &GradcheckOptions,
) -> Result<GradcheckReport> {
    require_f64("jvpcheck", inputs)?;
    let floats: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].dtype().is_float())
        .collect();
    let mut rng = Generator::new(opts.seed);
    let tangents = floats
        .iter()
        .map(|&i| rng.randn(inputs[i].shape(), DType::F64, inputs[i].device()))
        .collect::<Result<Vec<_>>>()?;
    // Every input carrying its tangent, then (with several) each alone: the rules'
    // branches for inputs without a tangent run too.
    let mut subsets = vec![floats.clone()];
    if floats.len() > 1 {
        subsets.extend(floats.iter().map(|&i| vec![i]));
    }
    let mut report = GradcheckReport {
        max_abs_error: 0.0,
        checked: 0,
    };
    for subset in subsets {
        let directions: Vec<(usize, Tensor)> = floats
            .iter()
            .zip(&tangents)
            .filter(|(i, _)| subset.contains(i))
            .map(|(&i, t)| (i, t.clone()))
            .collect();
        let r = check_direction(&f, inputs, &directions, opts)?;
        report.max_abs_error = report.max_abs_error.max(r.max_abs_error);
        report.checked += r.checked;
    }
    Ok(report)
}

/// The check along one direction: tangents on the inputs listed in `directions`, none
/// on the others.
fn check_direction(
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    directions: &[(usize, Tensor)],
    opts: &GradcheckOptions,
) -> Result<GradcheckReport> {
    let with = |duals: &[Tensor]| {
        let mut xs = inputs.to_vec();
        directions
            .iter()
            .zip(duals)
            .for_each(|((i, _), d)| xs[*i] = d.clone());
        xs
    };
    let primals: Vec<Tensor> = directions.iter().map(|(i, _)| inputs[*i].clone()).collect();
    let tangents: Vec<Tensor> = directions.iter().map(|(_, t)| t.clone()).collect();
    let (out, tangent) = jvp(|d| Ok(vec![f(&with(d))?]), &primals, &tangents)?;
    let moved = |sign: f64| -> Result<Vec<f64>> {
        let xs = primals
            .iter()
            .zip(&tangents)
            .map(|(p, v)| p.add(&v.mul_scalar(sign * opts.eps)?))
            .collect::<Result<Vec<_>>>()?;
        no_grad(|| f(&with(&xs))?.to_vec_f64())
    };
    let (plus, minus) = (moved(1.0)?, moved(-1.0)?);
    let plain = no_grad(|| f(inputs)?.to_vec_f64())?;
    let which: Vec<usize> = directions.iter().map(|(i, _)| *i).collect();
    let mut report = GradcheckReport {
        max_abs_error: 0.0,
        checked: 0,
    };
    for (i, (o, p)) in out[0].to_vec_f64()?.iter().zip(&plain).enumerate() {
        if !opts.agree(*o, *p) {
            return Err(Error::invalid(
                "jvpcheck",
                format!("output element {i}: jvp's primal {o:.10e}, plain call {p:.10e}"),
            ));
        }
    }
    for (i, a) in tangent[0].to_vec_f64()?.into_iter().enumerate() {
        let numeric = (plus[i] - minus[i]) / (2.0 * opts.eps);
        if !opts.agree(a, numeric) {
            return Err(Error::invalid(
                "jvpcheck",
                format!(
                    "tangents on inputs {which:?}: output (shape {:?}), element {i}: \
                     analytic {a:.10e}, numeric {numeric:.10e}",
                    out[0].shape()
                ),
            ));
        }
        report.max_abs_error = report.max_abs_error.max((a - numeric).abs());
        report.checked += 1;
    }
    Ok(report)
}
