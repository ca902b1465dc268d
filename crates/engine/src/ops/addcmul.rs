//! `x + a·b` as one fused elementwise op (one pass instead of a product and a sum):
//! the modulation and gated residuals of adaLN transformer blocks.

use super::{check_float, check_same};
use crate::autocast::promoted;
use crate::backend::BackendStorage;
use crate::cpu::{dispatch_float, elementwise, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{self, CudaStorage};
use crate::error::Result;
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::broadcast_shapes;
use crate::storage::Storage;
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
        let s = Storage::fused(
            &Addcmul,
            (
                (&self.storage(), &lx),
                (&a.storage(), &la),
                (&b.storage(), &lb),
            ),
        )?;
        Tensor::from_op(
            OP,
            s,
            &shape,
            &[self, a, b],
            |v, _, g| {
                let (x, a, b) = (&v[0], &v[1], &v[2]);
                let gx = x.requires_grad().then(|| g.sum_to_shape(x.shape()));
                let ga = a.requires_grad().then(|| g.mul_sum_to_shape(b, a.shape()));
                let gb = b.requires_grad().then(|| g.mul_sum_to_shape(a, b.shape()));
                Ok(vec![gx.transpose()?, ga.transpose()?, gb.transpose()?])
            },
            // tx + ta·b + a·tb, each product one more fused pass.
            |d, _| {
                let (a, b) = (d.primal(1), d.primal(2));
                let mut t = d.tangent_or_zeros(0)?;
                if let Some(ta) = d.tangent(1) {
                    t = t.addcmul(ta, b)?;
                }
                if let Some(tb) = d.tangent(2) {
                    t = t.addcmul(a, tb)?;
                }
                Ok(t)
            },
        )
    }
}

/// The kernel: `x + a·b` of three views of the output's shape.
struct Addcmul;

impl<'a> FusedOp<'a> for Addcmul {
    const NAME: &'static str = "addcmul";
    type Inputs = (View<'a, Storage>, View<'a, Storage>, View<'a, Storage>);
    type Output = Storage;

    fn cpu(&self, (x, a, b): BackendInputs<'a, Self, CpuStorage>) -> Result<Storage> {
        dispatch_float!(Self::NAME, x.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (xv, av, bv) = (view(x.0)?, view(a.0)?, view(b.0)?);
            let out = elementwise::addcmul((&xv, x.1), (&av, a.1), (&bv, b.1));
            Ok(F::store(out, x.0.dtype()).into())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (x, a, b): BackendInputs<'a, Self, CudaStorage>) -> Result<Storage> {
        Ok(cuda::elementwise::ternary(Self::NAME, "addcmul", x, a, b)?.into())
    }
}
