//! What can go wrong saving or loading a checkpoint; every message names the file.

use std::path::PathBuf;

/// A checkpoint that could not be written, read, or applied.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused (missing file, no permission, disk full, ...); the
    /// operating system's error is the source.
    #[error("checkpoint {}", .path.display())]
    Io {
        /// The file (or its temporary sibling) concerned.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// The file is not a readable TwinFlow checkpoint (truncated, corrupt, foreign).
    #[error("checkpoint {} is unreadable: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The checkpoint's tensors do not fit the model, EMA or optimizer they are loaded
    /// into; every problem is listed.
    #[error(
        "checkpoint {} does not fit the {target} ({} problem(s)): {}",
        .path.display(), .problems.len(), .problems.join("; ")
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What it was loaded into (`model`, `EMA`, `optimizer`).
        target: &'static str,
        /// One sentence per missing, unexpected, misshapen or mistyped tensor.
        problems: Vec<String>,
    },
    /// A tensor operation failed while encoding or restoring; the engine's error is
    /// the source.
    #[error("checkpoint {}", .path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The engine's error.
        source: twinflow_engine::Error,
    },
}

/// Lets code returning the engine's `Result` use `?` on checkpoint calls; the
/// checkpoint error travels whole ([`twinflow_engine::Error::External`]).
impl From<CheckpointError> for twinflow_engine::Error {
    fn from(e: CheckpointError) -> Self {
        twinflow_engine::Error::External(Box::new(e))
    }
}
