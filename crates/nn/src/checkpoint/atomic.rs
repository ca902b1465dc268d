//! Replacing a file so that no reader, and no crash, ever sees it half written.

use super::CheckpointError;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `path` through a temporary file in the same directory: `write` fills the
/// temporary, which is flushed to disk and then renamed over `path` (atomic within one
/// file system). A reader sees the old file or the complete new one; when any step
/// fails the temporary is removed and the old file is left as it was.
pub(super) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let tmp = temp_sibling(path)?;
    let result = write(&tmp)
        .and_then(|()| flush_to_disk(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_error(path)));
    if result.is_err() {
        // The temporary may not exist (the failure came first); the error to report is
        // the one that stopped the save.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Makes the rename itself durable. Some platforms and file systems cannot sync a
    // directory; the new file is in place either way, so that failure is not reported.
    if let Ok(dir) = File::open(directory_of(path)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `dir/.name.<pid>-<n>.tmp` beside `path`: unique per process and call, hidden, and
/// on the same file system so that the rename is atomic.
fn temp_sibling(path: &Path) -> Result<PathBuf, CheckpointError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(CheckpointError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
        });
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{}.{}-{n}.tmp", name.to_string_lossy(), std::process::id());
    Ok(directory_of(path).join(tmp))
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Forces the written bytes to disk, so that the rename cannot expose a file whose
/// contents are still only in the page cache.
fn flush_to_disk(path: &Path) -> Result<(), CheckpointError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(path))
}

/// Wraps an I/O error with the path it concerns.
pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}
