//! The pre-norm transformer block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.

use crate::attention::SelfAttention;
use crate::impl_module;
use crate::init::ParamBuilder;
use crate::linear::LinearConfig;
use crate::mlp::Mlp;
use crate::module::Forward;
use crate::norm::LayerNorm;
use twinflow_engine::Result;
use twinflow_engine::Tensor;

/// Sizes of a [`TransformerBlock`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformerBlockConfig {
    /// Width of the token vectors.
    pub dim: usize,
    /// Attention heads (`dim` must be a multiple).
    pub heads: usize,
    /// Hidden width of the MLP as a multiple of `dim`.
    pub mlp_ratio: usize,
    /// Epsilon of both layer norms.
    pub eps: f64,
}

impl TransformerBlockConfig {
    /// A block of width `dim` with `heads` heads, MLP ratio 4 and PyTorch's layer-norm
    /// epsilon 1e-5.
    pub fn new(dim: usize, heads: usize) -> Self {
        TransformerBlockConfig {
            dim,
            heads,
            mlp_ratio: 4,
            eps: 1e-5,
        }
    }
}

/// A pre-norm block with affine layer norms; parameter names `ln1.*`, `attn.qkv.*`,
/// `attn.proj.*`, `ln2.*`, `mlp.fc1.*`, `mlp.fc2.*`.
#[derive(Debug, Clone)]
pub struct TransformerBlock {
    /// Norm before attention.
    pub ln1: LayerNorm,
    /// Multi-head self-attention.
    pub attn: SelfAttention,
    /// Norm before the MLP.
    pub ln2: LayerNorm,
    /// Feed-forward block.
    pub mlp: Mlp,
}

impl TransformerBlock {
    /// A block of the given sizes; linear layers are built with `linear`.
    pub fn new(
        pb: &mut ParamBuilder,
        cfg: TransformerBlockConfig,
        linear: LinearConfig,
    ) -> Result<Self> {
        Ok(TransformerBlock {
            ln1: LayerNorm::affine(pb, cfg.dim, cfg.eps)?,
            attn: SelfAttention::new(pb, cfg.dim, cfg.heads, linear)?,
            ln2: LayerNorm::affine(pb, cfg.dim, cfg.eps)?,
            mlp: Mlp::new(pb, cfg.dim, cfg.mlp_ratio * cfg.dim, linear)?,
        })
    }
}

impl Forward for TransformerBlock {
    /// `[B, T, D] → [B, T, D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.add(&self.attn.forward(&self.ln1.forward(x)?)?)?;
        x.add(&self.mlp.forward(&self.ln2.forward(&x)?)?)
    }
}

impl_module! { TransformerBlock { ln1, attn, ln2, mlp } }
