//! Classifier-free guidance at sampling time.

use twinflow_engine::{Error, Result, Tensor};
use twinflow_nn::VelocityModel;

/// Classifier-free guidance: the guided velocity is
/// `F = F_null + w·(F_cond − F_null)`, with `F_cond` the velocity at the given labels and
/// `F_null` the velocity at the model's null (unconditional) label.
///
/// `w = 1` means no guidance (one forward, `F = F_cond` exactly), `w = 0` samples the
/// unconditional model, `w > 1` extrapolates away from it. For `w ≠ 1` the conditional and
/// null halves are evaluated in one forward of a doubled batch (`2·NFE` samples' worth of
/// compute, one call per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    /// The weight `w`.
    pub weight: f64,
    /// The model's null label (e.g. `MlpVelocity::null_label()`); needed when `w ≠ 1`.
    pub null_label: Option<i64>,
}

impl Guidance {
    /// No guidance (`w = 1`).
    pub fn none() -> Self {
        Guidance {
            weight: 1.0,
            null_label: None,
        }
    }

    /// Guidance of weight `w` towards the labels and away from `null_label`.
    pub fn new(weight: f64, null_label: i64) -> Self {
        Guidance {
            weight,
            null_label: Some(null_label),
        }
    }

    /// Errors for a weight that is not finite, or a missing null label when `w ≠ 1`.
    pub fn validate(&self) -> Result<()> {
        if !self.weight.is_finite() {
            return Err(Error::invalid(
                "guidance",
                format!("the guidance weight must be finite, got {}", self.weight),
            ));
        }
        if self.weight != 1.0 && self.null_label.is_none() {
            return Err(Error::invalid(
                "guidance",
                format!(
                    "guidance weight {} needs the model's null label (pass it, or use weight 1 \
                     for no guidance)",
                    self.weight
                ),
            ));
        }
        Ok(())
    }

    /// The guided velocity `F(x, t, tt, labels)` with the same time `t` and target `tt`
    /// (scalars) for every sample.
    pub fn velocity<M: VelocityModel + ?Sized>(
        &self,
        model: &M,
        x: &Tensor,
        t: f64,
        tt: f64,
        labels: &Tensor,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let time = |v: f64, n: usize| Tensor::full(v, &[n], x.dtype(), x.device());
        let null = match self.null_label {
            Some(null) if self.weight != 1.0 => null,
            _ => return model.velocity(x, &time(t, b)?, &time(tt, b)?, labels),
        };
        let nulls = Tensor::from_vec(vec![null; b], &[b], labels.device())?;
        let xx = Tensor::cat(&[x, x], 0)?;
        let ll = Tensor::cat(&[labels, &nulls], 0)?;
        let f = model.velocity(&xx, &time(t, 2 * b)?, &time(tt, 2 * b)?, &ll)?;
        let cond = f.narrow(0, 0, b)?;
        let uncond = f.narrow(0, b, b)?;
        uncond.add(&cond.sub(&uncond)?.mul_scalar(self.weight)?)
    }
}
