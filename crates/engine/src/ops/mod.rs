//! Every op: its checks, its forward dispatch to the backend, and its backward rule.
//!
//! One file per op family. Composite ops (mean, var, logsumexp, stack, chunk,
//! cross_entropy) are written with other ops and get their backward for free.

mod addcmul;
mod attention;
mod binary;
mod cast;
mod compare;
mod gated;
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
pub use gated::{gelu_mlp_gated, prenorm_gelu_mlp_gated, GatedResidual, PreNorm};
pub use mlp::{gelu_mlp, LinearParams};
pub use optim::AdamTensors;

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

/// Whether a per-group parameter of shape `p` (a norm's weight, a gate) fits x of
/// shape `x`: its shape, padded on the left with ones to x's rank, is some of x's
/// leading dims, then ones, then x's last dim. Its rows then map to consecutive, equal
/// groups of x's rows, which is how the kernels index it (group = row / (rows /
/// parameter rows)).
pub(super) fn per_group(x: &[usize], p: &[usize]) -> bool {
    let (Some(&d), Some(&pd)) = (x.last(), p.last()) else {
        return false;
    };
    if d != pd || p.len() > x.len() {
        return false;
    }
    let padded: Vec<usize> = std::iter::repeat_n(1, x.len() - p.len())
        .chain(p.iter().copied())
        .collect();
    let lead = &padded[..x.len() - 1];
    let matching = lead.iter().zip(x).take_while(|(p, x)| p == x).count();
    lead[matching..].iter().all(|&p| p == 1)
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
