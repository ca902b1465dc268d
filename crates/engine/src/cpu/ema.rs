//! The in-place moving-average update of a parameter copy: one pass over both.

use super::isa;
use super::strided::PARALLEL_CUTOFF;
use rayon::prelude::*;

/// Elements per parallel task, as the Adam update's.
const CHUNK: usize = 1 << 14;

/// `avg ← online + (avg − online)·decay`, element by element: the same arithmetic, in
/// the same order, as `online.addcmul(&avg.sub(online)?, decay)`, without the two
/// intermediate tensors.
pub fn update(avg: &mut [f32], online: &[f32], decay: f32) {
    let chunk = |(avg, online): (&mut [f32], &[f32])| {
        isa::dispatch(
            #[inline(always)]
            |(avg, online)| update_chunk(avg, online, decay),
            (avg, online),
        )
    };
    if avg.len() >= PARALLEL_CUTOFF {
        avg.par_chunks_mut(CHUNK)
            .zip(online.par_chunks(CHUNK))
            .for_each(chunk);
    } else {
        chunk((avg, online));
    }
}

/// One chunk as a plain loop over equal-length slices, which vectorises.
#[inline(always)]
fn update_chunk(avg: &mut [f32], online: &[f32], decay: f32) {
    let online = &online[..avg.len()];
    for (a, &theta) in avg.iter_mut().zip(online) {
        *a = theta + (*a - theta) * decay;
    }
}
