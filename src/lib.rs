//! TwinFlow: one-step generative models on a from-scratch autodiff engine.
//!
//! This facade re-exports the workspace's crates: [`engine`] (tensors, autodiff,
//! backends) and [`nn`] (modules, optimizers, checkpoints).

pub use twinflow_engine as engine;
pub use twinflow_nn as nn;
