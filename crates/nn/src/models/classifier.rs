//! A small MLP classifier of flat images, for evaluating generated samples: class
//! accuracy from its logits and a Fréchet distance from its penultimate features.

use crate::dropout::Dropout;
use crate::init::ParamBuilder;
use crate::linear::{Linear, LinearConfig};
use crate::module::{visit_child, visit_child_mut, Forward, Module};
use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, Result, Tensor};

/// Sizes of a [`Classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Values per input sample.
    pub input_dim: usize,
    /// Widths of the hidden layers; the last is the feature size.
    pub hidden: Vec<usize>,
    /// Number of classes (logits).
    pub num_classes: usize,
    /// Dropout after each hidden activation in train mode.
    pub dropout: f64,
}

impl Default for ClassifierConfig {
    /// 784 → 512 → 256 → 10 with dropout 0.1: MNIST.
    fn default() -> Self {
        ClassifierConfig {
            input_dim: 784,
            hidden: vec![512, 256],
            num_classes: 10,
            dropout: 0.1,
        }
    }
}

/// `head(dropout(gelu(layers…(x))))`, parameter names `layers.{i}.*` and `head.*`.
/// Built in train mode; call `set_training(false)` before evaluating.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Hidden layers, each followed by GELU (tanh) and dropout.
    pub layers: Vec<Linear>,
    /// `hidden.last → num_classes`.
    pub head: Linear,
    dropout: Dropout,
}

impl Classifier {
    /// A classifier of the given sizes (PyTorch's default `nn.Linear` initialisation).
    pub fn new(pb: &mut ParamBuilder, cfg: &ClassifierConfig) -> Result<Self> {
        let sizes: Vec<usize> = std::iter::once(cfg.input_dim)
            .chain(cfg.hidden.iter().copied())
            .collect();
        if cfg.hidden.is_empty() || sizes.contains(&0) || cfg.num_classes == 0 {
            return Err(Error::invalid(
                "classifier",
                format!("needs at least one hidden layer and positive sizes, got {cfg:?}"),
            ));
        }
        let layers = sizes
            .windows(2)
            .map(|w| Linear::new(pb, w[0], w[1], LinearConfig::default()))
            .collect::<Result<Vec<_>>>()?;
        let features = sizes[sizes.len() - 1];
        Ok(Classifier {
            layers,
            head: Linear::new(pb, features, cfg.num_classes, LinearConfig::default())?,
            dropout: Dropout::new(pb, cfg.dropout)?,
        })
    }

    /// The last hidden layer's activations `[B, hidden.last]` of x `[B, input_dim]`
    /// (before its dropout), the features of a Fréchet distance.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                h = self.dropout.forward(&h)?;
            }
            h = layer.forward(&h)?.gelu()?;
        }
        Ok(h)
    }
}

impl Forward for Classifier {
    /// Logits `[B, num_classes]` of x `[B, input_dim]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.head
            .forward(&self.dropout.forward(&self.features(x)?)?)
    }
}

impl Module for Classifier {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        visit_child("layers", &self.layers, f);
        visit_child("head", &self.head, f);
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        visit_child_mut("layers", &mut self.layers, f);
        visit_child_mut("head", &mut self.head, f);
    }
    fn set_training(&mut self, training: bool) {
        self.dropout.set_training(training);
    }
}
