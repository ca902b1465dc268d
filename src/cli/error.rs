//! The command line's errors: any error of the crates, kept whole with its causes
//! (printed as one line by `main`), or a sentence about a flag.

/// An error of a command.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// The result of a command.
pub type CliResult<T> = Result<T, CliError>;
