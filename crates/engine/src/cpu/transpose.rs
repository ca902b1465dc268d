//! Contiguous copies of transposed views in tiles, the gather that
//! [`super::strided::gather_view`] hands a batch of transposes to
//! ([`Runs::transposed_rows`]: runs that step through the source while their rows are
//! contiguous in it, as in `x.t()` or a permute moving the innermost dim outwards).
//! Gathered run by run, every value of such a run came from a cache line of its own,
//! and a large transpose was fetched from memory many times over (2 GB/s for a 4096²
//! f32 matrix on the development machine, docs/benchmarks.md).

use super::prefetch::{prefetch_line, LINE};
use super::strided::{Runs, PARALLEL_CUTOFF, PIECE};

/// Side of the buffered tiles ([`buffered_tile`]). Buffered 16 × 16 tiles (a cache line
/// of f32 each way) ran a 4096² transpose at half the speed, probably because a tile's
/// 32 lines, a power of two apart, share a few L1 sets; with 4 the loops' overhead
/// showed.
const TILE: usize = 8;

/// The shortest runs [`gather_transposed`] takes. Through the buffer (8 × 8), an NCHW →
/// NHWC permute of 32 channels ran about a third faster run by run, whose next run
/// reads the same few lines again from L1, and transposes with runs of 128 and more
/// about half as fast; through registers (on AVX-512: f32 16 × 16, bf16 and f16
/// 16 × 32) the same f32 permute ran twice as fast tiled (scratch timings and
/// `benches/transpose.rs`, docs/benchmarks.md).
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

/// Transposes of at least this many bytes (one batch entry) ask for each tile's lines
/// [`AHEAD`] tiles before copying it. Every line of a tile is a run of its own, a row
/// or more apart from the next, and the hardware prefetchers follow a few such streams
/// only: left to demand misses a 4096² f32 transpose ran at 8–10 GB/s, with the lines
/// asked for at 17–20. Smaller ones are in cache or nearly so, where the requests are
/// overhead (asked for, a `[512, 128]` transpose took 15–16 µs against 14, an NHWC →
/// NCHW permute of 6.4 MB in entries of 100 KB 246 against 228).
const PREFETCH_FROM_BYTES: usize = 2 << 20;

/// How many tiles ahead of the copy [`gather_tiles`] asks for lines (2 to 16 were
/// within 10 % of each other on a 4096² transpose, 8 slightly ahead).
const AHEAD: usize = 8;

/// The gather of a batch of transposes of `rows` rows each, in tiles: each reads up to
/// a tile's width of source columns of up to its height of contiguous values, and
/// writes as many rows. f32, bf16 and f16 on AVX-512 go through registers, f32 16 × 16
/// (`sgemm_avx512::transpose_tile`) and the 16-bit types 16 rows by 32 columns, a cache
/// line a row (`transpose_tile_u16`); every other case [`TILE`] × `TILE` through a
/// small buffer. A task takes [`BAND`] output rows and walks across all columns.
pub(super) fn gather_transposed<T: Copy + Send + Sync + 'static>(
    out: &mut [T],
    src: &[T],
    runs: &Runs<1>,
    rows: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if register_tiles() {
        use super::sgemm_avx512::{transpose_tile, transpose_tile_u16};
        // SAFETY: AVX-512F was detected, and f32 is read as itself, bf16 and f16 as
        // their 16 bits.
        if is_f32::<T>() {
            return unsafe { gather_bits(out, src, runs, (rows, 16), transpose_tile) };
        }
        if is_half::<T>() {
            return unsafe { gather_bits(out, src, runs, (rows, 32), transpose_tile_u16) };
        }
    }
    gather_tiles(out, src, runs, (rows, (TILE, TILE)), buffered_tile)
}

/// Whether f32, bf16 and f16 tiles go through registers: AVX-512F present.
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

