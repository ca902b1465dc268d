//! Elementwise maps of one tensor. Each backward is one fused kernel, `grad · f'(x)`,
//! and so is each tangent, `t · f'(x)`.

use super::check_float;
use crate::autocast::widened;
use crate::backend::{BackendStorage, UnaryOp};
use crate::error::Result;
use crate::Tensor;

impl Tensor {
    fn unary_op(&self, name: &'static str, op: UnaryOp) -> Result<Tensor> {
        if loses_accuracy_in_half(op) {
            if let Some(x) = widened(&[self])? {
                return x[0].unary_op(name, op);
            }
        }
        check_float(name, self)?;
        let s = self.storage().unary(self.layout(), op)?;
        // f is elementwise, so its Jacobian is diagonal: the tangent is t·f'(x), the same
        // fused kernel as the backward.
        Tensor::from_op(
            name,
            s,
            self.shape(),
            &[self],
            move |x, _, g| Ok(vec![Some(x[0].unary_grad(op, g)?)]),
            move |d, _| d.primal(0).unary_grad(op, &d.tangent_or_zeros(0)?),
        )
    }

    /// `grad · op'(self)`, the backward of a unary op (not itself differentiable).
    fn unary_grad(&self, op: UnaryOp, grad: &Tensor) -> Result<Tensor> {
        let s = self
            .storage()
            .unary_backward(self.layout(), &grad.storage(), grad.layout(), op)?;
        Ok(Tensor::from_storage(s, self.shape()))
    }

    /// −x
    pub fn neg(&self) -> Result<Tensor> {
        self.unary_op("neg", UnaryOp::Neg)
    }
    /// eˣ
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_op("exp", UnaryOp::Exp)
    }
    /// ln x
    pub fn log(&self) -> Result<Tensor> {
        self.unary_op("log", UnaryOp::Log)
    }
    /// √x
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_op("sqrt", UnaryOp::Sqrt)
    }
    /// 1/√x
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary_op("rsqrt", UnaryOp::Rsqrt)
    }
    /// 1/x
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_op("recip", UnaryOp::Recip)
    }
    /// x²
    pub fn square(&self) -> Result<Tensor> {
        self.unary_op("square", UnaryOp::Square)
    }
    /// xᵖ
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary_op("powf", UnaryOp::Powf(p))
    }
    /// |x| (gradient 0 at 0, as PyTorch)
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_op("abs", UnaryOp::Abs)
    }
    /// sin x
    pub fn sin(&self) -> Result<Tensor> {
        self.unary_op("sin", UnaryOp::Sin)
    }
    /// cos x
    pub fn cos(&self) -> Result<Tensor> {
        self.unary_op("cos", UnaryOp::Cos)
    }
    /// tanh x
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_op("tanh", UnaryOp::Tanh)
    }
    /// 1/(1+e⁻ˣ)
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_op("sigmoid", UnaryOp::Sigmoid)
    }
    /// max(x, 0)
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_op("relu", UnaryOp::Relu)
    }
    /// GELU with the tanh approximation (PyTorch's `approximate="tanh"`).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary_op("gelu", UnaryOp::GeluTanh)
    }
    /// Exact GELU, ½x(1+erf(x/√2)).
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary_op("gelu_erf", UnaryOp::GeluErf)
    }
    /// x·sigmoid(x)
    pub fn silu(&self) -> Result<Tensor> {
        self.unary_op("silu", UnaryOp::Silu)
    }
    /// min(max(x, lo), hi); the gradient passes where lo ≤ x ≤ hi.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        self.unary_op("clamp", UnaryOp::Clamp(lo, hi))
    }
    /// a·x + b
    pub fn affine(&self, a: f64, b: f64) -> Result<Tensor> {
        self.unary_op("affine", UnaryOp::Affine(a, b))
    }
    /// x + c
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(1.0, c)
    }
    /// c·x
    pub fn mul_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(c, 0.0)
    }
}

/// The maps that run in f32 inside an autocast scope (PyTorch's list): their results
/// grow or shrink fast enough to overflow, underflow or lose digits in half precision.
fn loses_accuracy_in_half(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Exp | UnaryOp::Log | UnaryOp::Powf(_) | UnaryOp::Rsqrt | UnaryOp::Recip
    )
}
