//! Flow methods and everything around them: the data they train on, the samplers that
//! turn a trained velocity model into samples, and (later) the trainer and metrics.
#![warn(missing_docs)]

pub mod data;

pub mod method;

pub mod metrics;

pub mod sampler;

pub mod train;
