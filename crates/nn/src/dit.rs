//! DiT: a diffusion transformer with adaLN-Zero conditioning on two signed times and a
//! class label, matching the project's PyTorch reference (`torch_dit_anchor.py`)
//! operation for operation and parameter name for parameter name, so that weights can
//! be exchanged with PyTorch.

use crate::attention::SelfAttention;
use crate::dropout::check_probability;
use crate::impl_module;
use crate::init::{ForwardRng, Init, ParamBuilder};
use crate::label_embedding::LabelEmbedding;
use crate::linear::{Linear, LinearConfig};
use crate::mlp::Mlp;
use crate::models::velocity::{check_velocity_inputs, VelocityModel};
use crate::module::Forward;
use crate::patch::PatchGrid;
use crate::size::{self, check_parameter_count};
use crate::time_embedding::{check_time_scale, TimeEmbedding, DEFAULT_TIME_SCALE};
use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, GatedResidual, PreNorm, Result, Tensor};

/// Epsilon of the parameter-free layer norms (the reference's `eps=1e-6`).
const NORM_EPS: f64 = 1e-6;

/// Sizes of a [`Dit`]. The default is the reference model for MNIST (1,298,320
/// parameters).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DitConfig {
    /// Side of the square input images.
    pub image_size: usize,
    /// Channels of the input images.
    pub channels: usize,
    /// Side of the square patches (divides `image_size`).
    pub patch: usize,
    /// Width of the tokens and of the conditioning vector (even, a multiple of `heads`).
    pub dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Hidden width of each block's MLP as a multiple of `dim`.
    pub mlp_ratio: usize,
    /// Number of classes; the label table has one more row, the null class.
    pub num_classes: usize,
    /// Probability of replacing a label by the null class in train mode.
    pub label_dropout: f64,
    /// The factor on times before their sinusoidal features (see
    /// [`sincos`](crate::sincos)): 1000 as the reference DiT; MeanFlow's reference
    /// uses 1.
    pub time_scale: f64,
    /// How the learned position embedding `pos` starts.
    #[serde(skip_serializing_if = "PositionInit::is_default")]
    pub pos_init: PositionInit,
}

/// The starting values of a [`Dit`]'s position embedding (learned either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionInit {
    /// N(0, 0.02²), as the reference: the tokens start nearly without positions, which
    /// training must learn first. Short runs show it: samples with misplaced patches.
    #[default]
    Normal,
    /// The fixed 2-D sine-cosine embedding of the original DiT and ViT-MAE, as a
    /// starting point: every token knows its row and column from the first step. Needs
    /// `dim` divisible by 4.
    Sincos,
}

impl PositionInit {
    fn is_default(&self) -> bool {
        *self == PositionInit::default()
    }
}

/// The 2-D sine-cosine position embedding of a `side × side` token grid, `[side², dim]`
/// row-major: for the token at (row, col), the first half of its features encodes the
/// row and the second half the column, each as `[sin(p·ω_k), cos(p·ω_k)]` over
/// `ω_k = 10000^(−k/(dim/4))`, k < dim/4 (ViT-MAE's `get_2d_sincos_pos_embed`, with the
/// grid's rows first).
pub fn sincos_positions(side: usize, dim: usize) -> Vec<f64> {
    let quarter = dim / 4;
    let mut out = Vec::with_capacity(side * side * dim);
    for row in 0..side {
        for col in 0..side {
            for p in [row, col] {
                let omega = (0..quarter).map(|k| 10000f64.powf(-(k as f64) / quarter as f64));
                let angles: Vec<f64> = omega.map(|w| p as f64 * w).collect();
                out.extend(angles.iter().map(|a| a.sin()));
                out.extend(angles.iter().map(|a| a.cos()));
            }
        }
    }
    out
}

impl Default for DitConfig {
    fn default() -> Self {
        DitConfig {
            image_size: 28,
            channels: 1,
            patch: 4,
            dim: 128,
            depth: 4,
            heads: 4,
            mlp_ratio: 4,
            num_classes: 10,
            label_dropout: 0.0,
            time_scale: DEFAULT_TIME_SCALE,
            pos_init: PositionInit::Normal,
        }
    }
}

impl DitConfig {
    /// DiT-S/2 (width 384, depth 12, 6 heads, patches of 2) for square images of side
    /// `image_size` with `channels` channels; the rest as [`DitConfig::default`]. The
    /// GPU benchmark's bf16 step uses it on 32×32×3.
    pub fn s2(image_size: usize, channels: usize) -> Self {
        DitConfig {
            image_size,
            channels,
            patch: 2,
            dim: 384,
            depth: 12,
            heads: 6,
            ..DitConfig::default()
        }
    }

