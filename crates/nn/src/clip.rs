//! Gradient hygiene before an optimizer step: global-norm clipping and replacing
//! non-finite gradient entries.
//!
//! Both take the parameters whose gradients to treat (gradients are keyed by tensor, so
//! replacing one needs its parameter) and skip parameters without a gradient. Gradients
//! are replaced in the store, never overwritten in place: one gradient tensor can be the
//! storage of several parameters' gradients.

use twinflow_engine::{DType, Error, Gradients, NoGradGuard, Result, Tensor};

/// PyTorch's guard against dividing by a zero norm in `clip_grad_norm_`.
const NORM_EPS: f64 = 1e-6;

/// Scales the gradients of `params` so that their global L2 norm (the norm of all their
/// entries together) is at most `max_norm`, as `torch.nn.utils.clip_grad_norm_` does:
/// with total norm n, every gradient is multiplied by `min(1, max_norm/(n + 10⁻⁶))`.
/// Returns n, the norm before clipping.
///
/// As in PyTorch, a non-finite norm (a NaN or ±Inf entry) is returned and the scale it
/// gives is applied, so the gradients become non-finite too: clean them first with
/// [`zero_non_finite`] where that matters. `max_norm` may be `+∞` (only measure).
pub fn clip_grad_norm<'a>(
    grads: &mut Gradients,
    params: impl IntoIterator<Item = &'a Tensor>,
    max_norm: f64,
) -> Result<f64> {
    Ok(clip_cleaning(grads, params, max_norm, false)?.0)
}

/// [`zero_non_finite`] then [`clip_grad_norm`] on the same gradients, with one pass over
/// each finite gradient instead of two: a gradient's Σg² (its share of the norm) is also
/// the test for non-finite entries, finite when every entry is (a finite sum can only
/// overflow to ∞ too, and then the exact count finds nothing to replace), so only the
/// gradients that fail it are cleaned and summed again. Returns the norm before clipping
/// and how many entries were replaced; the gradients, the norm and the count are those
/// of the two calls in a row.
pub fn clean_and_clip_grad_norm<'a>(
    grads: &mut Gradients,
    params: impl IntoIterator<Item = &'a Tensor>,
    max_norm: f64,
) -> Result<(f64, usize)> {
    clip_cleaning(grads, params, max_norm, true)
}

/// The global-norm clip of both public functions: each gradient's Σg², and, when
/// `clean`, the gradients whose sum is not finite cleaned and summed again; returns the
/// norm before clipping and how many entries were replaced.
fn clip_cleaning<'a>(
    grads: &mut Gradients,
    params: impl IntoIterator<Item = &'a Tensor>,
    max_norm: f64,
    clean: bool,
) -> Result<(f64, usize)> {
    check_max_norm(max_norm)?;
    let _no_grad = NoGradGuard::new();
    let mut with_grads = gradients_of(grads, params);
    let (mut sum_sq, mut replaced) = (0.0, 0);
    for (p, g) in &mut with_grads {
        let mut sq = squared_sum(g)?;
        if clean && !sq.is_finite() {
            if let Some((clean, bad)) = without_non_finite(g)? {
                grads.insert(p, clean.clone());
                *g = clean;
                replaced += bad;
                sq = squared_sum(g)?;
            }
        }
        sum_sq += sq;
    }
    Ok((scale_to(grads, with_grads, sum_sq, max_norm)?, replaced))
}

/// Refuses a NaN or negative `max_norm`.
fn check_max_norm(max_norm: f64) -> Result<()> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm must be >= 0, got {max_norm}"),
        ));
    }
    Ok(())
}

/// The parameters among `params` that have a gradient, with it.
fn gradients_of<'a>(
    grads: &Gradients,
    params: impl IntoIterator<Item = &'a Tensor>,
) -> Vec<(&'a Tensor, Tensor)> {
    params
        .into_iter()
        .filter_map(|p| grads.get(p).map(|g| (p, g.clone())))
        .collect()
}

/// Σ g² of one gradient, summed in its own precision (f32 for half types), as PyTorch's
/// per-tensor norms are; the callers add the tensors' sums up in f64.
fn squared_sum(g: &Tensor) -> Result<f64> {
    let g = match g.dtype() {
        DType::BF16 | DType::F16 => g.to_dtype(DType::F32)?,
        _ => g.clone(),
    };
    // Σ g·g as one op: the CUDA backend fuses it, so there the squares never reach
    // memory.
    let every_dim: Vec<isize> = (0..g.rank() as isize).collect();
    g.sum_product(&g, &every_dim, false)?.item()
}

/// Multiplies the gradients `with_grads` by `min(1, max_norm/(n + 10⁻⁶))` for the norm n
/// whose square is `sum_sq`, replacing them in `grads`; returns n.
fn scale_to(
    grads: &mut Gradients,
    with_grads: Vec<(&Tensor, Tensor)>,
    sum_sq: f64,
    max_norm: f64,
) -> Result<f64> {
    let norm = sum_sq.sqrt();
    let scale = max_norm / (norm + NORM_EPS);
    // A NaN scale (from a NaN norm) is applied too, as in PyTorch.
    if scale < 1.0 || scale.is_nan() {
        for (p, g) in with_grads {
            grads.insert(p, g.mul_scalar(scale)?);
        }
    }
    Ok(norm)
}

/// Replaces every NaN, +Inf and −Inf entry of the gradients of `params` with 0 (as
/// `torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)`); finite entries, however
/// large, are kept. Returns how many entries were replaced; gradients without any are
/// left as they are (not copied).
pub fn zero_non_finite<'a>(
    grads: &mut Gradients,
    params: impl IntoIterator<Item = &'a Tensor>,
) -> Result<usize> {
    let _no_grad = NoGradGuard::new();
    let mut replaced = 0;
    for p in params {
        let Some(g) = grads.get(p).cloned() else {
            continue;
        };
        // One pass: a finite sum means every entry is finite (a sum overflowing to ±Inf
        // only sends a finite gradient down the exact path below).
        if g.sum_all()?.item()?.is_finite() {
            continue;
        }
        if let Some((clean, bad)) = without_non_finite(&g)? {
            grads.insert(p, clean);
            replaced += bad;
        }
    }
    Ok(replaced)
}

/// `g` with its NaN and ±Inf entries replaced by 0, and how many there were; `None` when
/// there were none.
fn without_non_finite(g: &Tensor) -> Result<Option<(Tensor, usize)>> {
    let zero = Tensor::zeros(&[], g.dtype(), g.device())?;
    // x − x is 0 exactly for finite x and NaN for NaN and ±Inf.
    let finite = g.sub(g)?.eq(&zero)?;
    let bad = g.elem_count() - finite.to_dtype(DType::F64)?.sum_all()?.item()? as usize;
    if bad == 0 {
        return Ok(None);
    }
    Ok(Some((finite.where_cond(g, &zero)?, bad)))
}
