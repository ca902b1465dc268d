//! Reductions (sum, max, min) over any set of dims.
//!
//! A contiguous input whose reduced dims sit next to each other is read in place as
//! `[outer, reduced, inner]`: with `inner = 1` each output is the reduction of one
//! contiguous row; otherwise whole rows of `inner` values are combined into the output
//! row (vectorised, memory read in order), which covers bias gradients (`[N, D] → [D]`)
//! and broadcast gradients (`[B, T, D] → [B, 1, D]`). Other layouts are first gathered
//! into that order. `sum_product` sums `x·y` the same way in one pass when both views
//! are laid out alike and read in place.

use super::float::{sum_lanes, CpuFloat};
use super::host_buffer::HostBuffer;
use super::isa;
use super::pool;
use super::strided::{gather_view, PARALLEL_CUTOFF};
use crate::backend::ReduceOp;
use crate::layout::Layout;
use rayon::prelude::*;

fn identity<F: CpuFloat>(op: ReduceOp) -> F {
    match op {
        ReduceOp::Sum => F::zero(),
        ReduceOp::Max => F::neg_infinity(),
        ReduceOp::Min => F::infinity(),
    }
}

/// max and min that propagate NaN, as PyTorch's do.
#[inline(always)]
fn max_nan<F: CpuFloat>(a: F, b: F) -> F {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

#[inline(always)]
fn min_nan<F: CpuFloat>(a: F, b: F) -> F {
    if a < b || a.is_nan() {
        a
    } else {
        b
    }
}

/// Runs `$body` with `$combine` bound to `op`'s combining function, so that each op's
/// loop is compiled on its own.
macro_rules! with_combine {
    ($op:expr, |$combine:ident| $body:expr) => {
        match $op {
            ReduceOp::Sum => {
                let $combine = |a: F, b: F| a + b;
                $body
            }
            ReduceOp::Max => {
                let $combine = max_nan::<F>;
                $body
            }
            ReduceOp::Min => {
                let $combine = min_nan::<F>;
                $body
            }
        }
    };
}

/// `op` over `dims` (sorted) of the view; output in keep-dim shape, contiguous.
pub fn reduce<F: CpuFloat>(
    x: &[F],
    layout: &Layout,
    dims: &[usize],
    op: ReduceOp,
) -> HostBuffer<F> {
    let shape = layout.shape();
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
    let n_out: usize = kept.iter().map(|&d| shape[d]).product();
    let n_red: usize = dims.iter().map(|&d| shape[d]).product();
    if n_red == 0 || n_out == 0 {
        let mut empty = pool::take(n_out);
        empty.fill(identity(op));
        return empty;
    }
    // Every element into one value: their order is free, so a transposed view (a
    // weight's gradient) is read where it lies instead of gathered first.
    if n_out == 1 {
        if let Some(range) = layout.dense_range() {
            return reduce_blocks(op, &x[range], 1, n_red, 1);
        }
    }
    let block = reduced_block(shape, dims);
    match (block, layout.contiguous_range()) {
        (Some((outer, inner)), Some(range)) => reduce_blocks(op, &x[range], outer, n_red, inner),
        _ => {
            // Gather into [kept..., reduced...] order: one block with inner = 1.
            let order: Vec<usize> = kept.iter().chain(dims).copied().collect();
            let view = layout.permute(&order);
            let data = gather_view(x, view.shape(), view.strides(), view.offset());
            reduce_blocks(op, &data, n_out, n_red, 1)
        }
    }
}

/// Σ over `dims` (sorted) of `x·y`, two views of one shape laid out alike, in one pass
/// without the product in memory; keep-dim shape, contiguous. A gradient's squared norm
/// (`Σ g·g`, every dim) took 4× the time per byte of the Adam update as a product then
/// a sum. Taken when both views have the same layout and are either reduced whole and
/// dense (any order), or contiguous with the reduced dims (ignoring size-1 dims)
/// consecutive, and nothing is empty; `None` otherwise, and the caller multiplies and
/// sums. As [`reduce`], fixed pieces: the result does not depend on the number of
/// threads.
pub fn sum_product<F: CpuFloat>(
    x: &[F],
    lx: &Layout,
    y: &[F],
    ly: &Layout,
    dims: &[usize],
) -> Option<HostBuffer<F>> {
    if lx.shape() != ly.shape() || lx.strides() != ly.strides() {
        return None;
    }
    let shape = lx.shape();
    let red: usize = dims.iter().map(|&d| shape[d]).product();
    // Every element into one value, as in `reduce`: any dense order will do.
    if red == lx.elem_count() {
        let (rx, ry) = (lx.dense_range()?, ly.dense_range()?);
        return (red > 0).then(|| product_blocks(&x[rx], &y[ry], 1, red, 1));
    }
    let (rx, ry) = (lx.contiguous_range()?, ly.contiguous_range()?);
    let (outer, inner) = reduced_block(shape, dims)?;
    if outer * red * inner == 0 {
        return None;
    }
    Some(product_blocks(&x[rx], &y[ry], outer, red, inner))
}

/// `x·y` as `[outer, red, inner]` summed over its middle dim → `[outer, inner]`, the
/// pieces of [`reduce_blocks`]'s sum.
fn product_blocks<F: CpuFloat>(
    x: &[F],
    y: &[F],
    outer: usize,
    red: usize,
    inner: usize,
) -> HostBuffer<F> {
    let mut out = pool::take(outer * inner);
    let parallel = x.len() >= PARALLEL_CUTOFF;
    let dot = |a: &[F], b: &[F]| {
        isa::dispatch(
            #[inline(always)]
            |(a, b): (&[F], &[F])| sum_lanes([a, b], |[a, b]| a * b),
            (a, b),
        )
    };
    let rows_of = |chunk: usize| x.chunks(chunk).zip(y.chunks(chunk));
    if inner == 1 && outer == 1 && parallel {
        let pieces = x.par_chunks(ROW_PIECE).zip(y.par_chunks(ROW_PIECE));
        let partials: Vec<F> = pieces.map(|(a, b)| dot(a, b)).collect();
        out[0] = sum_lanes([&partials], |[p]| p);
    } else if inner == 1 {
        let row = |(o, (a, b)): (&mut F, (&[F], &[F]))| *o = dot(a, b);
        match parallel {
            true => out
                .par_iter_mut()
                .zip(x.par_chunks(red).zip(y.par_chunks(red)))
                .for_each(row),
            false => out.iter_mut().zip(rows_of(red)).for_each(row),
        }
    } else if outer == 1 && parallel {
        let rows_per_piece = (ROW_PIECE / inner).max(1);
        let piece = rows_per_piece * inner;
        let partials: Vec<HostBuffer<F>> = x
            .par_chunks(piece)
            .zip(y.par_chunks(piece))
            .map(|(a, b)| {
                let mut partial = pool::take(inner);
                accumulate_products(&mut partial, a, b);
                partial
            })
            .collect();
        out.fill(F::zero());
        for partial in partials {
            combine_into(&mut out, &partial, |a, b| a + b);
            pool::give(partial);
        }
    } else {
        let block = |(o, (a, b)): (&mut [F], (&[F], &[F]))| accumulate_products(o, a, b);
        match parallel {
            true => out
                .par_chunks_mut(inner)
                .zip(x.par_chunks(red * inner).zip(y.par_chunks(red * inner)))
                .for_each(block),
            false => out
                .chunks_mut(inner)
                .zip(rows_of(red * inner))
                .for_each(block),
        }
    }
    out
}

/// `out[i] = Σ_r a[r][i]·b[r][i]` over the rows of `out.len()` values of `a` and `b`.
fn accumulate_products<F: CpuFloat>(out: &mut [F], a: &[F], b: &[F]) {
    out.fill(F::zero());
    isa::dispatch(
        #[inline(always)]
        |(out, a, b): (&mut [F], &[F], &[F])| {
            let n = out.len();
            for (a, b) in a.chunks_exact(n).zip(b.chunks_exact(n)) {
                for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                    *o = *o + a * b;
                }
            }
        },
        (out, a, b),
    );
}

