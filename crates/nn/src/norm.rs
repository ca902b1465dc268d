//! Normalisation layers over the last dim: `LayerNorm` and `RmsNorm`, each with or
//! without learned parameters (the engine fuses the normalisation and the affine map).

use crate::impl_module;
use crate::init::{Init, ParamBuilder};
use crate::module::Forward;
use twinflow_engine::{Result, Tensor};

/// Layer norm: `(x − mean)/√(var + eps)`, then `· weight + bias` when affine
/// (PyTorch's `nn.LayerNorm`, parameter names `weight` and `bias`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// `[dim]`, ones at init; `None` without affine parameters.
    pub weight: Option<Tensor>,
    /// `[dim]`, zeros at init; `None` without affine parameters.
    pub bias: Option<Tensor>,
    /// Added to the variance for stability.
    pub eps: f64,
}

impl LayerNorm {
    /// A layer norm over `dim` features with a learned weight (ones) and bias (zeros).
    pub fn affine(pb: &mut ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: Some(pb.param(&[dim], Init::Const(1.0), (dim, dim))?),
            bias: Some(pb.param(&[dim], Init::Zeros, (dim, dim))?),
            eps,
        })
    }

    /// A layer norm without parameters (`elementwise_affine=False`), as adaLN uses.
    pub fn plain(eps: f64) -> Self {
        LayerNorm {
            weight: None,
            bias: None,
            eps,
        }
    }
}

impl Forward for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

impl_module! { LayerNorm { weight, bias } }

/// RMS norm: `x/√(mean(x²) + eps)`, then `· weight` when it has one (parameter name
/// `weight`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `[dim]`, ones at init; `None` without a learned scale.
    pub weight: Option<Tensor>,
    /// Added to the mean square for stability.
    pub eps: f64,
}

impl RmsNorm {
    /// An RMS norm over `dim` features with a learned scale (ones).
    pub fn weighted(pb: &mut ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: Some(pb.param(&[dim], Init::Const(1.0), (dim, dim))?),
            eps,
        })
    }

    /// An RMS norm without parameters.
    pub fn plain(eps: f64) -> Self {
        RmsNorm { weight: None, eps }
    }
}

impl Forward for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.rms_norm(self.weight.as_ref(), self.eps)
    }
}

impl_module! { RmsNorm { weight } }
