//! Fused softmax and log-softmax over the last dim, with hand-written backwards. They
//! run in f32 inside an autocast scope (see [`crate::autocast`]).

use super::check_float;
use crate::autocast::widened;
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::Tensor;

impl Tensor {
    fn softmax_op(&self, name: &'static str, log: bool) -> Result<Tensor> {
        if let Some(x) = widened(&[self])? {
            return x[0].softmax_op(name, log);
        }
        check_float(name, self)?;
        if self.rank() == 0 {
            return Err(Error::invalid(name, "needs at least one dim"));
        }
        let s = self.storage().softmax_last(self.layout(), log)?;
        Ok(Tensor::from_op(
            name,
            s,
            self.shape(),
            &[self],
            move |_, y, g| {
                let s =
                    y.storage()
                        .softmax_last_backward(y.layout(), &g.storage(), g.layout(), log)?;
                Ok(vec![Some(Tensor::from_storage(s, y.shape()))])
            },
        ))
    }

    /// Softmax over the last dim.
    pub fn softmax(&self) -> Result<Tensor> {
        self.softmax_op("softmax", false)
    }

    /// Log-softmax over the last dim (stable: x − logsumexp(x)).
    pub fn log_softmax(&self) -> Result<Tensor> {
        self.softmax_op("log_softmax", true)
    }
}
