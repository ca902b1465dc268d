//! Matrix products, 2-D and batched with broadcast batch dims; transposed operands are
//! read in place through their strides.

use super::{check_float, check_same};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::layout::broadcast_shapes;
use crate::Tensor;

impl Tensor {
    /// `[..., m, k] · [k, n]` as one `[(...)·m, k] · [k, n]` product (a linear layer):
    /// one large product instead of many small ones, and in the backward the weight
    /// gradient comes out summed over the batch by the product itself.
    fn matmul_folded(&self, rhs: &Tensor) -> Result<Tensor> {
        let (lead, k) = self.shape().split_at(self.rank() - 1);
        let rows = lead.iter().product();
        let out = self.reshape(&[rows, k[0]])?.matmul(rhs)?;
        out.reshape(&[lead, &[rhs.shape()[1]]].concat())
    }

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
        if rb == 2 && ra > 2 && self.is_contiguous() {
            return self.matmul_folded(rhs);
        }
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
                let ga = a
                    .requires_grad()
                    .then(|| g.matmul(&b.t()?)?.sum_to_shape(a.shape()));
                let gb = b
                    .requires_grad()
                    .then(|| a.t()?.matmul(g)?.sum_to_shape(b.shape()));
                Ok(vec![ga.transpose()?, gb.transpose()?])
            },
        ))
    }
}
