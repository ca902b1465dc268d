//! The module library: layers and models built on the engine, optimizers, EMA,
//! learning-rate schedules and safetensors checkpoints.
#![warn(missing_docs)]

pub mod atomic_file;
pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod conv;
pub mod dit;
pub mod dropout;
pub mod ema;
pub mod embedding;
pub mod init;
pub mod label_embedding;
pub mod linear;
pub mod mlp;
pub mod models;
pub mod module;
pub mod norm;
pub mod optim;
pub mod patch;
pub mod pool;
pub mod schedule;
pub mod size;
pub mod time_embedding;
pub mod transformer;

pub use attention::SelfAttention;
pub use checkpoint::{Checkpoint, CheckpointError, EmaSnapshot};
pub use clip::{clean_and_clip_grad_norm, clip_grad_norm, zero_non_finite};
pub use conv::Conv2d;
pub use dit::{sincos_positions, Dit, DitBlock, DitConfig, PositionInit};
pub use dropout::Dropout;
pub use ema::{Ema, EmaState};
pub use embedding::Embedding;
pub use init::{ForwardRng, Init, ParamBuilder};
pub use label_embedding::LabelEmbedding;
pub use linear::{Linear, LinearConfig};
pub use mlp::{Mlp, SwiGlu};
pub use models::{
    Classifier, ClassifierConfig, MlpVelocity, MlpVelocityConfig, VelocityArgs, VelocityModel,
};
pub use module::{visit_child, visit_child_mut, Forward, Module, ModuleField};
pub use norm::{LayerNorm, RmsNorm};
pub use optim::{
    Adam, AdamConfig, LossScaler, LossScalerConfig, LossScalerState, Optimizer, OptimizerRecord,
    OptimizerState, Sgd, SgdConfig,
};
pub use patch::PatchGrid;
pub use pool::max_pool_2x2;
pub use schedule::LrSchedule;
pub use size::{check_parameter_count, MAX_PARAMETERS};
pub use time_embedding::{sincos, TimeEmbedding, DEFAULT_TIME_SCALE};
pub use transformer::{TransformerBlock, TransformerBlockConfig};
