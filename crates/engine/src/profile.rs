//! An op profiler: for every backend op a closure runs (per op and dtype), the number of
//! calls, the elements of their first operand and their wall time.
//!
//! ```
//! use twinflow_engine::{profile, DType, Device, Generator};
//! # fn main() -> twinflow_engine::Result<()> {
//! let x = Generator::new(0).randn(&[64, 64], DType::F32, Device::Cpu)?;
//! let (y, report) = profile::profile(false, || x.matmul(&x)?.tanh());
//! y?;
//! assert_eq!(report.ops.len(), 2);
//! println!("{}", report.table());
//! # Ok(())
//! # }
//! ```
//!
//! Ops are timed where [`crate::Storage`] dispatches them, so the table says which
//! kernels a model spends its time in, below the tensor API. On a GPU, kernels run
//! asynchronously: with `sync_device` each op waits for its device to finish, so that
//! its time is the kernel's (the run as a whole gets slower); without it the times are
//! launch overheads. When no profile is running, an op pays one relaxed atomic load.

use crate::{DType, Device};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static SYNC_DEVICE: AtomicBool = AtomicBool::new(false);
static STATS: Mutex<Option<HashMap<(&'static str, DType), OpStats>>> = Mutex::new(None);
/// Serialises profiles: the counters are process-wide.
static RUNNING: Mutex<()> = Mutex::new(());

/// Totals of one op at one dtype.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpStats {
    /// Number of calls.
    pub calls: u64,
    /// Elements of the first operand, summed over the calls.
    pub elements: u64,
    /// Wall time, summed over the calls.
    pub seconds: f64,
}

/// One row of a [`Profile`].
#[derive(Debug, Clone, PartialEq)]
pub struct OpRecord {
    /// The backend op (`matmul`, `binary`, `to_dtype`, …).
    pub op: &'static str,
    /// The dtype of its first operand.
    pub dtype: DType,
    /// Its totals.
    pub stats: OpStats,
}

/// The ops a profiled closure ran, the most time-consuming first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// One record per (op, dtype).
    pub ops: Vec<OpRecord>,
}

impl Profile {
    /// Total wall time of the recorded ops.
    pub fn seconds(&self) -> f64 {
        self.ops.iter().map(|r| r.stats.seconds).sum()
    }

    /// A Markdown table: op, dtype, calls, million elements, milliseconds, share.
    pub fn table(&self) -> String {
        let total = self.seconds().max(f64::MIN_POSITIVE);
        let mut s = String::from("| op | dtype | calls | M elements | ms | share |\n");
        s.push_str("|---|---|---:|---:|---:|---:|\n");
        for r in &self.ops {
            let st = r.stats;
            let _ = writeln!(
                s,
                "| {} | {:?} | {} | {:.1} | {:.2} | {:.1}% |",
                r.op,
                r.dtype,
                st.calls,
                st.elements as f64 / 1e6,
                st.seconds * 1e3,
                100.0 * st.seconds / total
            );
        }
        let _ = write!(s, "| total | | | | {:.2} | |", total * 1e3);
        s
    }
}

/// Runs `f` and returns its result with the profile of the backend ops it ran (on any
/// thread). Profiles run one at a time: a second call waits for the first to finish.
pub fn profile<T>(sync_device: bool, f: impl FnOnce() -> T) -> (T, Profile) {
    let _one_at_a_time = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    *stats() = Some(HashMap::new());
    SYNC_DEVICE.store(sync_device, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Release);
    let out = f();
    ENABLED.store(false, Ordering::Release);
    let mut ops: Vec<OpRecord> = stats()
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|((op, dtype), stats)| OpRecord { op, dtype, stats })
        .collect();
    ops.sort_by(|a, b| b.stats.seconds.total_cmp(&a.stats.seconds));
    (out, Profile { ops })
}

fn stats() -> std::sync::MutexGuard<'static, Option<HashMap<(&'static str, DType), OpStats>>> {
    STATS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Times one op from its creation to its drop.
pub(crate) struct Scope {
    op: &'static str,
    dtype: DType,
    elements: usize,
    device: Device,
    start: Instant,
}

/// A [`Scope`] for `op` when a profile is running (`operand` gives the first operand's
/// dtype, element count and device, evaluated only then), else `None`.
#[inline]
pub(crate) fn scope(
    op: &'static str,
    operand: impl FnOnce() -> (DType, usize, Device),
) -> Option<Scope> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let (dtype, elements, device) = operand();
    Some(Scope {
        op,
        dtype,
        elements,
        device,
        start: Instant::now(),
    })
}

impl Drop for Scope {
    fn drop(&mut self) {
        if SYNC_DEVICE.load(Ordering::Relaxed) {
            wait_for(self.device);
        }
        let seconds = self.start.elapsed().as_secs_f64();
        if let Some(map) = stats().as_mut() {
            let e = map.entry((self.op, self.dtype)).or_default();
            e.calls += 1;
            e.elements += self.elements as u64;
            e.seconds += seconds;
        }
    }
}

/// Blocks until `device` has finished its queued work (nothing to wait for on the CPU).
fn wait_for(device: Device) {
    match device {
        Device::Cpu => {}
        // A failed synchronisation shows up as the op's own error or the next one's.
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            let _ = crate::cuda::synchronize(i);
        }
    }
}
