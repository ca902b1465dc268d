//! Complete networks: the velocity-model interface, the MLP velocity network and the
//! evaluation classifier (the DiT lives in [`crate::dit`]).

pub mod classifier;
pub mod mlp_velocity;
pub mod velocity;

pub use classifier::{Classifier, ClassifierConfig};
pub use mlp_velocity::{MlpVelocity, MlpVelocityConfig, ResidualBlock};
pub use velocity::{VelocityArgs, VelocityModel};