/// (outer, inner) sizes when the reduced dims (ignoring size-1 dims) are consecutive.
fn reduced_block(shape: &[usize], dims: &[usize]) -> Option<(usize, usize)> {
    let spans: Vec<usize> = dims.iter().copied().filter(|&d| shape[d] != 1).collect();
    let (first, last) = match (spans.first(), spans.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => return Some((shape.iter().product(), 1)),
    };
    let gap = (first..=last).any(|d| shape[d] != 1 && !dims.contains(&d));
    (!gap).then(|| {
        let outer = shape[..first].iter().product();
        let inner = shape[last + 1..].iter().product();
        (outer, inner)
    })
}

/// Elements per parallel piece of a full reduction.
const ROW_PIECE: usize = 1 << 14;

/// `x` as `[outer, red, inner]` reduced over its middle dim → `[outer, inner]`.
fn reduce_blocks<F: CpuFloat>(
    op: ReduceOp,
    x: &[F],
    outer: usize,
    red: usize,
    inner: usize,
) -> HostBuffer<F> {
    let mut out = pool::take(outer * inner);
    let parallel = x.len() >= PARALLEL_CUTOFF;
    with_combine!(op, |combine| {
        let reduce_row = |r: &[F]| match op {
            ReduceOp::Sum => isa::dispatch(
                #[inline(always)]
                |r| sum_lanes([r], |[x]| x),
                r,
            ),
            _ => r.iter().copied().fold(identity(op), combine),
        };
        if inner == 1 && outer == 1 && parallel {
            // One long row (a full reduction: a loss, a gradient's norm): fixed pieces
            // reduced in parallel, then their partials in order, so that the result
            // does not depend on the number of threads. One task for the whole row
            // left the other threads idle.
            let partials: Vec<F> = x.par_chunks(ROW_PIECE).map(reduce_row).collect();
            out[0] = reduce_row(&partials);
        } else if inner == 1 {
            let row = |(o, r): (&mut F, &[F])| *o = reduce_row(r);
            match parallel {
                true => out.par_iter_mut().zip(x.par_chunks(red)).for_each(row),
                false => out.iter_mut().zip(x.chunks(red)).for_each(row),
            }
        } else if outer == 1 && parallel {
            // One block (a bias gradient: every token's row summed): fixed pieces of
            // rows are summed in parallel and their partial rows added in order, so
            // the result does not depend on the number of threads. Splitting the
            // columns instead left one thread with all of a 512-wide block.
            let rows_per_piece = (ROW_PIECE / inner).max(1);
            let partials: Vec<HostBuffer<F>> = x
                .par_chunks(rows_per_piece * inner)
                .map(|rows| {
                    let mut partial = pool::take(inner);
                    accumulate_rows(&mut partial, rows, combine, identity(op));
                    partial
                })
                .collect();
            out.fill(identity(op));
            for partial in partials {
                combine_into(&mut out, &partial, combine);
                pool::give(partial);
            }
        } else {
            // Each output row accumulates its block's `red` input rows.
            let block = |(o, x): (&mut [F], &[F])| {
                accumulate_rows(o, x, combine, identity(op));
            };
            match parallel {
                true => out
                    .par_chunks_mut(inner)
                    .zip(x.par_chunks(red * inner))
                    .for_each(block),
                false => out
                    .chunks_mut(inner)
                    .zip(x.chunks(red * inner))
                    .for_each(block),
            }
        }
    });
    out
}

