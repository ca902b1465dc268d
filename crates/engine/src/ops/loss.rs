//! Losses built from fused pieces.

use crate::autocast::widened;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::Tensor;

impl Tensor {
    /// Mean cross-entropy of logits `[n, c]` against i64 class labels `[n]`:
    /// `−mean(log_softmax(logits)[i, labels[i]])`.
    pub fn cross_entropy(&self, labels: &Tensor) -> Result<Tensor> {
        let ok = self.rank() == 2 && labels.rank() == 1 && labels.shape()[0] == self.shape()[0];
        if !ok {
            return Err(Error::shapes(
                "cross_entropy",
                &[self.shape(), labels.shape()],
            ));
        }
        if labels.dtype() != DType::I64 {
            return Err(Error::invalid(
                "cross_entropy",
                format!("labels must be i64, got {}", labels.dtype()),
            ));
        }
        let picked = self.log_softmax()?.gather(&labels.unsqueeze(1)?, 1)?;
        picked.mean_all()?.neg()
    }

    /// Mean squared error between two tensors of the same shape; in f32 inside an
    /// autocast scope.
    pub fn mse(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::shapes("mse", &[self.shape(), target.shape()]));
        }
        if let Some(x) = widened(&[self, target])? {
            return x[0].mse(&x[1]);
        }
        self.sub(target)?.square()?.mean_all()
    }
}
