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
//! kernels a model spends its time in, below the tensor API. The matrix products of the
//! `matmul` and `weight_bias_gradients` ops are also counted by shape
//! ([`Profile::products`], [`Profile::products_table`]): which products a step runs and
//! at what rate each runs there, beside the same shapes timed alone by `benches/matmul`. On a GPU, kernels run
//! asynchronously, so the [`Timing`] matters there: host wall time is launch overhead;
//! [`Timing::Synchronised`] makes each op wait for its device (the kernels' time, with
//! the run slowed and every gap between kernels counted); [`Timing::DeviceEvents`]
//! reads the device's own clock from events recorded on its stream before and after
//! each op (the kernels' time as they run unhindered, comparable with a kernel trace
//! such as `torch.profiler`'s). When no profile is running, an op pays one relaxed
//! atomic load.

use crate::layout::Layout;
use crate::{DType, Device};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The running profile's [`Timing`], as its discriminant.
static TIMING: AtomicU8 = AtomicU8::new(Timing::Wall as u8);
static STATS: Mutex<Option<HashMap<Key, OpStats>>> = Mutex::new(None);
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

/// What a [`Scope`] counts towards: an op at a dtype, or a product of one shape
/// inside an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Op(&'static str, DType),
    Product(&'static str, DType, ProductShape),
}

/// The shape of a matrix product `[batch…, m, k] · [batch…, k, n]`, as the product
/// profile groups calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProductShape {
    /// Independent products (the broadcast batch dims), 1 for a plain matrix product.
    pub batch: usize,
    /// Rows of the output.
    pub m: usize,
    /// The inner dimension.
    pub k: usize,
    /// Columns of the output.
    pub n: usize,
    /// Whether each operand is read transposed (its rows strided, its columns
    /// adjacent): a weight `[n, k]` read as `k × n`, or `gᵀ` in a weight gradient.
    pub transposed: (bool, bool),
}

impl ProductShape {
    /// The product of views `a` `[…, m, k]` and `b` `[…, k, n]` with equal batch dims, as
    /// a backend's `matmul` receives them (broadcast ones with stride 0).
    pub fn of_views(a: &Layout, b: &Layout) -> ProductShape {
        let (ra, rb) = (a.rank(), b.rank());
        let batch = a.shape()[..ra.saturating_sub(2)].iter().product();
        // (rows, columns, transposed) of the last two dims; a vector is one row.
        let last_two = |l: &Layout, r: usize| {
            let (shape, strides) = (l.shape(), l.strides());
            match r {
                0 => (1, 1, false),
                1 => (1, shape[0], false),
                _ => {
                    let (rs, cs) = (strides[r - 2], strides[r - 1]);
                    (shape[r - 2], shape[r - 1], cs != 1 && rs == 1)
                }
            }
        };
        let (m, k, ta) = last_two(a, ra);
        let (_, n, tb) = last_two(b, rb);
        ProductShape {
            batch,
            m,
            k,
            n,
            transposed: (ta, tb),
        }
    }

    /// Floating-point operations: a multiply and an add per term.
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.k as f64 * self.n as f64
    }

    /// BLAS's name for the operands' layouts: `N` read as stored, `T` transposed.
    fn layouts(&self) -> String {
        let letter = |t: bool| if t { 'T' } else { 'N' };
        [letter(self.transposed.0), letter(self.transposed.1)]
            .iter()
            .collect()
    }
}

/// The products of one shape inside one op, in a [`Profile`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProductRecord {
    /// The op that ran them (`matmul`, `weight_bias_gradients`).
    pub op: &'static str,
    /// The dtype of the left operand.
    pub dtype: DType,
    /// Their shape.
    pub shape: ProductShape,
    /// Their totals (`elements` counts nothing here).
    pub stats: OpStats,
}

impl ProductRecord {
    /// The rate they ran at, in GFLOP/s.
    pub fn gflops(&self) -> f64 {
        self.shape.flops() * self.stats.calls as f64
            / self.stats.seconds.max(f64::MIN_POSITIVE)
            / 1e9
    }
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

/// The ops a profiled closure ran, the most time-consuming first, and the matrix
/// products among them by shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// One record per (op, dtype).
    pub ops: Vec<OpRecord>,
    /// One record per (op, dtype, product shape), the most time-consuming first.
    pub products: Vec<ProductRecord>,
}

impl Profile {
    /// Total wall time of the recorded ops.
    pub fn seconds(&self) -> f64 {
        self.ops.iter().map(|r| r.stats.seconds).sum()
    }

