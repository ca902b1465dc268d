//! Helpers shared by the integration tests: the engine's (tensors, proptest inputs,
//! the GPU), and those that need the module library. Each test file declares
//! `mod common;` and imports what it uses; not every test binary uses every helper.

#![allow(dead_code)]

#[path = "../../crates/engine/tests/common/mod.rs"]
mod engine;

pub use engine::*;

use twinflow::engine::{DType, Generator};
use twinflow::nn::{Module, ParamBuilder};

// ---------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------

/// A builder of f64 parameters.
pub fn f64_builder(seed: u64) -> ParamBuilder {
    ParamBuilder::new(seed).with_dtype(DType::F64)
}

/// Overwrites every parameter with normal values of standard deviation `std` (in the
/// parameter's dtype), so that zero-initialised layers (adaLN-Zero gates, output layers)
/// take part in a test.
pub fn randomize(m: &mut dyn Module, seed: u64, std: f64) {
    let mut g = Generator::new(seed);
    m.visit_params_mut(&mut |_, p| {
        let v = g
            .normal(p.shape(), 0.0, std, p.dtype(), p.device())
            .expect("normal");
        p.assign(&v).expect("assign");
    });
}
