//! Feed-forward blocks of transformers: `Mlp` (Linear → GELU-tanh → Linear) and
//! `SwiGlu` (down(silu(gate(x)) · up(x))).

use crate::init::ParamBuilder;
use crate::linear::{Linear, LinearConfig};
use crate::module::{visit_child, visit_child_mut, Forward, Module};
use twinflow_engine::{Result, Tensor};

/// `fc2(gelu_tanh(fc1(x)))`, parameter names `fc1.*` and `fc2.*` (as in DiT/ViT).
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `dim → hidden`.
    pub fc1: Linear,
    /// `hidden → dim`.
    pub fc2: Linear,
}

impl Mlp {
    /// A `dim → hidden → dim` block whose layers are built with `cfg`.
    pub fn new(
        pb: &mut ParamBuilder,
        dim: usize,
        hidden: usize,
        cfg: LinearConfig,
    ) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(pb, dim, hidden, cfg)?,
            fc2: Linear::new(pb, hidden, dim, cfg)?,
        })
    }
}

impl Forward for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu()?)
    }
}

impl Module for Mlp {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        visit_child("fc1", &self.fc1, f);
        visit_child("fc2", &self.fc2, f);
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        visit_child_mut("fc1", &mut self.fc1, f);
        visit_child_mut("fc2", &mut self.fc2, f);
    }
}

/// The gated feed-forward of LLaMA-style models: `down(silu(gate(x)) · up(x))`,
/// parameter names `gate.*`, `up.*` and `down.*`.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    /// `dim → hidden`, passed through SiLU.
    pub gate: Linear,
    /// `dim → hidden`, multiplied by the gate.
    pub up: Linear,
    /// `hidden → dim`.
    pub down: Linear,
}

impl SwiGlu {
    /// A `dim → hidden → dim` gated block whose layers are built with `cfg`.
    pub fn new(
        pb: &mut ParamBuilder,
        dim: usize,
        hidden: usize,
        cfg: LinearConfig,
    ) -> Result<Self> {
        Ok(SwiGlu {
            gate: Linear::new(pb, dim, hidden, cfg)?,
            up: Linear::new(pb, dim, hidden, cfg)?,
            down: Linear::new(pb, hidden, dim, cfg)?,
        })
    }
}

impl Forward for SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = self.gate.forward(x)?.silu()?.mul(&self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

impl Module for SwiGlu {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        visit_child("gate", &self.gate, f);
        visit_child("up", &self.up, f);
        visit_child("down", &self.down, f);
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        visit_child_mut("gate", &mut self.gate, f);
        visit_child_mut("up", &mut self.up, f);
        visit_child_mut("down", &mut self.down, f);
    }
}
