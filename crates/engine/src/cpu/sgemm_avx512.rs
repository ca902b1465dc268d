//! f32 matrix products with AVX-512, for CPUs that have it (the `gemm` crate's stable
//! build stops at AVX2, which on such CPUs leaves half of each core's FMA width idle;
//! MKL, which PyTorch uses, does not).
//!
//! The structure is the usual packed one (Goto, BLIS):
//!
//! - the inner dimension is walked in blocks of [`KC`]; for each block the right
//!   operand's rows are packed into tiles of [`NR`] columns, `KC` rows of `NR`
//!   contiguous values each (zero-padded past the last column);
//! - the output is cut into tasks of at most [`MC`] rows by a range of tiles; for each
//!   inner block every task packs its rows of the left operand into micro-panels of
//!   [`MR`] rows stored column by column (zero-padded past the last row);
//! - the micro-kernel multiplies one `MR × KC` micro-panel by one `KC × NR` tile into
//!   `MR × NR` sums held in 24 registers (two 16-lane vectors per row), loading two
//!   vectors of the right operand and broadcasting one left value per row per step.
//!
//! Any row and column strides are read, so transposed operands need no copy beforehand:
//! the packing is where the layout is dealt with.

use super::epilogue::Epilogue;
use super::host_buffer::HostBuffer;
use super::matmul::{Bias, GemmArgs, SharedOut};
use super::prefetch::{Prefetcher, Region};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

/// Rows of a micro-tile.
const MR: usize = 12;
/// Columns of a micro-tile: two 16-lane vectors.
pub(super) const NR: usize = 32;
/// Steps per pass of the micro-kernels' loops ([`unrolled!`]): a loop's counter and
/// pointer updates are scalar instructions, which the cores may issue on the two ports
/// the FMAs need.
pub(super) const UNROLL: usize = 4;

/// Runs the statement `$step` `$count` times, written out [`UNROLL`] times a pass.
macro_rules! unrolled {
    ($count:expr, $step:expr) => {{
        use $crate::cpu::sgemm_avx512::UNROLL;
        const _: () = assert!(UNROLL == 4, "unrolled! writes out UNROLL steps");
        let count: usize = $count;
        for _ in 0..count / UNROLL {
            $step;
            $step;
            $step;
            $step;
        }
        for _ in 0..count % UNROLL {
            $step;
        }
    }};
}
pub(super) use unrolled;
/// Inner-dimension block. Every product of the DiT (inner sizes 128–512, the weight
/// gradients' aside) takes one block, so each micro-tile is stored once instead of
/// being reloaded and added to after every block: at 512 rather than 256, the DiT's
/// 384- and 512-long products ran 4–10 % faster and square ones no slower
/// (docs/benchmarks.md), although a `KC × NR` tile of the packed right operand
/// (64 KiB) no longer fits the L1 cache beside a micro-panel.
const KC: usize = 512;
/// Rows per task: the task's packed left block (`MC × KC`, 384 KiB) stays in L2.
const MC: usize = 16 * MR;
/// The most tiles (output columns / `NR`) for which contiguous left operands are read
/// in place rather than packed. Past it, packing pays: 2048² products ran about 6 %
/// faster packed, the DiT's products (n ≤ 512) about 5 % faster unpacked (scratch
/// timings on the 2-vCPU Xeon of docs/benchmarks.md).
const DIRECT_MAX_TILES: usize = 16;

/// While an epilogue finishes a row of a part, the operand it reads from memory is
/// asked for this many rows ahead ([`Epilogue::prefetch`]): in the DiT's feed-forward
/// backward, 2 to 16 rows ahead all took the first product and the GELU derivative's
/// pass over h from about 1.7 to 1.5 times a plain product's time; 6 was at the best
/// of them.
const EPILOGUE_PREFETCH_ROWS: usize = 6;

/// Whether this CPU runs the AVX-512 product (checked once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

/// What a product does besides `beta·lhs·rhs`: a bias, an epilogue, and a buffer to
/// which the left operand's row sums are added.
pub type Extras<'a> = (
    Option<Bias<'a, f32>>,
    Option<Epilogue<'a, f32>>,
    Option<&'a mut [f32]>,
);

/// `dst = beta·lhs·rhs` (or `dst += …` when `g.accumulate`, or `dst = bias + …`) for a
/// row-major `dst` with `ldc` between rows, split over rayon's threads when
/// `parallel`, then `epilogue` applied to each task's block of the output right after
/// its last products (`ldc` must then be `n`), and with `lhs_sums` (`m` values) each
/// row's sum of the left operand added to it. The caller has checked [`available`],
/// that `m`, `n` and `k` are nonzero, and that every index the strides reach is in
/// bounds.
///
/// The inner dimension is walked in blocks of `KC`: each block of the right operand is
/// packed just before its products, while it fits in L2 (packing all of a weight
/// gradient's `6272 × 512` operand first sent it through memory twice), and every
/// task then adds that block's products to its part of the output.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    dst: &mut [f32],
    ldc: usize,
    lhs: &[f32],
    rhs: &[f32],
    g: GemmArgs,
    beta: f32,
    parallel: bool,
    extras: Extras,
) {
    if let Some(bias) = as_transpose(g, beta, &extras) {
        transposed_product(dst, ldc, (lhs, rhs), g, parallel, bias);
        return;
    }
    run(
        dst,
        ldc,
        (lhs, Rhs::Strided(rhs)),
        g,
        beta,
        parallel,
        extras,
    );
}

/// Whether [`sgemm`] runs this product as its transpose ([`transposed_product`]), and
/// with which bias: few rows by a transposed right operand (a linear layer's `x·Wᵀ`,
/// `W` `[n, k]` with contiguous rows) at least twice the size of the left operand and
/// the output together, `2·m·(k + n) ≤ k·n`; overwritten (`beta` 1, no accumulation),
/// without an epilogue or row sums, with no bias or one row of it for every output
/// row. In the default MNIST run's step (1024-wide layers on 32 to 192 rows) the
/// products of 32 rows by a 1024 × 1024 weight took 0.31 ms against 0.46, of 96 rows
/// 0.69 against 0.78, of 192 rows 1.39 against 1.44–1.47; an adaLN projection (128 ×
/// 128 by 128 × 768, outside the bound) ran 15–35 % slower transposed, and a row-major
/// weight (an input gradient's `g·W`), read in place as the left operand a few values
/// of each row per step, was slower too (128 rows: 2.17 against 1.26 ms;
/// docs/benchmarks.md).
fn as_transpose<'a>(g: GemmArgs, beta: f32, extras: &Extras<'a>) -> Option<Option<Bias<'a, f32>>> {
    let (bias, epilogue, lhs_sums) = extras;
    let operands = g.m.saturating_mul(g.k.saturating_add(g.n));
    let fits = g.m > 0
        && operands.saturating_mul(2) <= g.k.saturating_mul(g.n)
        && g.rhs_strides.0 == 1
        && g.rhs_strides.1 != 1
        && beta == 1.0
        && !g.accumulate
        && epilogue.is_none()
        && lhs_sums.is_none()
        && bias.is_none_or(|b| b.strides == (0, 1));
    fits.then_some(*bias)
}

thread_local! {
    /// Each thread's buffer for a transposed product's output ([`transposed_product`]).
    static TRANSPOSED_OUT: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
}

