//! Replacing a file so that no reader, and no crash, ever sees it half written; and
//! the housekeeping around it: finding the temporaries a killed writer left behind,
//! and checking that a directory takes new files before long work is started.
//!
//! Every writer of the project that replaces a file (checkpoints, the metrics log, the
//! command line's outputs) goes through [`write_atomically`], so one naming scheme
//! covers all temporaries: `.<name>.<pid>-<n>.tmp` beside the target. A temporary is
//! always a new file (`create_new`): a file or link already at its name (another
//! writer's, or one planted there) is never written through or truncated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How many names [`create_temporary`] tries before giving up: each is unique to this
/// process and call, so only files left at those names by a killed process of the
/// same PID (or planted there) can take them.
const TEMPORARY_ATTEMPTS: usize = 100;

/// Writes `path` through a temporary file in the same directory: `write` fills the
/// temporary, a file created for this call alone (`create_new`), which is flushed to
/// disk and then renamed over `path` (atomic within one file system). A reader sees the
/// old file or the complete new one; when any step fails the temporary is removed and
/// the old file is left as it was. `io_error` turns a failure of this function's own
/// file operations (on the path it is given) into the caller's error type.
pub fn write_atomically<E>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
    io_error: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    let (tmp, mut file) = create_temporary(path).map_err(|e| io_error(path, e))?;
    let result = write(&mut file)
        .and_then(|()| file.sync_all().map_err(|e| io_error(&tmp, e)))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_error(path, e)));
    drop(file);
    if result.is_err() {
        // The error to report is the one that stopped the write.
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

/// [`write_atomically`] for contents already in memory. The error is the operating
/// system's; the caller names `path` in its message.
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically(path, |file| file.write_all(contents), |_, e| e)
}

/// Removes the temporaries that [`write_atomically`] leaves in `dir` when its process
/// is killed mid-write (`.<name>.<pid>-<n>.tmp`), and returns their paths. Other files
/// are never touched; a missing `dir` has none. Only call it while no other process
/// writes to `dir` (e.g. under a run directory's lock): a live writer's temporary
/// looks the same.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let is_temporary = entry.file_name().to_str().is_some_and(is_temporary_name);
        if is_temporary && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}

/// Checks that `dir` exists and takes new files, by creating and removing a temporary
/// there: a command checks its output location with it before hours of work rather
/// than failing after them. (Permission bits alone can mislead, e.g. for root or on a
/// read-only mount.)
pub fn check_directory_writable(dir: &Path) -> io::Result<()> {
    let probe = temp_sibling(&dir.join("write-probe"))?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    fs::remove_file(&probe)
}

/// A new temporary beside `path` ([`temp_sibling`]), created exclusively: a name
/// already taken is passed over for the next one, never opened.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    let mut last_error = None;
    for _ in 0..TEMPORARY_ATTEMPTS {
        let tmp = temp_sibling(path)?;
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no temporary name is free")))
}

/// `dir/.name.<pid>-<n>.tmp` beside `path`: unique per process and call, hidden, and
/// on the same file system so that the rename is atomic.
fn temp_sibling(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ));
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{}.{}-{n}.tmp", name.to_string_lossy(), std::process::id());
    Ok(directory_of(path).join(tmp))
}

/// Whether a file name is one that [`temp_sibling`] makes: `.`, a name, `.`, digits,
/// `-`, digits, `.tmp`.
fn is_temporary_name(name: &str) -> bool {
    let Some(body) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((target, counters)) = body.rsplit_once('.') else {
        return false;
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    !target.is_empty()
        && counters
            .split_once('-')
            .is_some_and(|(pid, n)| all_digits(pid) && all_digits(n))
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn temporaries_are_new_files_never_written_through() {
        let dir = std::env::temp_dir().join(format!("twinflow-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.json");
        let victim = dir.join("victim");
        fs::write(&victim, b"keep").unwrap();
        // Links to the victim at the next names this process will use: the write must
        // pass them over, not write through them.
        let next = temp_sibling(&target).unwrap();
        let name = next.file_name().unwrap().to_str().unwrap();
        let (stem, counter) = name.strip_suffix(".tmp").unwrap().rsplit_once('-').unwrap();
        let counter: u64 = counter.parse().unwrap();
        for n in counter + 1..counter + 20 {
            std::os::unix::fs::symlink(&victim, dir.join(format!("{stem}-{n}.tmp"))).unwrap();
        }
        replace_file(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_are_recognised() {
        let tmp = temp_sibling(Path::new("dir/latest.safetensors")).unwrap();
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(is_temporary_name(name), "{name}");
        for other in [
            "latest.safetensors",
            ".latest.safetensors.tmp",
            ".latest.safetensors.12-.tmp",
            ".latest.safetensors.x-1.tmp",
            "..1-2.tmp",
            ".hidden",
        ] {
            assert!(!is_temporary_name(other), "{other}");
        }
    }
}
