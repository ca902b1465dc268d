//! Every op: its checks, its forward dispatch to the backend, and its backward rule.
//!
//! One file per op family. Composite ops (mean, var, logsumexp, stack, chunk,
//! cross_entropy) are written with other ops and get their backward for free.

mod addcmul;
mod attention;
mod binary;
mod cast;
mod compare;
mod index;
mod join;
mod loss;
mod matmul;
mod mlp;
mod norm;
mod optim;
mod reduce;
mod softmax;
mod unary;
mod view;

pub use attention::{qkv_attention, scaled_dot_product_attention};
pub use mlp::{gelu_mlp, LinearParams};

use crate::error::{Error, Result};
use crate::layout::broadcast_shapes;
use crate::Tensor;

/// Refuses operands of different dtypes or devices, naming the op.
pub(crate) fn check_same(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    let first = tensors[0];
    for t in &tensors[1..] {
        if t.dtype() != first.dtype() {
            return Err(Error::dtypes(
                op,
                &tensors.iter().map(|t| t.dtype()).collect::<Vec<_>>(),
            ));
        }
        if t.device() != first.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: first.device().to_string(),
                rhs: t.device().to_string(),
            });
        }
    }
    Ok(())
}

/// Refuses a non-float operand (integer tensors take part only in indexing).
pub(crate) fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    match t.dtype().is_float() {
        true => Ok(()),
        false => Err(Error::dtypes(op, &[t.dtype()])),
    }
}

impl Tensor {
    /// Sums a gradient of a broadcast result back to the `shape` it was broadcast from.
    pub(crate) fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        self.sum_keepdim(&summed_dims(self.shape(), shape))?
            .reshape(shape)
    }

    /// `self · other` summed to `shape` as [`Tensor::sum_to_shape`] does, in one fused
    /// step where the backend can (the gradient of a broadcast factor).
    pub(crate) fn mul_sum_to_shape(&self, other: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let full = broadcast_shapes("mul", self.shape(), other.shape())?;
        if full == shape {
            return self.mul(other);
        }
        self.sum_product_keepdim(other, &summed_dims(&full, shape))?
            .reshape(shape)
    }
}

/// The dims of `from` that summing back to `to` (which `from` was broadcast from)
/// reduces: the leading ones `to` lacks and those where `to` has size 1.
fn summed_dims(from: &[usize], to: &[usize]) -> Vec<isize> {
    let lead = from.len() - to.len();
    (0..from.len())
        .filter(|&d| d < lead || (to[d - lead] == 1 && from[d] != 1))
        .map(|d| d as isize)
        .collect()
}
