//! The linear (OT) path and the inversion of a velocity prediction (docs/method.md §1).
//!
//! Data are `[B, D]` (any rank ≥ 1 works: times broadcast over every non-batch
//! dimension); times are `[B]`, one signed value per sample.

use twinflow_engine::{Result, Tensor};

/// `t` `[B]` reshaped to `[B, 1, …, 1]` so that it broadcasts against `like` `[B, …]`.
pub fn per_sample(t: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; like.rank()];
    shape[0] = t.elem_count();
    t.reshape(&shape)
}

/// `x_t = t·z + (1 − t)·x` for per-sample times `t` `[B]`.
pub fn interpolate(x: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
    let tc = per_sample(t, x)?;
    // x + t·(z − x) = t·z + (1 − t)·x.
    x.add(&z.sub(x)?.mul(&tc)?)
}

/// The velocity of the path, `v = z − x`.
pub fn velocity_target(x: &Tensor, z: &Tensor) -> Result<Tensor> {
    z.sub(x)
}

/// Inverts a prediction `f` at state `x_t` and signed times `t` `[B]` (coefficients use
/// `|t|`): returns `(x̂, ẑ)` with `x̂ = x_t − |t|·F` (data) and `ẑ = x_t + (1 − |t|)·F`
/// (noise).
pub fn invert(x_t: &Tensor, t: &Tensor, f: &Tensor) -> Result<(Tensor, Tensor)> {
    let a = per_sample(&t.abs()?, x_t)?;
    let x_hat = x_t.sub(&f.mul(&a)?)?;
    let z_hat = x_t.add(&f.mul(&a.affine(-1.0, 1.0)?)?)?;
    Ok((x_hat, z_hat))
}
