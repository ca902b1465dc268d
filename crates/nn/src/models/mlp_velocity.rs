//! A pixel-space MLP velocity network: fast enough on a CPU to train TwinFlow on 2-D
//! toys and MNIST within minutes (docs/method.md §8).

use crate::dropout::check_probability;
use crate::impl_module;
use crate::init::{ForwardRng, Init, ParamBuilder};
use crate::label_embedding::LabelEmbedding;
use crate::linear::{Linear, LinearConfig};
use crate::models::velocity::{check_velocity_inputs, VelocityModel};
use crate::module::Forward;
use crate::size::{self, check_parameter_count};
use crate::time_embedding::{check_time_scale, sincos, DEFAULT_TIME_SCALE};
use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, Result, Tensor};

/// Sizes of an [`MlpVelocity`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpVelocityConfig {
    /// Values per sample (784 for MNIST, 2 for 2-D toys).
    pub data_dim: usize,
    /// Width of the hidden layers.
    pub width: usize,
    /// Number of residual blocks.
    pub depth: usize,
    /// Size of each of the three embeddings (t, tt, label); even.
    pub emb_dim: usize,
    /// Number of classes; the label table has one more row, the null class.
    pub num_classes: usize,
    /// Probability of replacing a label by the null class in train mode.
    pub label_dropout: f64,
    /// Adds `g(t, tt) ⊙ x` to the output, with a per-value gain `g` computed linearly
    /// from both time embeddings (zero at init). The best velocity is close to a
    /// multiple of `x` near the noise end (at `t = 1` it is `z − E[x]`), which a network
    /// of width 1024 reproduces only slowly through its hidden layers; the skip makes
    /// that part linear, and one-step samples lose their pixel noise much sooner.
    pub time_gated_skip: bool,
    /// The factor on times before their sinusoidal features (see
    /// [`sincos`]): 1000 as the reference DiT; MeanFlow's reference
    /// uses 1.
    pub time_scale: f64,
}

impl Default for MlpVelocityConfig {
    /// The MNIST network of docs/method.md §6: three residual blocks of width 1024.
    fn default() -> Self {
        MlpVelocityConfig {
            data_dim: 784,
            width: 1024,
            depth: 3,
            emb_dim: 128,
            num_classes: 10,
            label_dropout: 0.0,
            time_gated_skip: false,
            time_scale: DEFAULT_TIME_SCALE,
        }
    }
}

impl MlpVelocityConfig {
    /// Refuses sizes the network cannot be built with, saying which: sizes that are
    /// not positive, an odd `emb_dim`, a label dropout outside `[0, 1)`, more
    /// parameters than [`MAX_PARAMETERS`](crate::MAX_PARAMETERS).
    pub fn validate(&self) -> Result<()> {
        let ok = self.data_dim > 0
            && self.width > 0
            && self.emb_dim > 0
            && self.emb_dim.is_multiple_of(2);
        if !ok {
            return Err(Error::invalid(
                "mlp_velocity",
                format!("needs positive sizes and an even emb_dim, got {self:?}"),
            ));
        }
        check_probability("mlp_velocity: label_dropout", self.label_dropout)?;
        check_time_scale("mlp_velocity", self.time_scale)?;
        check_parameter_count("mlp_velocity", self.parameter_count(), self)?;
        Ok(())
    }

    /// The number of parameters of the network these sizes build, `None` when it
    /// overflows `usize`; computed without building it.
    pub fn parameter_count(&self) -> Option<usize> {
        let e = self.emb_dim;
        let skip = match self.time_gated_skip {
            true => size::linear(e.checked_mul(2)?, self.data_dim)?,
            false => 0,
        };
        size::sum(&[
            self.num_classes.checked_add(1)?.checked_mul(e)?,
            size::linear(self.data_dim.checked_add(e.checked_mul(3)?)?, self.width)?,
            size::linear(self.width, self.width)?
                .checked_mul(2)?
                .checked_mul(self.depth)?,
            size::linear(self.width, self.data_dim)?,
            skip,
        ])
    }
}

/// `h + fc2(silu(fc1(silu(h))))`, parameter names `fc1.*`, `fc2.*`.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    /// First layer, `width → width`.
    pub fc1: Linear,
    /// Second layer, `width → width`.
    pub fc2: Linear,
}

