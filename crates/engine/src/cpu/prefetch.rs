//! Software prefetch of memory a kernel reaches next, asked for into L2 a share at a
//! time while the current work is computed.
//!
//! Some kernels read operands that no cache holds and whose layout the hardware
//! prefetchers do not follow, and want those lines in L2 before they get there:
//!
//! - a weight gradient's next inner block: `gᵀ` and `x`, megabytes each, read a strided
//!   row of `g` per step. Left to demand misses, the DiT's weight-gradient shapes ran at
//!   150–195 GFLOP/s cold against 260–290 warm; asked for a few lines per micro-tile of
//!   the current block, 215–230 (`sgemm_avx512`).
//! - attention's next batch entry: its heads' strided rows of q, k, v (and the output's
//!   gradient), and in the backward the lines its gradients will be written to (a store
//!   to a line no cache holds first reads it from memory). Asked for all at once, the
//!   backward's 3,000 lines queued behind each other and held the thread for a seventh
//!   of the entry; a share after each product overlaps them with arithmetic
//!   (`attention`).
//! - a large transposed copy's next tiles: 32 lines a tile, each a row or more from the
//!   next, on both sides; asked for a few tiles ahead, a 4096² f32 transpose went from
//!   8–10 to 17–20 GB/s (`transpose`, which asks for single lines through
//!   [`prefetch_line`]).
//! - the norm backward's next rows of x, saved by the forward long before: the
//!   prefetchers stop at each 4 KiB page, every 8 rows of 128 (`norm`, through
//!   [`ask_for`]; the DiT step's `norm_backward` 3.6 → 2.9 ms).
//!
//! The first two describe what they want as [`Region`]s of byte addresses, and a
//! [`Prefetcher`] walks them line by line. Off x86-64 a request does nothing.

use std::ops::Range;

/// Bytes per cache line.
pub(super) const LINE: usize = 64;

/// `runs` runs of `len` contiguous bytes from address `start`, successive runs `stride`
/// bytes apart. Addresses only: a region is never read through.
#[derive(Clone, Copy, Debug)]
pub(super) struct Region {
    start: usize,
    len: usize,
    stride: usize,
    runs: usize,
}

impl Region {
    /// The byte addresses `span`, one run; `None` when empty.
    pub(super) fn span(span: Range<usize>) -> Option<Region> {
        (span.start < span.end).then_some(Region {
            start: span.start,
            len: span.len(),
            stride: 0,
            runs: 1,
        })
    }

    /// Rows `rows` and columns `cols` of the matrix at `data` with element strides
    /// `(rs, cs)`, as runs along its contiguous direction; `None` when neither stride
    /// is 1 or the block is empty.
    pub(super) fn block<T>(
        data: &[T],
        (rs, cs): (usize, usize),
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> Option<Region> {
        if rows.is_empty() || cols.is_empty() {
            return None;
        }
        let size = std::mem::size_of::<T>();
        let start = data.as_ptr() as usize + (rows.start * rs + cols.start * cs) * size;
        let (len, stride, runs) = match (rs, cs) {
            (_, 1) => (cols.len(), rs, rows.len()),
            (1, _) => (rows.len(), cs, cols.len()),
            _ => return None,
        };
        Some(Region {
            start,
            len: len * size,
            stride: stride * size,
            runs,
        })
    }

    /// The first cache line of run `run` (its address aligned down) and how many lines
    /// the run touches: runs start at different offsets within their lines.
    fn run_lines(&self, run: usize) -> (usize, usize) {
        let at = self.start + run * self.stride;
        let offset = at % LINE;
        (at - offset, (offset + self.len).div_ceil(LINE))
    }

    /// Cache lines the runs touch, in all (an upper bound when runs share lines).
    fn lines(&self) -> usize {
        (0..self.runs).map(|run| self.run_lines(run).1).sum()
    }
}

/// Asks for the lines of its regions, in order, a share at a time.
pub(super) struct Prefetcher {
    regions: Vec<Region>,
    region: usize,
    run: usize,
    line: usize,
    per_share: usize,
}

impl Prefetcher {
    /// A prefetcher that covers `regions` in `shares` calls of
    /// [`Prefetcher::ask_share`].
    pub(super) fn new(regions: impl IntoIterator<Item = Region>, shares: usize) -> Self {
        let regions: Vec<Region> = regions.into_iter().collect();
        let lines: usize = regions.iter().map(Region::lines).sum();
        Prefetcher {
            regions,
            region: 0,
            run: 0,
            line: 0,
            per_share: lines.div_ceil(shares.max(1)),
        }
    }

