//! Comparisons (masks of 0 and 1, no gradient) and selection by mask.

use super::binary::broadcast_pair;
use super::{check_float, check_same};
use crate::autocast::promoted;
use crate::backend::{BackendStorage, CmpOp};
use crate::cpu::{dispatch_float, elementwise, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{self, CudaStorage};
use crate::error::Result;
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::broadcast_shapes;
use crate::storage::Storage;
use crate::Tensor;

impl Tensor {
    /// A mask (same dtype, 1 where true) of `op` applied with broadcasting.
    pub(crate) fn cmp_op(&self, name: &'static str, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        if let Some(x) = promoted(&[self, rhs])? {
            return x[0].cmp_op(name, &x[1], op);
        }
        check_float(name, self)?;
        let (shape, la, lb) = broadcast_pair(name, self, rhs)?;
        let s = self.storage().cmp(&la, &rhs.storage(), &lb, op)?;
        Ok(Tensor::from_storage(s, &shape))
    }

    /// 1 where a == b, else 0.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op("eq", rhs, CmpOp::Eq)
    }
    /// 1 where a != b, else 0.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op("ne", rhs, CmpOp::Ne)
    }
    /// 1 where a < b, else 0.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op("lt", rhs, CmpOp::Lt)
    }
    /// 1 where a <= b, else 0.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op("le", rhs, CmpOp::Le)
    }
    /// 1 where a > b, else 0.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op("gt", rhs, CmpOp::Gt)
    }
    /// 1 where a >= b, else 0.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp_op("ge", rhs, CmpOp::Ge)
    }

    /// With `self` as the mask: `on_true` where it is non-zero, else `on_false`, all three
    /// broadcast together. Gradients flow to the two branches, never to the mask.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const OP: &str = "where_cond";
        if let Some(x) = promoted(&[self, on_true, on_false])? {
            return x[0].where_cond(&x[1], &x[2]);
        }
        check_same(OP, &[self, on_true, on_false])?;
        let shape = broadcast_shapes(OP, self.shape(), on_true.shape())?;
        let shape = broadcast_shapes(OP, &shape, on_false.shape())?;
        let l = |t: &Tensor| t.layout().broadcast_to(OP, &shape);
        let (lm, lt, lf) = (l(self)?, l(on_true)?, l(on_false)?);
        let s = Storage::fused(
            &WhereCond,
            (
                (&self.storage(), &lm),
                (&on_true.storage(), &lt),
                (&on_false.storage(), &lf),
            ),
        )?;
        Tensor::from_op(
            OP,
            s,
            &shape,
            &[self, on_true, on_false],
            |x, _, g| {
                let zero = g.zeros_like()?;
                let mask = x[0].detach();
                Ok(vec![
                    None,
                    Some(mask.where_cond(g, &zero)?.sum_to_shape(x[1].shape())?),
                    Some(mask.where_cond(&zero, g)?.sum_to_shape(x[2].shape())?),
                ])
            },
            // The mask is piecewise constant: the tangent picks the branches' tangents.
            |d, _| {
                d.primal(0)
                    .where_cond(&d.tangent_or_zeros(1)?, &d.tangent_or_zeros(2)?)
            },
        )
    }
}

/// The kernel: `on_true` where the mask is non-zero, else `on_false`, from three views of
/// the output's shape (mask first).
struct WhereCond;

impl<'a> FusedOp<'a> for WhereCond {
    const NAME: &'static str = "where_cond";
    type Inputs = (View<'a, Storage>, View<'a, Storage>, View<'a, Storage>);
    type Output = Storage;

    fn cpu(&self, (mask, t, f): BackendInputs<'a, Self, CpuStorage>) -> Result<Storage> {
        dispatch_float!(Self::NAME, mask.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (mv, tv, fv) = (view(mask.0)?, view(t.0)?, view(f.0)?);
            let out = elementwise::where_cond((&mv, mask.1), (&tv, t.1), (&fv, f.1));
            Ok(F::store(out, mask.0.dtype()).into())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (mask, t, f): BackendInputs<'a, Self, CudaStorage>) -> Result<Storage> {
        Ok(cuda::elementwise::ternary(Self::NAME, "where", mask, t, f)?.into())
    }
}
