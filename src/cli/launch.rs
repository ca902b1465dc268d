//! `train --devices cuda:0,cuda:1,…`: starts one `train` process per GPU (the same
//! command line, less `--devices`, plus `--device cuda:N` and the `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` environment) and
//! supervises them:
//! - Ctrl-C and SIGTERM reach the launcher only (each rank runs in a process group of
//!   its own), which passes each one on to every rank: the first stops the run after
//!   the current step, saved, and a second ends the ranks at once, as for one process.
//! - When a rank fails, the others are stopped (SIGTERM, then SIGKILL after
//!   [`GRACE`]) rather than left waiting in a collective for a rank that is gone, and
//!   the launcher exits with the failed rank's status, having said which rank it was.
//! - Otherwise it exits with rank 0's status once every rank has ended.

use super::error::CliResult;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the other ranks get to end by themselves after one failed.
const GRACE: Duration = Duration::from_secs(10);
/// How often the launcher looks at its ranks.
const POLL: Duration = Duration::from_millis(100);

/// Starts a rank per device with this process's arguments (`args`, without the
/// program name) and waits for them; the exit code is the run's.
pub fn run(devices: &[String], args: &[String]) -> CliResult<ExitCode> {
    let signals = Forwarded::install()?;
    let port = free_port()?;
    let rank_args = without_devices_flag(args);
    let mut ranks = Vec::with_capacity(devices.len());
    for (rank, device) in devices.iter().enumerate() {
        let child = Command::new(std::env::current_exe()?)
            .args(&rank_args)
            .args(["--device", device])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", devices.len().to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .process_group(0)
            .spawn();
        match child {
            Ok(child) => ranks.push(Some(child)),
            Err(e) => {
                stop_all(&mut ranks);
                return Err(format!("cannot start rank {rank} on {device}: {e}").into());
            }
        }
    }
    eprintln!(
        "launched {} ranks on {} (rendezvous at 127.0.0.1:{port})",
        devices.len(),
        devices.join(", ")
    );
    supervise(&mut ranks, &signals)
}

/// Waits for the ranks, passing signals on and stopping all when one fails.
fn supervise(ranks: &mut [Option<Child>], signals: &Forwarded) -> CliResult<ExitCode> {
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; ranks.len()];
    let mut forwarded = 0;
    loop {
        forwarded = signals.pass_on(ranks, forwarded);
        for (rank, slot) in ranks.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            let Some(status) = child.try_wait()? else {
                continue;
            };
            *slot = None;
            statuses[rank] = Some(status);
            if failed(status) {
                eprintln!("rank {rank} failed ({status}); stopping the other ranks");
                stop_all(ranks);
                return Ok(exit_code(status));
            }
        }
        if ranks.iter().all(Option::is_none) {
            return Ok(statuses[0].map_or(ExitCode::FAILURE, exit_code));
        }
        std::thread::sleep(POLL);
    }
}

/// Whether a rank's end is a failure: not success, and not the status of a run
/// stopped by a signal it was passed (130, 143), which the other ranks share.
fn failed(status: ExitStatus) -> bool {
    !matches!(status.code(), Some(0 | 130 | 143))
}

/// The launcher's exit code for a rank's status.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Asks every rank still running to stop, and kills those that have not after
/// [`GRACE`].
fn stop_all(ranks: &mut [Option<Child>]) {
    for child in ranks.iter().flatten() {
        send(child, libc::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    for slot in ranks.iter_mut() {
        let Some(child) = slot else { continue };
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(POLL);
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        *slot = None;
    }
}

fn send(child: &Child, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on a child this process started and has not yet reaped.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The SIGINT and SIGTERM the launcher received, counted, to pass on to the ranks.
struct Forwarded {
    count: Arc<AtomicUsize>,
    last: Arc<AtomicUsize>,
}

impl Forwarded {
    fn install() -> CliResult<Forwarded> {
        let count = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(AtomicUsize::new(0));
        for signal in [libc::SIGINT, libc::SIGTERM] {
            let (count, last) = (count.clone(), last.clone());
            // SAFETY: the action only stores to atomics, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(signal, move || {
                    last.store(signal as usize, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                })
            }?;
        }
        Ok(Forwarded { count, last })
    }

    /// Passes each signal received since `done` were passed on to every running rank;
    /// returns how many have been passed on.
    fn pass_on(&self, ranks: &[Option<Child>], done: usize) -> usize {
        let now = self.count.load(Ordering::SeqCst);
        let signal = i32::try_from(self.last.load(Ordering::SeqCst)).unwrap_or(libc::SIGTERM);
        for _ in done..now {
            for child in ranks.iter().flatten() {
                send(child, signal);
            }
        }
        now
    }
}

/// A loopback port free now, for the ranks' rendezvous.
fn free_port() -> CliResult<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("no free loopback port for the ranks to meet: {e}"))?;
    Ok(listener.local_addr()?.port())
}

/// `args` without `--devices LIST` / `--devices=LIST`.
fn without_devices_flag(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_next = false;
    for arg in args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        match arg.as_str() {
            "--devices" => skip_next = true,
            a if a.starts_with("--devices=") => {}
            _ => out.push(arg.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rank_command_line_drops_only_devices() {
        let args: Vec<String> = [
            "train",
            "--devices",
            "cuda:0,cuda:1",
            "--out",
            "r",
            "--devices=x",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(without_devices_flag(&args), ["train", "--out", "r"]);
    }

    #[test]
    fn stopped_ranks_are_not_failures() {
        let status = |code: i32| ExitStatus::from_raw(code << 8);
        assert!(!failed(status(0)));
        assert!(!failed(status(130)));
        assert!(failed(status(1)));
        assert!(failed(ExitStatus::from_raw(libc::SIGKILL)));
        assert_eq!(
            exit_code(ExitStatus::from_raw(libc::SIGKILL)),
            ExitCode::from(137)
        );
    }
}
