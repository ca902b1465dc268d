//! Walking strided views: every CPU kernel reads its inputs through [`Runs`].
//!
//! A view of any layout is split into "runs": stretches along the innermost dim where
//! each operand advances by a fixed stride. Dims that are laid out back to back in
//! every operand are merged first, so a contiguous tensor is one run and a transposed
//! or broadcast one is a few long runs.

use super::host_buffer::HostBuffer;
use super::transpose;

/// Work below this many elements stays on the calling thread: thread hand-off costs
/// more than it saves for small tensors.
pub const PARALLEL_CUTOFF: usize = 1 << 15;

/// The runs of `N` views that share one shape.
pub struct Runs<const N: usize> {
    outer_shape: Vec<usize>,
    outer_strides: [Vec<usize>; N],
    offsets: [usize; N],
    /// Length of every run (the merged innermost dim).
    pub len: usize,
    /// Stride of each operand along the run.
    pub inner: [usize; N],
}

impl<const N: usize> Runs<N> {
    /// Splits `shape`, read through each operand's `(strides, offset)`, into runs.
    pub fn new(shape: &[usize], views: [(&[usize], usize); N]) -> Self {
        let mut dims: Vec<(usize, [usize; N])> = Vec::with_capacity(shape.len());
        for (d, &n) in shape.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let strides: [usize; N] = std::array::from_fn(|k| views[k].0[d]);
            match dims.last_mut() {
                Some((m, prev)) if (0..N).all(|k| prev[k] == strides[k] * n) => {
                    *m *= n;
                    *prev = strides;
                }
                _ => dims.push((n, strides)),
            }
        }
        let (len, inner) = dims.pop().unwrap_or((1, [0; N]));
        let n_empty = shape.contains(&0);
        Runs {
            outer_shape: dims.iter().map(|d| d.0).collect(),
            outer_strides: std::array::from_fn(|k| dims.iter().map(|d| d.1[k]).collect()),
            offsets: std::array::from_fn(|k| views[k].1),
            len: if n_empty { 0 } else { len },
            inner,
        }
    }

    /// Number of runs.
    pub fn count(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.outer_shape.iter().product()
        }
    }

    /// Calls `f(starts)` for runs `first..first + count` in order. Steps a
    /// multi-index from run to run instead of dividing each run's index down the dims,
    /// which dominated the cost of short runs.
    pub fn walk(&self, first: usize, count: usize, mut f: impl FnMut([usize; N])) {
        if count == 0 {
            return;
        }
        let shape = &self.outer_shape;
        let mut idx = vec![0; shape.len()];
        let mut rest = first;
        for d in (0..shape.len()).rev() {
            idx[d] = rest % shape[d];
            rest /= shape[d];
        }
        let mut at = self.starts(first);
        for _ in 0..count {
            f(at);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                at.iter_mut()
                    .zip(&self.outer_strides)
                    .for_each(|(a, s)| *a += s[d]);
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
                at.iter_mut()
                    .zip(&self.outer_strides)
                    .for_each(|(a, s)| *a -= s[d] * shape[d]);
            }
        }
    }

    /// Storage offset of each operand at the start of run `i`.
    pub fn starts(&self, mut i: usize) -> [usize; N] {
        let mut at = self.offsets;
        for d in (0..self.outer_shape.len()).rev() {
            let n = self.outer_shape[d];
            let idx = i % n;
            i /= n;
            for (k, a) in at.iter_mut().enumerate() {
                *a += idx * self.outer_strides[k][d];
            }
        }
        at
    }
}

/// Long runs are cut into pieces of this many elements so that a contiguous tensor (a
/// single run) is still shared among threads.
pub(super) const PIECE: usize = 1 << 14;

/// Fills `out` (contiguous, same shape as the runs) run by run, in parallel for large
/// outputs. `f(out_piece, starts)` writes one run, or a piece of one, whose first
/// element sits at `starts` in each operand.
pub fn fill_runs<T: Send, const N: usize>(
    out: &mut [T],
    runs: &Runs<N>,
    f: impl Fn(&mut [T], [usize; N]) + Sync,
) {
    use rayon::prelude::*;
    if runs.len == 0 {
        return;
    }
    let piece_starts = |run: usize, piece: usize| {
        let mut at = runs.starts(run);
        at.iter_mut()
            .zip(runs.inner)
            .for_each(|(a, stride)| *a += piece * PIECE * stride);
        at
    };
    // Short runs go in groups of about PIECE elements per task, walked in order.
    let group = (PIECE / runs.len).max(1);
    let walk_group = |(g, chunk): (usize, &mut [T])| {
        let count = chunk.len() / runs.len;
        let mut pieces = chunk.chunks_mut(runs.len);
        runs.walk(g * group, count, |at| {
            f(pieces.next().expect("one piece per run"), at)
        });
    };
    if out.len() < PARALLEL_CUTOFF {
        walk_group((0, out));
    } else if runs.len > 2 * PIECE {
        out.par_chunks_mut(runs.len)
            .enumerate()
            .for_each(|(i, run)| {
                run.par_chunks_mut(PIECE)
                    .enumerate()
                    .for_each(|(j, piece)| f(piece, piece_starts(i, j)))
            });
    } else {
        out.par_chunks_mut(runs.len * group)
            .enumerate()
            .for_each(walk_group);
    }
}

