//! `Linear`: y = x·Wᵀ + b over the last dim.

use crate::impl_module;
use crate::init::{Init, ParamBuilder};
use crate::module::Forward;
use twinflow_engine::{GatedResidual, Result, Tensor};

/// A fully connected layer with PyTorch's weight layout `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Tensor,
    /// `[out_features]`, if the layer has a bias.
    pub bias: Option<Tensor>,
}

/// How to build a [`Linear`].
#[derive(Debug, Clone, Copy)]
pub struct LinearConfig {
    /// Initialiser of the weight.
    pub weight_init: Init,
    /// Initialiser of the bias; `None` builds a layer without bias.
    pub bias_init: Option<Init>,
}

impl Default for LinearConfig {
    /// PyTorch's `nn.Linear` default: Kaiming-uniform weight and bias.
    fn default() -> Self {
        LinearConfig {
            weight_init: Init::KaimingUniform,
            bias_init: Some(Init::KaimingUniform),
        }
    }
}

impl Linear {
    /// An `inputs → outputs` layer.
    pub fn new(
        pb: &mut ParamBuilder,
        inputs: usize,
        outputs: usize,
        cfg: LinearConfig,
    ) -> Result<Self> {
        let fan = (inputs, outputs);
        let weight = pb.param(&[outputs, inputs], cfg.weight_init, fan)?;
        let bias = cfg
            .bias_init
            .map(|init| pb.param(&[outputs], init, fan))
            .transpose()?;
        Ok(Linear { weight, bias })
    }
}

impl Linear {
    /// `residual.stream + residual.gate · self(x)`, the add fused into the product
    /// where the engine can (see [`Tensor::linear_gated`]).
    pub fn forward_gated(&self, x: &Tensor, residual: GatedResidual) -> Result<Tensor> {
        x.linear_gated(&self.weight, self.bias.as_ref(), residual)
    }
}

impl Forward for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

impl_module! { Linear { weight, bias } }