/// `dst = lhs·rhs (+ bias)` computed as `(rhsᵀ·lhsᵀ)ᵀ`: the right operand, a weight
/// that a few rows multiply, becomes the left one and is read where it lies rather
/// than packed (packing all of a 1024 × 1024 weight cost as much as multiplying 32
/// rows by it); the few rows are packed instead, and the result is transposed into
/// `dst`. The bias goes into the transposed output before the products, which then
/// add to it: each element sums the same products in the same order as [`run`] on the
/// product itself, so the bits are the same.
fn transposed_product(
    dst: &mut [f32],
    ldc: usize,
    (lhs, rhs): (&[f32], &[f32]),
    g: GemmArgs,
    parallel: bool,
    bias: Option<Bias<f32>>,
) {
    let swapped = GemmArgs {
        m: g.n,
        n: g.m,
        k: g.k,
        lhs_strides: (g.rhs_strides.1, g.rhs_strides.0),
        rhs_strides: (g.lhs_strides.1, g.lhs_strides.0),
        accumulate: false,
    };
    let bias = bias.map(|b| Bias {
        strides: (b.strides.1, b.strides.0),
        ..b
    });
    with_scratch(&TRANSPOSED_OUT, g.n * g.m, |out_t| {
        let extras = (bias, None, None);
        run(
            out_t,
            g.m,
            (rhs, Rhs::Strided(lhs)),
            swapped,
            1.0,
            parallel,
            extras,
        );
        // Blocks of 16 output rows, in parallel: the output's pages are often fresh,
        // and faulting them in on one thread while the others waited made the
        // products of 96 rows and more slower than the plain walk in the step.
        let task = |(b, rows): (usize, &mut [f32])| {
            // SAFETY: AVX-512F is available (the caller's promise).
            unsafe { transpose_rows(rows, ldc, out_t, (g.n, g.m), 16 * b) };
        };
        let dst = &mut dst[..(g.m - 1) * ldc + g.n];
        match parallel {
            true => dst.par_chunks_mut(16 * ldc).enumerate().for_each(task),
            false => dst.chunks_mut(16 * ldc).enumerate().for_each(task),
        }
    });
}

/// Rows `first..` of `dst` (as many as it holds, at most 16, `ldc` apart) from the
/// columns of `src` (`n × m`, row-major), `dst[i·ldc + j] = src[j·m + first + i]` for
/// `j < n`, 16 columns at a time through [`transpose_columns`].
///
/// # Safety
/// AVX-512F is available.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_rows(
    dst: &mut [f32],
    ldc: usize,
    src: &[f32],
    (n, m): (usize, usize),
    first: usize,
) {
    let steps = (m - first).min(16);
    assert!(src.len() >= n * m && dst.len() >= (steps - 1) * ldc + n);
    let mut block = [0.0f32; 16 * 16];
    for j0 in (0..n).step_by(16) {
        let width = (n - j0).min(16);
        transpose_columns(&mut block, &src[j0 * m + first..], m, (steps, width), 16);
        for (i, row) in block.chunks_exact(16).take(steps).enumerate() {
            dst[i * ldc + j0..][..width].copy_from_slice(&row[..width]);
        }
    }
}

/// [`sgemm`] with a right operand packed beforehand ([`PackedRhs::new`]), for a
/// weight multiplied block of rows by block of rows: each block then skips packing it
/// again. `g.k` and `g.n` are the packed operand's; `g.rhs_strides` is not read.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed(
    dst: &mut [f32],
    ldc: usize,
    lhs: &[f32],
    rhs: &PackedRhs,
    g: GemmArgs,
    beta: f32,
    parallel: bool,
    extras: Extras,
) {
    assert!((g.k, g.n) == (rhs.k, rhs.n), "the packed operand's shape");
    run(dst, ldc, (lhs, Rhs::Packed(rhs)), g, beta, parallel, extras);
}

/// A right operand packed once: every inner block of `KC` rows as `NR`-wide tiles, in
/// the layout the shared walks read.
pub struct PackedRhs {
    data: HostBuffer<f32>,
    k: usize,
    n: usize,
}

impl PackedRhs {
    /// Packs the `k × n` operand with `strides` of `rhs`. The caller has checked
    /// [`available`], that `k` and `n` are nonzero and that every index the strides
    /// reach is in bounds.
    pub fn new(rhs: &[f32], (k, n): (usize, usize), strides: (usize, usize)) -> Self {
        let g = GemmArgs {
            m: 1,
            n,
            k,
            lhs_strides: (k, 1),
            rhs_strides: strides,
            accumulate: false,
        };
        let row = n.div_ceil(NR) * NR;
        let mut data = HostBuffer::zeroed(k * row);
        for k0 in (0..k).step_by(KC) {
            let ks = k0..k.min(k0 + KC);
            pack_rhs(&mut data[k0 * row..ks.end * row], rhs, g, &ks, false);
        }
        PackedRhs { data, k, n }
    }

    /// The tiles of inner block `ks`.
    fn block(&self, ks: &Range<usize>) -> &[f32] {
        let row = self.n.div_ceil(NR) * NR;
        &self.data[ks.start * row..ks.end * row]
    }
}

/// Where a task's packed right tiles come from for one inner block.
#[derive(Clone, Copy)]
enum Tiles<'a> {
    /// Packed once for every task, `kc·NR` values a tile.
    Shared(&'a [f32]),
    /// Packed by the task itself, one at a time, from this operand (read with the
    /// product's strides).
    Own(&'a [f32]),
}

/// Where a product's right operand comes from.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    /// Read with the product's strides, packed as the product goes.
    Strided(&'a [f32]),
    /// Packed beforehand.
    Packed(&'a PackedRhs),
}

/// The body of [`sgemm`] and [`sgemm_packed`].
fn run(
    dst: &mut [f32],
    ldc: usize,
    (lhs, rhs): (&[f32], Rhs),
    g: GemmArgs,
    beta: f32,
    parallel: bool,
    (bias, epilogue, lhs_sums): Extras,
) {
    assert!(available() && g.m > 0 && g.n > 0 && g.k > 0);
    assert!(epilogue.is_none() || ldc == g.n);
    assert!(lhs_sums.as_ref().is_none_or(|sums| sums.len() == g.m));
    let streamed = streams_output(g, lhs_sums.is_some(), epilogue.is_some());
    let product = Product {
        out: SharedOut::new(dst),
        ldc,
        lhs,
        rhs,
        g,
        beta,
        bias,
        epilogue,
        lhs_sums: lhs_sums.map(SharedOut::new),
        streamed,
    };
    let parts = split(g, parallel);
    // When the rows are not split, each tile is multiplied by one task only, which
    // packs it itself just before: a shared packing pass first would leave half of
    // the tiles in the other core's cache.
    let own_tiles = match rhs {
        Rhs::Strided(_) => parts.iter().all(|part| part.rows.len() == g.m),
        Rhs::Packed(_) => false,
    };
    let tiles = g.n.div_ceil(NR);
    let shared_len = match (own_tiles, rhs) {
        (false, Rhs::Strided(_)) => tiles * KC.min(g.k) * NR,
        _ => 0,
    };
    with_scratch(&PACKED_RHS, shared_len, |packed_rhs| {
        for k0 in (0..g.k).step_by(KC) {
            let ks = k0..g.k.min(k0 + KC);
            let tiles_from = match rhs {
                Rhs::Packed(packed) => Tiles::Shared(packed.block(&ks)),
                Rhs::Strided(data) if own_tiles => Tiles::Own(data),
                Rhs::Strided(data) => {
                    let packed = &mut packed_rhs[..tiles * ks.len() * NR];
                    pack_rhs(packed, data, g, &ks, parallel);
                    Tiles::Shared(packed)
                }
            };
            let task = |part: &Part| {
                // SAFETY: the parts are disjoint (see `split`); AVX-512F is available.
                unsafe { product.multiply_part(part, tiles_from, &ks) }
            };
            if parallel && parts.len() > 1 {
                parts.par_iter().for_each(task);
            } else {
                parts.iter().for_each(task);
            }
        }
    });
}

thread_local! {
    /// Each thread's buffer for packed right operands, kept between products: the
    /// attention's many small products would otherwise allocate for every one.
    static PACKED_RHS: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
    /// Each thread's buffer for packed left blocks.
    static PACKED_LHS: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
    /// Each thread's buffer for the one right tile a task packs for itself.
    static PACKED_TILE: RefCell<HostBuffer<f32>> = const { RefCell::new(HostBuffer::new()) };
}

/// Runs `f` on the first `len` values of this thread's `buffer`, or on a fresh buffer
/// when this thread's is in use (a product started by a job that this thread picked
/// up while waiting inside another product).
pub(super) fn with_scratch<R>(
    buffer: &'static LocalKey<RefCell<HostBuffer<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    buffer.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                *buf = HostBuffer::zeroed(len);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut HostBuffer::zeroed(len)),
    })
}