/// `out = combine(…combine(start, row₀)…, rowₙ)` column by column, for the rows of
/// `out.len()` values that make up `rows`, in the widest vectors this CPU has.
fn accumulate_rows<F: CpuFloat>(out: &mut [F], rows: &[F], combine: impl Fn(F, F) -> F, start: F) {
    out.fill(start);
    combine_rows(out, rows, combine);
}

/// `out = combine(…combine(out, row₀)…, rowₙ)` column by column, for the rows of
/// `out.len()` values that make up `rows`, in the widest vectors this CPU has.
pub(super) fn combine_rows<F: CpuFloat>(out: &mut [F], rows: &[F], combine: impl Fn(F, F) -> F) {
    isa::dispatch(
        #[inline(always)]
        |(out, rows): (&mut [F], &[F])| {
            for row in rows.chunks_exact(out.len()) {
                combine_into(out, row, &combine);
            }
        },
        (out, rows),
    );
}

/// `out[i] = combine(out[i], row[i])`.
#[inline(always)]
fn combine_into<F: CpuFloat>(out: &mut [F], row: &[F], combine: impl Fn(F, F) -> F) {
    out.iter_mut()
        .zip(row)
        .for_each(|(o, &v)| *o = combine(*o, v));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: a plain loop over `[outer, red, inner]`.
    fn naive_sum(x: &[f64], outer: usize, red: usize, inner: usize) -> Vec<f64> {
        let mut out = vec![0.0; outer * inner];
        for o in 0..outer {
            for r in 0..red {
                for i in 0..inner {
                    out[o * inner + i] += x[(o * red + r) * inner + i];
                }
            }
        }
        out
    }

    #[test]
    fn large_blocks_reduce_like_a_plain_loop_on_every_path() {
        // (outer, red, inner): middle dims, single blocks split into pieces of rows,
        // last dims.
        for (outer, red, inner) in [(3, 50, 700), (1, 40, 1500), (1, 40_000, 3), (900, 40, 1)] {
            let x: Vec<f64> = (0..outer * red * inner)
                .map(|i| ((i * 7919) % 1000) as f64)
                .collect();
            let got = reduce_blocks(ReduceOp::Sum, &x, outer, red, inner);
            assert_eq!(
                got,
                naive_sum(&x, outer, red, inner),
                "{outer}×{red}×{inner}"
            );
            let max = reduce_blocks(ReduceOp::Max, &x, outer, red, inner);
            assert!(max.iter().all(|&m| m <= 999.0));
        }
    }

    /// The fused Σ x·y on every path of its split (full, rows, one block in pieces,
    /// middle dims; small and parallel sizes) equals the product then the sum, bit for
    /// bit on these integer values; views laid out differently are left to the caller.
    #[test]
    fn sum_products_equal_the_product_then_the_sum_on_every_path() {
        let cases = [
            (1, 100_000, 1),
            (1, 7, 1),
            (900, 40, 1),
            (1, 40, 1500),
            (1, 3, 5),
            (3, 50, 700),
            (2, 3, 4),
        ];
        for (outer, red, inner) in cases {
            let n = outer * red * inner;
            let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % 100) as f64).collect();
            let y: Vec<f64> = (0..n).map(|i| ((i * 104_729) % 50) as f64 - 25.0).collect();
            let product: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
            let want = naive_sum(&product, outer, red, inner);
            let layout = Layout::contiguous(&[outer, red, inner]);
            let got = sum_product(&x, &layout, &y, &layout, &[1]).expect("taken");
            assert_eq!(got, want, "{outer}×{red}×{inner}");
        }
        let square = Layout::contiguous(&[4, 4]);
        let x: Vec<f64> = (0..16).map(f64::from).collect();
        assert_eq!(
            sum_product(&x, &square.permute(&[1, 0]), &x, &square, &[1]),
            None
        );
        // A whole transposed view into one value: read where it lies.
        let t = square.permute(&[1, 0]);
        let squares: f64 = x.iter().map(|v| v * v).sum();
        assert_eq!(
            sum_product(&x, &t, &x, &t, &[0, 1]),
            Some(vec![squares].into())
        );
    }
}
