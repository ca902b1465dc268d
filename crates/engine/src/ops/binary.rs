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

/// ∂(a op b)/∂a · g, at the broadcast shape.
fn lhs_grad(op: BinaryOp, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<Tensor> {
    let zero = || g.zeros_like();
    match op {
        BinaryOp::Add | BinaryOp::Sub => Ok(g.clone()),
        BinaryOp::Mul => g.mul(b),
        BinaryOp::Div => g.div(b),
        BinaryOp::Maximum => a.cmp_op("maximum", b, CmpOp::Ge)?.where_cond(g, &zero()?),
        BinaryOp::Minimum => a.cmp_op("minimum", b, CmpOp::Le)?.where_cond(g, &zero()?),
    }
}

/// ∂(a op b)/∂b · g, at the broadcast shape (`out` is a op b).
fn rhs_grad(op: BinaryOp, a: &Tensor, b: &Tensor, out: &Tensor, g: &Tensor) -> Result<Tensor> {
    let zero = || g.zeros_like();
    match op {
        BinaryOp::Add => Ok(g.clone()),
        BinaryOp::Sub => g.neg(),
        BinaryOp::Mul => g.mul(a),
        BinaryOp::Div => g.div(b)?.mul(out)?.neg(),
        // At ties the gradient goes to `a`, so `b` gets it only where it strictly wins.
        BinaryOp::Maximum => a.cmp_op("maximum", b, CmpOp::Ge)?.where_cond(&zero()?, g),
        BinaryOp::Minimum => a.cmp_op("minimum", b, CmpOp::Le)?.where_cond(&zero()?, g),
    }
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
                // A constant operand (a fixed scale, a target) costs no gradient work.
                let ga = match a.requires_grad() {
                    true => Some(lhs_grad(op, a, b, g)?.sum_to_shape(a.shape())?),
                    false => None,
                };
                let gb = match b.requires_grad() {
                    true => Some(rhs_grad(op, a, b, out, g)?.sum_to_shape(b.shape())?),
                    false => None,
                };
                Ok(vec![ga, gb])
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
