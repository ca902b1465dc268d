pub use twinflow_engine as engine;
