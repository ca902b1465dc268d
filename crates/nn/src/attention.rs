//! Multi-head self-attention: a `qkv` projection, the engine's fused attention on its
//! three parts, and an output projection `proj` (parameter names as in DiT/ViT).

use crate::impl_module;
use crate::init::ParamBuilder;
use crate::linear::{Linear, LinearConfig};
use crate::module::Forward;
use twinflow_engine::{qkv_attention, Error, GatedResidual, Result, Tensor};

/// Self-attention over `[B, T, D]` with `heads` heads of size `D / heads`.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    /// `D → 3D`: queries, keys and values, in that order (each head-major).
    pub qkv: Linear,
    /// `D → D`, applied to the concatenated heads.
    pub proj: Linear,
    heads: usize,
}

impl SelfAttention {
    /// Attention over `dim` features split into `heads` heads; `dim` must be a multiple
    /// of `heads`.
    pub fn new(pb: &mut ParamBuilder, dim: usize, heads: usize, cfg: LinearConfig) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::invalid(
                "self_attention",
                format!("dim {dim} is not a positive multiple of heads {heads}"),
            ));
        }
        Ok(SelfAttention {
            qkv: Linear::new(pb, dim, 3 * dim, cfg)?,
            proj: Linear::new(pb, dim, dim, cfg)?,
            heads,
        })
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }
}

impl SelfAttention {
    /// The heads' outputs before `proj`, `[B, T, D]`.
    fn heads_output(&self, x: &Tensor) -> Result<Tensor> {
        if x.shape().len() != 3 {
            return Err(Error::invalid(
                "self_attention",
                format!("expects [B, T, D], got shape {:?}", x.shape()),
            ));
        }
        // One product for q, k and v, whose gradient the attention's backward writes as
        // one tensor (see `qkv_attention`).
        qkv_attention(&self.qkv.forward(x)?, self.heads, None, false)
    }

    /// `residual.stream + residual.gate · self(x)`, the add fused into `proj`'s
    /// product where the engine can (see [`Tensor::linear_gated`]).
    pub fn forward_gated(&self, x: &Tensor, residual: GatedResidual) -> Result<Tensor> {
        self.proj.forward_gated(&self.heads_output(x)?, residual)
    }
}

impl Forward for SelfAttention {
    /// `[B, T, D] → [B, T, D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.heads_output(x)?)
    }
}

impl_module! { SelfAttention { qkv, proj } }