/// One task's part of the output: a range of rows by a range of `NR`-wide tiles.
struct Part {
    rows: Range<usize>,
    tiles: Range<usize>,
}

/// How a part's micro-tiles are walked (see `multiply_part`), and where the packed
/// right tiles come from: the product's shared buffer (`tile_len` values per tile),
/// or the task's own tile buffer, each tile packed there just before its panels.
enum Walk<'a> {
    /// One panel against every shared tile, then the next panel.
    SharedPanelMajor(&'a [f32]),
    /// Every panel against one shared tile, then the next tile.
    SharedTileMajor(&'a [f32]),
    /// Every panel against one tile of this operand (read with the product's
    /// strides) packed into the task's buffer, then the next.
    OwnTiles(&'a [f32]),
}

/// Calls `multiply(tile, packed_tile, panel)` for every tile of `tiles` and panel
/// below `panels` in the order of `walk`; `pack_own(rhs, tile, buffer)` packs a tile
/// of the right operand `rhs` into `own_tile` for [`Walk::OwnTiles`].
fn walk_tiles(
    walk: Walk,
    (tiles, panels, tile_len): (Range<usize>, usize, usize),
    own_tile: &mut [f32],
    pack_own: impl Fn(&[f32], usize, &mut [f32]),
    multiply: &mut impl FnMut(usize, &[f32], usize),
) {
    match walk {
        Walk::SharedPanelMajor(packed) => {
            for panel in 0..panels {
                for tile in tiles.clone() {
                    multiply(tile, &packed[tile * tile_len..][..tile_len], panel);
                }
            }
        }
        Walk::SharedTileMajor(packed) => {
            for tile in tiles {
                let b = &packed[tile * tile_len..][..tile_len];
                for panel in 0..panels {
                    multiply(tile, b, panel);
                }
            }
        }
        Walk::OwnTiles(rhs) => {
            for tile in tiles {
                pack_own(rhs, tile, own_tile);
                for panel in 0..panels {
                    multiply(tile, own_tile, panel);
                }
            }
        }
    }
}

/// Cuts the output into disjoint parts: blocks of whole micro-panels (at most `MC`
/// rows; a multiple of the threads in number, with panel counts that differ by at
/// most one, so that each half of the list rayon splits holds the same work), times
/// column ranges when there are fewer row blocks than twice the threads. Outputs of
/// at most `MC` rows with at least two tiles per thread are cut by columns only, so
/// that each task packs its own tiles (see `sgemm`), except products with a
/// transposed left operand and a long inner dimension (weight gradients) with at least
/// four panels per thread, cut by rows only, one part per thread: cut by columns, the
/// DiT's `proj` weight gradient (128 × 6272 × 128) read its left operand four times
/// and ran 15 % slower (docs/benchmarks.md).
fn split(g: GemmArgs, parallel: bool) -> Vec<Part> {
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let (panels, tiles) = (g.m.div_ceil(MR), g.n.div_ceil(NR));
    // A weight gradient's transposed left operand (`gᵀ`, megabytes) comes from memory
    // once for every column range that shares its rows: given rows enough to share
    // out, each thread takes its own rows and every column.
    let transposed = g.lhs_strides.0 == 1 && g.lhs_strides.1 != 1;
    let rows_only = transposed && g.k > KC && (4 * threads..=MC / MR).contains(&panels);
    // Columns alone give every thread two tasks: keep the rows whole.
    let rows_whole = panels <= MC / MR && tiles >= 2 * threads;
    let row_blocks = match (rows_only, rows_whole) {
        (true, _) => threads,
        (false, true) => 1,
        (false, false) => panels
            .div_ceil(MC / MR)
            .next_multiple_of(threads)
            .min(panels),
    };
    let column_chunks = match rows_only {
        true => 1,
        false => (2 * threads).div_ceil(row_blocks).clamp(1, tiles),
    };
    let tiles_per_chunk = tiles.div_ceil(column_chunks);
    let column_chunks = tiles.div_ceil(tiles_per_chunk);
    let rows = |b: usize| {
        let panel = |b: usize| b * panels / row_blocks * MR;
        panel(b)..g.m.min(panel(b + 1))
    };
    let cols = |c: usize| c * tiles_per_chunk..tiles.min((c + 1) * tiles_per_chunk);
    (0..row_blocks)
        .flat_map(|b| (0..column_chunks).map(move |c| (b, c)))
        .map(|(b, c)| Part {
            rows: rows(b),
            tiles: cols(c),
        })
        .collect()
}

/// Outputs of at least this many bytes that [`streams_output`] sends to memory with
/// streaming stores: larger than a core's L2, where the output would not stay anyway.
const STREAMED_MIN_BYTES: usize = 2 << 20;

/// Whether a product writes its output with streaming stores (`_mm512_stream_ps`,
/// which skip reading the output's lines first): a linear layer's weight gradient (the
/// product that asks for its left operand's row sums, the bias gradient) of at least
/// [`STREAMED_MIN_BYTES`], written once (one inner block, no accumulation, no
/// epilogue). No op reads it before the gradient norm and the optimizer, after the rest
/// of the backward, so keeping it in cache buys nothing, while a plain store to a line
/// no cache holds reads the line from memory first. In the main job (`1024 × 128 ·
/// 128 × 1024`, 4 MiB written) these products went from about 250 to 295 GFLOP/s in
/// place and the step from 82.0 to 80.4 ms (docs/benchmarks.md).
fn streams_output(g: GemmArgs, lhs_sums: bool, epilogue: bool) -> bool {
    let elements = g.m.saturating_mul(g.n);
    let bytes = elements.saturating_mul(std::mem::size_of::<f32>());
    lhs_sums && g.k <= KC && !g.accumulate && !epilogue && bytes >= STREAMED_MIN_BYTES
}

/// What every task of one product reads.
struct Product<'a> {
    out: SharedOut<f32>,
    ldc: usize,
    lhs: &'a [f32],
    rhs: Rhs<'a>,
    g: GemmArgs,
    beta: f32,
    bias: Option<Bias<'a, f32>>,
    epilogue: Option<Epilogue<'a, f32>>,
    /// Where each row's sum of the left operand is added (a linear layer's bias
    /// gradient beside its weight gradient `gᵀ·x`), gathered by the micro-kernel from
    /// the values it reads anyway, on each part's first tile.
    lhs_sums: Option<SharedOut<f32>>,
    /// Whether the output goes to memory with streaming stores ([`streams_output`]).
    streamed: bool,
}

/// Packs rows `ks` of `rhs` (`k × n` with `g.rhs_strides`) into `NR`-wide tiles of
/// `ks.len()` rows each.
fn pack_rhs(packed: &mut [f32], rhs: &[f32], g: GemmArgs, ks: &Range<usize>, parallel: bool) {
    let pack = |(tile, dst): (usize, &mut [f32])| pack_tile(dst, rhs, g, ks, tile);
    if parallel && ks.len() * g.n >= 1 << 15 {
        packed
            .par_chunks_mut(ks.len() * NR)
            .enumerate()
            .for_each(pack);
    } else {
        packed.chunks_mut(ks.len() * NR).enumerate().for_each(pack);
    }
}

/// Packs rows `ks` of tile `tile` (columns `tile·NR..`) of `rhs` into `dst`: `ks.len()`
/// steps of `NR` values, zero past the last column.
pub(super) fn pack_tile(dst: &mut [f32], rhs: &[f32], g: GemmArgs, ks: &Range<usize>, tile: usize) {
    let (rs, cs) = g.rhs_strides;
    let kc = ks.len();
    let first = tile * NR;
    let width = NR.min(g.n - first);
    if cs == 1 && width == NR {
        // Whole tiles: fixed-size copies, which compile to a few vector moves
        // instead of a `memcpy` call per step.
        for (p, row) in dst.chunks_exact_mut(NR).enumerate() {
            let at = (ks.start + p) * rs + first;
            let src: &[f32; NR] = rhs[at..at + NR].try_into().expect("NR values");
            <&mut [f32; NR]>::try_from(row)
                .expect("NR values")
                .copy_from_slice(src);
        }
    } else if cs == 1 {
        for (p, row) in dst.chunks_exact_mut(NR).enumerate() {
            let at = (ks.start + p) * rs + first;
            row[..width].copy_from_slice(&rhs[at..at + width]);
            row[width..].fill(0.0);
        }
    } else if rs == 1 {
        // A transposed operand (a weight `[n, k]` read as `k × n`): each column is
        // a contiguous weight row. Blocks of 16 columns by 16 steps are loaded row
        // by row and transposed in registers.
        let last = (first + width - 1) * cs + ks.end - 1;
        assert!(last < rhs.len());
        // SAFETY: AVX-512F is available (checked by `sgemm`); the loads read
        // `(first + j)·cs + p` for j < width, p in `ks`, at most `last` (asserted).
        unsafe { transpose_columns(dst, &rhs[first * cs + ks.start..], cs, (kc, width), NR) };
    } else {
        for (p, step) in dst.chunks_exact_mut(NR).enumerate() {
            let at = (ks.start + p) * rs + first * cs;
            for (j, value) in step.iter_mut().enumerate() {
                *value = if j < width { rhs[at + j * cs] } else { 0.0 };
            }
        }
    }
}

/// `dst[p·row_len + j] = src[j·cs + p]` for `j < width`, `p < kc`, and zero for the
/// columns past `width` up to `row_len` (a multiple of 16, at least `width`): one
/// packed tile of a transposed operand (`row_len` = `NR`; the few-keys attention's kᵀ
/// with 64), built from 16 × 16 blocks transposed in registers.
///
/// # Safety
/// AVX-512F is available and `src` holds index `(width − 1)·cs + kc − 1`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_columns(
    dst: &mut [f32],
    src: &[f32],
    cs: usize,
    (kc, width): (usize, usize),
    row_len: usize,
) {
    assert!(row_len.is_multiple_of(16) && width <= row_len);
    let dst = &mut dst[..kc * row_len];
    for half in 0..row_len / 16 {
        let columns = width.saturating_sub(16 * half).min(16);
        for p0 in (0..kc).step_by(16) {
            let steps = (kc - p0).min(16);
            let mask = ((1u32 << steps) - 1) as __mmask16;
            let mut block = [_mm512_setzero_ps(); 16];
            for (j, row) in block.iter_mut().enumerate().take(columns) {
                *row = _mm512_maskz_loadu_ps(mask, src.as_ptr().add((16 * half + j) * cs + p0));
            }
            for (p, column) in transpose16(block).iter().enumerate().take(steps) {
                _mm512_storeu_ps(
                    dst.as_mut_ptr().add((p0 + p) * row_len + 16 * half),
                    *column,
                );
            }
        }
    }
}

