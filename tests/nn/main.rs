//! The module library's tests in one binary (one link instead of one per file): layers,
//! optimizers, checkpoints, PyTorch parity, the DiT's gradient check, forward mode
//! against reverse mode through whole models, autocast and the checks of sizes from
//! users and files.
//! `cargo test --test nn <filter>` runs a part, e.g. `cargo test --test nn parity::`.

#[path = "../common/mod.rs"]
mod common;

mod autocast;
mod checkpoint;
mod gradcheck_dit;
mod jvp_models;
mod layers;
mod optim;
mod parity;
mod sizes;
