//! Flow methods and everything around them: the data they train on, the samplers that
//! turn a trained velocity model into samples, the trainer, metrics, and the evaluation
//! of trained models (with its classifier).
#![warn(missing_docs)]

pub mod classifier;

pub mod data;

pub mod eval;

pub mod method;

pub mod metrics;

pub mod sampler;

pub mod train;
