//! Matrix products: f32 products on CPUs with AVX-512 run on our own kernels
//! (`sgemm_avx512`, and `sgemm_small` for products that fit in L1), everything else
//! through the `gemm` crate. All read any row and column strides: transposed operands
//! are multiplied in place, without a copy.

use super::epilogue::Epilogue;
use super::float::CpuFloat;
use super::host_buffer::HostBuffer;
use super::pool;
use super::strided::gather_view;
use crate::layout::Layout;
use rayon::prelude::*;

/// Below this many flops per product, batches run in parallel with single-threaded
/// products; above it, each product uses every thread.
const PER_PRODUCT_PARALLEL_FLOPS: usize = 1 << 22;

/// Products smaller than this (m·n·k) run on the unpacked kernel `sgemm_small`: for
/// the attention's per-head products (49·49·32) the packed kernel's packing and
/// stores cost more than they save (attention forward 12.4 ms with `gemm`, 15.7 with
/// the packed kernel, in the DiT step bench's profile).
pub(super) const AVX512_MIN_MNK: usize = 1 << 17;

/// One `m×k · k×n` product described by storage offsets and strides.
#[derive(Clone, Copy)]
pub struct GemmArgs {
    /// Rows of the output.
    pub m: usize,
    /// Columns of the output.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// (row stride, column stride) of the left operand.
    pub lhs_strides: (usize, usize),
    /// (row stride, column stride) of the right operand.
    pub rhs_strides: (usize, usize),
    /// Adds the product to the destination's values instead of overwriting them.
    pub accumulate: bool,
}

impl GemmArgs {
    /// The product of the last two dims of views `la` (`[…, m, k]`) and `lb`
    /// (`[…, k, n]`), reading their strides.
    pub fn of_views(la: &Layout, lb: &Layout, accumulate: bool) -> GemmArgs {
        let (ra, rb) = (la.rank(), lb.rank());
        let last_two = |l: &Layout, r: usize| (l.strides()[r - 2], l.strides()[r - 1]);
        GemmArgs {
            m: la.shape()[ra - 2],
            n: lb.shape()[rb - 1],
            k: la.shape()[ra - 1],
            lhs_strides: last_two(la, ra),
            rhs_strides: last_two(lb, rb),
            accumulate,
        }
    }
}

/// An output shared by the tasks of one product, each writing its own disjoint
/// elements: the pointer and length of a buffer borrowed mutably by the caller.
#[derive(Clone, Copy)]
pub struct SharedOut<F>(*mut F, usize);

// SAFETY: the tasks write disjoint elements (each its own part of the output).
unsafe impl<F> Sync for SharedOut<F> {}
unsafe impl<F> Send for SharedOut<F> {}

impl<F> SharedOut<F> {
    /// The buffer `out`, written only through [`SharedOut::slice`] while shared.
    pub fn new(out: &mut [F]) -> Self {
        SharedOut(out.as_mut_ptr(), out.len())
    }

    /// The same buffer as `G` values; only where `G` is `F` (asserted).
    pub fn cast<G: 'static>(self) -> SharedOut<G>
    where
        F: 'static,
    {
        assert_eq!(std::any::TypeId::of::<F>(), std::any::TypeId::of::<G>());
        SharedOut(self.0.cast(), self.1)
    }

    /// Where element `at` lies, for writes reaching `reach` elements from it (checked in
    /// debug builds only: the micro-kernel's stores are the hot path).
    pub fn ptr_at(&self, at: usize, reach: usize) -> *mut F {
        debug_assert!(at + reach <= self.1);
        self.0.wrapping_add(at)
    }

    /// Elements `at..at + len`. Panics past the end of the buffer.
    ///
    /// # Safety
    /// The buffer is alive, and no other thread reads or writes these elements while
    /// the slice is in use.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, at: usize, len: usize) -> &mut [F] {
        assert!(at + len <= self.1);
        // SAFETY: in bounds (asserted); exclusive access is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// A bias a product starts from: element `(i, j)` at `offset + i·rs + j·cs` of `data`.
#[derive(Clone, Copy)]
pub struct Bias<'a, F> {
    /// The bias's storage.
    pub data: &'a [F],
    /// Where element (0, 0) is.
    pub offset: usize,
    /// (row stride, column stride); 0 repeats a value.
    pub strides: (usize, usize),
}

