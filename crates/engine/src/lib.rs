//! The TwinFlow engine: tensors with define-by-run reverse-mode autodiff.
//!
//! Data flows `Tensor` method (in `ops/`: checks, backward rule) → [`Storage`]
//! (dispatch on the device) → backend kernels (`cpu/`). See `docs/architecture.md`.
//!
//! ```
//! use twinflow_engine::{Device, DType, Tensor};
//! # fn main() -> twinflow_engine::Result<()> {
//! let w = Tensor::from_vec(vec![1.0f32, 2.0], &[2], Device::Cpu)?.into_variable()?;
//! let loss = w.square()?.sum_all()?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&w).unwrap().to_vec::<f32>()?, vec![2.0, 4.0]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod autocast;
mod autograd;
pub mod backend;
pub mod comm;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod forward_ad;
mod fused;
pub mod gradcheck;
pub mod jvpcheck;
pub mod kernel_codes;
pub mod layout;
mod ops;
pub mod profile;
pub mod random;
pub mod sizes;
mod storage;
mod tensor;

pub use autocast::{autocast, autocast_dtype, AutocastGuard};
pub use autograd::{is_grad_enabled, no_grad, BackwardFn, Gradients, NoGradGuard};
pub use backend::AdamStep;
pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{excerpt, report, Error, Result};
pub use forward_ad::jvp;
pub use layout::Layout;
pub use ops::{
    gelu_mlp, gelu_mlp_gated, prenorm_gelu_mlp_gated, qkv_attention, scaled_dot_product_attention,
    AdamTensors, GatedResidual, LinearParams, PreNorm,
};
pub use random::{Generator, GeneratorState};
pub use storage::Storage;
pub use tensor::{Tensor, TensorId};
