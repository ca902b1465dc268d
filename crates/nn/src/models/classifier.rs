//! A small convolutional classifier of flat images, for evaluating generated samples:
//! class accuracy from its logits and a Fréchet distance from its penultimate features.

use crate::conv::Conv2d;
use crate::dropout::Dropout;
use crate::impl_module;
use crate::init::ParamBuilder;
use crate::linear::{Linear, LinearConfig};
use crate::module::Forward;
use crate::pool::max_pool_2x2;
use crate::size::{self, check_parameter_count};
use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, Result, Tensor};

/// Sizes of a [`Classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Rows (= columns) of the square input images.
    pub image_size: usize,
    /// Channels of the input images.
    pub channels: usize,
    /// Output channels of each conv stage (3×3 conv, ReLU, 2×2 max pool); every stage
    /// halves the image, so `image_size` must be divisible by `2^stages`.
    pub conv: Vec<usize>,
    /// Width of the fully connected hidden layer: the feature size.
    pub hidden: usize,
    /// Number of classes (logits).
    pub num_classes: usize,
    /// Dropout on the features before the head, in train mode.
    pub dropout: f64,
}

impl Default for ClassifierConfig {
    /// MNIST: 28×28×1 → conv 16 → pool → conv 32 → pool → 128 → 10, dropout 0.25.
    fn default() -> Self {
        ClassifierConfig {
            image_size: 28,
            channels: 1,
            conv: vec![16, 32],
            hidden: 128,
            num_classes: 10,
            dropout: 0.25,
        }
    }
}

impl ClassifierConfig {
    /// Values per input sample: `channels·image_size²`.
    pub fn input_dim(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }

    /// Side of the last conv stage's output (0 when the stages halve it away).
    fn final_size(&self) -> usize {
        u32::try_from(self.conv.len())
            .ok()
            .and_then(|stages| self.image_size.checked_shr(stages))
            .unwrap_or(0)
    }

    /// The number of parameters of the classifier these sizes build, `None` when it
    /// overflows `usize` (or the sizes build none, see `Classifier::new`); computed
    /// without building it.
    pub fn parameter_count(&self) -> Option<usize> {
        let widths: Vec<usize> = std::iter::once(self.channels)
            .chain(self.conv.iter().copied())
            .collect();
        // Not a parameter, but a size the network computes with: it must fit too.
        self.channels
            .checked_mul(self.image_size)?
            .checked_mul(self.image_size)?;
        let mut counts = Vec::new();
        for w in widths.windows(2) {
            // A 3×3 convolution with bias.
            counts.push(size::linear(w[0].checked_mul(9)?, w[1])?);
        }
        let side = self.final_size();
        let flat = widths.last()?.checked_mul(side)?.checked_mul(side)?;
        counts.push(size::linear(flat, self.hidden)?);
        counts.push(size::linear(self.hidden, self.num_classes)?);
        size::sum(&counts)
    }

    fn validate(&self) -> Result<()> {
        let divisible = u32::try_from(self.conv.len())
            .ok()
            .and_then(|stages| 1usize.checked_shl(stages))
            .is_some_and(|d| self.image_size.is_multiple_of(d));
        let positive = self.image_size > 0
            && self.channels > 0
            && self.hidden > 0
            && self.num_classes > 0
            && !self.conv.contains(&0);
        if positive && divisible {
            check_parameter_count("classifier", self.parameter_count(), self)?;
            return Ok(());
        }
        Err(Error::invalid(
            "classifier",
            format!(
                "needs positive sizes and an image size divisible by 2^(conv stages), \
                 got {self:?}"
            ),
        ))
    }
}

/// `head(dropout(relu(hidden(flatten(stages(x))))))`, each stage
/// `max_pool_2x2(relu(conv3x3(·)))`; parameter names `convs.{i}.*`, `hidden.*` and
/// `head.*`. Takes flat images `[B, channels·image_size²]` (channels last, so one
/// channel is the plain row-major image). Built in train mode; call
/// `set_training(false)` before evaluating.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The conv stages' convolutions (3×3, padding 1).
    pub convs: Vec<Conv2d>,
    /// Flattened last stage → `hidden`.
    pub hidden: Linear,
    /// `hidden → num_classes`.
    pub head: Linear,
    dropout: Dropout,
    config: ClassifierConfig,
}

impl Classifier {
    /// A classifier of the given sizes (PyTorch's default initialisation).
    pub fn new(pb: &mut ParamBuilder, cfg: &ClassifierConfig) -> Result<Self> {
        cfg.validate()?;
        let widths: Vec<usize> = std::iter::once(cfg.channels)
            .chain(cfg.conv.iter().copied())
            .collect();
        let convs = widths
            .windows(2)
            .map(|w| Conv2d::new(pb, w[0], w[1], 3, 1))
            .collect::<Result<Vec<_>>>()?;
        let side = cfg.final_size();
        let flat = widths[widths.len() - 1] * side * side;
        Ok(Classifier {
            convs,
            hidden: Linear::new(pb, flat, cfg.hidden, LinearConfig::default())?,
            head: Linear::new(pb, cfg.hidden, cfg.num_classes, LinearConfig::default())?,
            dropout: Dropout::new(pb, cfg.dropout)?,
            config: cfg.clone(),
        })
    }

    /// The sizes it was built with.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// The hidden layer's activations `[B, hidden]` of x `[B, input_dim]` (before the
    /// dropout), the features of a Fréchet distance.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let b = match x.shape() {
            &[b, d] if d == cfg.input_dim() => b,
            s => {
                return Err(Error::invalid(
                    "classifier",
                    format!("expected [B, {}], got {s:?}", cfg.input_dim()),
                ))
            }
        };
        let mut h = x.reshape(&[b, cfg.image_size, cfg.image_size, cfg.channels])?;
        for conv in &self.convs {
            h = max_pool_2x2(&conv.forward(&h)?.relu()?)?;
        }
        let flat = h.elem_count() / b;
        self.hidden.forward(&h.reshape(&[b, flat])?)?.relu()
    }
}

impl Forward for Classifier {
    /// Logits `[B, num_classes]` of x `[B, input_dim]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.head
            .forward(&self.dropout.forward(&self.features(x)?)?)
    }
}

// `dropout` has no parameters; it is listed so that eval mode reaches it.
impl_module! { Classifier { convs, hidden, dropout, head } }