impl<F: Copy> Bias<'_, F> {
    /// Writes row `i` of the bias, from column `first_col` on, into `dst`.
    pub fn write_row(&self, dst: &mut [F], i: usize, first_col: usize) {
        let (rs, cs) = self.strides;
        let at = self.offset + i * rs + first_col * cs;
        if cs == 1 {
            dst.copy_from_slice(&self.data[at..at + dst.len()]);
        } else {
            dst.iter_mut()
                .enumerate()
                .for_each(|(j, d)| *d = self.data[at + j * cs]);
        }
    }
}

/// `dst = beta·lhs·rhs` (or `dst += beta·lhs·rhs` when `g.accumulate`, or
/// `dst = bias + beta·lhs·rhs`) for a row-major `dst` with `dst_row_stride`. Panics (a
/// bug in the caller, not reachable from user input) if the strides address beyond a
/// slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into<F: CpuFloat>(
    dst: &mut [F],
    dst_row_stride: usize,
    lhs: &[F],
    rhs: &[F],
    mut g: GemmArgs,
    beta: F,
    threads: gemm::Parallelism,
    bias: Option<Bias<F>>,
) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let last = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    // The bounds the strides reach are checked here, so the unsafe call below stays in
    // bounds for every input the engine can build.
    assert!(g.k == 0 || last(g.lhs_strides, g.m, g.k) < lhs.len());
    assert!(g.k == 0 || last(g.rhs_strides, g.k, g.n) < rhs.len());
    assert!((g.m - 1) * dst_row_stride + g.n <= dst.len());
    #[cfg(target_arch = "x86_64")]
    if g.k > 0 && g.m * g.n * g.k < AVX512_MIN_MNK && bias.is_none() && avx512_products::<F>() {
        let beta = as_f32_slice(std::slice::from_ref(&beta))[0];
        let (dst, lhs, rhs) = (as_f32_slice_mut(dst), as_f32_slice(lhs), as_f32_slice(rhs));
        return super::sgemm_small::sgemm_small(dst, dst_row_stride, lhs, rhs, g, beta);
    }
    #[cfg(target_arch = "x86_64")]
    if g.k > 0 && avx512_products::<F>() {
        let parallel = !matches!(threads, gemm::Parallelism::None);
        let bias = bias.map(|b| Bias {
            data: as_f32_slice(b.data),
            offset: b.offset,
            strides: b.strides,
        });
        let beta = as_f32_slice(std::slice::from_ref(&beta))[0];
        let (dst, lhs, rhs) = (as_f32_slice_mut(dst), as_f32_slice(lhs), as_f32_slice(rhs));
        let ldc = dst_row_stride;
        return super::sgemm_avx512::sgemm(
            dst,
            ldc,
            lhs,
            rhs,
            g,
            beta,
            parallel,
            (bias, None, None),
        );
    }
    if let Some(b) = bias {
        for (i, row) in dst.chunks_mut(dst_row_stride).take(g.m).enumerate() {
            b.write_row(&mut row[..g.n], i, 0);
        }
        g.accumulate = true;
    }
    // SAFETY: every index the strides address is in bounds (asserted above) and `dst`
    // does not alias the inputs (it is a distinct &mut slice).
    unsafe {
        gemm::gemm(
            g.m,
            g.n,
            g.k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            g.accumulate,
            lhs.as_ptr(),
            g.lhs_strides.1 as isize,
            g.lhs_strides.0 as isize,
            rhs.as_ptr(),
            g.rhs_strides.1 as isize,
            g.rhs_strides.0 as isize,
            F::one(),
            beta,
            false,
            false,
            false,
            threads,
        )
    }
}

/// Whether products of `F` run on the AVX-512 kernel (f32 on a CPU that has it).
fn avx512_products<F: CpuFloat>() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() {
        return super::sgemm_avx512::available();
    }
    false
}

