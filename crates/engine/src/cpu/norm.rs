//! Layer norm and RMS norm over the last dim, forward and backward.

use super::float::{sum_lanes, CpuFloat};
use super::host_buffer::HostBuffer;
use super::isa;
use super::pool;
use super::prefetch;
use super::strided::{contiguous, PARALLEL_CUTOFF};
use crate::backend::{norm_rows_per_group, NormSpec};
use crate::layout::Layout;
use rayon::prelude::*;
use std::borrow::Cow;

/// A weight or bias vector, contiguous.
pub type Param<'a, F> = Option<Cow<'a, [F]>>;

/// Rows handled by one task: enough work to amortise scheduling over short rows.
const ROWS_PER_TASK: usize = 16;

/// How many rows ahead the backward asks for x and the residual gradient (4 and 8 took
/// the DiT step's `norm_backward` from 3.6 to 2.9 ms alike; the forward, whose x was
/// just written, did not gain).
const ROWS_AHEAD: usize = 4;

/// The parameter, or `fill` repeated when absent, so that one loop serves both cases.
fn or_fill<'a, F: CpuFloat>(p: &'a Param<'a, F>, fill: F, d: usize) -> Cow<'a, [F]> {
    match p {
        Some(v) => Cow::Borrowed(v.as_ref()),
        None => Cow::Owned(vec![fill; d]),
    }
}

/// A parameter's rows (`len / d`: one, or one per group of x's rows) and how many of
/// x's `rows` share each: row `i` of x takes parameter row `i / rows_per_group`.
#[derive(Clone, Copy)]
struct Groups {
    d: usize,
    rows_per_group: usize,
}

impl Groups {
    fn new(len: usize, d: usize, rows: usize) -> Self {
        Groups {
            d,
            rows_per_group: norm_rows_per_group(Some(len), rows, d),
        }
    }

    /// Where x's row `i` finds its parameter row.
    fn offset(self, i: usize) -> usize {
        i / self.rows_per_group * self.d
    }

    /// The parameter row of x's row `i`.
    fn row<F>(self, p: &[F], i: usize) -> &[F] {
        &p[self.offset(i)..][..self.d]
    }
}