/// One tile of a transposed copy through registers: `dst[r·ldd + c] = src[r + c·lds]`
/// for `r < rows`, `c < cols` (each at most 16): the source's `cols` columns of `rows`
/// contiguous values in, the tile's `rows` rows of `cols` contiguous values out.
///
/// # Safety
/// AVX-512F is available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_tile(
    dst: &mut [f32],
    ldd: usize,
    src: &[f32],
    lds: usize,
    (rows, cols): (usize, usize),
) {
    assert!((1..=16).contains(&rows) && (1..=16).contains(&cols));
    assert!(src.len() >= (cols - 1) * lds + rows && dst.len() >= (rows - 1) * ldd + cols);
    let mask_rows = ((1u32 << rows) - 1) as __mmask16;
    let mut block = [_mm512_setzero_ps(); 16];
    for (c, column) in block.iter_mut().enumerate().take(cols) {
        *column = _mm512_maskz_loadu_ps(mask_rows, src.as_ptr().add(c * lds));
    }
    let mask_cols = ((1u32 << cols) - 1) as __mmask16;
    for (r, row) in transpose16(block).iter().enumerate().take(rows) {
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(r * ldd), mask_cols, *row);
    }
}

/// [`transpose_tile`] of 16-bit values (bf16, f16 bits), up to 16 rows by up to 32
/// columns, so that a full tile writes whole cache lines (32 × 2 bytes a row; 16 × 16
/// tiles wrote half lines, and a 4096² bf16 transpose ran at half the f32 one's rate).
/// Source columns 2k and 2k + 1 are joined into one column of 32-bit pairs (2k's value
/// in the low half), so that one 16 × 16 register transpose of the pairs leaves each
/// output row in one register, its values already in order.
///
/// # Safety
/// AVX-512F is available.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_tile_u16(
    dst: &mut [u16],
    ldd: usize,
    src: &[u16],
    lds: usize,
    (rows, cols): (usize, usize),
) {
    assert!((1..=16).contains(&rows) && (1..=32).contains(&cols));
    assert!(src.len() >= (cols - 1) * lds + rows && dst.len() >= (rows - 1) * ldd + cols);
    let mut column = [0u16; 16];
    // Source column c (a run of `rows` values), widened to 32 bits; zeros past `cols`.
    let mut widened = |c: usize| {
        if c >= cols {
            return _mm512_setzero_si512();
        }
        let run = &src[c * lds..][..rows];
        let narrow = match rows {
            16 => _mm256_loadu_si256(run.as_ptr().cast()),
            _ => {
                column[..rows].copy_from_slice(run);
                _mm256_loadu_si256(column.as_ptr().cast())
            }
        };
        _mm512_cvtepu16_epi32(narrow)
    };
    let mut pairs = [_mm512_setzero_ps(); 16];
    for (k, pair) in pairs.iter_mut().enumerate() {
        let (low, high) = (widened(2 * k), widened(2 * k + 1));
        *pair = _mm512_castsi512_ps(_mm512_or_si512(low, _mm512_slli_epi32::<16>(high)));
    }
    let mut row = [0u16; 32];
    for (r, joined) in transpose16(pairs).iter().enumerate().take(rows) {
        let to = dst[r * ldd..][..cols].as_mut_ptr();
        match cols {
            32 => _mm512_storeu_ps(to.cast(), *joined),
            _ => {
                _mm512_storeu_ps(row.as_mut_ptr().cast(), *joined);
                std::ptr::copy_nonoverlapping(row.as_ptr(), to, cols);
            }
        }
    }
}

