//! Feed-forward blocks of transformers: `Mlp` (Linear → GELU-tanh → Linear) and
//! `SwiGlu` (down(silu(gate(x)) · up(x))).

use crate::impl_module;
use crate::init::ParamBuilder;
use crate::linear::{Linear, LinearConfig};
use crate::module::Forward;
use twinflow_engine::{gelu_mlp, prenorm_gelu_mlp_gated, LinearParams, PreNorm, Result, Tensor};

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

    /// Both layers' parameters, as the engine's feed-forward ops take them.
    fn layers(&self) -> (LinearParams<'_>, LinearParams<'_>) {
        (
            (&self.fc1.weight, self.fc1.bias.as_ref()),
            (&self.fc2.weight, self.fc2.bias.as_ref()),
        )
    }

    /// `x + gate · self(norm(x))`, a pre-norm block's gated branch, in blocks of rows
    /// where the engine can (see [`prenorm_gelu_mlp_gated`]).
    pub fn forward_prenorm_gated(
        &self,
        x: &Tensor,
        norm: PreNorm,
        gate: &Tensor,
    ) -> Result<Tensor> {
        let (fc1, fc2) = self.layers();
        prenorm_gelu_mlp_gated(x, norm, fc1, fc2, gate)
    }
}

impl Forward for Mlp {
    /// One fused op (`gelu_mlp`: the GELU and its derivative run inside the products).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (fc1, fc2) = self.layers();
        gelu_mlp(x, fc1, fc2)
    }
}

impl_module! { Mlp { fc1, fc2 } }

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

impl_module! { SwiGlu { gate, up, down } }
