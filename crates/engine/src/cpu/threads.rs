//! Where the thread that calls the engine should run.
//!
//! The CPU kernels split their loops over rayon's pool. A loop started from a thread
//! outside the pool (a program's main thread) hands its work to the pool and sleeps
//! until a worker has finished it: two thread wake-ups per op. On the 2-vCPU virtual
//! machine of docs/benchmarks.md a wake-up takes tens of µs, so an op on a few
//! thousand values cost 16–100 µs instead of about 1 µs. Started from a worker, the
//! same loop does its own share at once and takes back what no idle worker picked up,
//! so a slow wake-up costs parallelism, never a wait.

/// Runs `f` on one of the CPU backend's worker threads (rayon's global pool) and returns
/// its result; runs it in place when called from a worker already.
///
/// Programs that drive the engine from one thread (a training loop, a benchmark)
/// should run that thread's work through this. Not for code that blocks waiting on
/// other threads which themselves run engine ops (data-parallel thread ranks): with
/// every worker blocked, their ops could not run.
pub fn on_worker_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
