//! Multi-head self-attention: a `qkv` projection, the engine's fused attention on
//! per-head views, and an output projection `proj` (parameter names as in DiT/ViT).

use crate::impl_module;
use crate::init::ParamBuilder;
use crate::linear::{Linear, LinearConfig};
use crate::module::Forward;
use twinflow_engine::{scaled_dot_product_attention, Error, Result, Tensor};

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
    /// Part `i` of the `qkv` projection (0: queries, 1: keys, 2: values) of x
    /// `[B, T, D]`, as a `[B, H, T, Dh]` view.
    ///
    /// This is `qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)[i]` computed as one
    /// product per part with rows `i·D..(i+1)·D` of the weight: the same values, but the
    /// backward then leaves each part's gradient where it is instead of padding three
    /// full-size gradients into the `[B, T, 3D]` output and adding them up.
    fn project(&self, x: &Tensor, i: usize, [b, t, d]: [usize; 3]) -> Result<Tensor> {
        let h = self.heads;
        let weight = self.qkv.weight.narrow(0, i * d, d)?;
        let bias = self
            .qkv
            .bias
            .as_ref()
            .map(|b| b.narrow(0, i * d, d))
            .transpose()?;
        let y = x.linear(&weight, bias.as_ref())?;
        // [B, T, D] → [B, T, H, Dh] (a view) → [B, H, T, Dh] (a view, which the fused
        // attention reads in place).
        y.reshape(&[b, t, h, d / h])?.permute(&[0, 2, 1, 3])
    }
}

impl Forward for SelfAttention {
    /// `[B, T, D] → [B, T, D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[b, t, d] = x.shape() else {
            return Err(Error::invalid(
                "self_attention",
                format!("expects [B, T, D], got shape {:?}", x.shape()),
            ));
        };
        let [q, k, v] = [0, 1, 2].map(|i| self.project(x, i, [b, t, d]));
        let y = scaled_dot_product_attention(&q?, &k?, &v?, None, false)?;
        // [B, H, T, Dh] → [B, T, H, Dh] → [B, T, D]: the one copy, which the projection
        // needs contiguous anyway.
        self.proj.forward(&y.transpose(1, 2)?.reshape(&[b, t, d])?)
    }
}

impl_module! { SelfAttention { qkv, proj } }
