//! The one error type of the engine: every fallible op names itself and its operands.

use crate::dtype::DType;
use std::path::PathBuf;

/// Everything that can go wrong in the engine.
///
/// Messages name the op and the offending shapes or dtypes, so that a user can find the
/// faulty line without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes that the op cannot combine.
    #[error("{op}: incompatible shapes {shapes}")]
    ShapeMismatch {
        /// The op that refused its operands.
        op: &'static str,
        /// The operand shapes, written out.
        shapes: String,
    },
    /// Operand dtypes that the op cannot combine or does not support.
    #[error("{op}: unsupported dtypes ({})", join_dtypes(.dtypes))]
    DTypeMismatch {
        /// The op that refused its operands.
        op: &'static str,
        /// The operand dtypes.
        dtypes: Vec<DType>,
    },
    /// A dimension index out of range for the tensor's rank.
    #[error("{op}: dim {dim} out of range for a tensor of shape {shape:?}")]
    DimOutOfRange {
        /// The op that received the dim.
        op: &'static str,
        /// The dim as given.
        dim: isize,
        /// The tensor's shape.
        shape: Vec<usize>,
    },
    /// Operands that live on different devices.
    #[error("{op}: operands on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        /// The op that refused its operands.
        op: &'static str,
        /// First device.
        lhs: String,
        /// Second device.
        rhs: String,
    },
    /// Any other invalid argument, with a sentence that says what is wrong.
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The op that refused its argument.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Autodiff misuse, e.g. backward on a tensor that does not require a gradient.
    #[error("backward: {0}")]
    Autograd(String),
    /// The file system refused: `op` could not read or write `path`. The operating
    /// system's error is the [`source`](std::error::Error::source).
    #[error("{op}: {}", .path.display())]
    Io {
        /// What was being done (`"config"`, `"train"`, `"mnist"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// A failure of a layer built on the engine (a checkpoint that does not fit, a
    /// file of the wrong kind), under what `op` was doing; the failure itself is the
    /// [`source`](std::error::Error::source), typed, for callers that downcast it.
    #[error("{op}: {context}")]
    Caused {
        /// What was being done.
        op: &'static str,
        /// What it was being done to (a file, a key).
        context: String,
        /// The failure.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// An error of a layer built on the engine (a checkpoint's), passed on whole: its
    /// message and causes are its own, and callers can downcast it.
    #[error(transparent)]
    External(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A size too large for the machine: an element count that overflows, or a
    /// buffer the allocator refuses (see [`crate::sizes`]).
    #[error("{op}: {what}")]
    OutOfMemory {
        /// What was being allocated for.
        op: &'static str,
        /// The size asked for and why it cannot be had.
        what: String,
    },
    /// A backend (CUDA driver, NVRTC, cuBLAS) reported a failure.
    #[error("{backend} backend: {msg}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The failure as the backend reported it.
        msg: String,
    },
}

fn join_dtypes(dtypes: &[DType]) -> String {
    let names: Vec<&str> = dtypes.iter().map(|d| d.as_str()).collect();
    names.join(", ")
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A shape mismatch naming every operand shape.
    pub fn shapes(op: &'static str, shapes: &[&[usize]]) -> Self {
        let shapes = shapes
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" and ");
        Error::ShapeMismatch { op, shapes }
    }

    /// An invalid argument with a free-form explanation.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }

    /// `op` could not read or write `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// `source`, met while `op` worked on `context`.
    pub fn caused(
        op: &'static str,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Caused {
            op,
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// A dtype combination the op does not support.
    pub fn dtypes(op: &'static str, dtypes: &[DType]) -> Self {
        Error::DTypeMismatch {
            op,
            dtypes: dtypes.to_vec(),
        }
    }
}

/// The error and its causes on one line, outermost first, joined by ": " (how the
/// command line prints an error). A line break or other control character inside a
/// message (text quoted from a damaged file, say) is written escaped, so the report
/// stays one line whatever the messages hold.
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    if !line.contains(char::is_control) {
        return line;
    }
    let mut escaped = String::with_capacity(line.len());
    for c in line.chars() {
        match c.is_control() {
            true => escaped.extend(c.escape_debug()),
            false => escaped.push(c),
        }
    }
    escaped
}

/// Most characters of file text that [`excerpt`] quotes.
const EXCERPT_CHARS: usize = 60;

/// `text` (read from a file) as an error message quotes it: in double quotes, escaped
/// (no line break or control character gets through), and cut after 60 characters,
/// marked `…`.
pub fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(EXCERPT_CHARS).collect();
    match cut.len() < text.len() {
        true => format!("{cut:?}…"),
        false => format!("{cut:?}"),
    }
}
