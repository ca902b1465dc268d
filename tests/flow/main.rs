//! The flow crate's tests in one binary (one link instead of one per file): data,
//! methods (MeanFlow in its own file), metrics, samplers, the trainer, the run
//! directory, starting from another run's weights, evaluation and the evaluation
//! classifier, and sizes from users and files. `cargo test --test flow <filter>` runs a part, e.g. `cargo test --test flow
//! methods::`.

#[path = "../common/mod.rs"]
mod common;

mod classifier;
mod data;
mod data_parallel;
mod eval;
mod init_from;
mod meanflow;
mod methods;
mod metrics;
mod run_dir;
mod samplers;
mod sizes;
mod train;
mod user_data;
