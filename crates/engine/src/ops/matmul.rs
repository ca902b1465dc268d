//! Matrix products, 2-D and batched with broadcast batch dims; transposed operands are
//! read in place through their strides.

use super::{check_float, check_same};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::layout::broadcast_shapes;
use crate::Tensor;

impl Tensor {
    /// `self · rhs` for `[..., m, k] · [..., k, n]`; batch dims broadcast.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        check_float("matmul", self)?;
        check_same("matmul", &[self, rhs])?;
        let (a, b) = (self.shape(), rhs.shape());
        let (ra, rb) = (a.len(), b.len());
        if ra < 2 || rb < 2 || a[ra - 1] != b[rb - 2] {
            return Err(Error::shapes("matmul", &[a, b]));
        }
        let batch = broadcast_shapes("matmul", &a[..ra - 2], &b[..rb - 2])
            .map_err(|_| Error::shapes("matmul", &[a, b]))?;
        let with = |tail: &[usize]| [batch.as_slice(), tail].concat();
        let la = self.layout().broadcast_to("matmul", &with(&a[ra - 2..]))?;
        let lb = rhs.layout().broadcast_to("matmul", &with(&b[rb - 2..]))?;
        let s = self.storage().matmul(&la, &rhs.storage(), &lb)?;
        let shape = with(&[a[ra - 2], b[rb - 1]]);
        Ok(Tensor::from_op(
            "matmul",
            s,
            &shape,
            &[self, rhs],
            |x, _, g| {
                let (a, b) = (&x[0], &x[1]);
                Ok(vec![
                    Some(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?),
                    Some(a.t()?.matmul(g)?.sum_to_shape(b.shape())?),
                ])
            },
        ))
    }
}
