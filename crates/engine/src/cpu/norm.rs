//! Layer norm and RMS norm over the last dim, forward and backward.

use super::float::{sum_lanes, CpuFloat};
use super::pool;
use super::strided::{contiguous, PARALLEL_CUTOFF};
use crate::backend::NormSpec;
use crate::layout::Layout;
use rayon::prelude::*;
use std::borrow::Cow;

/// A weight or bias vector, contiguous.
pub type Param<'a, F> = Option<Cow<'a, [F]>>;

/// (y, mean, rstd) of layer/RMS norm of each row of `x`.
pub fn norm<F: CpuFloat>(
    x: &[F],
    l: &Layout,
    w: Param<F>,
    b: Param<F>,
    spec: NormSpec,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let x = contiguous(x, l);
    let d = l.shape().last().copied().unwrap_or(1).max(1);
    let rows = x.len() / d;
    let mut y = pool::take(x.len());
    let mut stats = vec![(F::zero(), F::zero()); rows];
    let inv_d = F::c(1.0 / d as f64);
    let row = |(i, (yr, st)): (usize, (&mut [F], &mut (F, F)))| {
        let xr = &x[i * d..(i + 1) * d];
        let mean = if spec.rms {
            F::zero()
        } else {
            sum_lanes(xr.iter().copied()) * inv_d
        };
        let var = sum_lanes(xr.iter().map(|&v| (v - mean) * (v - mean))) * inv_d;
        let rstd = (var + F::c(spec.eps)).sqrt().recip();
        for k in 0..d {
            let mut v = (xr[k] - mean) * rstd;
            if let Some(w) = &w {
                v = v * w[k];
            }
            if let Some(b) = &b {
                v = v + b[k];
            }
            yr[k] = v;
        }
        *st = (mean, rstd);
    };
    if x.len() >= PARALLEL_CUTOFF {
        y.par_chunks_mut(d)
            .zip(stats.par_iter_mut())
            .enumerate()
            .for_each(row);
    } else {
        y.chunks_mut(d)
            .zip(stats.iter_mut())
            .enumerate()
            .for_each(row);
    }
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// The gradients of the norm's inputs.
pub struct NormGrads<F> {
    /// Gradient of x.
    pub dx: Vec<F>,
    /// Gradient of the weight, where there is one.
    pub dw: Option<Vec<F>>,
    /// Gradient of the bias, where there is one.
    pub db: Option<Vec<F>>,
}

/// Backward of [`norm`]: with x̂ = (x − mean)·rstd and ĝ = g·w,
/// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) (no mean(ĝ) term for RMS norm),
/// dw = Σ_rows g·x̂, db = Σ_rows g.
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<F: CpuFloat>(
    x: (&[F], &Layout),
    w: Param<F>,
    has_bias: bool,
    mean: &[F],
    rstd: &[F],
    g: (&[F], &Layout),
    spec: NormSpec,
) -> NormGrads<F> {
    let (xv, gv) = (contiguous(x.0, x.1), contiguous(g.0, g.1));
    let d = x.1.shape().last().copied().unwrap_or(1).max(1);
    let inv_d = F::c(1.0 / d as f64);
    let mut dx = pool::take(xv.len());
    // Each worker accumulates its own dw/db partial sums over the rows it handles.
    let zero = || (vec![F::zero(); d], vec![F::zero(); d]);
    let row = |mut acc: (Vec<F>, Vec<F>), (i, dxr): (usize, &mut [F])| {
        let (xr, gr) = (&xv[i * d..(i + 1) * d], &gv[i * d..(i + 1) * d]);
        let (mu, rs) = (mean[i], rstd[i]);
        let weight = |k: usize| w.as_ref().map_or(F::one(), |w| w[k]);
        let (mut sum_g, mut sum_gx) = (F::zero(), F::zero());
        for (k, (&xk, &gk)) in xr.iter().zip(gr).enumerate() {
            let (xhat, ghat) = ((xk - mu) * rs, gk * weight(k));
            sum_g = sum_g + ghat;
            sum_gx = sum_gx + ghat * xhat;
            acc.0[k] = acc.0[k] + gk * xhat;
            acc.1[k] = acc.1[k] + gk;
        }
        let mean_g = if spec.rms { F::zero() } else { sum_g * inv_d };
        let mean_gx = sum_gx * inv_d;
        for (k, ((dx, &xk), &gk)) in dxr.iter_mut().zip(xr).zip(gr).enumerate() {
            let (xhat, ghat) = ((xk - mu) * rs, gk * weight(k));
            *dx = rs * (ghat - mean_g - xhat * mean_gx);
        }
        acc
    };
    let add = |mut a: (Vec<F>, Vec<F>), b: (Vec<F>, Vec<F>)| {
        a.0.iter_mut().zip(&b.0).for_each(|(x, &y)| *x = *x + y);
        a.1.iter_mut().zip(&b.1).for_each(|(x, &y)| *x = *x + y);
        a
    };
    let (dw, db) = if xv.len() >= PARALLEL_CUTOFF {
        dx.par_chunks_mut(d)
            .enumerate()
            .fold(zero, row)
            .reduce(zero, add)
    } else {
        dx.chunks_mut(d).enumerate().fold(zero(), row)
    };
    NormGrads {
        dx,
        dw: w.is_some().then_some(dw),
        db: has_bias.then_some(db),
    }
}