    /// A Markdown table: op, dtype, calls, million elements, milliseconds, share.
    pub fn table(&self) -> String {
        let total = self.seconds().max(f64::MIN_POSITIVE);
        let rows = self.ops.iter().map(|r| {
            let st = r.stats;
            vec![
                r.op.to_string(),
                format!("{:?}", r.dtype),
                st.calls.to_string(),
                format!("{:.1}", st.elements as f64 / 1e6),
                format!("{:.2}", st.seconds * 1e3),
                format!("{:.1}%", 100.0 * st.seconds / total),
            ]
        });
        let header = ["op", "dtype", "calls", "M elements", "ms", "share"];
        let last = format!("| total | | | | {:.2} | |", total * 1e3);
        markdown_table(&header, 2, rows, &last)
    }

    /// A Markdown table of the products by shape: op, dtype, `batch × m × k × n`, the
    /// operands' layouts, calls, milliseconds, GFLOP/s and share of the products' time.
    pub fn products_table(&self) -> String {
        let seconds = |r: &ProductRecord| r.stats.seconds;
        let total = self
            .products
            .iter()
            .map(seconds)
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        let rows = self.products.iter().map(|r| {
            let p = r.shape;
            vec![
                r.op.to_string(),
                format!("{:?}", r.dtype),
                format!("{} × {} × {} × {}", p.batch, p.m, p.k, p.n),
                p.layouts(),
                r.stats.calls.to_string(),
                format!("{:.2}", r.stats.seconds * 1e3),
                format!("{:.1}", r.gflops()),
                format!("{:.1}%", 100.0 * r.stats.seconds / total),
            ]
        });
        let flops: f64 = (self.products.iter())
            .map(|r| r.shape.flops() * r.stats.calls as f64)
            .sum();
        let rate = flops / total / 1e9;
        let header = [
            "op",
            "dtype",
            "batch × m × k × n",
            "layouts",
            "calls",
            "ms",
            "GFLOP/s",
            "share",
        ];
        let last = format!("| total | | | | | {:.2} | {rate:.1} | |", total * 1e3);
        markdown_table(&header, 4, rows, &last)
    }
}

/// A Markdown table: the `header` cells, columns from `numeric_from` on right-aligned,
/// one line per row of cells, then the `last` line as it is.
fn markdown_table(
    header: &[&str],
    numeric_from: usize,
    rows: impl Iterator<Item = Vec<String>>,
    last: &str,
) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rule: Vec<String> = (0..header.len())
        .map(|i| match i < numeric_from {
            true => "---".to_string(),
            false => "---:".to_string(),
        })
        .collect();
    let mut s = line(&header);
    s.push_str(&format!("|{}|\n", rule.join("|")));
    for row in rows {
        s.push_str(&line(&row));
    }
    s.push_str(last);
    s
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
    let (mut ops, mut products) = (Vec::new(), Vec::new());
    for (key, stats) in stats().take().unwrap_or_default() {
        match key {
            Key::Op(op, dtype) => ops.push(OpRecord { op, dtype, stats }),
            Key::Product(op, dtype, shape) => products.push(ProductRecord {
                op,
                dtype,
                shape,
                stats,
            }),
        }
    }
    ops.sort_by(|a, b| b.stats.seconds.total_cmp(&a.stats.seconds));
    products.sort_by(|a, b| b.stats.seconds.total_cmp(&a.stats.seconds));
    (out, Profile { ops, products })
}

fn stats() -> std::sync::MutexGuard<'static, Option<HashMap<Key, OpStats>>> {
    STATS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Times one op, or one product inside an op, from its creation to its drop.
pub(crate) struct Scope {
    key: Key,
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
    started(|| {
        let (dtype, elements, device) = operand();
        (Key::Op(op, dtype), elements, device)
    })
}

/// A [`Scope`] for a product inside `op` when a profile is running (`operands` gives
/// the left operand's dtype and device and the product's shape, evaluated only then),
/// else `None`. It counts towards [`Profile::products`] only; the op's own scope
/// counts the op.
#[inline]
pub(crate) fn product_scope(
    op: &'static str,
    operands: impl FnOnce() -> (DType, Device, ProductShape),
) -> Option<Scope> {
    started(|| {
        let (dtype, device, shape) = operands();
        (Key::Product(op, dtype, shape), 0, device)
    })
}

/// A [`Scope`] started now when a profile is running (`what` gives its key, element
/// count and device, evaluated only then), else `None`.
#[inline]
fn started(what: impl FnOnce() -> (Key, usize, Device)) -> Option<Scope> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let (key, elements, device) = what();
    Some(Scope {
        key,
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
            let e = map.entry(self.key).or_default();
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
        let span = DeviceSpan {
            key: self.key,
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
    key: Key,
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
