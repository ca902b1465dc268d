//! Finite-difference gradient checks, public so that modules and user code can be
//! checked the same way as the engine's ops.
//!
//! The function under test is reduced to a scalar `L = Σ f(x)·r` with fixed random
//! weights `r`, so every output element contributes. The analytic gradient of `L`
//! comes from [`Tensor::backward`]; the numeric one from central differences
//! `(L(x + ε·eᵢ) − L(x − ε·eᵢ)) / 2ε`, element by element, in f64.

use crate::error::{Error, Result};
use crate::{no_grad, DType, Generator, Tensor};

/// Step size and tolerances of [`gradcheck`].
#[derive(Debug, Clone, Copy)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    /// Relative tolerance: `|analytic − numeric| ≤ atol + rtol·max(|analytic|, |numeric|)`.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Seed of the output weights `r`.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-7,
            seed: 0,
        }
    }
}

/// Refuses float inputs that are not f64 (finite differences need its precision),
/// naming the check `op`.
pub(crate) fn require_f64(op: &'static str, inputs: &[Tensor]) -> Result<()> {
    match inputs
        .iter()
        .find(|t| t.dtype().is_float() && t.dtype() != DType::F64)
    {
        None => Ok(()),
        Some(t) => Err(Error::invalid(
            op,
            format!("inputs must be f64, got {}", t.dtype()),
        )),
    }
}

impl GradcheckOptions {
    /// Whether an analytic and a numeric value agree within the tolerances (never
    /// when either is NaN).
    pub(crate) fn agree(&self, analytic: f64, numeric: f64) -> bool {
        let tolerance = self.atol + self.rtol * analytic.abs().max(numeric.abs());
        (analytic - numeric).abs() <= tolerance
    }
}

/// The largest disagreement found by a passing [`gradcheck`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradcheckReport {
    /// Largest `|analytic − numeric|`.
    pub max_abs_error: f64,
    /// Number of gradient elements compared.
    pub checked: usize,
}

/// Checks the gradients of `f` with respect to every float input against central
/// differences. Inputs must be f64 (integer inputs, e.g. indices, pass through
/// unperturbed). Returns an error naming the input, the element and both values at the
/// first element out of tolerance.
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: &GradcheckOptions,
) -> Result<GradcheckReport> {
    require_f64("gradcheck", inputs)?;
    let vars = inputs
        .iter()
        .map(|t| match t.dtype().is_float() {
            true => t.detach().contiguous_copy()?.into_variable(),
            false => Ok(t.clone()),
        })
        .collect::<Result<Vec<_>>>()?;
    let out = f(&vars)?;
    let weights = Generator::new(opts.seed).randn(out.shape(), DType::F64, out.device())?;
    let grads = out.mul(&weights)?.sum_all()?.backward()?;
    let loss_at =
        |xs: &[Tensor]| -> Result<f64> { no_grad(|| f(xs)?.mul(&weights)?.sum_all()?.item()) };
    let mut report = GradcheckReport {
        max_abs_error: 0.0,
        checked: 0,
    };
    for (j, var) in vars.iter().enumerate().filter(|(_, v)| v.is_variable()) {
        let analytic = match grads.get(var) {
            Some(g) => g.to_vec_f64()?,
            None => vec![0.0; var.elem_count()],
        };
        let base = var.to_vec_f64()?;
        for (i, &a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut moved = base.clone();
                moved[i] += delta;
                let mut xs = vars.clone();
                xs[j] = Tensor::from_vec(moved, var.shape(), var.device())?;
                loss_at(&xs)
            };
            let numeric = (at(opts.eps)? - at(-opts.eps)?) / (2.0 * opts.eps);
            if !opts.agree(a, numeric) {
                return Err(Error::invalid(
                    "gradcheck",
                    format!(
                        "input {j} (shape {:?}), element {i}: analytic {a:.10e}, numeric {numeric:.10e}",
                        var.shape()
                    ),
                ));
            }
            report.max_abs_error = report.max_abs_error.max((a - numeric).abs());
            report.checked += 1;
        }
    }
    Ok(report)
}