/// A register tile copier: `(dst, ldd, src, lds, (rows, cols))` as
/// `sgemm_avx512::transpose_tile` takes them, unsafe for the CPU it needs.
#[cfg(target_arch = "x86_64")]
type RegisterTile<U> = unsafe fn(&mut [U], usize, &[U], usize, (usize, usize));

/// The tiled gather of `T` values read as `U` (their bits) by the register tile `tile`,
/// 16 rows by `cols` columns.
///
/// # Safety
/// `T` and `U` have the same size and every `T` value is a valid `U` (f32 as f32, bf16
/// and f16 as u16), and the CPU has what `tile` needs (AVX-512F).
#[cfg(target_arch = "x86_64")]
unsafe fn gather_bits<T, U: Copy + Send + Sync>(
    out: &mut [T],
    src: &[T],
    runs: &Runs<1>,
    (rows, cols): (usize, usize),
    tile: RegisterTile<U>,
) {
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<U>());
    let out = std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<U>(), out.len());
    let src = std::slice::from_raw_parts(src.as_ptr().cast::<U>(), src.len());
    // SAFETY: the caller vouches for the CPU.
    let copy = |d: &mut [U], ldd, s: &[U], lds, shape| unsafe { tile(d, ldd, s, lds, shape) };
    gather_tiles(out, src, runs, (rows, (16, cols)), copy)
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

/// The tiled gather: `tile` copies tiles of up to `tile_rows` output rows by
/// `tile_cols` columns (see [`gather_transposed`]), walking each band's tiles column
/// block by column block, and asking for the lines of the tile [`AHEAD`] in that walk
/// when the entries are large.
fn gather_tiles<T: Copy + Send + Sync>(
    out: &mut [T],
    src: &[T],
    runs: &Runs<1>,
    (rows, (tile_rows, tile_cols)): (usize, (usize, usize)),
    tile: impl Fn(&mut [T], usize, &[T], usize, (usize, usize)) + Sync,
) {
    use rayon::prelude::*;
    let (len, stride) = (runs.len, runs.inner[0]);
    let entry = rows * len;
    let prefetch = entry * std::mem::size_of::<T>() >= PREFETCH_FROM_BYTES;
    // Output rows BAND·t.. of batch entry b.
    let band = |b: usize, t: usize, band: &mut [T]| {
        let base = runs.starts(b * rows + t * BAND)[0];
        let band_rows = band.len() / len;
        let row_tiles = band_rows.div_ceil(tile_rows);
        // Tile i's (first row, first column, shape).
        let tile_at = |i: usize| {
            let (r0, c0) = ((i % row_tiles) * tile_rows, (i / row_tiles) * tile_cols);
            (
                r0,
                c0,
                (tile_rows.min(band_rows - r0), tile_cols.min(len - c0)),
            )
        };
        let tiles = row_tiles * len.div_ceil(tile_cols);
        for i in 0..tiles {
            if prefetch && i + AHEAD < tiles {
                let (r0, c0, (rows, cols)) = tile_at(i + AHEAD);
                ask_for_runs(&src[base + r0 + c0 * stride..], (cols, stride), rows);
                ask_for_runs(&band[r0 * len + c0..], (rows, len), cols);
            }
            let (r0, c0, shape) = tile_at(i);
            let from = &src[base + r0 + c0 * stride..];
            tile(&mut band[r0 * len + c0..], len, from, stride, shape);
        }
    };
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

/// Asks for the cache lines of `runs` runs of `len` values from the start of `data`,
/// successive runs `stride` values apart: each run's first line, and its last where
/// that is another (a run of a tile is at most a line, but need not start one). Not
/// [`super::prefetch::ask_for`] run by run: its general line walk made a 4096²
/// transpose about a fifth slower.
fn ask_for_runs<T>(data: &[T], (runs, stride): (usize, usize), len: usize) {
    let size = std::mem::size_of::<T>();
    for run in 0..runs {
        let first = data.as_ptr() as usize + run * stride * size;
        let last = first + len * size - 1;
        prefetch_line(first);
        if last / LINE != first / LINE {
            prefetch_line(last);
        }
    }
}
