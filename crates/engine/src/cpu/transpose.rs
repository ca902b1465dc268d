//! Contiguous copies of transposed views in square tiles, the gather that
//! [`super::strided::gather_view`] hands a batch of transposes to
//! ([`Runs::transposed_rows`]: runs that step through the source while their rows are
//! contiguous in it, as in `x.t()` or a permute moving the innermost dim outwards).
//! Gathered run by run, every value of such a run came from a cache line of its own,
//! and a large transpose was fetched from memory many times over (2 GB/s for a 4096²
//! f32 matrix on the development machine, docs/benchmarks.md).

use super::strided::{Runs, PARALLEL_CUTOFF, PIECE};

/// Side of the buffered tiles ([`buffered_tile`]). Buffered 16 × 16 tiles (a cache line
/// of f32 each way) ran a 4096² transpose at half the speed, probably because a tile's
/// 32 lines, a power of two apart, share a few L1 sets; with 4 the loops' overhead
/// showed.
const TILE: usize = 8;

/// The shortest runs [`gather_transposed`] takes. Through the buffer (8 × 8), an NCHW →
/// NHWC permute of 32 channels ran about a third faster run by run, whose next run
/// reads the same few lines again from L1, and transposes with runs of 128 and more
/// about half as fast; through registers (f32 on AVX-512, 16 × 16) the same permute ran
/// twice as fast tiled (scratch timings and `benches/transpose.rs`, docs/benchmarks.md).
pub(super) fn shortest_tiled_run<T: 'static>() -> usize {
    match (is_f32::<T>() || is_half::<T>()) && register_tiles() {
        true => 16,
        false => 64,
    }
}

/// Output rows a task of [`gather_transposed`] copies: its `BAND` output rows and the
/// source columns' `BAND` values stay within the TLB's reach and L2 while it walks
/// across the columns (128 was faster than 32 and 64 on a 4096² transpose).
const BAND: usize = 128;

/// The gather of a batch of transposes of `rows` rows each, in square tiles: each
/// reads `side` source columns of up to `side` contiguous values and writes `side` rows
/// of up to `side` contiguous values. f32, bf16 and f16 on AVX-512 go 16 × 16 through
/// registers (`sgemm_avx512::transpose_tile`, `transpose_tile_u16`), every other case
/// [`TILE`] × `TILE` through a small buffer. A task takes [`BAND`] output rows and walks across all columns.
pub(super) fn gather_transposed<T: Copy + Send + Sync + 'static>(
    out: &mut [T],
    src: &[T],
    runs: &Runs<1>,
    rows: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(out), Some(src)) = (as_f32_mut(out), as_f32(src)) {
        if register_tiles() {
            // SAFETY: AVX-512F was detected.
            let tile = |d: &mut [f32], ldd, s: &[f32], lds, shape| unsafe {
                super::sgemm_avx512::transpose_tile(d, ldd, s, lds, shape)
            };
            return gather_tiles(out, src, runs, (rows, 16), tile);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(out), Some(src)) = (as_u16_mut(out), as_u16(src)) {
        if register_tiles() {
            // SAFETY: AVX-512F was detected.
            let tile = |d: &mut [u16], ldd, s: &[u16], lds, shape| unsafe {
                super::sgemm_avx512::transpose_tile_u16(d, ldd, s, lds, shape)
            };
            return gather_tiles(out, src, runs, (rows, 16), tile);
        }
    }
    gather_tiles(out, src, runs, (rows, TILE), buffered_tile)
}

/// Whether f32 tiles go through registers: AVX-512F present.
pub(super) fn register_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::sgemm_avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether `T` is f32.
fn is_f32<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

/// Whether `T` is bf16 or f16.
fn is_half<T: 'static>() -> bool {
    use std::any::TypeId;
    [TypeId::of::<half::bf16>(), TypeId::of::<half::f16>()].contains(&TypeId::of::<T>())
}

/// The bits of `values`, when `T` is bf16 or f16.
#[cfg(target_arch = "x86_64")]
fn as_u16<T: 'static>(values: &[T]) -> Option<&[u16]> {
    // SAFETY: T is bf16 or f16, 16-bit plain data.
    is_half::<T>()
        .then(|| unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) })
}

/// The bits of `values`, when `T` is bf16 or f16.
#[cfg(target_arch = "x86_64")]
fn as_u16_mut<T: 'static>(values: &mut [T]) -> Option<&mut [u16]> {
    is_half::<T>().then(|| {
        // SAFETY: T is bf16 or f16, 16-bit plain data.
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), values.len()) }
    })
}

/// `values` as f32, when `T` is f32.
#[cfg(target_arch = "x86_64")]
fn as_f32<T: 'static>(values: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32.
    is_f32::<T>()
        .then(|| unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) })
}

/// `values` as f32, when `T` is f32.
#[cfg(target_arch = "x86_64")]
fn as_f32_mut<T: 'static>(values: &mut [T]) -> Option<&mut [f32]> {
    is_f32::<T>().then(|| {
        // SAFETY: T is f32.
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), values.len()) }
    })
}

/// One tile, `dst[r·ldd + c] = src[r + c·lds]` for `r < rows`, `c < cols` (at most
/// [`TILE`] each), read into a buffer first so that each line on either side is
/// touched once.
fn buffered_tile<T: Copy>(
    dst: &mut [T],
    ldd: usize,
    src: &[T],
    lds: usize,
    (rows, cols): (usize, usize),
) {
    let mut tile = [[src[0]; TILE]; TILE];
    for c in 0..cols {
        for (r, &v) in src[c * lds..][..rows].iter().enumerate() {
            tile[r][c] = v;
        }
    }
    for (r, row) in tile.iter().enumerate().take(rows) {
        dst[r * ldd..][..cols].copy_from_slice(&row[..cols]);
    }
}

/// The tiled gather: `tile` copies squares of `side` (see [`gather_transposed`]).
fn gather_tiles<T: Copy + Send + Sync>(
    out: &mut [T],
    src: &[T],
    runs: &Runs<1>,
    (rows, side): (usize, usize),
    tile: impl Fn(&mut [T], usize, &[T], usize, (usize, usize)) + Sync,
) {
    use rayon::prelude::*;
    let (len, stride) = (runs.len, runs.inner[0]);
    // Output rows BAND·t.. of batch entry b.
    let band = |b: usize, t: usize, band: &mut [T]| {
        let base = runs.starts(b * rows + t * BAND)[0];
        let band_rows = band.len() / len;
        for c0 in (0..len).step_by(side) {
            let cols = side.min(len - c0);
            for r0 in (0..band_rows).step_by(side) {
                let shape = (side.min(band_rows - r0), cols);
                let from = &src[base + r0 + c0 * stride..];
                tile(&mut band[r0 * len + c0..], len, from, stride, shape);
            }
        }
    };
    let entry = rows * len;
    if out.len() < PARALLEL_CUTOFF {
        for (b, e) in out.chunks_mut(entry).enumerate() {
            for (t, bd) in e.chunks_mut(BAND * len).enumerate() {
                band(b, t, bd);
            }
        }
        return;
    }
    // Tasks of at least PIECE values: small entries go several to a task.
    out.par_chunks_mut(entry)
        .enumerate()
        .with_min_len((PIECE / entry).max(1))
        .for_each(|(b, e)| {
            e.par_chunks_mut(BAND * len)
                .enumerate()
                .for_each(|(t, bd)| band(b, t, bd))
        });
}