/// `s` as an f32 slice; only called where `F` is f32.
#[cfg(target_arch = "x86_64")]
pub(super) fn as_f32_slice<F: CpuFloat>(s: &[F]) -> &[f32] {
    assert_eq!(std::any::TypeId::of::<F>(), std::any::TypeId::of::<f32>());
    // SAFETY: F is f32 (asserted), so the cast changes no type.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// `s` as a mutable f32 slice; only called where `F` is f32.
#[cfg(target_arch = "x86_64")]
pub(super) fn as_f32_slice_mut<F: CpuFloat>(s: &mut [F]) -> &mut [f32] {
    assert_eq!(std::any::TypeId::of::<F>(), std::any::TypeId::of::<f32>());
    // SAFETY: F is f32 (asserted), so the cast changes no type.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

/// Storage offset of each batch entry of a `[batch..., r, c]` view.
pub fn batch_offsets(layout: &Layout) -> Vec<usize> {
    let rank = layout.rank();
    let (shape, strides) = (&layout.shape()[..rank - 2], &layout.strides()[..rank - 2]);
    let mut offsets = vec![layout.offset()];
    for (&n, &s) in shape.iter().zip(strides) {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..n).map(move |i| o + i * s))
            .collect();
    }
    offsets
}

/// Batched `[..., m, k] · [..., k, n]` with equal batch dims, plus an optional bias view
/// of the output's shape; contiguous output.
pub fn matmul<F: CpuFloat>(
    a: &[F],
    la: &Layout,
    b: &[F],
    lb: &Layout,
    bias: Option<(&[F], &Layout)>,
) -> HostBuffer<F> {
    let g = GemmArgs::of_views(la, lb, bias.is_some());
    let (m, k, n) = (g.m, g.k, g.n);
    let (oa, ob) = (batch_offsets(la), batch_offsets(lb));
    let flops = 2 * m * n * k;
    // The AVX-512 kernel writes the bias inside its own tasks.
    let bias_in_product = bias.is_some() && k > 0 && avx512_products::<F>();
    let by_row_blocks = !bias_in_product
        && oa.len() == 1
        && m >= 2 * BIAS_BLOCK_ROWS
        && flops >= PER_PRODUCT_PARALLEL_FLOPS;
    if let Some(bias) = bias.filter(|_| by_row_blocks) {
        return biased_product_by_row_blocks(&a[oa[0]..], &b[ob[0]..], g, bias);
    }
    // The output starts as the bias (the product accumulates onto it) or as whatever
    // the pool hands out (the product overwrites it).
    let mut out = match bias {
        Some((v, l)) if !bias_in_product => gather_view(v, l.shape(), l.strides(), l.offset()),
        _ if k == 0 => pool::take_zeroed(oa.len() * m * n),
        _ => pool::take(oa.len() * m * n),
    };
    if m * n == 0 || k == 0 {
        return out;
    }
    let bias_at = bias.filter(|_| bias_in_product).map(|(v, l)| {
        let r = l.rank();
        (
            v,
            batch_offsets(l),
            (l.strides()[r - 2], l.strides()[r - 1]),
        )
    });
    let g = GemmArgs {
        accumulate: g.accumulate && !bias_in_product,
        ..g
    };
    let one = |(i, dst): (usize, &mut [F]), threads| {
        let bias = bias_at.as_ref().map(|(data, at, strides)| Bias {
            data,
            offset: at[i],
            strides: *strides,
        });
        gemm_into(dst, n, &a[oa[i]..], &b[ob[i]..], g, F::one(), threads, bias);
    };
    if flops < PER_PRODUCT_PARALLEL_FLOPS && oa.len() > 1 {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|p| one(p, gemm::Parallelism::None));
    } else if splits_inner(g) && bias_at.is_none() {
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            split_k_product(dst, &a[oa[i]..], &b[ob[i]..], g, None);
        }
    } else {
        let threads = product_threads(g);
        out.chunks_mut(m * n)
            .enumerate()
            .for_each(|p| one(p, threads));
    }
    out
}

/// Whether one product splits its inner dimension over the threads
/// ([`split_k_product`]): several threads, enough work, and an inner dimension that,
/// split, leaves each thread at least the output's larger dimension (a weight
/// gradient). Measured on 2 threads (docs/benchmarks.md, 2026-12-04): a DiT's weight
/// gradients at batch 32 (k = 1,568 against 384 or 512) ran at 117–173 GFLOP/s as
/// plain parallel products and at 136–205 split; their step took 6 % less.
fn splits_inner(g: GemmArgs) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1
        && 2 * g.m * g.n * g.k >= PER_PRODUCT_PARALLEL_FLOPS
        && g.k >= threads * g.m.max(g.n)
}

/// The threads one product uses otherwise: one below [`PER_PRODUCT_PARALLEL_FLOPS`],
/// every thread from there on.
fn product_threads(g: GemmArgs) -> gemm::Parallelism {
    match 2 * g.m * g.n * g.k < PER_PRODUCT_PARALLEL_FLOPS {
        true => gemm::Parallelism::None,
        false => gemm::Parallelism::Rayon(0),
    }
}