/// The 16 × 16 transpose of `rows`: element `j` of result `p` is element `p` of row
/// `j`. Three rounds of in-lane unpacks and lane shuffles, 64 shuffles in all. Plain
/// loops rather than `array::from_fn`: its closures were not inlined, which sent every
/// vector through memory.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(rows: [__m512; 16]) -> [__m512; 16] {
    // Pairs: within each 128-bit lane `l`, rows 2i and 2i+1 interleaved, columns
    // 4l, 4l+1 (even results) and 4l+2, 4l+3 (odd results).
    let mut pairs = [_mm512_setzero_pd(); 16];
    for i in 0..8 {
        pairs[2 * i] = _mm512_castps_pd(_mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]));
        pairs[2 * i + 1] = _mm512_castps_pd(_mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]));
    }
    // Quads: result 4i + c holds, in lane l, column 4l + c of rows 4i..4i+3.
    let mut quads = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        for half in 0..2 {
            let (low, high) = (pairs[4 * i + half], pairs[4 * i + 2 + half]);
            quads[4 * i + 2 * half] = _mm512_castpd_ps(_mm512_unpacklo_pd(low, high));
            quads[4 * i + 2 * half + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(low, high));
        }
    }
    // Gather lane l of the four quads of column c (rows 0–3, 4–7, 8–11, 12–15) into
    // result 4l + c, in two rounds of lane shuffles.
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let (q0, q1, q2, q3) = (quads[c], quads[4 + c], quads[8 + c], quads[12 + c]);
        let even01 = _mm512_shuffle_f32x4::<0b10_00_10_00>(q0, q1);
        let odd01 = _mm512_shuffle_f32x4::<0b11_01_11_01>(q0, q1);
        let even23 = _mm512_shuffle_f32x4::<0b10_00_10_00>(q2, q3);
        let odd23 = _mm512_shuffle_f32x4::<0b11_01_11_01>(q2, q3);
        out[c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(even01, even23);
        out[8 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(even01, even23);
        out[4 + c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(odd01, odd23);
        out[12 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(odd01, odd23);
    }
    out
}

/// Packs rows `rows` and inner indices `ks` of `lhs` into `MR`-row micro-panels, each
/// stored column by column (`MR` values per inner index).
fn pack_lhs(packed: &mut [f32], lhs: &[f32], g: GemmArgs, rows: &Range<usize>, ks: &Range<usize>) {
    let (rs, cs) = g.lhs_strides;
    let kc = ks.len();
    for (panel, dst) in packed.chunks_exact_mut(kc * MR).enumerate() {
        let first = rows.start + panel * MR;
        let valid = MR.min(rows.end - first);
        if cs == 1 {
            // Row-major rows: read each row as a slice, write the panel step by step.
            let row = |r: usize| &lhs[(first + r.min(valid - 1)) * rs + ks.start..][..kc];
            let src: [&[f32]; MR] = std::array::from_fn(row);
            for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                for (value, src) in step.iter_mut().zip(&src) {
                    *value = src[p];
                }
            }
        } else if rs == 1 {
            // A transposed operand: each step's rows are adjacent.
            for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                let at = first + (ks.start + p) * cs;
                step[..valid].copy_from_slice(&lhs[at..at + valid]);
            }
        } else {
            for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                let col = (ks.start + p) * cs;
                for (r, value) in step.iter_mut().enumerate().take(valid) {
                    *value = lhs[(first + r) * rs + col];
                }
            }
        }
        // Rows past the end are zero (the row-major path filled them with copies).
        if valid < MR {
            dst.chunks_exact_mut(MR)
                .for_each(|step| step[valid..].fill(0.0));
        }
    }
}

impl Product<'_> {
    /// Writes the bias into `part` of the output.
    ///
    /// # Safety
    /// No other thread writes `part` of the output.
    unsafe fn fill_bias(&self, part: &Part, bias: Bias<f32>) {
        for (row, _, dst) in self.part_rows(part) {
            bias.write_row(dst, row, part.tiles.start * NR);
        }
    }

    /// Adds the products of inner block `ks` to `part` of the output (writes them, for
    /// the first block of a product that neither accumulates nor has a bias).
    ///
    /// A left operand whose rows or steps are contiguous is read where it lies when
    /// the output has at most [`DIRECT_MAX_TILES`] tiles: its micro-panels stay in
    /// cache across those tiles, and packing them (a scalar transpose for row-major
    /// activations) cost 8% of the DiT training step. Other layouts, wider outputs
    /// (whose many tiles reread each panel), and the last panel of a part when it is
    /// short, are packed. Such an in-place left operand is walked micro-panel by
    /// micro-panel, each against every tile of the shared packed right operand (at
    /// most `DIRECT_MAX_TILES · KC · NR` values, held in L2), so that the panel is read
    /// from memory once and then stays in L1, and the output's rows are written in
    /// order; tile by tile (the packed layouts, and tiles a task packs itself), each
    /// tile stays in L1 while the panels pass. Walked panel-major, the DiT's
    /// forward and input-gradient products ran 2–13 % faster in the step's profile,
    /// square products (whose tiles do not fit L2) 4–9 % slower (docs/benchmarks.md).
    ///
    /// # Safety
    /// No other thread writes `part` of the output, and AVX-512F is available.
    unsafe fn multiply_part(&self, part: &Part, tiles_from: Tiles, ks: &Range<usize>) {
        let (g, kc) = (self.g, ks.len());
        let first_block = ks.start == 0;
        let row_bias = self.bias.filter(|b| first_block && b.strides == (0, 1));
        if let Some(bias) = self.bias.filter(|_| first_block && row_bias.is_none()) {
            self.fill_bias(part, bias);
        }
        // A bias replaces the output's values: a filled one is then added to, a bias
        // row is added by the micro-kernel instead.
        let add = !first_block
            || match self.bias {
                None => g.accumulate,
                Some(_) => row_bias.is_none(),
            };
        let (rs, cs) = g.lhs_strides;
        let direct = (cs == 1 || rs == 1) && g.n.div_ceil(NR) <= DIRECT_MAX_TILES;
        // Rows from here on are packed: all of them, or the short last panel.
        let packed_from = match direct {
            true => part.rows.start + part.rows.len() / MR * MR,
            false => part.rows.start,
        };
        let packed_panels = (part.rows.end - packed_from).div_ceil(MR);
        let own_len = match tiles_from {
            Tiles::Shared(_) => 0,
            Tiles::Own(_) => kc * NR,
        };
        let mut prefetcher = self.next_block_prefetcher(part, ks);
        with_scratch(&PACKED_LHS, packed_panels * MR * kc, |packed_lhs| {
            with_scratch(&PACKED_TILE, own_len, |own_tile| {
                pack_lhs(packed_lhs, self.lhs, g, &(packed_from..part.rows.end), ks);
                let panels = part.rows.len().div_ceil(MR);
                let mut multiply = |tile: usize, b: &[f32], panel: usize| {
                    let cols = NR.min(g.n - tile * NR);
                    let bias = row_bias.map(|b| b.data[b.offset + tile * NR..][..cols].as_ptr());
                    let row = part.rows.start + panel * MR;
                    let a = if row < packed_from {
                        let at = row * rs + ks.start * cs;
                        debug_assert!(at + (MR - 1) * rs + (kc - 1) * cs < self.lhs.len());
                        let ptr = self.lhs.as_ptr().add(at);
                        match cs {
                            1 => Left::Rows(RowsInPlace::new(ptr, rs)),
                            _ => Left::Steps(StepsInPlace { ptr, cs }),
                        }
                    } else {
                        let at = (row - packed_from) / MR * MR * kc;
                        Left::Packed(PackedPanel(packed_lhs[at..][..MR * kc].as_ptr()))
                    };
                    let at = row * self.ldc + tile * NR;
                    let edge = Edge {
                        rows: MR.min(part.rows.end - row),
                        cols,
                        ldc: self.ldc,
                        beta: self.beta,
                        add,
                        bias,
                    };
                    let stream = self.streamed && !add;
                    let c = self.out.ptr_at(at, (edge.rows - 1) * self.ldc + cols);
                    if let Some(prefetcher) = prefetcher.as_mut() {
                        prefetcher.ask_share();
                    }
                    // Each row's sum is gathered once: by the part holding the
                    // first tile, on that tile.
                    let sums = self
                        .lhs_sums
                        .as_ref()
                        .filter(|_| tile == 0)
                        .map(|sums| sums.ptr_at(row, edge.rows));
                    match a {
                        Left::Packed(a) => tile_product(cols, kc, a, b, c, edge, (sums, stream)),
                        Left::Steps(a) => tile_product(cols, kc, a, b, c, edge, (sums, stream)),
                        Left::Rows(a) => tile_product(cols, kc, a, b, c, edge, (sums, stream)),
                    }
                };
                let walk = match tiles_from {
                    Tiles::Shared(packed) if direct => Walk::SharedPanelMajor(packed),
                    Tiles::Shared(packed) => Walk::SharedTileMajor(packed),
                    Tiles::Own(rhs) => Walk::OwnTiles(rhs),
                };
                let pack_own =
                    |rhs: &[f32], tile, buffer: &mut [f32]| pack_tile(buffer, rhs, g, ks, tile);
                let tiles = (part.tiles.clone(), panels, kc * NR);
                walk_tiles(walk, tiles, own_tile, pack_own, &mut multiply);
            });
        });
        if self.streamed {
            // Streaming stores are weakly ordered: done before the task says so.
            _mm_sfence();
        }
        if ks.end == g.k {
            if let Some(epilogue) = self.epilogue {
                self.finish_part(part, epilogue);
            }
        }
    }

    /// The prefetcher of `part`'s operands in the inner block after `ks`, spread over
    /// the part's micro-tiles, for a transposed left operand (a weight gradient's `gᵀ`,
    /// read a whole row of `g` per step). Row-major left operands are read as
    /// sequential streams that the hardware prefetchers follow: prefetching those as
    /// well made the DiT's cache-cold row-major products 4–10 % slower.
    fn next_block_prefetcher(&self, part: &Part, ks: &Range<usize>) -> Option<Prefetcher> {
        let g = self.g;
        let transposed_lhs = g.lhs_strides.0 == 1 && g.lhs_strides.1 != 1;
        if !transposed_lhs {
            return None;
        }
        let next = ks.end..g.k.min(ks.end + KC);
        let cols = part.tiles.start * NR..g.n.min(part.tiles.end * NR);
        let lhs = Region::block(self.lhs, g.lhs_strides, part.rows.clone(), next.clone());
        let rhs = match self.rhs {
            Rhs::Strided(rhs) => Region::block(rhs, g.rhs_strides, next, cols),
            // Packed beforehand: in cache already.
            Rhs::Packed(_) => None,
        };
        let calls = part.tiles.len() * part.rows.len().div_ceil(MR);
        Some(Prefetcher::new([lhs, rhs].into_iter().flatten(), calls))
    }

    /// Applies the epilogue to `part` of the finished output, while it is in cache.
    ///
    /// # Safety
    /// No other thread reads or writes `part` of the output.
    unsafe fn finish_part(&self, part: &Part, epilogue: Epilogue<f32>) {
        for (_, at, y) in self.part_rows(part) {
            epilogue.prefetch(at + EPILOGUE_PREFETCH_ROWS * self.ldc, y.len());
            epilogue.apply(y, at);
        }
    }

    /// Each row of `part` of the output: its index, where its first value lies in the
    /// output, and its values over the part's columns.
    ///
    /// # Safety
    /// No other thread reads or writes `part` of the output while the rows are in use.
    unsafe fn part_rows<'p>(
        &'p self,
        part: &'p Part,
    ) -> impl Iterator<Item = (usize, usize, &'p mut [f32])> + 'p {
        let cols = part.tiles.start * NR..self.g.n.min(part.tiles.end * NR);
        part.rows.clone().map(move |row| {
            let at = row * self.ldc + cols.start;
            // SAFETY: the caller guarantees exclusive access to the part.
            let values = unsafe { self.out.slice(at, cols.len()) };
            (row, at, values)
        })
    }
}

