//! The files the commands write (`.npy` arrays, `.png` pictures, the JSON report of
//! `eval`, the classifier of `train-classifier`): checked before the work, so that a
//! wrong path fails at once rather than after minutes of sampling or training; written
//! atomically (a temporary file renamed over the target), so that an interrupted
//! command never leaves half a file; and never over a file of another kind, such as a
//! checkpoint given to `eval --json` by mistake.

use super::error::CliResult;
use std::io::Read;
use std::path::Path;
use twinflow::engine::Error;
use twinflow::flow::classifier::ClassifierFile;
use twinflow::nn::atomic_file;
use twinflow::nn::Checkpoint;

/// What an output file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A NumPy `.npy` array.
    Npy,
    /// A PNG picture.
    Png,
    /// A JSON document.
    Json,
    /// A classifier checkpoint of `train-classifier`.
    Classifier,
}

impl OutputKind {
    fn describe(self) -> &'static str {
        match self {
            OutputKind::Npy => "a NumPy .npy array",
            OutputKind::Png => "a PNG picture",
            OutputKind::Json => "a JSON document",
            OutputKind::Classifier => "a classifier checkpoint",
        }
    }
}

/// What a file already at an output path is, as far as replacing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Nothing there, or an empty file: nothing to lose.
    Nothing,
    /// A file of this kind: replacing it is what the command is for.
    Kind(OutputKind),
    /// A checkpoint other than a classifier's (a training run's), described.
    OtherCheckpoint,
    /// A directory.
    Directory,
    /// Anything else.
    Unknown,
}

/// Checks, before the work, that `path` (given by `flag`) can be written as `kind`:
/// it is not a directory nor a file of another kind, and its directory (created when
/// missing) takes new files. Errors name the flag and the path.
pub fn check_output(path: &Path, kind: OutputKind, flag: &str) -> CliResult<()> {
    check_replaceable(path, kind).map_err(|why| format!("{flag} {}: {why}", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .and_then(|()| atomic_file::check_directory_writable(dir))
        .map_err(|e| {
            format!(
                "{flag} {}: cannot write in {}: {e}",
                path.display(),
                dir.display()
            )
        })?;
    Ok(())
}

/// Writes `contents` to `path` atomically, checking again that no file of another kind
/// is replaced (one may have appeared during the work).
pub fn write_output(path: &Path, kind: OutputKind, contents: &[u8]) -> CliResult<()> {
    check_replaceable(path, kind).map_err(|why| format!("{}: {why}", path.display()))?;
    atomic_file::replace_file(path, contents).map_err(|e| Error::io("write", path, e).into())
}

/// Why `path` must not be replaced by a file of `kind`, if it must not.
fn check_replaceable(path: &Path, kind: OutputKind) -> Result<(), String> {
    let refuse = |what: &str| {
        Err(format!(
            "refusing to overwrite it: it is {what}, not {}; remove it or choose another path",
            kind.describe()
        ))
    };
    match existing(path) {
        Existing::Nothing => Ok(()),
        Existing::Kind(k) if k == kind => Ok(()),
        Existing::Kind(k) => refuse(k.describe()),
        Existing::OtherCheckpoint => refuse("a training checkpoint"),
        Existing::Directory => Err("it is a directory; give a file path".into()),
        Existing::Unknown => refuse("a file of another kind"),
    }
}

/// Tells what is at `path` from its first bytes (and, for a checkpoint, its header).
fn existing(path: &Path) -> Existing {
    let Ok(meta) = std::fs::metadata(path) else {
        return Existing::Nothing;
    };
    if meta.is_dir() {
        return Existing::Directory;
    }
    if meta.len() == 0 {
        return Existing::Nothing;
    }
    let mut head = Vec::with_capacity(8);
    let read = std::fs::File::open(path).and_then(|f| f.take(8).read_to_end(&mut head));
    if read.is_err() {
        return Existing::Unknown;
    }
    if head.starts_with(b"\x93NUMPY") {
        return Existing::Kind(OutputKind::Npy);
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Existing::Kind(OutputKind::Png);
    }
    let first_visible = head.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first_visible, Some(b'{') | Some(b'[')) {
        return Existing::Kind(OutputKind::Json);
    }
    match Checkpoint::read_config(path) {
        Ok(config) => {
            let classifier =
                config.is_some_and(|c| serde_json::from_value::<ClassifierFile>(c).is_ok());
            if classifier {
                Existing::Kind(OutputKind::Classifier)
            } else {
                Existing::OtherCheckpoint
            }
        }
        Err(_) => Existing::Unknown,
    }
}
