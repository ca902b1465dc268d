//! Training methods behind one trait: a method turns a batch of data into a loss
//! (docs/method.md §1–§4).
//!
//! - [`FlowMatching`]: the baseline, `mse(F(x_t, t, t, c), z − x)`.
//! - [`Rcgm`]: the RCGM any-step base loss `L_base` of order N, with training-time
//!   guidance (§2).
//! - [`TwinFlow`]: the `full` recipe, `L_base + L_real + L_adv + L_rect + L_cons` (§3a),
//!   and the `split` recipe of four groups and one gradient forward (§3b).
//! - [`MeanFlow`]: the average velocity over `[r, t]`, trained on the MeanFlow identity
//!   with one forward under forward mode ([`jvp`](twinflow_engine::jvp), §10).
//!
//! A new method is one file and one line: its settings (implementing
//! [`MethodSettings`]) and its loss ([`FlowMethod`] for [`Method`] of those settings),
//! built from the helpers here ([`interpolate`], [`invert`], [`LossFn`],
//! [`rcgm_target`], [`enhance_velocity`]). The trainer owns the online model θ, its EMA
//! θ⁻ (updated before the method runs, §4) and the method's random stream; it passes
//! them in a [`StepContext`] and backpropagates [`StepLoss::loss`].
//!
//! The line is the method's entry in the registry (`registry.rs`), which makes it a
//! `[method]` of training configs ([`MethodConfig`]).
//!
//! Times: the built-in methods draw their times `t` from a [`TimeDistribution`]
//! (`Beta(a, b)·s`, `U(0, 1)` by default), set with [`Method::with_time`].
//!
//! Randomness: every draw of a method (noise, times, permutations) comes from
//! [`StepContext::rng`] in an order each method documents, so a fixed seed reproduces a
//! step exactly. The network's own randomness (dropout, label dropout) comes from its
//! [`ForwardRng`](twinflow_nn::ForwardRng): gradient forwards draw from it in sequence,
//! while the no-gradient forwards that build a target replay the draws of the gradient
//! forward they belong to (the stream is rewound to the state saved before that
//! forward, and put back afterwards), as the reference does.

mod flow_matching;
mod loss;
mod meanflow;
mod path;
mod rcgm;
mod registry;
mod settings;
mod split;
mod time;
mod twinflow;

pub use flow_matching::{FlowMatching, FlowMatchingConfig};
pub use loss::{mse_per_sample, LossFn};
pub use meanflow::{average_velocity_and_target, MeanFlow, MeanFlowConfig};
pub use path::{interpolate, invert, per_sample, velocity_target};
pub use rcgm::{enhance_velocity, rcgm_target, Rcgm, RcgmConfig, Unconditional};
pub use registry::{by_name, MethodConfig, METHOD_NAMES};
pub use settings::{Method, MethodSettings};
pub use split::SplitConfig;
pub use time::TimeDistribution;
pub use twinflow::{rectification_delta, Recipe, TwinFlow, TwinFlowConfig};

use twinflow_engine::{Error, Generator, GeneratorState, Result, Tensor};
use twinflow_nn::VelocityModel;

/// One training batch: flat data and class labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Data `x` `[B, D]` (float).
    pub x: Tensor,
    /// Class labels, i64 `[B]`.
    pub labels: Tensor,
}

impl Batch {
    /// A batch of data `[B, D]` and i64 labels `[B]`.
    pub fn new(x: Tensor, labels: Tensor) -> Self {
        Batch { x, labels }
    }

    /// The batch size B.
    pub fn len(&self) -> usize {
        self.x.shape().first().copied().unwrap_or(0)
    }

    /// True for a batch of no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a method may use during one step.
pub struct StepContext<'a, M> {
    /// The online model θ (gradient forwards).
    pub online: &'a M,
    /// θ⁻, the EMA model used for no-gradient target forwards ([`twinflow_nn::Ema::model`]);
    /// θ itself when there is no EMA.
    pub ema: &'a M,
    /// The method's random stream (noise, times, permutations).
    pub rng: &'a mut Generator,
    /// θ⁻ is a frozen copy (EMA decay 1) rather than an average that follows θ.
    pub ema_frozen: bool,
}

impl<'a, M> StepContext<'a, M> {
    /// A context with an EMA model θ⁻ that follows θ.
    pub fn new(online: &'a M, ema: &'a M, rng: &'a mut Generator) -> Self {
        StepContext {
            online,
            ema,
            rng,
            ema_frozen: false,
        }
    }

    /// A context where θ⁻ is θ itself.
    pub fn without_ema(online: &'a M, rng: &'a mut Generator) -> Self {
        StepContext::new(online, online, rng)
    }

    /// The same context, marking θ⁻ as a frozen copy (EMA decay 1).
    pub fn with_frozen_ema(mut self, frozen: bool) -> Self {
        self.ema_frozen = frozen;
        self
    }

    /// The model of the `split` recipe's RCGM target: θ⁻, or θ when θ⁻ is frozen (as
    /// the reference's production code does: a frozen copy still guides, but the
    /// consistency target follows the model being trained).
    pub fn consistency_model(&self) -> &'a M {
        if self.ema_frozen {
            self.online
        } else {
            self.ema
        }
    }
}

/// The result of one step: the loss to backpropagate and its named terms for logging.
#[derive(Debug, Clone)]
pub struct StepLoss {
    /// The scalar loss, with the graph to θ.
    pub loss: Tensor,
    /// Named loss terms (detached values), in a fixed order per method.
    pub terms: Vec<(&'static str, f64)>,
}

impl StepLoss {
    /// The value of the term `name`, if the method reports it.
    pub fn term(&self, name: &str) -> Option<f64> {
        self.terms.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }

    /// The total loss as a number.
    pub fn value(&self) -> Result<f64> {
        self.loss.item()
    }
}

/// A training method: the loss of one batch.
pub trait FlowMethod<M: VelocityModel> {
    /// The method's name (one of [`METHOD_NAMES`] for the built-in ones).
    fn name(&self) -> &'static str;

    /// The loss of `batch`: draws what it needs from `ctx.rng`, runs gradient forwards
    /// of `ctx.online` and no-gradient forwards of `ctx.ema`.
    fn loss(&self, ctx: &mut StepContext<'_, M>, batch: &Batch) -> Result<StepLoss>;
}

/// A `[n]` tensor of `value` in `like`'s dtype and device.
pub(crate) fn filled(value: f64, n: usize, like: &Tensor) -> Result<Tensor> {
    Tensor::full(value, &[n], like.dtype(), like.device())
}

/// Runs `f` with the model's forward stream rewound to `state`, then puts the stream
/// back where it was, so that `f`'s forwards repeat the draws made from `state`.
pub(crate) fn replay<M: VelocityModel, T>(
    model: &M,
    state: GeneratorState,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let rng = model.forward_rng();
    let resume = rng.state();
    rng.set_state(state);
    let out = f();
    rng.set_state(resume);
    out
}

/// Checks a batch: data `[B, …]` with B ≥ 1 and i64 labels `[B]`.
pub(crate) fn check_batch(op: &'static str, batch: &Batch) -> Result<usize> {
    let b = batch.len();
    if b == 0 || batch.x.rank() < 2 || batch.labels.shape() != [b] {
        return Err(Error::invalid(
            op,
            format!(
                "needs data [B, D] with B ≥ 1 and labels [B], got {:?} and {:?}",
                batch.x.shape(),
                batch.labels.shape()
            ),
        ));
    }
    Ok(b)
}