/// A 2-D `[m, k] · [k, n]` product plus an optional bias view of the output's shape,
/// then `epilogue` (the fused feed-forward ops of `ops/mlp.rs`); contiguous output. On
/// the AVX-512 packed kernel each task applies the epilogue to its block of the output
/// right after the block's last products, while the block is in cache; otherwise it is
/// a pass over the finished output.
pub fn matmul_then<F: CpuFloat>(
    (a, la): (&[F], &Layout),
    (b, lb): (&[F], &Layout),
    bias: Option<(&[F], &Layout)>,
    epilogue: Epilogue<F>,
) -> HostBuffer<F> {
    assert!(la.rank() == 2 && lb.rank() == 2);
    let g = GemmArgs::of_views(la, lb, false);
    let (m, k, n) = (g.m, g.k, g.n);
    #[cfg(target_arch = "x86_64")]
    if k > 0 && m * n * k >= AVX512_MIN_MNK && avx512_products::<F>() {
        let bias = bias.map(|(v, l)| Bias {
            data: as_f32_slice(v),
            offset: l.offset(),
            strides: (l.strides()[0], l.strides()[1]),
        });
        let (lhs, rhs) = (
            as_f32_slice(&a[la.offset()..]),
            as_f32_slice(&b[lb.offset()..]),
        );
        let mut out = pool::take(m * n);
        let parallel = !matches!(product_threads(g), gemm::Parallelism::None);
        let (dst, epilogue) = (as_f32_slice_mut(&mut out), Some(epilogue.as_f32()));
        super::sgemm_avx512::sgemm(dst, n, lhs, rhs, g, 1.0, parallel, (bias, epilogue, None));
        return out;
    }
    let mut out = matmul(a, la, b, lb, bias);
    epilogue.apply_all(&mut out, n);
    out
}

/// Rows of the output per task in [`biased_product_by_row_blocks`]: enough to amortise
/// packing the right operand, few enough that a block stays in L2 between the bias
/// fill and the product.
const BIAS_BLOCK_ROWS: usize = 256;

/// A large `m×k · k×n + bias` product (a linear layer over many tokens), computed as
/// independent blocks of rows, each on one thread: the block is filled with its bias
/// rows and the product accumulates onto it while it is still in cache. Filling the
/// whole output first and then running one parallel product reads the output back
/// from memory; in development timings the DiT's `D → 4D` layer took 5.0 ms this way
/// instead of 5.7.
fn biased_product_by_row_blocks<F: CpuFloat>(
    a: &[F],
    b: &[F],
    g: GemmArgs,
    (bias, lbias): (&[F], &Layout),
) -> HostBuffer<F> {
    let r = lbias.rank();
    let (brs, bcs) = (lbias.strides()[r - 2], lbias.strides()[r - 1]);
    let n = g.n;
    let mut out = pool::take(g.m * n);
    out.par_chunks_mut(BIAS_BLOCK_ROWS * n)
        .enumerate()
        .for_each(|(block, dst)| {
            let first = block * BIAS_BLOCK_ROWS;
            let rows = GemmArgs {
                m: dst.len() / n,
                accumulate: false,
                ..g
            };
            let lhs = &a[first * g.lhs_strides.0..];
            let bias = Bias {
                data: bias,
                offset: lbias.offset() + first * brs,
                strides: (brs, bcs),
            };
            gemm_into(
                dst,
                n,
                lhs,
                b,
                rows,
                F::one(),
                gemm::Parallelism::None,
                Some(bias),
            );
        });
    out
}