/// A contiguous copy of the strided view `(shape, strides, offset)` of `src`.
pub fn gather_view<T: super::pool::Poolable>(
    src: &[T],
    shape: &[usize],
    strides: &[usize],
    offset: usize,
) -> HostBuffer<T> {
    let runs = Runs::new(shape, [(strides, offset)]);
    let n: usize = shape.iter().product();
    let mut out = super::pool::take(n);
    if runs.count() == 1 && runs.inner[0] == 1 {
        // From the pool too: a buffer the pool did not hand out would still be parked
        // there when freed, and such buffers pile up towards the pool's cap.
        out.copy_from_slice(&src[offset..offset + n]);
        return out;
    }
    if let Some(rows) = runs.transposed_rows(transpose::shortest_tiled_run::<T>()) {
        transpose::gather_transposed(&mut out, src, &runs, rows);
        return out;
    }
    let st = runs.inner[0];
    fill_runs(&mut out, &runs, |o, [s]| match st {
        1 => o.copy_from_slice(&src[s..s + o.len()]),
        _ => o
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = src[s + i * st]),
    });
    out
}

/// A view's values in row-major order: borrowed from the storage when the view is
/// contiguous, else gathered into a buffer of their own.
pub enum RowMajor<'a, T: super::pool::Poolable> {
    /// The storage's own elements.
    Borrowed(&'a [T]),
    /// A contiguous copy.
    Gathered(HostBuffer<T>),
}

impl<T: super::pool::Poolable> std::ops::Deref for RowMajor<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            RowMajor::Borrowed(values) => values,
            RowMajor::Gathered(values) => values,
        }
    }
}

impl Runs<1> {
    /// When the view is a batch of transposes worth tiling (`transpose.rs`), the rows
    /// of each: the run (the output's innermost dim) steps through the source more than
    /// one element at a time, and the last outer dim, the run's rows, steps one at a
    /// time: `x.t()` of a row-major `x`, or a permute that moves the source's innermost
    /// dim outwards. Runs shorter than `shortest` stay with the run-by-run gather (see
    /// `transpose::shortest_tiled_run`).
    pub(super) fn transposed_rows(&self, shortest: usize) -> Option<usize> {
        let rows = *self.outer_shape.last()?;
        let transposed = self.inner[0] > 1 && self.outer_strides[0].last() == Some(&1);
        (transposed && rows > 1 && self.len >= shortest).then_some(rows)
    }
}

