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
mod norm;
mod optim;
mod reduce;
mod softmax;
mod unary;
mod view;

pub use attention::scaled_dot_product_attention;

use crate::error::{Error, Result};
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
        let lead = self.rank() - shape.len();
        let dims: Vec<isize> = (0..self.rank())
            .filter(|&d| d < lead || (shape[d - lead] == 1 && self.shape()[d] != 1))
            .map(|d| d as isize)
            .collect();
        self.sum_keepdim(&dims)?.reshape(shape)
    }
}
