//! Per-sample loss functions ℓ(F, target) (docs/method.md §1 and §3c).

use serde::{Deserialize, Serialize};
use twinflow_engine::{Error, Result, Tensor};

/// Added to c² in the Barron loss's normaliser, as the reference does.
const BARRON_EPS: f64 = 1e-8;
/// Shapes α this close to 2 give the plain mse (the weight is exactly 1).
const ALPHA_IS_TWO: f64 = 1e-5;

/// `mse(a, b)`: the mean of `(a − b)²` over every non-batch dimension, one value per
/// sample (`[B]`).
pub fn mse_per_sample(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() || a.rank() == 0 {
        return Err(Error::shapes("mse_per_sample", &[a.shape(), b.shape()]));
    }
    let n = a.dim(0)?;
    a.sub(b)?
        .square()?
        .reshape(&[n, a.elem_count() / n.max(1)])?
        .mean(&[1], false)
}

/// The per-sample loss ℓ a method applies to a prediction and its target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LossFn {
    /// `ℓ = mse(F, target)`.
    #[default]
    L2,
    /// Barron-style robust reweighting of the mse `m`, as the reference computes it:
    /// `ℓ = m·sg(w)/c` with `w = (m/((c² + 10⁻⁸)·|α − 2|) + 1)^((α − 2)/2)` (`w = 1`
    /// when `|α − 2| < 10⁻⁵`). The weight is detached, so the gradient is the mse's
    /// scaled by `w/c`. The `10⁻⁸` guards c → 0; at the default c = 10⁻³ it moves the
    /// scale by 1%, which is why it is kept rather than "simplified" away.
    Barron {
        /// Shape parameter α (the production default is 1).
        alpha: f64,
        /// Scale c (the production default is 10⁻³).
        c: f64,
    },
}

impl LossFn {
    /// The default of the `split` recipe (docs/method.md §3c): Barron with α = 1, c = 10⁻³.
    pub fn barron_default() -> Self {
        LossFn::Barron {
            alpha: 1.0,
            c: 1e-3,
        }
    }

    /// Errors for a non-finite α or a non-positive c.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LossFn::L2 => Ok(()),
            LossFn::Barron { alpha, c } if alpha.is_finite() && c > 0.0 && c.is_finite() => Ok(()),
            LossFn::Barron { alpha, c } => Err(Error::invalid(
                "loss",
                format!("barron needs a finite alpha and c > 0, got alpha {alpha}, c {c}"),
            )),
        }
    }

    /// ℓ(pred, target) per sample, `[B]`, with the graph of `pred` (and `target`, which
    /// callers pass detached).
    pub fn per_sample(&self, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
        let m = mse_per_sample(pred, target)?;
        match *self {
            LossFn::L2 => Ok(m),
            LossFn::Barron { alpha, c } => {
                let w = if (alpha - 2.0).abs() < ALPHA_IS_TWO {
                    m.ones_like()?
                } else {
                    m.detach()
                        .mul_scalar(1.0 / ((c * c + BARRON_EPS) * (alpha - 2.0).abs()))?
                        .add_scalar(1.0)?
                        .powf((alpha - 2.0) / 2.0)?
                };
                m.mul(&w)?.mul_scalar(1.0 / c)
            }
        }
    }

    /// The batch mean of [`LossFn::per_sample`]: a scalar with graph.
    pub fn mean(&self, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
        self.per_sample(pred, target)?.mean_all()
    }
}
