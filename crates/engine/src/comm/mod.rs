//! Collective communication between the ranks of a data-parallel run: the
//! [`Communicator`] trait and its backends.
//!
//! - [`ThreadGroup`]: ranks as threads of one process, exchanging through shared
//!   memory with a fixed reduction order (rank 0, then 1, …), so every rank gets the
//!   same bits. It serves the tests and data parallelism on the CPU.
//! - [`NcclCommunicator`] (feature `nccl`): ranks as processes, one per GPU, through
//!   NVIDIA's NCCL, loaded at run time (`libnccl.so.2`); the processes meet through
//!   a [`Rendezvous`], where rank 0 hands its NCCL group id to the others over TCP.
//!
//! Every collective is called by every rank in the same order with tensors of the same
//! shapes and dtypes; a rank that fails or stops answering makes the others' calls fail
//! (after [`Communicator::timeout`]) instead of hanging.

#[cfg(feature = "nccl")]
mod nccl;
mod rendezvous;
mod threads;

#[cfg(feature = "nccl")]
pub use nccl::{nccl_present, NcclCommunicator, NcclId};
pub use rendezvous::Rendezvous;
pub use threads::{ThreadCommunicator, ThreadGroup};

use crate::error::Result;
use crate::Tensor;
use std::time::Duration;

/// How [`Communicator::all_reduce`] combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum over ranks.
    Sum,
    /// The sum over ranks divided by the world size.
    Mean,
}

/// One rank's end of a group of ranks that run the same program on different data.
pub trait Communicator: Send {
    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// How many ranks the group has.
    fn world_size(&self) -> usize;

    /// Replaces each rank's `tensor` (contiguous, the same shape and dtype on every
    /// rank) by the ranks' values combined by `op`, in place. Every rank gets the same
    /// values.
    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()>;

    /// Overwrites `tensor` on every rank with root's values, in place.
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Tells the other ranks that this one failed, with why: their pending and later
    /// collectives fail with this message instead of waiting.
    fn abort(&self, why: &str);

    /// How long a collective waits for the other ranks before it fails.
    fn timeout(&self) -> Duration;
}
