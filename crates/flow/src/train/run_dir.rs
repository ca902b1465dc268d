//! The run directory as a whole: one process at a time ([`RunLock`]), what an existing
//! run holds ([`existing_checkpoint`]), starting over ([`clear_run`]), and putting the
//! directory back in step with the checkpoint a run continues from
//! ([`reconcile_metrics`], [`remove_stale_temporaries`]).
//!
//! The layout: `config.toml`, `metrics.jsonl`, `checkpoints/latest.safetensors` and
//! `checkpoints/step-<N>.safetensors`, `samples/`, `eval.json` (written by `twinflow
//! eval`) and the lock file `train.lock`.

use super::OP;
use fs4::{FileExt, TryLockError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use twinflow_engine::{Error, Result};
use twinflow_nn::atomic_file;

/// The lock file's name in a run directory.
pub const LOCK_FILE: &str = "train.lock";
/// The metrics log's name in a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The checkpoint folder's name in a run directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The sample pictures' folder in a run directory.
pub const SAMPLES_DIR: &str = "samples";
/// The newest checkpoint's name in the checkpoint folder.
pub const LATEST_CHECKPOINT: &str = "latest.safetensors";

/// Exclusive use of a run directory: an OS advisory lock (`flock` on Unix) on its
/// `train.lock`, held until this value is dropped or the process ends in any way
/// (the kernel releases it even after `kill -9`, so a crash never leaves a run
/// locked). The file holds the holder's process id, for the message of whoever is
/// refused; it is left in place afterwards (removing it could let two processes lock
/// two different files of one name).
#[derive(Debug)]
pub struct RunLock {
    /// Open for as long as the lock is held: closing it releases the lock.
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks the run directory `dir` (created if missing), or fails at once, without
    /// waiting, with an error naming the directory and the process id of the holder.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        fs::create_dir_all(dir).map_err(|e| Error::io(OP, dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(OP, &path, e))?;
        // Called through the trait: newer std has inherent methods of the same name.
        match FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "run directory {} is in use by another `twinflow train` ({}; lock \
                         file {}); wait for it to finish or stop it",
                        dir.display(),
                        holder(&mut file),
                        path.display()
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(OP, &path, e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(OP, &path, e))?;
        Ok(RunLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Closing the file releases the lock anyway; unlocking first says so, and a
        // failure cannot be reported from a drop.
        let _ = FileExt::unlock(&self.file);
    }
}

/// `PID <n>` of the lock file's holder, as it wrote it, or a phrase saying it is not
/// known (the holder may not have written it yet).
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    match file.read_to_string(&mut text) {
        Ok(_) => match text.trim().parse::<u32>() {
            Ok(pid) => format!("PID {pid}"),
            Err(_) => "PID not yet written".into(),
        },
        Err(_) => "PID unreadable".into(),
    }
}

/// The checkpoint an existing run in `dir` would continue from: `latest.safetensors`
/// when present, else the newest `step-<N>.safetensors`; `None` when the directory
/// holds no checkpoint (missing, empty, or a run stopped before its first save).
pub fn existing_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    let latest = dir.join(CHECKPOINTS_DIR).join(LATEST_CHECKPOINT);
    if latest.exists() {
        return Ok(Some(latest));
    }
    Ok(step_checkpoints(dir)?.pop().map(|(_, path)| path))
}

/// The `step-<N>.safetensors` files of `dir/checkpoints`, by step, oldest first.
pub fn step_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let ckdir = dir.join(CHECKPOINTS_DIR);
    let entries = match fs::read_dir(&ckdir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(OP, &ckdir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(OP, &ckdir, e))?;
        let name = entry.file_name();
        let step = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-")?.strip_suffix(".safetensors"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes what a run left in `dir`, to start another there: `checkpoints/`,
/// `samples/`, `metrics.jsonl`, `config.toml` and `eval.json`. Other files (and the
/// lock file) stay.
pub fn clear_run(dir: &Path) -> Result<()> {
    for folder in [CHECKPOINTS_DIR, SAMPLES_DIR] {
        let path = dir.join(folder);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io(OP, &path, e));
            }
            _ => {}
        }
    }
    for file in [METRICS_FILE, "config.toml", "eval.json"] {
        let path = dir.join(file);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io(OP, &path, e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What [`reconcile_metrics`] removed from a run's `metrics.jsonl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsRepair {
    /// Lines kept.
    pub kept: usize,
    /// Lines of steps after the checkpoint (written after its save, by a run that then
    /// ended without saving again).
    pub after_checkpoint: usize,
    /// Lines of a step that a later line records again (a resumed run that retook the
    /// step; the later line is the one of the history the checkpoint continues).
    pub superseded: usize,
    /// Lines that are not a JSON object with a `step` (a line torn by a crash).
    pub unreadable: usize,
}

impl MetricsRepair {
    /// Whether any line was removed.
    pub fn changed(&self) -> bool {
        self.after_checkpoint + self.superseded + self.unreadable > 0
    }
}

/// Cuts `dir/metrics.jsonl` back to the history of a run continuing from step `step`:
/// removes lines of later steps, unreadable (torn) lines, and earlier lines of a step
/// that a later line records again, so that every line is valid JSON and the steps
/// strictly increase. The file is replaced atomically (temporary file and rename), and
/// only when something is removed; a missing file is fine.
pub fn reconcile_metrics(dir: &Path, step: u64) -> Result<MetricsRepair> {
    let path = dir.join(METRICS_FILE);
    let text = match fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(MetricsRepair::default()),
        Err(e) => return Err(Error::io(OP, &path, e)),
    };
    let mut repair = MetricsRepair::default();
    let mut kept: Vec<(u64, &str)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some(line_step) = metrics_step(line) else {
            repair.unreadable += 1;
            continue;
        };
        if line_step > step {
            repair.after_checkpoint += 1;
            continue;
        }
        while kept.last().is_some_and(|&(s, _)| s >= line_step) {
            kept.pop();
            repair.superseded += 1;
        }
        kept.push((line_step, line));
    }
    repair.kept = kept.len();
    if repair.changed() {
        let contents: String = kept.iter().map(|(_, line)| format!("{line}\n")).collect();
        atomic_file::replace_file(&path, contents.as_bytes())
            .map_err(|e| Error::io(OP, &path, e))?;
    }
    Ok(repair)
}

/// The `step` of a metrics line, when the line is a whole JSON object that has one.
fn metrics_step(line: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.as_object()?.get("step")?.as_u64()
}

/// Removes the temporaries a killed writer left in `dir`, `dir/checkpoints` and
/// `dir/samples` (see [`atomic_file::remove_stale_temporaries`]); returns their paths.
/// Only call it under the run's [`RunLock`], when no other process writes there.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for folder in [
        dir.to_path_buf(),
        dir.join(CHECKPOINTS_DIR),
        dir.join(SAMPLES_DIR),
    ] {
        removed.extend(
            atomic_file::remove_stale_temporaries(&folder)
                .map_err(|e| Error::io(OP, &folder, e))?,
        );
    }
    Ok(removed)
}
