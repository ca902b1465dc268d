//! Elementwise maps of two tensors with NumPy broadcasting.

use super::{check_float, check_same};
use crate::backend::{BackendStorage, BinaryOp, CmpOp};
use crate::error::Result;
use crate::layout::{broadcast_shapes, Layout};
use crate::Tensor;

/// The broadcast shape of two operands and each operand's layout broadcast to it.
pub(super) fn broadcast_pair(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
) -> Result<(Vec<usize>, Layout, Layout)> {
    check_same(op, &[a, b])?;
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let la = a.layout().broadcast_to(op, &shape)?;
    let lb = b.layout().broadcast_to(op, &shape)?;
    Ok((shape, la, lb))
}

impl Tensor {
    fn binary_op(&self, name: &'static str, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        check_float(name, self)?;
        let (shape, la, lb) = broadcast_pair(name, self, rhs)?;
        let s = self.storage().binary(&la, &rhs.storage(), &lb, op)?;
        Ok(Tensor::from_op(
            name,
            s,
            &shape,
            &[self, rhs],
            move |x, out, g| {
                let (a, b) = (&x[0], &x[1]);
                let (ga, gb) = match op {
                    BinaryOp::Add => (g.clone(), g.clone()),
                    BinaryOp::Sub => (g.clone(), g.neg()?),
                    BinaryOp::Mul => (g.mul(b)?, g.mul(a)?),
                    BinaryOp::Div => {
                        let ga = g.div(b)?;
                        let gb = ga.mul(out)?.neg()?;
                        (ga, gb)
                    }
                    BinaryOp::Maximum | BinaryOp::Minimum => {
                        let pick_a = match op {
                            BinaryOp::Maximum => a.cmp_op("maximum", b, CmpOp::Ge)?,
                            _ => a.cmp_op("minimum", b, CmpOp::Le)?,
                        };
                        let zero = g.zeros_like()?;
                        (pick_a.where_cond(g, &zero)?, pick_a.where_cond(&zero, g)?)
                    }
                };
                Ok(vec![
                    Some(ga.sum_to_shape(a.shape())?),
                    Some(gb.sum_to_shape(b.shape())?),
                ])
            },
        ))
    }

    /// a + b
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op("add", rhs, BinaryOp::Add)
    }
    /// a − b
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op("sub", rhs, BinaryOp::Sub)
    }
    /// a · b (elementwise)
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op("mul", rhs, BinaryOp::Mul)
    }
    /// a / b
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op("div", rhs, BinaryOp::Div)
    }
    /// max(a, b) elementwise; at ties the gradient goes to `a`.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op("maximum", rhs, BinaryOp::Maximum)
    }
    /// min(a, b) elementwise; at ties the gradient goes to `a`.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op("minimum", rhs, BinaryOp::Minimum)
    }
}