impl ResidualBlock {
    /// A block of `width` with PyTorch's default `nn.Linear` initialisation.
    pub fn new(pb: &mut ParamBuilder, width: usize) -> Result<Self> {
        Ok(ResidualBlock {
            fc1: Linear::new(pb, width, width, LinearConfig::default())?,
            fc2: Linear::new(pb, width, width, LinearConfig::default())?,
        })
    }
}

impl Forward for ResidualBlock {
    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let r = self.fc2.forward(&self.fc1.forward(&h.silu()?)?.silu()?)?;
        h.add(&r)
    }
}

impl_module! { ResidualBlock { fc1, fc2 } }

/// `out(silu(blocks(input([x, sincos(t), sincos(tt), yemb(labels)]))))`: the data,
/// the sinusoidal embeddings of both signed times and the label embedding are
/// concatenated, lifted to `width`, passed through the residual blocks and projected
/// back to the data, plus the optional time-gated skip `g(t, tt) ⊙ x`. The output and
/// skip layers start at zero. Parameter names `yemb.weight`, `input.*`,
/// `blocks.{i}.fc{1,2}.*`, `out.*`, `skip.*`.
#[derive(Debug, Clone)]
pub struct MlpVelocity {
    /// Label embedding (`emb_dim`) with the null class last.
    pub yemb: LabelEmbedding,
    /// `data_dim + 3·emb_dim → width`.
    pub input: Linear,
    /// The residual blocks.
    pub blocks: Vec<ResidualBlock>,
    /// `width → data_dim`, zero at init.
    pub out: Linear,
    /// `2·emb_dim → data_dim`, zero at init: the gain of the time-gated skip (with
    /// `time_gated_skip`).
    pub skip: Option<Linear>,
    cfg: MlpVelocityConfig,
    rng: ForwardRng,
}

impl MlpVelocity {
    /// A network of the given sizes.
    pub fn new(pb: &mut ParamBuilder, cfg: MlpVelocityConfig) -> Result<Self> {
        cfg.validate()?;
        let zeros = LinearConfig {
            weight_init: Init::Zeros,
            bias_init: Some(Init::Zeros),
        };
        let inputs = cfg.data_dim + 3 * cfg.emb_dim;
        Ok(MlpVelocity {
            // N(0, 1) (PyTorch's `nn.Embedding` default) puts the label features on the
            // same scale as the unit-amplitude sinusoids beside them.
            yemb: LabelEmbedding::new(
                pb,
                cfg.num_classes,
                cfg.emb_dim,
                cfg.label_dropout,
                Init::Normal(1.0),
            )?,
            input: Linear::new(pb, inputs, cfg.width, LinearConfig::default())?,
            blocks: (0..cfg.depth)
                .map(|_| ResidualBlock::new(pb, cfg.width))
                .collect::<Result<_>>()?,
            out: Linear::new(pb, cfg.width, cfg.data_dim, zeros)?,
            skip: match cfg.time_gated_skip {
                true => Some(Linear::new(pb, 2 * cfg.emb_dim, cfg.data_dim, zeros)?),
                false => None,
            },
            cfg,
            rng: pb.forward_rng.clone(),
        })
    }

    /// The sizes it was built with.
    pub fn config(&self) -> &MlpVelocityConfig {
        &self.cfg
    }

    /// The null ("unconditional") label, for classifier-free guidance.
    pub fn null_label(&self) -> i64 {
        self.yemb.null_label()
    }
}

impl VelocityModel for MlpVelocity {
    fn velocity(&self, x: &Tensor, t: &Tensor, tt: &Tensor, labels: &Tensor) -> Result<Tensor> {
        check_velocity_inputs("mlp_velocity", self.cfg.data_dim, x, t, tt, labels)?;
        let e = self.cfg.emb_dim;
        let scale = self.cfg.time_scale;
        let (t_emb, tt_emb) = (sincos(t, e, scale)?, sincos(tt, e, scale)?);
        let features = [x, &t_emb, &tt_emb, &self.yemb.forward(labels)?];
        let mut h = self.input.forward(&Tensor::cat(&features, 1)?)?;
        for block in &self.blocks {
            h = block.forward(&h)?;
        }
        let v = self.out.forward(&h.silu()?)?;
        match &self.skip {
            Some(skip) => v.addcmul(&skip.forward(&Tensor::cat(&[&t_emb, &tt_emb], 1)?)?, x),
            None => Ok(v),
        }
    }

    fn forward_rng(&self) -> &ForwardRng {
        &self.rng
    }
}

impl_module! { MlpVelocity { yemb, input, blocks, out, skip } }
