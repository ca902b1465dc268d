//! The module library: layers and models built on the engine, optimizers, EMA,
//! learning-rate schedules and safetensors checkpoints.
#![warn(missing_docs)]

pub mod init;
pub mod linear;
pub mod module;

pub use init::{ForwardRng, Init, ParamBuilder};
pub use linear::{Linear, LinearConfig};
pub use module::{visit_child, visit_child_mut, Forward, Module};
