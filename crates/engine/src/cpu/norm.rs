//! Layer norm and RMS norm over the last dim, forward and backward.

use super::float::{sum_lanes, CpuFloat};
use super::isa;
use super::pool;
use super::strided::{contiguous, PARALLEL_CUTOFF};
use crate::backend::NormSpec;
use crate::layout::Layout;
use rayon::prelude::*;
use std::borrow::Cow;

/// A weight or bias vector, contiguous.
pub type Param<'a, F> = Option<Cow<'a, [F]>>;

/// Rows handled by one task: enough work to amortise scheduling over short rows.
const ROWS_PER_TASK: usize = 16;

/// The parameter, or `fill` repeated when absent, so that one loop serves both cases.
fn or_fill<'a, F: CpuFloat>(p: &'a Param<'a, F>, fill: F, d: usize) -> Cow<'a, [F]> {
    match p {
        Some(v) => Cow::Borrowed(v.as_ref()),
        None => Cow::Owned(vec![fill; d]),
    }
}

/// Runs `f(first_row, rows_block)` over blocks of rows, in parallel when large, each
/// block compiled for the best instruction set.
fn for_row_blocks<F: CpuFloat, S: Send>(
    y: &mut [F],
    stats: &mut [S],
    d: usize,
    f: impl Fn(usize, &mut [F], &mut [S]) + Sync,
) {
    let run = |(i, (yb, sb)): (usize, (&mut [F], &mut [S]))| {
        isa::dispatch(
            #[inline(always)]
            |(yb, sb)| f(i * ROWS_PER_TASK, yb, sb),
            (yb, sb),
        )
    };
    if y.len() >= PARALLEL_CUTOFF {
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(stats.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(run);
    } else {
        y.chunks_mut(d * ROWS_PER_TASK)
            .zip(stats.chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(run);
    }
}

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
    let (w, b) = (or_fill(&w, F::one(), d), or_fill(&b, F::zero(), d));
    // `#[inline(always)]`: inlined into `for_row_blocks`' AVX2 copy; a closure called
    // from both copies would otherwise stay an out-of-line baseline function.
    for_row_blocks(
        &mut y,
        &mut stats,
        d,
        #[inline(always)]
        |first, yb, sb| {
            for (r, (yr, st)) in yb.chunks_mut(d).zip(sb.iter_mut()).enumerate() {
                let xr = &x[(first + r) * d..(first + r + 1) * d];
                let mean = match spec.rms {
                    true => F::zero(),
                    false => sum_lanes([xr], |[x]| x) * inv_d,
                };
                let var = sum_lanes([xr], |[v]| (v - mean) * (v - mean)) * inv_d;
                let rstd = (var + F::c(spec.eps)).sqrt().recip();
                for (((y, &xv), &wv), &bv) in yr.iter_mut().zip(xr).zip(w.iter()).zip(b.iter()) {
                    *y = (xv - mean) * rstd * wv + bv;
                }
                *st = (mean, rstd);
            }
        },
    );
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
    let weight = or_fill(&w, F::one(), d);
    // dw and db are summed only when the norm has those parameters (the DiT's norms
    // have none).
    let param_grads = w.is_some() || has_bias;
    let params_len = if param_grads { d } else { 0 };
    let zero = || (vec![F::zero(); params_len], vec![F::zero(); params_len]);
    // One block of rows; each worker accumulates its own dw/db partial sums over the
    // blocks it handles.
    let block = |mut acc: (Vec<F>, Vec<F>), (b, dxb): (usize, &mut [F])| {
        isa::dispatch(
            #[inline(always)]
            |(dxb, (dw, db)): (&mut [F], &mut (Vec<F>, Vec<F>))| {
                for (r, dxr) in dxb.chunks_mut(d).enumerate() {
                    let i = b * ROWS_PER_TASK + r;
                    let (xr, gr) = (&xv[i * d..(i + 1) * d], &gv[i * d..(i + 1) * d]);
                    let (mu, rs) = (mean[i], rstd[i]);
                    let xhat = |k: usize| (xr[k] - mu) * rs;
                    let sum_g = sum_lanes([gr, &weight], |[g, w]| g * w);
                    let sum_gx = sum_lanes([gr, &weight, xr], |[g, w, x]| g * w * ((x - mu) * rs));
                    if param_grads {
                        for (k, (dw, db)) in dw.iter_mut().zip(db.iter_mut()).enumerate() {
                            *dw = *dw + gr[k] * xhat(k);
                            *db = *db + gr[k];
                        }
                    }
                    let mean_g = if spec.rms { F::zero() } else { sum_g * inv_d };
                    let mean_gx = sum_gx * inv_d;
                    for (k, dx) in dxr.iter_mut().enumerate() {
                        *dx = rs * (gr[k] * weight[k] - mean_g - xhat(k) * mean_gx);
                    }
                }
            },
            (dxb, &mut acc),
        );
        acc
    };
    let add = |mut a: (Vec<F>, Vec<F>), b: (Vec<F>, Vec<F>)| {
        a.0.iter_mut().zip(&b.0).for_each(|(x, &y)| *x = *x + y);
        a.1.iter_mut().zip(&b.1).for_each(|(x, &y)| *x = *x + y);
        a
    };
    let (dw, db) = if xv.len() >= PARALLEL_CUTOFF {
        dx.par_chunks_mut(d * ROWS_PER_TASK)
            .enumerate()
            .fold(zero, block)
            .reduce(zero, add)
    } else {
        dx.chunks_mut(d * ROWS_PER_TASK)
            .enumerate()
            .fold(zero(), block)
    };
    NormGrads {
        dx,
        dw: w.is_some().then_some(dw),
        db: has_bias.then_some(db),
    }
}
