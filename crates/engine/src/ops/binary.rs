//! Elementwise maps of two tensors with NumPy broadcasting. Inside an autocast scope,
//! operands of mixed float dtypes meet in the widest (see [`crate::autocast`]).

use super::{check_float, check_same};
use crate::autocast::promoted;
use crate::backend::{BackendStorage, BinaryOp, CmpOp};
use crate::error::Result;
use crate::forward_ad::Duals;
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

/// The gradients of `out = a op b` for the operands flagged in `need`, at the broadcast
/// shape (`mul`'s already summed to each operand's own). Pieces both gradients use
/// (g/b, the max/min mask) are computed once.
fn binary_grads(
    op: BinaryOp,
    (a, b, out, g): (&Tensor, &Tensor, &Tensor, &Tensor),
    (need_a, need_b): (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let when = |need: bool, f: &dyn Fn() -> Result<Tensor>| need.then(f).transpose();
    match op {
        BinaryOp::Add => Ok((
            when(need_a, &|| Ok(g.clone()))?,
            when(need_b, &|| Ok(g.clone()))?,
        )),
        BinaryOp::Sub => Ok((when(need_a, &|| Ok(g.clone()))?, when(need_b, &|| g.neg())?)),
        // Summed to a broadcast factor's shape in the same step (`sum_product`).
        BinaryOp::Mul => Ok((
            when(need_a, &|| g.mul_sum_to_shape(b, a.shape()))?,
            when(need_b, &|| g.mul_sum_to_shape(a, b.shape()))?,
        )),
        BinaryOp::Div => {
            let g_over_b = g.div(b)?;
            let gb = when(need_b, &|| g_over_b.mul(out)?.neg())?;
            Ok((need_a.then_some(g_over_b), gb))
        }
        BinaryOp::Maximum | BinaryOp::Minimum => {
            // At ties the gradient goes to `a`, so `b` gets it only where it strictly wins.
            let cmp = if op == BinaryOp::Maximum {
                CmpOp::Ge
            } else {
                CmpOp::Le
            };
            let pick_a = a.cmp_op("max/min backward", b, cmp)?;
            let zero = g.zeros_like()?;
            Ok((
                when(need_a, &|| pick_a.where_cond(g, &zero))?,
                when(need_b, &|| pick_a.where_cond(&zero, g))?,
            ))
        }
    }
}

/// The tangent of `out = a op b` from the operands' tangents (a missing one is zero).
fn binary_tangent(op: BinaryOp, d: &Duals, out: &Tensor) -> Result<Tensor> {
    let (a, b) = (d.primal(0), d.primal(1));
    let (ta, tb) = (d.tangent(0), d.tangent(1));
    match (op, ta, tb) {
        (BinaryOp::Add, Some(ta), Some(tb)) => ta.add(tb),
        (BinaryOp::Sub, Some(ta), Some(tb)) => ta.sub(tb),
        (BinaryOp::Add | BinaryOp::Sub, Some(ta), None) => Ok(ta.clone()),
        (BinaryOp::Add, None, Some(tb)) => Ok(tb.clone()),
        (BinaryOp::Sub, None, Some(tb)) => tb.neg(),
        // Product rule: ta·b + a·tb.
        (BinaryOp::Mul, Some(ta), Some(tb)) => ta.mul(b)?.addcmul(a, tb),
        (BinaryOp::Mul, Some(ta), None) => ta.mul(b),
        (BinaryOp::Mul, None, Some(tb)) => a.mul(tb),
        // Quotient rule: (ta − out·tb)/b.
        (BinaryOp::Div, Some(ta), None) => ta.div(b),
        (BinaryOp::Div, _, Some(tb)) => d.tangent_or_zeros(0)?.sub(&out.mul(tb)?)?.div(b),
        // The tangent of the operand picked, ties going to `a` as in the backward.
        (BinaryOp::Maximum | BinaryOp::Minimum, _, _) => {
            let cmp = match op {
                BinaryOp::Maximum => CmpOp::Ge,
                _ => CmpOp::Le,
            };
            let pick_a = a.cmp_op("max/min tangent", b, cmp)?;
            pick_a.where_cond(&d.tangent_or_zeros(0)?, &d.tangent_or_zeros(1)?)
        }
        (_, None, None) => out.zeros_like(),
    }
}

impl Tensor {
    fn binary_op(&self, name: &'static str, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        if let Some(x) = promoted(&[self, rhs])? {
            return x[0].binary_op(name, &x[1], op);
        }
        check_float(name, self)?;
        let (shape, la, lb) = broadcast_pair(name, self, rhs)?;
        let s = self.storage().binary(&la, &rhs.storage(), &lb, op)?;
        Tensor::from_op(
            name,
            s,
            &shape,
            &[self, rhs],
            move |x, out, g| {
                let (a, b) = (&x[0], &x[1]);
                // A constant operand (a fixed scale, a target) costs no gradient work.
                let need = (a.requires_grad(), b.requires_grad());
                let (ga, gb) = binary_grads(op, (a, b, out, g), need)?;
                let ga = ga.map(|t| t.sum_to_shape(a.shape())).transpose()?;
                let gb = gb.map(|t| t.sum_to_shape(b.shape())).transpose()?;
                Ok(vec![ga, gb])
            },
            move |d, out| binary_tangent(op, d, out),
        )
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
