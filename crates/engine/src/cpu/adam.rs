//! The fused Adam/AdamW update: one pass over parameter, gradient and both moments.

use super::isa;
use super::strided::PARALLEL_CUTOFF;
use crate::backend::AdamStep;
use rayon::prelude::*;

/// One parameter's slices and step, for [`update_many`].
pub struct AdamSlices<'a> {
    /// The parameter, updated in place.
    pub p: &'a mut [f32],
    /// Its gradient, as long as `p`.
    pub g: &'a [f32],
    /// The first moment, updated in place.
    pub m: &'a mut [f32],
    /// The second moment, updated in place.
    pub v: &'a mut [f32],
    /// The step's hyper-parameters and count.
    pub step: &'a AdamStep,
}

/// For each parameter: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²,
/// p ← p − lr·(m̂/(√v̂ + ε) [+ wd·p]), with bias-corrected m̂, v̂; plain Adam adds wd·p
/// to g instead (L2 regularisation). One parallel pass over every parameter's chunks:
/// a model's many small tensors (norm weights, biases) share the threads with its large
/// ones instead of each running alone, on one thread, after the other.
pub fn update_many(list: Vec<AdamSlices<'_>>) {
    let coefficients: Vec<Coefficients> = list.iter().map(|s| Coefficients::new(s.step)).collect();
    let total: usize = list.iter().map(|s| s.p.len()).sum();
    let mut chunks = Vec::with_capacity(total / CHUNK + list.len());
    for (s, k) in list.into_iter().zip(&coefficients) {
        let zipped = s.p.chunks_mut(CHUNK).zip(s.g.chunks(CHUNK));
        let zipped = zipped.zip(s.m.chunks_mut(CHUNK)).zip(s.v.chunks_mut(CHUNK));
        chunks.extend(zipped.map(|chunk| (chunk, k)));
    }
    let update = |((((p, g), m), v), k): (ChunkOf<'_>, &Coefficients)| {
        isa::dispatch(
            #[inline(always)]
            |(p, g, m, v)| update_chunk(p, g, m, v, k),
            (p, g, m, v),
        )
    };
    match total >= PARALLEL_CUTOFF {
        true => chunks.into_par_iter().for_each(update),
        false => chunks.into_iter().for_each(update),
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
