//! Where the thread that calls the engine should run, and how the other workers wait.
//!
//! The CPU kernels split their loops over rayon's pool. A loop started from a thread
//! outside the pool (a program's main thread) hands its work to the pool and sleeps
//! until a worker has finished it: two thread wake-ups per op. On the 2-vCPU virtual
//! machine of docs/benchmarks.md a wake-up takes tens of µs, so an op on a few
//! thousand values cost 16–100 µs instead of about 1 µs. Started from a worker, the
//! same loop does its own share at once and takes back what no idle worker picked up,
//! so a slow wake-up costs parallelism, never a wait.
//!
//! Parallelism was still lost: between two ops the other workers found nothing to do
//! and went to sleep, and on a virtual machine a sleeping vCPU hands its core back to
//! the host, which can take milliseconds to return it. So while the caller's work
//! runs, the other workers keep looking for jobs, as OpenMP's threads (PyTorch's) do
//! by default, and only after [`SPIN_WHILE_IDLE`] without any do they check every
//! [`IDLE_POLL`] instead.

use rayon::Yield;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an idle worker keeps looking for jobs without pause.
const SPIN_WHILE_IDLE: Duration = Duration::from_millis(20);
/// How often a worker idle for longer than that looks.
const IDLE_POLL: Duration = Duration::from_millis(1);

thread_local! {
    /// Whether this thread is already looking for jobs for an [`on_worker_thread`] call.
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on one of the CPU backend's worker threads (rayon's global pool) and returns
/// its result; runs it in place when called from a worker already. While `f` runs, the
/// pool's other workers keep looking for jobs (see the module docs), which costs CPU
/// time on those cores while `f` does serial work.
///
/// Programs that drive the engine from one thread (a training loop, a benchmark)
/// should run that thread's work through this. Not for code that blocks waiting on
/// other threads which themselves run engine ops (data-parallel thread ranks): with
/// every worker blocked, their ops could not run.
pub fn on_worker_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        let caller = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            let stop = &stop;
            s.spawn(move |_| look_for_jobs(stop, caller));
        }
        // Set even if `f` panics: the scope waits for the workers to stop looking.
        let _stop = StopOnDrop(&stop);
        f()
    })
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs other workers' jobs as they appear, until `stop`. Returns at once on the
/// caller's thread (which would otherwise never return to the caller's work) and on a
/// thread already looking.
fn look_for_jobs(stop: &AtomicBool, caller: Option<usize>) {
    if rayon::current_thread_index() == caller || POLLING.with(|p| p.replace(true)) {
        return;
    }
    let mut idle_since = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match rayon::yield_now() {
            Some(Yield::Executed) => idle_since = Instant::now(),
            _ if idle_since.elapsed() < SPIN_WHILE_IDLE => std::hint::spin_loop(),
            _ => std::thread::sleep(IDLE_POLL),
        }
    }
    POLLING.with(|p| p.set(false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The result comes back from outside the pool and from inside it (nested calls
    /// run in place), and parallel loops inside run to completion while the other
    /// workers are looking for jobs.
    #[test]
    fn runs_work_and_returns_its_result() {
        let sum = on_worker_thread(|| {
            let inner = on_worker_thread(|| (0..10_000u64).into_par_iter().sum::<u64>());
            inner + (0..1_000u64).into_par_iter().map(|x| x * 2).sum::<u64>()
        });
        assert_eq!(sum, 49_995_000 + 999_000);
    }

    /// A panic in the work reaches the caller instead of leaving the workers looking
    /// for jobs forever (the scope would then never end).
    #[test]
    fn a_panic_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| on_worker_thread(|| panic!("boom")));
        assert!(r.is_err());
        assert_eq!(on_worker_thread(|| 7), 7);
    }
}
