//! Ranks as threads of one process: the CPU backend of [`Communicator`].
//!
//! A collective is an exchange: each rank deposits its values in its slot, the last to
//! arrive combines all slots in rank order and publishes the result, and every rank
//! copies it back. Rank order makes the combination, and so every rank's result,
//! deterministic. Values travel as f64 (exactly) and are added one rank after the
//! other in the tensor's own dtype, rounding after each addition, as a loop of `add`s
//! over the ranks' tensors would: one process adding up micro-batches gets the same
//! bits.

use super::{Communicator, ReduceOp};
use crate::error::{Error, Result};
use crate::{DType, Tensor};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default for how long a collective waits for the other ranks.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A group of in-process ranks; [`ThreadGroup::new`] hands out one
/// [`ThreadCommunicator`] per rank, to be moved to its thread.
pub struct ThreadGroup;

impl ThreadGroup {
    /// The communicators of a group of `world_size` ranks (at least 1), rank order.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world_size: usize, timeout: Option<Duration>) -> Result<Vec<ThreadCommunicator>> {
        if world_size == 0 {
            return Err(Error::invalid("ThreadGroup", "needs at least one rank"));
        }
        let shared = Arc::new(Shared {
            world_size,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            round: Mutex::new(Round {
                generation: 0,
                slots: vec![None; world_size],
                arrived: 0,
                result: Arc::new(Vec::new()),
                failed: None,
            }),
            done: Condvar::new(),
        });
        Ok((0..world_size)
            .map(|rank| ThreadCommunicator {
                rank,
                shared: shared.clone(),
            })
            .collect())
    }
}

struct Shared {
    world_size: usize,
    timeout: Duration,
    round: Mutex<Round>,
    done: Condvar,
}

/// The collective in progress.
struct Round {
    /// How many collectives have completed.
    generation: u64,
    slots: Vec<Option<Vec<f64>>>,
    arrived: usize,
    /// The last completed collective's result.
    result: Arc<Vec<f64>>,
    /// Why the group cannot go on, once a rank failed or left.
    failed: Option<String>,
}

/// One rank of a [`ThreadGroup`].
pub struct ThreadCommunicator {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadCommunicator {
    /// Deposits `values`; once every rank has, returns `combine` of all of them in rank
    /// order (the same result on every rank).
    fn exchange(
        &self,
        op: &'static str,
        values: Vec<f64>,
        combine: impl FnOnce(Vec<Vec<f64>>) -> Result<Vec<f64>>,
    ) -> Result<Arc<Vec<f64>>> {
        let s = &self.shared;
        let mut round = s.round.lock();
        if let Some(why) = &round.failed {
            return Err(group_failed(op, self.rank, why));
        }
        let generation = round.generation;
        round.slots[self.rank] = Some(values);
        round.arrived += 1;
        if round.arrived == s.world_size {
            let all = round
                .slots
                .iter_mut()
                .map(|v| v.take().unwrap_or_default())
                .collect();
            let combined = combine(all).inspect_err(|e| {
                // The waiting ranks fail with the same message.
                round.failed = Some(e.to_string());
                s.done.notify_all();
            })?;
            round.result = Arc::new(combined);
            round.arrived = 0;
            round.generation += 1;
            s.done.notify_all();
            return Ok(round.result.clone());
        }
        let deadline = Instant::now() + s.timeout;
        while round.generation == generation && round.failed.is_none() {
            if s.done.wait_until(&mut round, deadline).timed_out() {
                let why = format!(
                    "rank {} waited {:?} in {op} for the other ranks",
                    self.rank, s.timeout
                );
                round.failed = Some(why.clone());
                s.done.notify_all();
                return Err(Error::invalid(op, why));
            }
        }
        // A completed collective counts even if a rank failed just after it.
        match round.generation != generation {
            true => Ok(round.result.clone()),
            false => {
                let why = round.failed.as_deref().unwrap_or("no result");
                Err(group_failed(op, self.rank, why))
            }
        }
    }
}

fn group_failed(op: &'static str, rank: usize, why: &str) -> Error {
    Error::invalid(op, format!("rank {rank}: the group stopped: {why}"))
}

/// Checks that every rank sent as many values as the first.
fn same_lengths(op: &'static str, all: &[Vec<f64>]) -> Result<()> {
    match all.iter().position(|v| v.len() != all[0].len()) {
        None => Ok(()),
        Some(r) => Err(Error::invalid(
            op,
            format!(
                "rank {r} sent {} values, rank 0 sent {}",
                all[r].len(),
                all[0].len()
            ),
        )),
    }
}

/// Rounds an f64 to the nearest value of `dtype` (back in f64).
fn rounding(dtype: DType) -> fn(f64) -> f64 {
    match dtype {
        DType::F32 => |x| x as f32 as f64,
        DType::BF16 => |x| half::bf16::from_f64(x).to_f64(),
        DType::F16 => |x| half::f16::from_f64(x).to_f64(),
        DType::F64 | DType::I64 => |x| x,
    }
}

/// Writes `values` into `tensor` in place, in its dtype.
fn write_back(tensor: &Tensor, values: &[f64]) -> Result<()> {
    let src = Tensor::from_f64s(values, tensor.shape(), tensor.dtype(), tensor.device())?;
    tensor.assign(&src)
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()> {
        const OP: &str = "all_reduce";
        let n = self.shared.world_size as f64;
        let round = rounding(tensor.dtype());
        let result = self.exchange(OP, tensor.to_vec_f64()?, |all| {
            same_lengths(OP, &all)?;
            let mut sum = all[0].clone();
            for rank in &all[1..] {
                sum.iter_mut()
                    .zip(rank)
                    .for_each(|(s, x)| *s = round(*s + x));
            }
            if op == ReduceOp::Mean {
                sum.iter_mut().for_each(|s| *s = round(*s / n));
            }
            Ok(sum)
        })?;
        write_back(tensor, &result)
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        if root >= self.shared.world_size {
            return Err(Error::invalid(
                OP,
                format!("root {root} is not a rank of {}", self.shared.world_size),
            ));
        }
        let mine = match self.rank == root {
            true => tensor.to_vec_f64()?,
            false => Vec::new(),
        };
        let result = self.exchange(OP, mine, |mut all| Ok(std::mem::take(&mut all[root])))?;
        match result.len() == tensor.elem_count() {
            true => write_back(tensor, &result),
            false => Err(Error::invalid(
                OP,
                format!(
                    "root {root} sent {} values, rank {} holds {}",
                    result.len(),
                    self.rank,
                    tensor.elem_count()
                ),
            )),
        }
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Vec::new(), |_| Ok(Vec::new()))
            .map(|_| ())
    }

    fn abort(&self, why: &str) {
        let mut round = self.shared.round.lock();
        round
            .failed
            .get_or_insert_with(|| format!("rank {} failed: {why}", self.rank));
        self.shared.done.notify_all();
    }

    fn timeout(&self) -> Duration {
        self.shared.timeout
    }
}

impl Drop for ThreadCommunicator {
    /// A rank that leaves (returns, or unwinds from a panic) stops the group: the others
    /// would otherwise wait for it until their timeout.
    fn drop(&mut self) {
        self.abort("left the group");
    }
}
