//! `Dropout`: zeroes a random fraction `p` of the elements in train mode and scales the
//! rest by 1/(1 − p) (inverted dropout), so eval mode is the identity.

use crate::impl_module;
use crate::init::{ForwardRng, ParamBuilder};
use crate::module::Forward;
use twinflow_engine::{Error, Result, Tensor};

/// Inverted dropout drawing its masks from the model's shared [`ForwardRng`], so that
/// restoring the stream's state repeats the masks. Built in train mode, like PyTorch.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    training: bool,
    rng: ForwardRng,
}

/// Refuses a drop probability outside `[0, 1)` (1 would zero every input and divide by
/// zero).
pub(crate) fn check_probability(op: &'static str, p: f64) -> Result<()> {
    match (0.0..1.0).contains(&p) {
        true => Ok(()),
        false => Err(Error::invalid(
            op,
            format!("probability must be in [0, 1), got {p}"),
        )),
    }
}

impl Dropout {
    /// Dropout with probability `p ∈ [0, 1)`, drawing from `pb`'s forward stream.
    pub fn new(pb: &ParamBuilder, p: f64) -> Result<Self> {
        check_probability("dropout", p)?;
        Ok(Dropout {
            p,
            training: true,
            rng: pb.forward_rng.clone(),
        })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// True in train mode (masks drawn), false in eval mode (identity).
    pub fn is_training(&self) -> bool {
        self.training
    }
}

impl Forward for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        let u = self
            .rng
            .uniform("dropout", x.shape(), (0.0, 1.0), x.dtype(), x.device())?;
        let threshold = Tensor::scalar(self.p, x.dtype(), x.device())?;
        // keep ∈ {0, 1}; folding the 1/(1 − p) scale into the mask costs one small op
        // instead of a second pass over x.
        let mask = u.ge(&threshold)?.mul_scalar(1.0 / (1.0 - self.p))?;
        x.mul(&mask)
    }
}

impl_module! { Dropout {} training_flag: training }