    /// Refuses sizes the model cannot be built with, saying which.
    pub fn validate(&self) -> Result<()> {
        PatchGrid::new(self.channels, self.image_size, self.patch)?;
        let fits = self.dim > 0
            && self.dim.is_multiple_of(2)
            && self.heads > 0
            && self.dim.is_multiple_of(self.heads)
            && self.mlp_ratio > 0;
        if !fits {
            return Err(Error::invalid(
                "dit_config",
                format!(
                    "dim {} must be even and a multiple of heads {}, mlp_ratio {} positive",
                    self.dim, self.heads, self.mlp_ratio
                ),
            ));
        }
        if self.pos_init == PositionInit::Sincos && !self.dim.is_multiple_of(4) {
            return Err(Error::invalid(
                "dit_config",
                format!(
                    "pos_init \"sincos\" needs dim divisible by 4, got {}",
                    self.dim
                ),
            ));
        }
        check_probability("dit_config: label_dropout", self.label_dropout)?;
        check_time_scale("dit_config", self.time_scale)?;
        check_parameter_count("dit_config", self.parameter_count(), self)?;
        Ok(())
    }

    /// The number of parameters of the DiT these sizes build, `None` when it
    /// overflows `usize`; computed without building it.
    pub fn parameter_count(&self) -> Option<usize> {
        let d = self.dim;
        let side = self.image_size.checked_div(self.patch)?;
        let tokens = side.checked_mul(side)?;
        let token_dim = self
            .channels
            .checked_mul(self.patch)?
            .checked_mul(self.patch)?;
        let hidden = self.mlp_ratio.checked_mul(d)?;
        let block = size::sum(&[
            size::linear(d, d.checked_mul(3)?)?,
            size::linear(d, d)?,
            size::linear(d, hidden)?,
            size::linear(hidden, d)?,
            size::linear(d, d.checked_mul(6)?)?,
        ])?;
        size::sum(&[
            tokens.checked_mul(d)?,
            size::linear(token_dim, d)?,
            // Two time embeddings of two `d → d` layers each.
            size::linear(d, d)?.checked_mul(4)?,
            self.num_classes.checked_add(1)?.checked_mul(d)?,
            block.checked_mul(self.depth)?,
            size::linear(d, d.checked_mul(2)?)?,
            size::linear(d, token_dim)?,
        ])
    }
}

/// Linear layers of the trunk: Xavier-uniform weights, zero biases (DiT).
fn xavier() -> LinearConfig {
    LinearConfig {
        weight_init: Init::XavierUniform,
        bias_init: Some(Init::Zeros),
    }
}

/// adaLN-Zero modulation and output layers: all zeros, so every block starts as the
/// identity and the model's first prediction is zero.
fn zeros() -> LinearConfig {
    LinearConfig {
        weight_init: Init::Zeros,
        bias_init: Some(Init::Zeros),
    }
}

/// The `N` equal chunks of `x [B, N·D]` along dim 1, as views.
fn chunks<const N: usize>(x: &Tensor) -> Result<[Tensor; N]> {
    let parts = x.chunk(N, 1)?;
    let found = parts.len();
    parts.try_into().map_err(|_| {
        Error::invalid(
            "dit",
            format!(
                "expected {N} modulation chunks of {:?}, got {found}",
                x.shape()
            ),
        )
    })
}

/// `LN(x)·(1 + scale[:, None]) + shift[:, None]` for x `[B, T, D]`, shift and scale
/// `[B, D]`: a parameter-free layer norm modulated per sample, as one fused layer norm
/// whose weight and bias are `[B, 1, D]` (one pass forward and one backward, instead
/// of a norm, a multiply-add and three reductions of the gradient).
fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    modulated(&modulation(shift, scale)?).apply(x)
}

/// The adaLN modulation of `[B, D]` shift and scale as a layer norm's weight and bias,
/// `1 + scale` and `shift`, each `[B, 1, D]`.
fn modulation(shift: &Tensor, scale: &Tensor) -> Result<[Tensor; 2]> {
    Ok([scale.add_scalar(1.0)?.unsqueeze(1)?, shift.unsqueeze(1)?])
}

/// The parameter-free layer norm modulated by `modulation`'s weight and bias.
fn modulated([weight, bias]: &[Tensor; 2]) -> PreNorm<'_> {
    PreNorm {
        weight: Some(weight),
        bias: Some(bias),
        eps: NORM_EPS,
    }
}