/// A micro-panel of the left operand (`MR` rows), in one of three layouts, each with a
/// micro-kernel of its own: with the strides known at compile time (packed) or the
/// row pointers set up once, a step's addresses cost a pointer increment or two
/// rather than integer arithmetic per row, which on Intel cores takes issue slots
/// from the FMA ports (about 4 % on the DiT's products, on top of the unrolled rows).
#[derive(Clone, Copy)]
enum Left {
    Packed(PackedPanel),
    Steps(StepsInPlace),
    Rows(RowsInPlace),
}

/// The layout of a left micro-panel as the micro-kernel walks it: the value of row
/// `r` at the current step, then on to the next step.
trait PanelWalk: Copy {
    /// The value of row `r < MR` at the current step.
    ///
    /// # Safety
    /// The panel's current step is in bounds.
    unsafe fn value(&self, r: usize) -> f32;
    /// The current step's `MR` values in the first lanes of a vector (zero beyond).
    ///
    /// # Safety
    /// As [`PanelWalk::value`].
    unsafe fn step_values(&self) -> __m512;
    /// Moves on to the next step.
    fn step(&mut self);
    /// Asks for a step a few ahead, where it helps.
    fn prefetch_ahead(&self);
}

/// A packed micro-panel: `MR` values per step, contiguous.
#[derive(Clone, Copy)]
struct PackedPanel(*const f32);

/// The lanes of a step's `MR` values.
const STEP_LANES: __mmask16 = (1 << MR) - 1;

impl PanelWalk for PackedPanel {
    #[inline(always)]
    unsafe fn value(&self, r: usize) -> f32 {
        *self.0.add(r)
    }
    #[inline(always)]
    unsafe fn step_values(&self) -> __m512 {
        _mm512_maskz_loadu_ps(STEP_LANES, self.0)
    }
    #[inline(always)]
    fn step(&mut self) {
        self.0 = self.0.wrapping_add(MR);
    }
    #[inline(always)]
    fn prefetch_ahead(&self) {
        // SAFETY: a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(self.0.wrapping_add(8 * MR).cast()) };
    }
}

/// A transposed left operand read in place: each step's `MR` rows are adjacent, the
/// steps `cs` apart.
#[derive(Clone, Copy)]
struct StepsInPlace {
    ptr: *const f32,
    cs: usize,
}

impl PanelWalk for StepsInPlace {
    #[inline(always)]
    unsafe fn value(&self, r: usize) -> f32 {
        *self.ptr.add(r)
    }
    #[inline(always)]
    unsafe fn step_values(&self) -> __m512 {
        _mm512_maskz_loadu_ps(STEP_LANES, self.ptr)
    }
    #[inline(always)]
    fn step(&mut self) {
        self.ptr = self.ptr.wrapping_add(self.cs);
    }
    #[inline(always)]
    fn prefetch_ahead(&self) {
        // SAFETY: a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(self.ptr.wrapping_add(8 * self.cs).cast()) };
    }
}

/// A row-major left operand read in place: rows `rs` apart, steps adjacent. Row `r` is
/// read from base `r / 3` at `(r % 3)·rs`, an address mode of its own (base + index ×
/// 4 or 8), so four pointers serve the twelve rows. Four named fields rather than an
/// array: the array was kept in memory, and its increments went through it each step.
#[derive(Clone, Copy)]
struct RowsInPlace {
    b0: *const f32,
    b1: *const f32,
    b2: *const f32,
    b3: *const f32,
    rs: usize,
}

impl RowsInPlace {
    fn new(ptr: *const f32, rs: usize) -> Self {
        let base = |b: usize| ptr.wrapping_add(3 * b * rs);
        RowsInPlace {
            b0: base(0),
            b1: base(1),
            b2: base(2),
            b3: base(3),
            rs,
        }
    }
}

impl PanelWalk for RowsInPlace {
    #[inline(always)]
    unsafe fn value(&self, r: usize) -> f32 {
        let base = match r / 3 {
            0 => self.b0,
            1 => self.b1,
            2 => self.b2,
            _ => self.b3,
        };
        *base.add((r % 3) * self.rs)
    }
    #[inline(always)]
    unsafe fn step_values(&self) -> __m512 {
        // Rows apart: gathered value by value (no product asks for sums of a
        // row-major left operand read in place; this keeps the walk total).
        let mut values = [0.0; 16];
        for (r, value) in values.iter_mut().take(MR).enumerate() {
            *value = self.value(r);
        }
        _mm512_loadu_ps(values.as_ptr())
    }
    #[inline(always)]
    fn step(&mut self) {
        self.b0 = self.b0.wrapping_add(1);
        self.b1 = self.b1.wrapping_add(1);
        self.b2 = self.b2.wrapping_add(1);
        self.b3 = self.b3.wrapping_add(1);
    }
    #[inline(always)]
    fn prefetch_ahead(&self) {
        // Twelve sequential streams: the hardware prefetchers follow them.
    }
}

