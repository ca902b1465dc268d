//! The op profiler counts the backend ops a closure runs, and only those.

use twinflow_engine::profile::profile;
use twinflow_engine::{DType, Device, Generator, Result};

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