/// The view's values in row-major order, borrowed when already contiguous.
pub fn contiguous<'a, T: super::pool::Poolable>(
    x: &'a [T],
    l: &crate::layout::Layout,
) -> RowMajor<'a, T> {
    match l.contiguous_range() {
        Some(r) => RowMajor::Borrowed(&x[r]),
        None => RowMajor::Gathered(gather_view(x, l.shape(), l.strides(), l.offset())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gather of `(shape, strides, offset)` one index at a time.
    fn gathered_by_index<T: Copy>(
        src: &[T],
        shape: &[usize],
        strides: &[usize],
        offset: usize,
    ) -> Vec<T> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|mut i| {
                let mut at = offset;
                for (&d, &s) in shape.iter().zip(strides).rev() {
                    at += (i % d) * s;
                    i /= d;
                }
                src[at]
            })
            .collect()
    }

    #[test]
    fn transposes_gather_tile_by_tile_like_indexing() {
        // Plain transposes (sizes off the tiles and the band, one large enough to ask
        // for its tiles' lines ahead, exact tiles, long runs above the parallel
        // cutoff), a batch of them behind a broadcast dim and an offset, a permute that
        // moves the innermost dim out past two others, and an NCHW → NHWC permute of
        // 32 channels (tiled for f32 and bf16 on AVX-512 only).
        // i64 takes the buffered tiles, f32 (values exact integers) and bf16 the
        // register ones where the CPU has AVX-512.
        let cases: [(&[usize], &[usize], usize); 8] = [
            (&[5, 70], &[1, 5], 0),
            (&[520, 1030], &[1, 520], 0),
            (&[8, 64], &[1, 8], 0),
            (&[37, 1500], &[1, 37], 0),
            (&[300, 200], &[1, 300], 0),
            (&[3, 2, 17, 70], &[0, 17 * 70, 1, 17], 5),
            (&[4, 20, 6, 12], &[6 * 20 * 12, 1, 20 * 12, 20], 0),
            (&[2, 5, 5, 32], &[800, 5, 1, 25], 0),
        ];
        for (shape, strides, offset) in cases {
            let runs = Runs::new(shape, [(strides, offset)]);
            let tiled = runs
                .transposed_rows(transpose::shortest_tiled_run::<f32>())
                .is_some();
            assert!(
                tiled || !transpose::register_tiles(),
                "{shape:?} {strides:?}"
            );
            let span = offset
                + shape
                    .iter()
                    .zip(strides)
                    .map(|(d, s)| (d - 1) * s)
                    .sum::<usize>();
            let src: Vec<i64> = (0..=span as i64).collect();
            let want = gathered_by_index(&src, shape, strides, offset);
            let got = gather_view(&src, shape, strides, offset);
            assert_eq!(&got[..], want, "i64 {shape:?} {strides:?}");
            let floats: Vec<f32> = src.iter().map(|&v| v as f32).collect();
            let got = gather_view(&floats, shape, strides, offset);
            let want_f32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            assert_eq!(&got[..], want_f32, "f32 {shape:?} {strides:?}");
            // bf16 with the index's low 16 bits as its bits, compared as bits.
            let halves: Vec<half::bf16> = src
                .iter()
                .map(|&v| half::bf16::from_bits(v as u16))
                .collect();
            let got: Vec<u16> = gather_view(&halves, shape, strides, offset)
                .iter()
                .map(|h| h.to_bits())
                .collect();
            let want_bits: Vec<u16> = want.iter().map(|&v| v as u16).collect();
            assert_eq!(got, want_bits, "bf16 {shape:?} {strides:?}");
        }
        // Short runs (an NCHW → NHWC permute of 32 channels) stay with the run walk
        // where the tiles go through a buffer.
        let short = Runs::new(&[2, 5, 5, 32], [(&[800, 5, 1, 25], 0)]);
        assert_eq!(short.transposed_rows(64), None);
    }

    #[test]
    fn contiguous_view_is_one_run() {
        let r = Runs::new(&[2, 3, 4], [(&[12, 4, 1], 0)]);
        assert_eq!((r.count(), r.len, r.inner), (1, 24, [1]));
    }

    #[test]
    fn long_strided_runs_are_split_into_pieces_correctly() {
        // Every other element of two rows of 140,000: runs of 70,000 with stride 2,
        // long enough to be cut into pieces and shared among threads.
        let src: Vec<i64> = (0..280_003).collect();
        let got = gather_view(&src, &[2, 70_000], &[140_000, 2], 3);
        let want: Vec<i64> = (0..2)
            .flat_map(|r| (0..70_000).map(move |c| 3 + r * 140_000 + 2 * c))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn walking_runs_visits_the_starts_of_indexing_them() {
        // Two operands over [3, 4, 5, 2] with different outer strides (one broadcast).
        let runs = Runs::new(&[3, 4, 5, 2], [(&[80, 20, 4, 1], 7), (&[0, 3, 50, 100], 1)]);
        let n = runs.count();
        for first in 0..n {
            for count in 0..=n - first {
                let mut seen = Vec::new();
                runs.walk(first, count, |at| seen.push(at));
                let want: Vec<_> = (first..first + count).map(|i| runs.starts(i)).collect();
                assert_eq!(seen, want, "first {first} count {count}");
            }
        }
    }

    #[test]
    fn short_runs_in_groups_gather_like_indexing() {
        // [b, h, t, d] read as [b, t, h, d]: runs of d, grouped many per task.
        let (b, h, t, d) = (3, 4, 700, 8); // above PARALLEL_CUTOFF: several tasks
        let src: Vec<i64> = (0..(b * h * t * d) as i64).collect();
        let strides = [h * t * d, d, t * d, 1];
        let got = gather_view(&src, &[b, t, h, d], &strides, 0);
        let mut want = Vec::new();
        for bi in 0..b {
            for ti in 0..t {
                for hi in 0..h {
                    for di in 0..d {
                        want.push(src[bi * strides[0] + ti * strides[1] + hi * strides[2] + di]);
                    }
                }
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn transposed_view_reads_every_element_once() {
        let src: Vec<i64> = (0..6).collect();
        // [2, 3] stored, read as its transpose [3, 2].
        assert_eq!(
            gather_view(&src, &[3, 2], &[1, 3], 0),
            vec![0, 3, 1, 4, 2, 5]
        );
    }
}