/// One DiT block: attention and MLP, each after a parameter-free layer norm modulated
/// by the conditioning and gated (adaLN-Zero). Parameter names `qkv.*`, `proj.*`,
/// `fc1.*`, `fc2.*`, `ada.*`.
#[derive(Debug, Clone)]
pub struct DitBlock {
    /// Self-attention (`qkv`, `proj`).
    pub attn: SelfAttention,
    /// Feed-forward with GELU-tanh (`fc1`, `fc2`).
    pub mlp: Mlp,
    /// `D → 6D`: shift, scale and gate of the attention branch, then of the MLP branch.
    pub ada: Linear,
}

impl DitBlock {
    /// A block of width `dim` with `heads` heads and an MLP of `mlp_ratio·dim`.
    pub fn new(pb: &mut ParamBuilder, dim: usize, heads: usize, mlp_ratio: usize) -> Result<Self> {
        Ok(DitBlock {
            attn: SelfAttention::new(pb, dim, heads, xavier())?,
            mlp: Mlp::new(pb, dim, mlp_ratio * dim, xavier())?,
            ada: Linear::new(pb, dim, 6 * dim, zeros())?,
        })
    }

    /// Tokens x `[B, T, D]` conditioned on c `[B, D]` → `[B, T, D]`.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let [sh1, sc1, g1, sh2, sc2, g2] = chunks(&self.ada.forward(&c.silu()?)?)?;
        let y = norm_modulate(x, &sh1, &sc1)?;
        let gate = g1.unsqueeze(1)?;
        // x + gate·branch(y); without a graph the add runs in the branch's last product.
        let x = (self.attn).forward_gated(
            &y,
            GatedResidual {
                stream: x,
                gate: &gate,
            },
        )?;
        // x + gate·mlp(norm(x)); without a graph, in blocks of rows from x to the sum.
        let norm = modulation(&sh2, &sc2)?;
        (self.mlp).forward_prenorm_gated(&x, modulated(&norm), &g2.unsqueeze(1)?)
    }
}

// The attention and MLP layers sit directly in the block's namespace, as in the
// reference (`blocks.0.qkv.weight`, not `blocks.0.attn.qkv.weight`).
impl_module! { DitBlock { attn as "", mlp as "", ada } }

/// The DiT velocity model over flat images `[B, C·H·W]`.
///
/// `c = temb(sincos(t)) + ttemb(sincos(tt)) + yemb(labels)` conditions every block and
/// the final layer; tokens are `patch(patchify(x)) + pos`. Parameter names are the
/// reference's `state_dict` names, in its order: `pos`, `patch.*`, `temb.{0,2}.*`,
/// `ttemb.{0,2}.*`, `yemb.weight`, `blocks.{i}.*`, `adaf.*`, `out.*`.
#[derive(Debug, Clone)]
pub struct Dit {
    /// Learned position embedding `[1, T, D]`.
    pub pos: Tensor,
    /// Patch embedding `C·p·p → D`.
    pub patch: Linear,
    /// Embedding of the current time `t`.
    pub temb: TimeEmbedding,
    /// Embedding of the target time `tt`.
    pub ttemb: TimeEmbedding,
    /// Class embedding with the null class last.
    pub yemb: LabelEmbedding,
    /// The transformer blocks.
    pub blocks: Vec<DitBlock>,
    /// `D → 2D`: shift and scale of the final layer norm.
    pub adaf: Linear,
    /// Output projection `D → C·p·p`.
    pub out: Linear,
    cfg: DitConfig,
    grid: PatchGrid,
    rng: ForwardRng,
}

impl Dit {
    /// A DiT of the given sizes with DiT's initialisation: normal(0, 0.02) position,
    /// label and time-MLP weights, Xavier-uniform trunk weights, zero biases and
    /// zero adaLN-Zero modulation and output layers.
    pub fn new(pb: &mut ParamBuilder, cfg: DitConfig) -> Result<Self> {
        cfg.validate()?;
        let grid = PatchGrid::new(cfg.channels, cfg.image_size, cfg.patch)?;
        let d = cfg.dim;
        let embed = LinearConfig {
            weight_init: Init::Normal(0.02),
            bias_init: Some(Init::Zeros),
        };
        Ok(Dit {
            pos: match cfg.pos_init {
                PositionInit::Normal => pb.param(
                    &[1, grid.tokens(), d],
                    Init::Normal(0.02),
                    (grid.tokens(), d),
                )?,
                PositionInit::Sincos => pb.param_from(
                    &[1, grid.tokens(), d],
                    sincos_positions(cfg.image_size / cfg.patch, d),
                )?,
            },
            patch: Linear::new(pb, grid.token_dim(), d, xavier())?,
            temb: TimeEmbedding::new(pb, (d, cfg.time_scale), d, embed)?,
            ttemb: TimeEmbedding::new(pb, (d, cfg.time_scale), d, embed)?,
            yemb: LabelEmbedding::new(
                pb,
                cfg.num_classes,
                d,
                cfg.label_dropout,
                Init::Normal(0.02),
            )?,
            blocks: (0..cfg.depth)
                .map(|_| DitBlock::new(pb, d, cfg.heads, cfg.mlp_ratio))
                .collect::<Result<_>>()?,
            adaf: Linear::new(pb, d, 2 * d, zeros())?,
            out: Linear::new(pb, d, grid.token_dim(), zeros())?,
            cfg,
            grid,
            rng: pb.forward_rng.clone(),
        })
    }