/// Where and how a micro-tile's sums are stored.
#[derive(Clone, Copy)]
struct Edge {
    /// Valid rows (≤ `MR`).
    rows: usize,
    /// Valid columns (≤ `16·V`).
    cols: usize,
    ldc: usize,
    beta: f32,
    /// Add to the destination's values instead of overwriting them.
    add: bool,
    /// A bias row (`cols` values) to add to every row of the sums.
    bias: Option<*const f32>,
}

/// The micro-tile product for a tile with `cols` valid columns: two vectors wide, or one
/// where the last columns fit in one; gathering the left rows' sums where asked, and
/// storing with streaming stores where `streamed` ([`streams_output`]).
///
/// # Safety
/// As [`micro_kernel`].
#[inline(always)]
unsafe fn tile_product<L: PanelWalk>(
    cols: usize,
    kc: usize,
    a: L,
    b: &[f32],
    c: *mut f32,
    edge: Edge,
    (lhs_sums, streamed): (Option<*mut f32>, bool),
) {
    let none = std::ptr::null_mut();
    // Streamed outputs are weight gradients (row sums on each part's first tile): their
    // tiles two vectors wide are streamed, a narrow last tile keeps plain stores rather
    // than two more copies of the kernel.
    match (cols > NR / 2, lhs_sums, streamed) {
        (true, None, true) => micro_kernel::<2, L, false, true>(kc, a, b, c, edge, none),
        (true, Some(sums), true) => micro_kernel::<2, L, true, true>(kc, a, b, c, edge, sums),
        (true, None, _) => micro_kernel::<2, L, false, false>(kc, a, b, c, edge, none),
        (false, None, _) => micro_kernel::<1, L, false, false>(kc, a, b, c, edge, none),
        (true, Some(sums), _) => micro_kernel::<2, L, true, false>(kc, a, b, c, edge, sums),
        (false, Some(sums), _) => micro_kernel::<1, L, true, false>(kc, a, b, c, edge, sums),
    }
}

/// `MR × 16V` sums of `a` (`MR × kc`) times `b` (`kc` rows of `NR`, packed), scaled by
/// `beta`, plus the bias row if any, and stored (or added) at `c`. `V = 1` serves
/// tiles whose last columns fit one vector. `STREAMED` writes the sums with streaming
/// stores ([`streams_output`]). With `SUM_ROWS`, each step's left values
/// are also added up, one more vector add per step, and the rows' sums added at
/// `lhs_sums`.
///
/// # Safety
/// AVX-512F is available, `a` addresses `MR × kc` values, `b` holds `kc` packed steps,
/// `c` addresses `edge.rows` rows of `edge.cols` values, `edge.ldc` apart, the bias
/// row `edge.cols` values, and, when `SUM_ROWS`, `lhs_sums` `edge.rows` values, to
/// which the panel's row sums are added.
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel<const V: usize, L: PanelWalk, const SUM_ROWS: bool, const STREAMED: bool>(
    kc: usize,
    mut a: L,
    b: &[f32],
    c: *mut f32,
    edge: Edge,
    lhs_sums: *mut f32,
) {
    // The output rows are written at the end, usually to lines not in any cache (a
    // fresh activation): asking for them now overlaps those misses with the products
    // instead of stalling on them at the stores.
    for r in (0..edge.rows).filter(|_| !STREAMED) {
        let line = c.wrapping_add(r * edge.ldc);
        _mm_prefetch::<_MM_HINT_ET0>(line.cast());
        _mm_prefetch::<_MM_HINT_ET0>(line.wrapping_add(16 * V - 1).cast());
    }
    let mut sums = [[_mm512_setzero_ps(); V]; MR];
    let mut row_sums = _mm512_setzero_ps();
    let mut bp = b[..kc * NR].as_ptr();
    // Written out row by row, so that each row's address is a constant expression of
    // the panel's pointers: a loop over the rows was not always unrolled, and then kept
    // the sums in memory.
    const _: () = assert!(MR == 12, "row_products! lists the rows of a micro-tile");
    macro_rules! row_products {
        ($bv:ident; $($r:literal)*) => {$(
            let av = _mm512_set1_ps(a.value($r));
            for (sum, &bv) in sums[$r].iter_mut().zip(&$bv) {
                *sum = _mm512_fmadd_ps(av, bv, *sum);
            }
        )*};
    }
    // One step: the step's right values times each row's left value.
    macro_rules! step {
        () => {{
            if SUM_ROWS {
                row_sums = _mm512_add_ps(row_sums, a.step_values());
            }
            // The left micro-panel streams from L2: ask for it a few steps ahead.
            a.prefetch_ahead();
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
            row_products!(bv; 0 1 2 3 4 5 6 7 8 9 10 11);
            a.step();
            bp = bp.add(NR);
        }};
    }
    unrolled!(kc, step!());
    let beta = _mm512_set1_ps(edge.beta);
    let masks = lane_masks::<V>(edge.cols);
    let bias: [__m512; V] = std::array::from_fn(|v| match edge.bias {
        Some(bias) => _mm512_maskz_loadu_ps(masks[v], bias.add(16 * v)),
        None => _mm512_setzero_ps(),
    });
    for (r, row) in sums.iter().enumerate().take(edge.rows) {
        if STREAMED {
            store_row_streamed(c.add(r * edge.ldc), row, &masks, (beta, &bias));
        } else {
            store_row(c.add(r * edge.ldc), row, &masks, (beta, &bias), edge.add);
        }
    }
    if SUM_ROWS {
        let valid = ((1u32 << edge.rows) - 1) as __mmask16;
        let before = _mm512_maskz_loadu_ps(valid, lhs_sums);
        _mm512_mask_storeu_ps(lhs_sums, valid, _mm512_add_ps(before, row_sums));
    }
}

/// The masks of a row of `V` 16-lane vectors whose first `cols` lanes are valid.
#[inline(always)]
pub(super) fn lane_masks<const V: usize>(cols: usize) -> [__mmask16; V] {
    let mut masks = [0; V];
    for (v, mask) in masks.iter_mut().enumerate() {
        let valid = cols.saturating_sub(16 * v).min(16);
        *mask = ((1u32 << valid) - 1) as __mmask16;
    }
    masks
}

/// Stores `beta·sums + bias`, plus the values already there when `add`, into the
/// lanes of `masks` of the output row at `line`.
///
/// # Safety
/// AVX-512F is available and `line` addresses the lanes the masks select.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store_row<const V: usize>(
    line: *mut f32,
    sums: &[__m512; V],
    masks: &[__mmask16; V],
    (beta, bias): (__m512, &[__m512; V]),
    add: bool,
) {
    for v in 0..V {
        // Masked lanes are not touched, so the pointer may run past the row.
        let ptr = line.wrapping_add(16 * v);
        let mut value = _mm512_fmadd_ps(sums[v], beta, bias[v]);
        if add {
            value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(masks[v], ptr));
        }
        _mm512_mask_storeu_ps(ptr, masks[v], value);
    }
}

