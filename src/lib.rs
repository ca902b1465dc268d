//! TwinFlow: one-step generative models on a from-scratch autodiff engine.
//!
//! This facade re-exports the workspace's crates: [`engine`] (tensors, autodiff,
//! backends), [`nn`] (modules, optimizers, checkpoints) and [`flow`] (data, flow
//! methods, samplers).

pub use twinflow_engine as engine;
pub use twinflow_flow as flow;
pub use twinflow_nn as nn;
