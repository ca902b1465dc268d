//! The op profiler counts the backend ops a closure runs, and only those.

use twinflow_engine::profile::{profile, profile_with, Timing};
use twinflow_engine::{DType, Device, Generator, Result};

mod common;
use common::op_counts;

#[test]
fn profile_counts_each_backend_op_with_its_elements() -> Result<()> {
    let x = Generator::new(0).randn(&[8, 16], DType::F32, Device::Cpu)?;
    let (y, report) = profile(false, || -> Result<_> {
        let h = x.matmul(&x.transpose(0, 1)?)?; // [8, 8]
        h.tanh()?.tanh()
    });
    y?;
    let find = |op: &str| report.ops.iter().find(|r| r.op == op).map(|r| r.stats);
    let matmul = find("matmul").expect("matmul recorded");
    assert_eq!((matmul.calls, matmul.elements), (1, 8 * 16));
    let unary = find("unary").expect("tanh recorded");
    assert_eq!((unary.calls, unary.elements), (2, 2 * 8 * 8));
    assert!(report.ops.iter().all(|r| r.dtype == DType::F32));
    assert!(report.seconds() >= 0.0);
    assert!(report.table().contains("| matmul | F32 | 1 |"));
    // Ops outside a profile are not recorded anywhere.
    x.tanh()?;
    let (_, empty) = profile(false, || ());
    assert!(empty.ops.is_empty());
    Ok(())
}

/// Every timing counts the same ops; ops on the CPU are timed by the wall clock under
/// each (the device clock is a GPU's; `cuda_ops` checks it there).
#[test]
fn every_timing_counts_the_same_ops() -> Result<()> {
    let x = Generator::new(1).randn(&[32, 32], DType::F32, Device::Cpu)?;
    let run = |timing| {
        let (y, report) = profile_with(timing, || x.matmul(&x)?.exp());
        y.map(|_| report)
    };
    let wall = run(Timing::Wall)?;
    for timing in [Timing::Synchronised, Timing::DeviceEvents] {
        let report = run(timing)?;
        assert_eq!(op_counts(&report), op_counts(&wall), "{timing:?}");
        assert!(
            report.ops.iter().all(|o| o.stats.seconds > 0.0),
            "{timing:?}"
        );
    }
    Ok(())
}
