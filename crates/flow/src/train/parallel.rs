//! Data parallelism and micro-batches: how one step's batch is cut into *shards*, where
//! each shard draws its randomness, and how the shards' gradients are combined.
//!
//! A step's batch of `batch_size` rows is cut into `S = world_size · micro_batches`
//! equal shards; rank `r` computes shards `r·A .. (r+1)·A` (A = micro-batches), one at a
//! time, each backpropagated at once, so memory holds one shard's graph. Every rank
//! draws the same whole batch from the data stream (the same seed everywhere) and keeps
//! its rows. The gradient of the step is the mean of the shards' gradients: each rank
//! adds its shards' up in shard order, the ranks' sums are all-reduced in rank order,
//! then divided by S. A run of W ranks with one micro-batch each therefore computes the
//! same sums, in the same order, as one rank with W micro-batches
//! (`tests/flow/data_parallel.rs` checks it bit for bit on the CPU backend).
//!
//! Randomness: with one shard the trainer's streams (the method's, the model's dropout)
//! run on continuously, as they always have. With several, shard `s` draws at step `k`
//! from streams of its own that start at a fixed offset per step
//! (`shard_stream`), so every arrangement of the same S shards gives the same run,
//! and a resume needs no per-shard state.

use twinflow_engine::comm::{Communicator, ReduceOp};
use twinflow_engine::{Device, Error, GeneratorState, Result, Tensor};

/// How many values a shard's stream may draw in one step: streams of step k start at
/// `k · STEP_STRIDE`.
const STEP_STRIDE: u64 = 1 << 40;

/// Mixes the shard index into a stream's seed (shard 0 keeps the seed).
const SHARD_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Elements per all-reduce bucket (25 MB of f32, as PyTorch's DDP).
const BUCKET_ELEMS: usize = 25 << 18;

/// The stream of shard `shard` at step `step` (counted from 0), from a stream seed.
pub(crate) fn shard_stream(seed: u64, shard: usize, step: u64) -> GeneratorState {
    GeneratorState {
        seed: seed ^ (shard as u64).wrapping_mul(SHARD_MIX),
        offset: step.wrapping_mul(STEP_STRIDE),
    }
}

/// The shards of a run and this rank's share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shards {
    /// All shards of a step, `world_size · micro_batches`.
    pub total: usize,
    /// This rank's first shard.
    pub first: usize,
    /// This rank's shard count (the micro-batches).
    pub local: usize,
}

impl Shards {
    /// The shards of `world_size` ranks with `micro_batches` each, seen from `rank`;
    /// refuses a batch that does not cut evenly, or that leaves a shard fewer rows than
    /// the method's `min_rows` ([`MethodSettings::min_batch`](crate::method::MethodSettings::min_batch):
    /// 4 for TwinFlow's `split` recipe).
    pub fn new(
        (rank, world_size): (usize, usize),
        micro_batches: usize,
        batch_size: usize,
        min_rows: usize,
    ) -> Result<Shards> {
        let total = world_size
            .checked_mul(micro_batches)
            .filter(|&t| t > 0)
            .ok_or_else(|| Error::invalid("train", "needs at least one shard"))?;
        let min_rows = min_rows.max(1);
        if !batch_size.is_multiple_of(total) || batch_size / total < min_rows {
            return Err(Error::invalid(
                "train",
                format!(
                    "batch_size {batch_size} does not cut into {world_size} rank(s) × \
                     {micro_batches} micro-batch(es) of at least {min_rows} equal rows (the \
                     method needs {min_rows} per shard)"
                ),
            ));
        }
        Ok(Shards {
            total,
            first: rank * micro_batches,
            local: micro_batches,
        })
    }

    /// The indices of this rank's shards.
    pub fn local_indices(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.local
    }
}

/// The gradients of every rank's shards summed (in rank order) and divided by the
/// shard count, in place: `grads` holds this rank's sum, one per parameter in a fixed
/// order, of the parameters' dtype. Bucketed: the gradients are laid end to end in
/// buckets of at most [`BUCKET_ELEMS`] elements, one all-reduce each.
pub(crate) fn combine_gradients(
    grads: &mut [Tensor],
    comm: Option<&dyn Communicator>,
    shards: usize,
) -> Result<()> {
    if let Some(comm) = comm.filter(|c| c.world_size() > 1) {
        let mut start = 0;
        while start < grads.len() {
            let mut end = start + 1;
            let mut elems = grads[start].elem_count();
            while end < grads.len() && elems + grads[end].elem_count() <= BUCKET_ELEMS {
                elems += grads[end].elem_count();
                end += 1;
            }
            all_reduce_bucket(&mut grads[start..end], comm)?;
            start = end;
        }
    }
    if shards > 1 {
        let inverse = 1.0 / shards as f64;
        for g in grads.iter_mut() {
            *g = g.mul_scalar(inverse)?;
        }
    }
    Ok(())
}

/// One bucket: the gradients flattened into one tensor, summed across ranks, cut back.
fn all_reduce_bucket(grads: &mut [Tensor], comm: &dyn Communicator) -> Result<()> {
    let flat: Vec<Tensor> = grads
        .iter()
        .map(|g| g.flatten_all())
        .collect::<Result<_>>()?;
    let bucket = Tensor::cat(&flat.iter().collect::<Vec<_>>(), 0)?;
    comm.all_reduce(&bucket, ReduceOp::Sum)?;
    let mut at = 0;
    for g in grads.iter_mut() {
        let n = g.elem_count();
        *g = bucket.narrow(0, at, n)?.reshape(g.shape())?;
        at += n;
    }
    Ok(())
}

/// Sums `values` over the ranks (in f64, on the ranks' `device`; the step's losses and
/// flags).
pub(crate) fn sum_over_ranks(
    values: &[f64],
    comm: Option<&dyn Communicator>,
    device: Device,
) -> Result<Vec<f64>> {
    match comm.filter(|c| c.world_size() > 1) {
        None => Ok(values.to_vec()),
        Some(comm) => {
            let t = Tensor::from_slice(values, &[values.len()], device)?;
            comm.all_reduce(&t, ReduceOp::Sum)?;
            t.to_vec::<f64>()
        }
    }
}
