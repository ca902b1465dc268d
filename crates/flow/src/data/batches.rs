//! Seeded shuffling and batching over a finite dataset, with a saveable state.

use serde::{Deserialize, Serialize};
use twinflow_engine::{sizes, Error, Generator, GeneratorState, Result};

/// Everything needed to resume a data stream exactly where it stopped.
///
/// For a [`Shuffler`]: the epoch, the position within it, and the generator state from
/// which the current epoch's permutation was drawn. For a toy distribution only the
/// generator fields matter (`epoch` and `position` are 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataState {
    /// Completed epochs (0 during the first).
    pub epoch: u64,
    /// Samples of the current epoch already handed out.
    pub position: u64,
    /// Generator seed.
    pub seed: u64,
    /// Generator offset (Philox counter). For a shuffler: the offset *before* the
    /// current epoch's permutation was drawn.
    pub offset: u64,
}

impl DataState {
    /// The generator part of the state.
    pub fn generator(&self) -> GeneratorState {
        GeneratorState {
            seed: self.seed,
            offset: self.offset,
        }
    }
}

/// Hands out indices `0..n` in a fresh random order every epoch.
///
/// Each epoch is a permutation from [`Generator::permutation`]. Batches run on across
/// epoch boundaries: a batch that reaches the end of an epoch is completed from the start
/// of the next, so no sample is skipped and, within one epoch, none repeats.
#[derive(Debug, Clone)]
pub struct Shuffler {
    n: usize,
    gen: Generator,
    /// Generator state before the current permutation was drawn.
    epoch_start: GeneratorState,
    epoch: u64,
    position: usize,
    perm: Vec<i64>,
}

impl Shuffler {
    /// A shuffler over `n > 0` items, seeded.
    pub fn new(n: usize, seed: u64) -> Result<Shuffler> {
        if n == 0 {
            return Err(Error::invalid(
                "shuffler",
                "cannot shuffle an empty dataset",
            ));
        }
        let mut gen = Generator::new(seed);
        let epoch_start = gen.state();
        let perm = gen.permutation(n);
        Ok(Shuffler {
            n,
            gen,
            epoch_start,
            epoch: 0,
            position: 0,
            perm,
        })
    }

    /// Number of items shuffled.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false: a shuffler holds at least one item.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Completed epochs (0 during the first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Items of the current epoch already handed out.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The next `batch_size` indices.
    pub fn next_indices(&mut self, batch_size: usize) -> Result<Vec<usize>> {
        if batch_size == 0 {
            return Err(Error::invalid("shuffler", "batch size must be positive"));
        }
        let mut out = sizes::try_vec("shuffler", batch_size)?;
        while out.len() < batch_size {
            if self.position == self.n {
                self.epoch_start = self.gen.state();
                self.perm = self.gen.permutation(self.n);
                self.epoch += 1;
                self.position = 0;
            }
            let take = (batch_size - out.len()).min(self.n - self.position);
            out.extend(
                self.perm[self.position..self.position + take]
                    .iter()
                    .map(|&i| i as usize),
            );
            self.position += take;
        }
        Ok(out)
    }

    /// The state to save.
    pub fn state(&self) -> DataState {
        DataState {
            epoch: self.epoch,
            position: self.position as u64,
            seed: self.epoch_start.seed,
            offset: self.epoch_start.offset,
        }
    }

    /// Resumes from a saved state (of a shuffler over the same number of items): the
    /// following batches are exactly those the saved shuffler would have given.
    pub fn set_state(&mut self, state: DataState) -> Result<()> {
        if state.position > self.n as u64 {
            return Err(Error::invalid(
                "shuffler",
                format!(
                    "saved position {} is past the end of an epoch of {} items",
                    state.position, self.n
                ),
            ));
        }
        self.gen.set_state(state.generator());
        self.epoch_start = state.generator();
        self.perm = self.gen.permutation(self.n);
        self.epoch = state.epoch;
        self.position = state.position as usize;
        Ok(())
    }
}