    /// The sizes it was built with.
    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// Its patch geometry.
    pub fn grid(&self) -> &PatchGrid {
        &self.grid
    }

    /// The null ("unconditional") label, for classifier-free guidance.
    pub fn null_label(&self) -> i64 {
        self.yemb.null_label()
    }

    /// The conditioning vector `[B, D]` of the times and labels.
    fn condition(&self, t: &Tensor, tt: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.temb
            .forward(t)?
            .add(&self.ttemb.forward(tt)?)?
            .add(&self.yemb.forward(labels)?)
    }
}

impl VelocityModel for Dit {
    fn velocity(&self, x: &Tensor, t: &Tensor, tt: &Tensor, labels: &Tensor) -> Result<Tensor> {
        check_velocity_inputs("dit", self.grid.image_dim(), x, t, tt, labels)?;
        let c = self.condition(t, tt, labels)?;
        let mut h = self
            .patch
            .forward(&self.grid.patchify(x)?)?
            .add(&self.pos)?;
        for block in &self.blocks {
            h = block.forward(&h, &c)?;
        }
        let [shift, scale] = chunks(&self.adaf.forward(&c.silu()?)?)?;
        let h = norm_modulate(&h, &shift, &scale)?;
        self.grid.unpatchify(&self.out.forward(&h)?)
    }

    fn forward_rng(&self) -> &ForwardRng {
        &self.rng
    }
}

impl_module! { Dit { pos, patch, temb, ttemb, yemb, blocks, adaf, out } }

#[cfg(test)]
mod tests {
    use super::{sincos_positions, DitConfig, PositionInit};

    #[test]
    fn config_round_trips_through_json_and_refuses_unknown_fields() {
        let cfg = DitConfig {
            depth: 6,
            label_dropout: 0.1,
            ..DitConfig::default()
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<DitConfig>(&json).unwrap(), cfg);
        let partial: DitConfig = serde_json::from_str(r#"{"depth": 2}"#).unwrap();
        assert_eq!(
            partial,
            DitConfig {
                depth: 2,
                ..DitConfig::default()
            }
        );
        assert!(serde_json::from_str::<DitConfig>(r#"{"detph": 2}"#).is_err());
    }

    #[test]
    fn the_default_position_init_is_left_out_and_sincos_round_trips() {
        let json = serde_json::to_string(&DitConfig::default()).unwrap();
        assert!(!json.contains("pos_init"), "{json}");
        let cfg: DitConfig = serde_json::from_str(r#"{"pos_init": "sincos"}"#).unwrap();
        assert_eq!(cfg.pos_init, PositionInit::Sincos);
        let bad = DitConfig {
            dim: 130,
            heads: 2,
            ..cfg
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("divisible by 4"));
    }

    #[test]
    fn sincos_positions_encode_row_then_column() {
        let (side, dim) = (3, 8);
        let pos = sincos_positions(side, dim);
        assert_eq!(pos.len(), side * side * dim);
        let token = |row: usize, col: usize| &pos[(row * side + col) * dim..][..dim];
        // Token (0, 0): sin 0 = 0 and cos 0 = 1 in both halves.
        assert_eq!(token(0, 0), [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        // Token (2, 1): the row half at position 2, the column half at 1 (ω = 1, 0.01).
        let t = token(2, 1);
        assert_eq!(
            t[..4],
            [2f64.sin(), 0.02f64.sin(), 2f64.cos(), 0.02f64.cos()]
        );
        assert_eq!(
            t[4..],
            [1f64.sin(), 0.01f64.sin(), 1f64.cos(), 0.01f64.cos()]
        );
    }
}
