//! The fused Adam/AdamW update: one pass over parameter, gradient and both moments.

use super::strided::PARALLEL_CUTOFF;
use crate::backend::AdamStep;
use rayon::prelude::*;

/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr·(m̂/(√v̂ + ε) [+ wd·p]),
/// with bias-corrected m̂, v̂; plain Adam adds wd·p to g instead (L2 regularisation).
pub fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamStep) {
    let (b1, b2) = (s.beta1 as f32, s.beta2 as f32);
    let step_size = (s.lr / (1.0 - s.beta1.powf(s.step as f64))) as f32;
    let inv_sqrt_bc2 = (1.0 / (1.0 - s.beta2.powf(s.step as f64)).sqrt()) as f32;
    let (eps, wd, lr) = (s.eps as f32, s.weight_decay as f32, s.lr as f32);
    let decoupled = s.decoupled;
    let one = |(((p, &g), m), v): (((&mut f32, &f32), &mut f32), &mut f32)| {
        let g = if decoupled { g } else { g + wd * *p };
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        if decoupled {
            *p -= lr * wd * *p;
        }
        *p -= step_size * *m / ((*v).sqrt() * inv_sqrt_bc2 + eps);
    };
    if p.len() >= PARALLEL_CUTOFF {
        p.par_iter_mut()
            .zip(g)
            .zip(m.par_iter_mut())
            .zip(v.par_iter_mut())
            .for_each(one);
    } else {
        p.iter_mut()
            .zip(g)
            .zip(m.iter_mut())
            .zip(v.iter_mut())
            .for_each(one);
    }
}
