//! Softmax and log-softmax over the last dim, forward and backward.

use super::float::{max_lanes, sum_lanes, CpuFloat};
use super::host_buffer::HostBuffer;
use super::isa;
use super::pool;
use super::strided::{contiguous, PARALLEL_CUTOFF};
use crate::layout::Layout;
use rayon::prelude::*;

/// Runs `f(out_row, in_rows...)` over rows of length `d`, in parallel when large.
fn for_rows<F: CpuFloat>(out: &mut [F], d: usize, f: impl Fn(usize, &mut [F]) + Sync) {
    if d == 0 {
        return;
    }
    let row = |(i, o): (usize, &mut [F])| {
        isa::dispatch(
            #[inline(always)]
            |(i, o)| f(i, o),
            (i, o),
        )
    };
    if out.len() >= PARALLEL_CUTOFF {
        out.par_chunks_mut(d).enumerate().for_each(row);
    } else {
        out.chunks_mut(d).enumerate().for_each(row);
    }
}

fn last_dim(l: &Layout) -> usize {
    l.shape().last().copied().unwrap_or(1)
}

/// Softmax (or log-softmax) of each row over the last dim.
pub fn softmax_last<F: CpuFloat>(x: &[F], l: &Layout, log: bool) -> HostBuffer<F> {
    let x = contiguous(x, l);
    let d = last_dim(l);
    let mut out = pool::take(x.len());
    for_rows(
        &mut out,
        d,
        #[inline(always)]
        |i, o| {
            let row = &x[i * d..(i + 1) * d];
            let max = max_lanes(row);
            o.iter_mut()
                .zip(row)
                .for_each(|(o, &v)| *o = (v - max).exp_v());
            let sum = sum_lanes([o], |[x]| x);
            if log {
                let lse = max + sum.ln();
                o.iter_mut().zip(row).for_each(|(o, &v)| *o = v - lse);
            } else {
                let inv = sum.recip();
                o.iter_mut().for_each(|o| *o = *o * inv);
            }
        },
    );
    out
}

/// Gradient of the input given the forward output `y` and the output gradient `g`:
/// softmax: `y·(g − Σ g·y)`; log-softmax: `g − eʸ·Σ g`.
pub fn softmax_last_backward<F: CpuFloat>(
    y: (&[F], &Layout),
    g: (&[F], &Layout),
    log: bool,
) -> HostBuffer<F> {
    let (yv, gv) = (contiguous(y.0, y.1), contiguous(g.0, g.1));
    let d = last_dim(y.1);
    let mut out = pool::take(yv.len());
    for_rows(
        &mut out,
        d,
        #[inline(always)]
        |i, o| {
            let (y, g) = (&yv[i * d..(i + 1) * d], &gv[i * d..(i + 1) * d]);
            if log {
                let s = sum_lanes([g], |[x]| x);
                for k in 0..d {
                    o[k] = g[k] - y[k].exp_v() * s;
                }
            } else {
                let s = sum_lanes([y, g], |[y, g]| y * g);
                for k in 0..d {
                    o[k] = y[k] * (g[k] - s);
                }
            }
        },
    );
    out
}