/// A product with a long inner dimension and a small output (a weight gradient,
/// `gᵀ·x` summed over every token): threads split the inner dimension, each computes
/// a partial product on its own, and the partials are added. Splitting the small
/// output instead, as a plain parallel product does, leaves threads short of work.
fn split_k_product<F: CpuFloat>(
    dst: &mut [F],
    lhs: &[F],
    rhs: &[F],
    g: GemmArgs,
    lhs_sums: Option<&mut [F]>,
) {
    let parts = rayon::current_num_threads().clamp(1, g.k);
    let with_sums = lhs_sums.is_some();
    let partials: Vec<(HostBuffer<F>, Vec<F>)> = (0..parts)
        .into_par_iter()
        .map(|p| {
            // Balanced, never empty: parts ≤ k.
            let (k0, k1) = (p * g.k / parts, (p + 1) * g.k / parts);
            let mut part = pool::take(g.m * g.n);
            let sub = GemmArgs {
                k: k1 - k0,
                accumulate: false,
                ..g
            };
            let (lhs, rhs) = (&lhs[k0 * g.lhs_strides.1..], &rhs[k0 * g.rhs_strides.0..]);
            let none = gemm::Parallelism::None;
            let mut sums = vec![F::zero(); if with_sums { g.m } else { 0 }];
            match with_sums {
                true => product_and_lhs_sums(&mut part, lhs, rhs, sub, none, &mut sums),
                false => gemm_into(&mut part, g.n, lhs, rhs, sub, F::one(), none, None),
            }
            (part, sums)
        })
        .collect();
    if !g.accumulate {
        dst.fill(F::zero());
    }
    for (part, _) in &partials {
        dst.iter_mut().zip(part).for_each(|(d, &p)| *d = *d + p);
    }
    if let Some(total) = lhs_sums {
        for (_, sums) in &partials {
            total.iter_mut().zip(sums).for_each(|(t, &s)| *t = *t + s);
        }
    }
    partials.into_iter().for_each(|(part, _)| pool::give(part));
}

/// `dst = lhs·rhs` (row-major `dst` of `g.n` columns; `g.accumulate` unset) and
/// `sums[r] += Σₚ lhs[r, p]`. On the AVX-512 kernel its micro-kernel adds up the left
/// values it reads for the product anyway; a product too small for that kernel (a
/// split-k part on a machine with many threads) sums in a pass of its own.
fn product_and_lhs_sums<F: CpuFloat>(
    dst: &mut [F],
    lhs: &[F],
    rhs: &[F],
    g: GemmArgs,
    threads: gemm::Parallelism,
    sums: &mut [F],
) {
    assert!(!g.accumulate && sums.len() == g.m);
    #[cfg(target_arch = "x86_64")]
    if lhs_sums_in_product::<F>(g) {
        let parallel = !matches!(threads, gemm::Parallelism::None);
        let (dst, lhs, rhs) = (as_f32_slice_mut(dst), as_f32_slice(lhs), as_f32_slice(rhs));
        let sums = Some(as_f32_slice_mut(sums));
        return super::sgemm_avx512::sgemm(
            dst,
            g.n,
            lhs,
            rhs,
            g,
            1.0,
            parallel,
            (None, None, sums),
        );
    }
    gemm_into(dst, g.n, lhs, rhs, g, F::one(), threads, None);
    let (rs, cs) = g.lhs_strides;
    for (r, sum) in sums.iter_mut().enumerate() {
        *sum = (0..g.k).fold(*sum, |s, p| s + lhs[r * rs + p * cs]);
    }
}

/// Whether the product `g` of `F` values runs on the AVX-512 kernel, which can return
/// the left operand's row sums beside it.
fn lhs_sums_in_product<F: CpuFloat>(g: GemmArgs) -> bool {
    cfg!(target_arch = "x86_64")
        && g.k > 0
        && g.m * g.n * g.k >= AVX512_MIN_MNK
        && avx512_products::<F>()
}

/// A linear layer's weight and bias gradients from one product: `a·b` for 2-D views
/// `a` = `gᵀ` (`[n, rows]`) and `b` = `x` (`[rows, k]`), and the sums of `a`'s rows
/// (`g` summed over the rows), contiguous; `None` where the product does not run on
/// the AVX-512 kernel (the caller then multiplies and sums on its own).
pub fn weight_bias_gradients<F: CpuFloat>(
    a: &[F],
    la: &Layout,
    b: &[F],
    lb: &Layout,
) -> Option<(HostBuffer<F>, HostBuffer<F>)> {
    let g = GemmArgs::of_views(la, lb, false);
    if la.rank() != 2 || lb.rank() != 2 || g.m * g.n == 0 || !lhs_sums_in_product::<F>(g) {
        return None;
    }
    let (a, b) = (&a[la.offset()..], &b[lb.offset()..]);
    let (mut out, mut sums) = (pool::take(g.m * g.n), pool::take_zeroed(g.m));
    match splits_inner(g) {
        true => split_k_product(&mut out, a, b, g, Some(&mut sums)),
        false => product_and_lhs_sums(&mut out, a, b, g, product_threads(g), &mut sums),
    }
    Some((out, sums))
}
