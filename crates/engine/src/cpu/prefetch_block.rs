//! Software prefetch of a product's next inner block while the current one is
//! multiplied.
//!
//! A weight gradient's operands (`gᵀ` and `x`, megabytes each) come from memory, not
//! from cache. Left to demand misses, each inner block's first reads stall on memory
//! while the FMA units wait: cache-cold, the DiT's weight-gradient shapes ran at 150–195
//! GFLOP/s against 260–290 warm. Asking for the next block's lines a few at a time,
//! spread over the current block's micro-tiles, overlaps those misses with arithmetic
//! (215–230 GFLOP/s cold; docs/benchmarks.md).

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
use std::ops::Range;

/// Values per cache line.
const LINE: usize = 16;

/// `runs` runs of `len` contiguous values, the runs `stride` values apart.
#[derive(Clone, Copy)]
pub(super) struct Region {
    start: *const f32,
    len: usize,
    stride: usize,
    runs: usize,
}

impl Region {
    /// Rows `rows` and columns `cols` of the matrix at `data` with strides `(rs, cs)`,
    /// as runs along its contiguous direction; `None` when neither stride is 1 or the
    /// block is empty.
    pub(super) fn block(
        data: &[f32],
        (rs, cs): (usize, usize),
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> Option<Region> {
        if rows.is_empty() || cols.is_empty() {
            return None;
        }
        let start = data
            .as_ptr()
            .wrapping_add(rows.start * rs + cols.start * cs);
        match (rs, cs) {
            (_, 1) => Some(Region {
                start,
                len: cols.len(),
                stride: rs,
                runs: rows.len(),
            }),
            (1, _) => Some(Region {
                start,
                len: rows.len(),
                stride: cs,
                runs: cols.len(),
            }),
            _ => None,
        }
    }

    /// The first cache line of run `run` (its address aligned down) and how many
    /// lines the run touches: runs start at different offsets within their lines.
    fn run_lines(&self, run: usize) -> (*const f32, usize) {
        let at = self.start.wrapping_add(run * self.stride);
        let offset = at as usize % 64 / 4;
        (at.wrapping_sub(offset), (offset + self.len).div_ceil(LINE))
    }

    /// Cache lines the runs touch, in all (an upper bound when runs share lines).
    fn lines(&self) -> usize {
        (0..self.runs).map(|run| self.run_lines(run).1).sum()
    }
}

/// Issues the prefetches of up to two regions a few lines at a time.
pub(super) struct Prefetcher {
    regions: [Option<Region>; 2],
    region: usize,
    run: usize,
    line: usize,
    per_call: usize,
}

impl Prefetcher {
    /// A prefetcher that covers `regions` in `calls` calls of [`Prefetcher::issue`].
    pub(super) fn new(regions: [Option<Region>; 2], calls: usize) -> Self {
        let lines: usize = regions.iter().flatten().map(Region::lines).sum();
        let per_call = lines.div_ceil(calls.max(1));
        Prefetcher {
            regions,
            region: 0,
            run: 0,
            line: 0,
            per_call,
        }
    }

    /// Asks for the next few lines (into L2: the current block's operands keep L1).
    #[inline]
    pub(super) fn issue(&mut self) {
        for _ in 0..self.per_call {
            let Some(line) = self.next_line() else { return };
            // SAFETY: a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line.cast()) };
        }
    }

    /// The next line of the regions, if any is left.
    fn next_line(&mut self) -> Option<*const f32> {
        loop {
            let Some(r) = self.regions.get(self.region)? else {
                self.region += 1;
                continue;
            };
            let (first, lines) = r.run_lines(self.run);
            let at = first.wrapping_add(self.line * LINE);
            self.line += 1;
            if self.line == lines {
                self.line = 0;
                self.run += 1;
                if self.run == r.runs {
                    self.run = 0;
                    self.region += 1;
                }
            }
            return Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The line (64-byte block) that holds `p`.
    fn line_of(p: *const f32) -> usize {
        p as usize / 64
    }

    proptest! {
        /// The walk asks for every line of both blocks, nothing else, and each line
        /// once per run that touches it (runs closer than a line share some), for
        /// row-major and transposed blocks at any offset.
        #[test]
        fn prefetcher_visits_every_line_of_its_blocks(
            (rs, cs) in prop_oneof![(1usize..70).prop_map(|r| (r, 1)), (1usize..70).prop_map(|c| (1, c))],
            r0 in 0usize..5, rows in 1usize..9, c0 in 0usize..5, cols in 1usize..40,
            calls in 1usize..50,
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
            let mut prefetcher = Prefetcher::new([block, other], calls);
            let mut seen = Vec::new();
            while let Some(line) = prefetcher.next_line() {
                seen.push(line_of(line));
            }
            let (from_block, from_other) = seen.split_at(seen.len() - 1);
            prop_assert_eq!(from_other, &[line_of(&data[0])][..]);
            prop_assert_eq!(from_block.len(), want_count);
            prop_assert_eq!(from_block.iter().copied().collect::<BTreeSet<_>>(), want);
        }
    }
}
