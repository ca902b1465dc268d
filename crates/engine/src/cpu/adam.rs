//! The fused Adam/AdamW update: one pass over parameter, gradient and both moments.

use super::isa;
use super::strided::PARALLEL_CUTOFF;
use crate::backend::AdamStep;
use rayon::prelude::*;

/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr·(m̂/(√v̂ + ε) [+ wd·p]),
/// with bias-corrected m̂, v̂; plain Adam adds wd·p to g instead (L2 regularisation).
pub fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamStep) {
    let k = Coefficients::new(s);
    let chunk = |(((p, g), m), v): ChunkOf<'_>| {
        isa::dispatch(
            #[inline(always)]
            |(p, g, m, v)| update_chunk(p, g, m, v, &k),
            (p, g, m, v),
        )
    };
    if p.len() >= PARALLEL_CUTOFF {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(chunk);
    } else {
        chunk((((p, g), m), v));
    }
}

/// Matching chunks of parameter, gradient, first and second moment, as zipped.
type ChunkOf<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);

/// Elements per parallel task: large enough to amortise scheduling, small enough to
/// split a 1M-parameter tensor across threads.
const CHUNK: usize = 1 << 14;

/// The step's scalars, in f32.
struct Coefficients {
    b1: f32,
    b2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    wd: f32,
    lr: f32,
    decoupled: bool,
}

impl Coefficients {
    fn new(s: &AdamStep) -> Self {
        let (step_size, inv_sqrt_bc2) = s.bias_corrections();
        Coefficients {
            b1: s.beta1 as f32,
            b2: s.beta2 as f32,
            step_size,
            inv_sqrt_bc2,
            eps: s.eps as f32,
            wd: s.weight_decay as f32,
            lr: s.lr as f32,
            decoupled: s.decoupled,
        }
    }
}

/// One chunk as plain indexed loops over equal-length slices, which vectorise.
#[inline(always)]
fn update_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Coefficients) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = if k.decoupled {
            g[i]
        } else {
            g[i] + k.wd * p[i]
        };
        m[i] = k.b1 * m[i] + (1.0 - k.b1) * gi;
        v[i] = k.b2 * v[i] + (1.0 - k.b2) * gi * gi;
        let decayed = if k.decoupled {
            p[i] - k.lr * k.wd * p[i]
        } else {
            p[i]
        };
        p[i] = decayed - k.step_size * m[i] / (v[i].sqrt() * k.inv_sqrt_bc2 + k.eps);
    }
}