/// [`store_row`] without `add`, through streaming stores where a whole vector lands on
/// a whole cache line (plain masked stores elsewhere).
///
/// # Safety
/// As [`store_row`].
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_row_streamed<const V: usize>(
    line: *mut f32,
    sums: &[__m512; V],
    masks: &[__mmask16; V],
    (beta, bias): (__m512, &[__m512; V]),
) {
    for v in 0..V {
        let ptr = line.wrapping_add(16 * v);
        let value = _mm512_fmadd_ps(sums[v], beta, bias[v]);
        if masks[v] == 0xffff && (ptr as usize).is_multiple_of(64) {
            _mm512_stream_ps(ptr, value);
        } else {
            _mm512_mask_storeu_ps(ptr, masks[v], value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::product_cases::{skipped, Case};
    use crate::cpu::HostBuffer;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use std::sync::Once;

    /// A weight gradient large enough for streaming stores ([`streams_output`]) writes
    /// every element with the bits of the same product without row sums (plain
    /// stores), for rows a whole number of cache lines long and not (`n` 1024 and 1000,
    /// whose rows start at every offset within a line), and its row sums are right.
    #[test]
    fn streamed_weight_gradients_match_plain_stores() {
        static SAID: Once = Once::new();
        if skipped("streamed_weight_gradients_match_plain_stores", &SAID) {
            return;
        }
        for n in [1024, 1000] {
            let (m, k) = (1024, 64);
            // gᵀ·x for g [k, m] and x [k, n], both row-major: a transposed left operand.
            let case = Case::new((m, n, k), (1, 0), false, 7);
            let (g, lhs, rhs) = (case.g, &case.a, &case.b);
            assert!(streams_output(g, true, false), "n = {n}");
            // Cache-line aligned, as the engine's buffers are: streaming stores need it.
            let mut streamed = HostBuffer::<f32>::zeroed(m * n);
            streamed.fill(f32::NAN);
            let mut sums = vec![0.0; m];
            let extras = (None, None, Some(&mut sums[..]));
            sgemm(&mut streamed, n, lhs, rhs, g, 1.0, true, extras);
            let mut plain = vec![f32::NAN; m * n];
            sgemm(&mut plain, n, lhs, rhs, g, 1.0, true, (None, None, None));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&streamed) == bits(&plain), "n = {n}");
            for (r, &sum) in sums.iter().enumerate() {
                let want: f64 = (0..k).map(|p| lhs[p * m + r] as f64).sum();
                assert!((sum as f64 - want).abs() < 1e-4, "row {r}: {sum} vs {want}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Few rows by a larger transposed right operand run as their transpose: the
        /// same bits as the plain walk, with and without a bias row, on one thread and
        /// several, from a few columns and inner indices to inner sizes across `KC`,
        /// any row count the bound allows (past the transposed write's blocks of 16),
        /// the left operand in each layout; the columns past `n` are left alone.
        #[test]
        fn transposed_products_match_the_plain_walk_bit_for_bit(
            n in prop_oneof![4usize..40, 100usize..200],
            k in prop_oneof![4usize..40, 100usize..200, KC - 20..KC + 40],
            rows in any::<Index>(), lhs_layout in 0usize..3, parallel: bool, with_bias: bool,
            seed: u64,
        ) {
            static SAID: Once = Once::new();
            if skipped("transposed_products_match_the_plain_walk_bit_for_bit", &SAID) {
                return Ok(());
            }
            // Any row count within the bound 2·m·(k + n) ≤ k·n.
            let most_rows = k * n / (2 * (k + n));
            prop_assume!(most_rows >= 1);
            let m = 1 + rows.index(most_rows);
            let mut case = Case::new((m, n, k), (lhs_layout, 1), false, seed);
            let bias_data = case.values(n + 1);
            let bias = with_bias.then_some(Bias { data: &bias_data, offset: 1, strides: (0, 1) });
            prop_assert!(as_transpose(case.g, 1.0, &(bias, None, None)).is_some());
            let (mut got, mut want) = (case.c.clone(), case.c.clone());
            sgemm(&mut got, case.ldc, &case.a, &case.b, case.g, 1.0, parallel, (bias, None, None));
            let plain = (&case.a[..], Rhs::Strided(&case.b));
            run(&mut want, case.ldc, plain, case.g, 1.0, parallel, (bias, None, None));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Sizes around the tile edges, the inner block and the row block (up to `MC`
        /// rows, each task packs its own tiles; past it they are packed once and
        /// shared), three layouts of each operand (row-major and transposed, read in
        /// place, and neither stride 1, packed), overwrite, accumulate and three bias
        /// layouts, one thread and several: every output matches f64 arithmetic, and
        /// the columns past `n` are left alone; the left operand's row sums, when
        /// asked for, too.
        #[test]
        fn sgemm_matches_f64_reference(
            m in prop_oneof![1usize..40, 190usize..230], n in 1usize..80, k in prop_oneof![1usize..100, KC - 20..KC + 40],
            layouts in (0usize..3, 0usize..3), accumulate: bool, parallel: bool,
            with_bias: bool, bias_layout in 0usize..3, beta in -2.0f32..2.0, seed: u64,
            with_sums: bool,
        ) {
            static SAID: Once = Once::new();
            if skipped("sgemm_matches_f64_reference", &SAID) {
                return Ok(());
            }
            let mut case = Case::new((m, n, k), layouts, accumulate, seed);
            // One row repeated (the linear layer's bias, added by the micro-kernel), a
            // full matrix, or one column repeated (both written before the product).
            let bias_strides = [(0, 1), (n + 1, 1), (1, 0)][bias_layout];
            let bias_data = case.values((m + 1) * (n + 1));
            let bias = with_bias.then_some(Bias { data: &bias_data, offset: 1, strides: bias_strides });
            let mut want = case.reference(beta);
            if with_bias {
                for i in 0..m {
                    for j in 0..n {
                        let prior = if accumulate { case.c[i * case.ldc + j] as f64 } else { 0.0 };
                        let at = 1 + i * bias_strides.0 + j * bias_strides.1;
                        want[i * case.ldc + j] += bias_data[at] as f64 - prior;
                    }
                }
            }
            // The left operand's row sums are added to what the buffer holds.
            let mut sums = case.values(m);
            let want_sums: Vec<f64> = (0..m)
                .map(|i| {
                    let (rs, cs) = case.g.lhs_strides;
                    sums[i] as f64 + (0..k).map(|p| case.a[i * rs + p * cs] as f64).sum::<f64>()
                })
                .collect();
            let before = case.c.clone();
            let extras = (bias, None, with_sums.then_some(&mut sums[..]));
            sgemm(&mut case.c, case.ldc, &case.a, &case.b, case.g, beta, parallel, extras);
            case.check(&case.c, &want, &before).map_err(TestCaseError::fail)?;
            if with_sums {
                for (i, (&got, &want)) in sums.iter().zip(&want_sums).enumerate() {
                    let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                    prop_assert!((got as f64 - want).abs() <= tol, "row {i}: {got} vs {want}");
                }
            }
        }

        /// A right operand packed beforehand gives the outputs of one packed as the
        /// product goes, bit for bit: inner sizes across `KC` blocks, the three
        /// layouts of each operand, one thread and several, with a bias and an
        /// epilogue.
        #[test]
        fn sgemm_packed_matches_sgemm(
            m in prop_oneof![1usize..40, 190usize..230], n in 1usize..80, k in 1usize..2 * KC + 60,
            layouts in (0usize..3, 0usize..3), accumulate: bool, parallel: bool,
            with_bias: bool, gelu: bool, seed: u64,
        ) {
            static SAID: Once = Once::new();
            if skipped("sgemm_packed_matches_sgemm", &SAID) {
                return Ok(());
            }
            let mut case = Case::new((m, n, k), layouts, accumulate, seed);
            let bias_data = case.values(n);
            let bias = with_bias.then_some(Bias { data: &bias_data, offset: 0, strides: (0, 1) });
            // An epilogue needs a dense output.
            let ldc = if gelu { n } else { case.ldc };
            let epilogue = gelu.then_some(Epilogue::GeluInPlace);
            let mut want = case.c.clone();
            let g = case.g;
            sgemm(&mut want, ldc, &case.a, &case.b, g, 0.5, parallel, (bias, epilogue, None));
            let packed = PackedRhs::new(&case.b, (k, n), g.rhs_strides);
            let got = &mut case.c;
            sgemm_packed(got, ldc, &case.a, &packed, g, 0.5, parallel, (bias, epilogue, None));
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(got), bits(&want));
        }
    }
}
