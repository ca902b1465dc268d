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

/// Products are counted by shape, beside their op: batch dims, the operands' layouts
/// (a linear layer reads its weight transposed, its weight gradient `gᵀ`), calls, and
/// a rate from the shape's flops; the table names each.
#[test]
fn products_are_counted_by_shape() -> Result<()> {
    let mut gen = Generator::new(2);
    let a = gen.randn(&[3, 5, 7], DType::F32, Device::Cpu)?;
    let b = gen.randn(&[3, 7, 2], DType::F32, Device::Cpu)?;
    let x = gen.randn(&[8, 16], DType::F32, Device::Cpu)?;
    let w = gen
        .randn(&[4, 16], DType::F32, Device::Cpu)?
        .into_variable()?;
    let bias = gen.randn(&[4], DType::F32, Device::Cpu)?.into_variable()?;
    let (grads, report) = profile(false, || -> Result<_> {
        a.matmul(&b)?;
        a.matmul(&b)?;
        // Σ y² rather than Σ y: the output's gradient is then a stored matrix, not a
        // broadcast scalar, and its transpose is read as one.
        let y = x.linear(&w, Some(&bias))?;
        y.mul(&y)?.sum_all()?.backward()
    });
    let grads = grads?;
    assert!(grads.get(&w).is_some() && grads.get(&bias).is_some());
    let find = |op: &str, shape: (usize, usize, usize, usize)| {
        report
            .products
            .iter()
            .find(|r| r.op == op && (r.shape.batch, r.shape.m, r.shape.k, r.shape.n) == shape)
            .unwrap_or_else(|| panic!("{op} {shape:?} in {:?}", report.products))
    };
    let batched = find("matmul", (3, 5, 7, 2));
    assert_eq!(
        (batched.stats.calls, batched.shape.transposed),
        (2, (false, false))
    );
    assert_eq!(batched.shape.flops(), 2.0 * 3.0 * 5.0 * 7.0 * 2.0);
    assert!(batched.gflops() > 0.0);
    let forward = find("matmul", (1, 8, 16, 4));
    assert_eq!(
        (forward.stats.calls, forward.shape.transposed),
        (1, (false, true))
    );
    let weight_grad = find("weight_bias_gradients", (1, 4, 8, 16));
    assert_eq!(weight_grad.shape.transposed, (true, false));
    let table = report.products_table();
    assert!(
        table.contains("| matmul | F32 | 3 × 5 × 7 × 2 | NN | 2 |"),
        "{table}"
    );
    assert!(
        table.contains("| matmul | F32 | 1 × 8 × 16 × 4 | NT | 1 |"),
        "{table}"
    );
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
