//! Autocast: the mixed-precision scope. Inside it, matrix products (`matmul`, `linear`)
//! and attention cast their f32 operands to a low-precision dtype (bf16 or f16), run
//! in it (with f32 accumulation in the kernels) and cast the result back to f32.
//!
//! Every cast is the recorded [`Tensor::to_dtype`] op, so parameters stay f32 (master
//! weights) and their gradients arrive in f32. Everything else (elementwise ops,
//! reductions, norms, softmax, losses) never sees a low-precision tensor and runs in
//! f32. Returning f32 (PyTorch returns the low dtype and promotes later) is deliberate:
//! the engine's ops refuse mixed dtypes, and an f32 result keeps every op outside the
//! scope's list unchanged, at the price of one cast of each product's output.
//!
//! The state is per thread, like [`crate::no_grad`]; a backward pass runs with autocast
//! off, so it replays exactly the dtypes the forward recorded.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::Tensor;
use std::cell::Cell;

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// The low-precision dtype of the current autocast scope on this thread, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// While alive, sets the autocast dtype of this thread (`None` turns autocast off);
/// the previous setting comes back when it is dropped.
pub struct AutocastGuard {
    previous: Option<DType>,
}

impl AutocastGuard {
    /// Enters an autocast scope of `dtype` (bf16 or f16; any other dtype is refused),
    /// or leaves autocast with `None`.
    pub fn new(dtype: Option<DType>) -> Result<Self> {
        if let Some(dt) = dtype.filter(|d| !matches!(d, DType::BF16 | DType::F16)) {
            return Err(Error::invalid(
                "autocast",
                format!("the autocast dtype must be bf16 or f16, got {dt}"),
            ));
        }
        Ok(AutocastGuard {
            previous: AUTOCAST.with(|a| a.replace(dtype)),
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.previous));
    }
}

/// Runs `f` in an autocast scope of `dtype` (bf16 or f16).
pub fn autocast<T>(dtype: DType, f: impl FnOnce() -> T) -> Result<T> {
    let _guard = AutocastGuard::new(Some(dtype))?;
    Ok(f())
}

/// The dtype an autocast op should compute in for operands of `dtype`: the scope's
/// low dtype for f32 operands inside a scope, else `None` (f64 is never lowered, so
/// that gradient checks in f64 stay exact).
pub(crate) fn lowered(dtype: DType) -> Option<DType> {
    autocast_dtype().filter(|_| dtype == DType::F32)
}

/// Runs `op` on `inputs` cast to the autocast dtype (when it applies to the first
/// input's dtype) and casts its result back; runs `op` on the inputs as they are
/// otherwise.
pub(crate) fn run_lowered(
    inputs: &[&Tensor],
    op: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    let Some(low) = lowered(inputs[0].dtype()) else {
        return op(&inputs.iter().map(|&t| t.clone()).collect::<Vec<_>>());
    };
    let high = inputs[0].dtype();
    let cast = inputs
        .iter()
        .map(|t| match t.dtype() == high {
            true => t.to_dtype(low),
            false => Ok((*t).clone()),
        })
        .collect::<Result<Vec<_>>>()?;
    // The op's own ops (views, the product) must not be lowered again.
    let out = {
        let _off = AutocastGuard::new(None)?;
        op(&cast)?
    };
    out.to_dtype(high)
}
