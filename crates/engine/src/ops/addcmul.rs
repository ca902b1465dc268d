//! `x + a·b` as one fused elementwise op (one pass instead of a product and a sum):
//! the modulation and gated residuals of adaLN transformer blocks.

use super::{check_float, check_same};
use crate::autocast::promoted;
use crate::backend::BackendStorage;
use crate::error::Result;
use crate::layout::broadcast_shapes;
use crate::Tensor;

impl Tensor {
    /// `self + a·b`, the three broadcast together.
    pub fn addcmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "addcmul";
        if let Some(x) = promoted(&[self, a, b])? {
            return x[0].addcmul(&x[1], &x[2]);
        }
        check_float(OP, self)?;
        check_same(OP, &[self, a, b])?;
        let shape = broadcast_shapes(OP, self.shape(), a.shape())?;
        let shape = broadcast_shapes(OP, &shape, b.shape())?;
        let l = |t: &Tensor| t.layout().broadcast_to(OP, &shape);
        let (lx, la, lb) = (l(self)?, l(a)?, l(b)?);
        let s = self
            .storage()
            .addcmul(&lx, (&a.storage(), &la), (&b.storage(), &lb))?;
        Ok(Tensor::from_op(OP, s, &shape, &[self, a, b], |v, _, g| {
            let (x, a, b) = (&v[0], &v[1], &v[2]);
            let gx = x.requires_grad().then(|| g.sum_to_shape(x.shape()));
            let ga = a.requires_grad().then(|| g.mul_sum_to_shape(b, a.shape()));
            let gb = b.requires_grad().then(|| g.mul_sum_to_shape(a, b.shape()));
            Ok(vec![gx.transpose()?, ga.transpose()?, gb.transpose()?])
        }))
    }
}