    /// Asks for the next share of lines, into L2: the current work's operands keep L1.
    #[inline]
    pub(super) fn ask_share(&mut self) {
        for _ in 0..self.per_share {
            let Some(line) = self.next_line() else { return };
            prefetch_line(line);
        }
    }

    /// The address of the next line of the regions, if any is left.
    fn next_line(&mut self) -> Option<usize> {
        let r = self.regions.get(self.region)?;
        let (first, lines) = r.run_lines(self.run);
        let at = first + self.line * LINE;
        self.line += 1;
        if self.line == lines {
            self.line = 0;
            self.run += 1;
            if self.run == r.runs {
                self.run = 0;
                self.region += 1;
            }
        }
        Some(at)
    }
}

/// Asks for the cache lines of `data[range]` into L2, the part of it inside `data`.
pub(super) fn ask_for<T>(data: &[T], range: Range<usize>) {
    let range = range.start.min(data.len())..range.end.min(data.len());
    let size = std::mem::size_of::<T>();
    let start = data.as_ptr() as usize + range.start * size;
    let end = start + range.len() * size;
    for at in (start / LINE * LINE..end).step_by(LINE) {
        prefetch_line(at);
    }
}

/// Asks for the cache line at address `line` into L2.
#[inline(always)]
pub(super) fn prefetch_line(line: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(line as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = line;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The line (64-byte block) that holds `p`.
    fn line_of<T>(p: *const T) -> usize {
        p as usize / LINE
    }

    /// Every line address the prefetcher asks for, share by share.
    fn shares_of(mut prefetcher: Prefetcher, shares: usize) -> Vec<Vec<usize>> {
        let per_share = prefetcher.per_share;
        (0..shares)
            .map(|_| {
                (0..per_share)
                    .map_while(|_| prefetcher.next_line())
                    .collect()
            })
            .collect()
    }

    proptest! {
        /// The walk asks for every line of both blocks, nothing else, and each line
        /// once per run that touches it (runs closer than a line share some), for
        /// row-major and transposed blocks at any offset, within the shares asked for.
        #[test]
        fn prefetcher_visits_every_line_of_its_blocks(
            (rs, cs) in prop_oneof![(1usize..70).prop_map(|r| (r, 1)), (1usize..70).prop_map(|c| (1, c))],
            r0 in 0usize..5, rows in 1usize..9, c0 in 0usize..5, cols in 1usize..40,
            shares in 1usize..50,
        ) {
            let data = vec![0.0f32; (r0 + rows) * rs + (c0 + cols) * cs];
            let block = Region::block(&data, (rs, cs), r0..r0 + rows, c0..c0 + cols);
            let other = Region::block(&data, (rs, cs), 0..1, 0..1);
            // Runs go along the contiguous direction: rows of a row-major block.
            let (runs, run_len) = if cs == 1 { (rows, cols) } else { (cols, rows) };
            let element = |run: usize, i: usize| match cs == 1 {
                true => &data[(r0 + run) * rs + c0 + i],
                false => &data[r0 + i + (c0 + run) * cs],
            };
            let mut want = BTreeSet::new();
            let mut want_count = 0;
            for run in 0..runs {
                let lines: BTreeSet<usize> = (0..run_len).map(|i| line_of(element(run, i))).collect();
                want_count += lines.len();
                want.extend(lines);
            }
            let prefetcher = Prefetcher::new([block, other].into_iter().flatten(), shares);
            let seen: Vec<usize> = shares_of(prefetcher, shares).concat().iter().map(|&a| a / LINE).collect();
            let (from_block, from_other) = seen.split_at(seen.len() - 1);
            prop_assert_eq!(from_other, &[line_of(&data[0])][..]);
            prop_assert_eq!(from_block.len(), want_count);
            prop_assert_eq!(from_block.iter().copied().collect::<BTreeSet<_>>(), want);
        }

        /// A span's lines are its own, each once, from the line holding its first byte.
        #[test]
        fn a_span_is_its_lines(start in 0usize..200, len in 1usize..500, shares in 1usize..9) {
            let span = Region::span(start..start + len);
            let seen = shares_of(Prefetcher::new(span, shares), shares).concat();
            let want: Vec<usize> = (start / LINE..(start + len).div_ceil(LINE)).map(|l| l * LINE).collect();
            prop_assert_eq!(seen, want);
        }
    }

    #[test]
    fn empty_regions_are_none() {
        assert!(Region::span(5..5).is_none());
        assert!(Region::block(&[0.0f32; 8], (4, 1), 1..1, 0..4).is_none());
        assert!(Region::block(&[0.0f32; 8], (4, 2), 0..1, 0..2).is_none());
    }
}
