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
//! asynchronously, so the [`Timing`] matters there: host wall time is launch overhead;
//! [`Timing::Synchronised`] makes each op wait for its device (the kernels' time, with
//! the run slowed and every gap between kernels counted); [`Timing::DeviceEvents`]
//! reads the device's own clock from events recorded on its stream before and after
//! each op (the kernels' time as they run unhindered, comparable with a kernel trace
//! such as `torch.profiler`'s). When no profile is running, an op pays one relaxed
//! atomic load.

use crate::{DType, Device};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The running profile's [`Timing`], as its discriminant.
static TIMING: AtomicU8 = AtomicU8::new(Timing::Wall as u8);
static STATS: Mutex<Option<HashMap<(&'static str, DType), OpStats>>> = Mutex::new(None);
/// Device-clock spans waiting to be read when the profile ends ([`Timing::DeviceEvents`]).
#[cfg(feature = "cuda")]
static SPANS: Mutex<Vec<DeviceSpan>> = Mutex::new(Vec::new());

/// How a profile times an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Timing {
    /// Host wall time from the op's call to its return (on a GPU: launch overhead).
    Wall,
    /// Host wall time with the op waiting for its device to finish.
    Synchronised,
    /// On a GPU, the device's clock between events recorded on its stream before and
    /// after the op, read when the profile ends; ops on the CPU keep their wall time.
    DeviceEvents,
}

impl Timing {
    fn current() -> Timing {
        match TIMING.load(Ordering::Relaxed) {
            1 => Timing::Synchronised,
            2 => Timing::DeviceEvents,
            _ => Timing::Wall,
        }
    }
}
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
/// thread), each op timed by wall time, waiting for its device when `sync_device`
/// ([`profile_with`] with [`Timing::Synchronised`] or [`Timing::Wall`]).
pub fn profile<T>(sync_device: bool, f: impl FnOnce() -> T) -> (T, Profile) {
    let timing = match sync_device {
        true => Timing::Synchronised,
        false => Timing::Wall,
    };
    profile_with(timing, f)
}

/// Runs `f` and returns its result with the profile of the backend ops it ran (on any
/// thread), timed as `timing` says. Profiles run one at a time: a second call waits for
/// the first to finish.
pub fn profile_with<T>(timing: Timing, f: impl FnOnce() -> T) -> (T, Profile) {
    let _one_at_a_time = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    *stats() = Some(HashMap::new());
    TIMING.store(timing as u8, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Release);
    let out = f();
    ENABLED.store(false, Ordering::Release);
    #[cfg(feature = "cuda")]
    add_device_spans();
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
    /// The event recorded before the op ([`Timing::DeviceEvents`] on a GPU).
    #[cfg(feature = "cuda")]
    device_start: Option<cudarc::driver::CudaEvent>,
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
        #[cfg(feature = "cuda")]
        device_start: device_event(device),
    })
}

impl Drop for Scope {
    fn drop(&mut self) {
        if Timing::current() == Timing::Synchronised {
            wait_for(self.device);
        }
        let seconds = self.start.elapsed().as_secs_f64();
        #[cfg(feature = "cuda")]
        let seconds = self.defer_to_device(seconds);
        if let Some(map) = stats().as_mut() {
            let e = map.entry((self.op, self.dtype)).or_default();
            e.calls += 1;
            e.elements += self.elements as u64;
            e.seconds += seconds;
        }
    }
}

#[cfg(feature = "cuda")]
impl Scope {
    /// The seconds to count now for an op of `wall` seconds: none when its device time
    /// will be read at the profile's end (its span is queued), else `wall` (no start
    /// event, or the end event failed to record).
    fn defer_to_device(&mut self, wall: f64) -> f64 {
        let Some(start) = self.device_start.take() else {
            return wall;
        };
        let Some(end) = device_event(self.device) else {
            return wall;
        };
        let key = (self.op, self.dtype);
        let span = DeviceSpan {
            key,
            start,
            end,
            wall,
        };
        SPANS.lock().unwrap_or_else(|e| e.into_inner()).push(span);
        0.0
    }
}

/// An op's span on the device clock, between two events on its stream.
#[cfg(feature = "cuda")]
struct DeviceSpan {
    key: (&'static str, DType),
    start: cudarc::driver::CudaEvent,
    end: cudarc::driver::CudaEvent,
    /// The op's wall time, kept where the device cannot say.
    wall: f64,
}

/// An event recorded now on `device`'s stream, when the profile reads the device clock
/// and `device` is a GPU (`None` where recording failed: the op keeps wall time).
#[cfg(feature = "cuda")]
fn device_event(device: Device) -> Option<cudarc::driver::CudaEvent> {
    match (Timing::current(), device) {
        (Timing::DeviceEvents, Device::Cuda(i)) => crate::cuda::timing_event(i).ok(),
        _ => None,
    }
}

/// Adds every pending span's device time to its op (waiting for the device to reach the
/// end events).
#[cfg(feature = "cuda")]
fn add_device_spans() {
    let spans = std::mem::take(&mut *SPANS.lock().unwrap_or_else(|e| e.into_inner()));
    let mut stats = stats();
    let Some(map) = stats.as_mut() else { return };
    for span in spans {
        let seconds = match span.start.elapsed_ms(&span.end) {
            Ok(ms) => f64::from(ms) * 1e-3,
            Err(_) => span.wall,
        };
        map.entry(span.key).or_default().seconds += seconds;
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