/// Runs `f(first_row, rows_block)` over blocks of rows, in parallel when large, each
/// block compiled for the best instruction set.
fn for_row_blocks<F: CpuFloat, S: Send>(
    y: &mut [F],
    stats: &mut [S],
    d: usize,
    f: impl Fn(usize, &mut [F], &mut [S]) + Sync,
) {
    let run = |(i, (yb, sb)): (usize, (&mut [F], &mut [S]))| {
        isa::dispatch(
            #[inline(always)]
            |(yb, sb)| f(i * ROWS_PER_TASK, yb, sb),
            (yb, sb),
        )
    };
    if y.len() >= PARALLEL_CUTOFF {
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(stats.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(run);
    } else {
        y.chunks_mut(d * ROWS_PER_TASK)
            .zip(stats.chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(run);
    }
}

/// (y, mean, rstd) of layer/RMS norm of each row of `x`. The weight and bias hold
/// one row of `d` values, or one per group of x's rows (see `ops/norm.rs`).
pub fn norm<F: CpuFloat>(
    x: &[F],
    l: &Layout,
    w: Param<F>,
    b: Param<F>,
    spec: NormSpec,
) -> (HostBuffer<F>, HostBuffer<F>, HostBuffer<F>) {
    let x = contiguous(x, l);
    let d = l.shape().last().copied().unwrap_or(1).max(1);
    let rows = x.len() / d;
    let mut y = pool::take(x.len());
    let mut stats = vec![(F::zero(), F::zero()); rows];
    let (w, b) = (or_fill(&w, F::one(), d), or_fill(&b, F::zero(), d));
    let (wg, bg) = (Groups::new(w.len(), d, rows), Groups::new(b.len(), d, rows));
    // `#[inline(always)]`: inlined into `for_row_blocks`' AVX2 copy; a closure called
    // from both copies would otherwise stay an out-of-line baseline function.
    for_row_blocks(
        &mut y,
        &mut stats,
        d,
        #[inline(always)]
        |first, yb, sb| {
            for (r, (yr, st)) in yb.chunks_mut(d).zip(sb.iter_mut()).enumerate() {
                let i = first + r;
                let xr = &x[i * d..(i + 1) * d];
                *st = norm_row(yr, xr, (wg.row(&w, i), bg.row(&b, i)), spec);
            }
        },
    );
    let (mut mean, mut rstd) = (pool::take(rows), pool::take(rows));
    for ((m, r), &(sm, sr)) in mean.iter_mut().zip(rstd.iter_mut()).zip(&stats) {
        (*m, *r) = (sm, sr);
    }
    (y, mean, rstd)
}

/// `y = (x − mean)·rstd·w + b` for one row `x` (`w` and `b` that row's parameters,
/// ones and zeros where absent); returns (mean, rstd), the mean zero for RMS norm.
/// Inlined into its callers' instruction-set copies (see `isa::dispatch`), and shared
/// by every kernel that normalises rows, so that they agree bit for bit.
#[inline(always)]
pub(super) fn norm_row<F: CpuFloat>(
    y: &mut [F],
    x: &[F],
    (w, b): (&[F], &[F]),
    spec: NormSpec,
) -> (F, F) {
    let inv_d = F::c(1.0 / x.len().max(1) as f64);
    let mean = match spec.rms {
        true => F::zero(),
        false => sum_lanes([x], |[x]| x) * inv_d,
    };
    let var = sum_lanes([x], |[v]| (v - mean) * (v - mean)) * inv_d;
    let rstd = (var + F::c(spec.eps)).sqrt().recip();
    for (((y, &xv), &wv), &bv) in y.iter_mut().zip(x).zip(w).zip(b) {
        *y = (xv - mean) * rstd * wv + bv;
    }
    (mean, rstd)
}

/// The backward of [`norm_row`] for one row: `dx` from the output's gradient `g`, the
/// row `x`, its weight row `w` and the forward's (mean, rstd), with x̂ = (x − mean)·rstd
/// and ĝ = g·w, dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) (no mean(ĝ) for RMS norm), plus
/// `residual` where given; g·x̂ added into `dw` and g into `db` where they are not
/// empty (gradients not wanted). Inlined into its caller's instruction-set copies
/// (see `isa::dispatch`), as [`norm_row`] is.
#[inline(always)]
pub(super) fn norm_row_backward<F: CpuFloat>(
    dx: &mut [F],
    (g, x, w): (&[F], &[F], &[F]),
    (mu, rs): (F, F),
    (dw, db): (&mut [F], &mut [F]),
    residual: Option<&[F]>,
    spec: NormSpec,
) {
    let inv_d = F::c(1.0 / x.len().max(1) as f64);
    let sum_g = sum_lanes([g, w], |[g, w]| g * w);
    let sum_gx = sum_lanes([g, w, x], |[g, w, x]| g * w * ((x - mu) * rs));
    if !dw.is_empty() {
        for ((dw, &g), &x) in dw.iter_mut().zip(g).zip(x) {
            *dw = *dw + g * ((x - mu) * rs);
        }
    }
    if !db.is_empty() {
        db.iter_mut().zip(g).for_each(|(db, &g)| *db = *db + g);
    }
    let mean_g = if spec.rms { F::zero() } else { sum_g * inv_d };
    let mean_gx = sum_gx * inv_d;
    let dx_of = |g: F, w: F, x: F| rs * (g * w - mean_g - (x - mu) * rs * mean_gx);
    let rows = dx.iter_mut().zip(g).zip(w).zip(x);
    match residual {
        Some(res) => {
            for ((((dx, &g), &w), &x), &r) in rows.zip(res) {
                *dx = dx_of(g, w, x) + r;
            }
        }
        None => rows.for_each(|(((dx, &g), &w), &x)| *dx = dx_of(g, w, x)),
    }
}

/// The `d` sums of parameter offset `at` in `v`, whose first row is at offset
/// `start`, or none when `v` is empty (a gradient not wanted).
#[inline(always)]
fn sums_row<F>(v: &mut [F], (at, start): (usize, usize), d: usize) -> &mut [F] {
    match v.is_empty() {
        true => v,
        false => &mut v[at - start..][..d],
    }
}

/// The number of parameter rows when the weight and bias (those present) both have
/// more than one and the same number: rows of x can then be split by whole groups,
/// each task summing into its own rows of dw and db. Partial sums of whole parameters
/// per worker would cost more than the norm for a `[B, 1, D]` modulation.
fn per_group_sums(w_len: usize, b_len: usize, d: usize) -> Option<usize> {
    let groups = match (w_len / d, b_len / d) {
        (0, 0) => return None,
        (n, 0) | (0, n) => n,
        (n, m) if n == m => n,
        _ => return None,
    };
    (groups > 1).then_some(groups)
}

/// `v` cut into `tasks` parts of `len` values (the last may be shorter), or `tasks`
/// empty parts when `v` is empty (an absent parameter's gradient).
fn task_parts<F>(v: &mut [F], tasks: usize, len: usize) -> Vec<&mut [F]> {
    match v.is_empty() {
        true => (0..tasks).map(|_| &mut [][..]).collect(),
        false => v.chunks_mut(len).collect(),
    }
}

/// The gradients of the norm's inputs.
pub struct NormGrads<F: CpuFloat> {
    /// Gradient of x.
    pub dx: HostBuffer<F>,
    /// Gradient of the weight, where there is one.
    pub dw: Option<HostBuffer<F>>,
    /// Gradient of the bias, where there is one.
    pub db: Option<HostBuffer<F>>,
}

/// A view of a tensor: its elements and layout.
pub type View<'a, F> = (&'a [F], &'a Layout);

/// Backward of [`norm`]: with x̂ = (x − mean)·rstd and ĝ = g·w,
/// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) (no mean(ĝ) term for RMS norm), plus
/// `residual` where given (a gradient of x gathered elsewhere), dw = Σ g·x̂ and
/// db = Σ g over the rows that share each parameter row. `bias_len` is the bias's
/// length, where the norm had one; `stats` the forward's row means and rstds.
pub fn norm_backward<F: CpuFloat>(
    x: View<F>,
    w: Param<F>,
    bias_len: Option<usize>,
    (mean, rstd): (&[F], &[F]),
    (g, residual): (View<F>, Option<View<F>>),
    spec: NormSpec,
) -> NormGrads<F> {
    let (xv, gv) = (contiguous(x.0, x.1), contiguous(g.0, g.1));
    let residual = residual.map(|(r, l)| contiguous(r, l));
    let d = x.1.shape().last().copied().unwrap_or(1).max(1);
    let mut dx = pool::take(xv.len());
    let weight = or_fill(&w, F::one(), d);
    let rows = xv.len() / d;
    let (w_len, b_len) = (w.as_ref().map_or(0, |w| w.len()), bias_len.unwrap_or(0));
    let (wg, bg) = (
        Groups::new(weight.len(), d, rows),
        Groups::new(b_len, d, rows),
    );
    // Rows `first..` (as many as `dxb` holds), with the sums of dw and db added into
    // `dw` and `db`, which start at parameter row `param_row`.
    let rows_backward = |first: usize, dxb: &mut [F], (dw, db): (&mut [F], &mut [F]), param_row| {
        isa::dispatch(
            #[inline(always)]
            |(dxb, dw, db): (&mut [F], &mut [F], &mut [F])| {
                for (r, dxr) in dxb.chunks_mut(d).enumerate() {
                    let i = first + r;
                    let rows = i * d..(i + 1) * d;
                    // x (saved by the forward long before) and the residual gradient
                    // come from memory, and the hardware prefetchers stop at every
                    // 4 KiB page (8 rows of 128): ask for them a few rows ahead.
                    let ahead = (i + ROWS_AHEAD) * d..(i + ROWS_AHEAD + 1) * d;
                    prefetch::ask_for(&xv, ahead.clone());
                    if let Some(res) = residual.as_deref() {
                        prefetch::ask_for(res, ahead);
                    }
                    let inputs = (&gv[rows.clone()], &xv[rows.clone()], wg.row(&weight, i));
                    let (dw, db) = (
                        sums_row(dw, (wg.offset(i), param_row * d), d),
                        sums_row(db, (bg.offset(i), param_row * d), d),
                    );
                    let res = residual.as_deref().map(|r| &r[rows]);
                    norm_row_backward(dxr, inputs, (mean[i], rstd[i]), (dw, db), res, spec);
                }
            },
            (dxb, dw, db),
        );
    };
    let parallel = xv.len() >= PARALLEL_CUTOFF;
    let (dw, db) = match per_group_sums(w_len, b_len, d) {
        // Each task owns whole groups, and so their rows of dw and db.
        Some(groups) if parallel => {
            let group_rows = rows / groups;
            let task_groups = ROWS_PER_TASK.div_ceil(group_rows);
            let (mut dw, mut db) = (pool::take_zeroed(w_len), pool::take_zeroed(b_len));
            let tasks = groups.div_ceil(task_groups);
            dx.par_chunks_mut(task_groups * group_rows * d)
                .zip(task_parts(&mut dw, tasks, task_groups * d))
                .zip(task_parts(&mut db, tasks, task_groups * d))
                .enumerate()
                .for_each(|(t, ((dxb, dw), db))| {
                    rows_backward(t * task_groups * group_rows, dxb, (dw, db), t * task_groups)
                });
            (dw, db)
        }
        // Each worker sums its blocks into partial dw and db, added up at the end.
        _ => {
            let zero = || (pool::take_zeroed(w_len), pool::take_zeroed(b_len));
            let block = |mut acc: (HostBuffer<F>, HostBuffer<F>), (b, dxb): (usize, &mut [F])| {
                rows_backward(b * ROWS_PER_TASK, dxb, (&mut acc.0, &mut acc.1), 0);
                acc
            };
            let add = |mut a: (HostBuffer<F>, HostBuffer<F>), b: (HostBuffer<F>, HostBuffer<F>)| {
                a.0.iter_mut().zip(&b.0).for_each(|(x, &y)| *x = *x + y);
                a.1.iter_mut().zip(&b.1).for_each(|(x, &y)| *x = *x + y);
                a
            };
            match parallel {
                true => dx
                    .par_chunks_mut(d * ROWS_PER_TASK)
                    .enumerate()
                    .fold(zero, block)
                    .reduce(zero, add),
                false => dx
                    .chunks_mut(d * ROWS_PER_TASK)
                    .enumerate()
                    .fold(zero(), block),
            }
        }
    };
    NormGrads {
        dx,
        dw: w.is_some().then_some(dw),
        db: bias_len.is_some().then_some(db),
    }
}
