//! The contract between op code and devices.
//!
//! `ops/` decides shapes, dtypes and backward rules once; a backend only runs kernels.
//! Every backend's storage implements [`BackendStorage`]; [`crate::storage::Storage`]
//! dispatches to the one a tensor lives on. Inputs come with their [`Layout`] (any
//! strides, already broadcast to a common shape where the op needs one); outputs are
//! always fresh contiguous storage.

use crate::{dtype::DType, error::Result, layout::Layout, Device};

/// Elementwise maps of one tensor. Parameters are f64 and converted to the dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    /// −x
    Neg,
    /// eˣ
    Exp,
    /// ln x
    Log,
    /// √x
    Sqrt,
    /// 1/√x
    Rsqrt,
    /// 1/x
    Recip,
    /// x²
    Square,
    /// |x|
    Abs,
    /// sin x
    Sin,
    /// cos x
    Cos,
    /// tanh x
    Tanh,
    /// 1/(1+e⁻ˣ)
    Sigmoid,
    /// max(x, 0)
    Relu,
    /// GELU, tanh approximation: ½x(1+tanh(√(2/π)(x+0.044715x³)))
    GeluTanh,
    /// GELU, exact: ½x(1+erf(x/√2))
    GeluErf,
    /// x·sigmoid(x)
    Silu,
    /// xᵖ
    Powf(f64),
    /// min(max(x, lo), hi)
    Clamp(f64, f64),
    /// a·x + b
    Affine(f64, f64),
}

/// Elementwise maps of two tensors of one (broadcast) shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
    /// a / b
    Div,
    /// max(a, b)
    Maximum,
    /// min(a, b)
    Minimum,
}

/// Comparisons; the result has the operands' dtype and holds 1 where true, 0 elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// a == b
    Eq,
    /// a != b
    Ne,
    /// a < b
    Lt,
    /// a <= b
    Le,
    /// a > b
    Gt,
    /// a >= b
    Ge,
}

/// Reductions over a set of dims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Σ
    Sum,
    /// maximum
    Max,
    /// minimum
    Min,
}

/// Options of the fused normalisation kernels (layer norm and RMS norm share them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormSpec {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// RMS norm (no mean subtraction, no bias) instead of layer norm.
    pub rms: bool,
}

/// Options of scaled-dot-product attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Multiplies q·kᵀ before the softmax (usually 1/√d).
    pub scale: f64,
    /// Masks key j for query i when j > i (top-left aligned, as PyTorch's `is_causal`).
    pub causal: bool,
}

/// Hyper-parameters of one Adam or AdamW step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to √v̂ in the denominator.
    pub eps: f64,
    /// Weight decay coefficient.
    pub weight_decay: f64,
    /// AdamW (decay applied to the parameter, not added to the gradient) when true.
    pub decoupled: bool,
    /// 1-based step number, for the bias corrections.
    pub step: u64,
}

/// The dtype of statistics a fused op saves for its backward (norm means and reciprocal
/// std devs, attention log-sum-exps): f32 for bf16/f16 inputs, so that the backward
/// sees the same statistics the forward used; the input's dtype otherwise.
pub fn stats_dtype(input: DType) -> DType {
    match input {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// The kernels every backend provides. See the module docs for the conventions.
pub trait BackendStorage: Sized {
    /// Element type of the storage.
    fn dtype(&self) -> DType;
    /// Where the storage lives.
    fn device(&self) -> Device;

    /// A contiguous copy of the view `layout`.
    fn copy_strided(&self, layout: &Layout) -> Result<Self>;
    /// Writes the view `layout` of `self` into the view `dst_layout` of `dst` (same shape).
    fn copy_into(&self, layout: &Layout, dst: &mut Self, dst_layout: &Layout) -> Result<()>;
    /// A contiguous copy of the view converted to `dtype`.
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self>;

    /// `op` applied to every element.
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self>;
    /// `grad · op'(x)` elementwise, with `self` as x: the backward of every unary op.
    fn unary_backward(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        op: UnaryOp,
    ) -> Result<Self>;
    /// `op` of two views of the same shape.
    fn binary(
        &self,
        layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        op: BinaryOp,
    ) -> Result<Self>;
    /// Comparison of two views of the same shape.
    fn cmp(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: CmpOp) -> Result<Self>;
    /// `on_true` where `self` (the mask) is non-zero, else `on_false`; all the same shape.
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: (&Self, &Layout),
        on_false: (&Self, &Layout),
    ) -> Result<Self>;

    /// `self + a·b` elementwise, all three the same shape (views may broadcast).
    fn addcmul(&self, layout: &Layout, a: (&Self, &Layout), b: (&Self, &Layout)) -> Result<Self>;

    /// `op` over the sorted `dims`; the result has the keep-dim shape.
    fn reduce(&self, layout: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self>;

    /// Σ over the sorted `dims` of `self · other` (two views of the same shape), in the
    /// keep-dim shape: the gradient of a broadcast factor. By default the product, then
    /// its sum; a backend may fuse the two so the product never reaches memory.
    fn sum_product(
        &self,
        layout: &Layout,
        other: (&Self, &Layout),
        dims: &[usize],
    ) -> Result<Self> {
        let product = self.binary(layout, other.0, other.1, BinaryOp::Mul)?;
        product.reduce(&Layout::contiguous(layout.shape()), dims, ReduceOp::Sum)
    }

    /// Batched matrix product of `[..., m, k]` and `[..., k, n]` views with equal batch
    /// dims (broadcast batch dims arrive with stride 0), plus `bias` (a view broadcast
    /// to the output's shape) when given: the bias is added by the product itself, not
    /// by a separate pass.
    fn matmul(
        &self,
        layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self>;

    /// Slices `ids` (i64, 1-D) along `dim`.
    fn index_select(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
    /// Adds slices of `self` into zeros of `shape` at positions `ids` along `dim`
    /// (the backward of `index_select`).
    fn index_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self>;
    /// `out[..i..] = self[..ids[..i..]..]` along `dim`.
    fn gather(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, dim: usize) -> Result<Self>;
    /// Adds `self` into zeros of `shape` at `ids` along `dim` (the backward of `gather`).
    fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self>;

    /// Softmax (or log-softmax) over the last dim.
    fn softmax_last(&self, layout: &Layout, log: bool) -> Result<Self>;
    /// Backward of [`BackendStorage::softmax_last`], given its output and the output gradient.
    fn softmax_last_backward(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        log: bool,
    ) -> Result<Self>;

    /// Layer/RMS norm over the last dim with optional weight and bias of shape `[d]`.
    /// Returns the output, the row means (zeros for RMS) and the row reciprocal std devs.
    fn norm(
        &self,
        layout: &Layout,
        weight: Option<(&Self, &Layout)>,
        bias: Option<(&Self, &Layout)>,
        spec: NormSpec,
    ) -> Result<(Self, Self, Self)>;
    /// Backward of [`BackendStorage::norm`] with `self` as the input x: returns
    /// (dx, dweight, dbias), the last two only where the forward had them.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        layout: &Layout,
        weight: Option<(&Self, &Layout)>,
        has_bias: bool,
        mean: &Self,
        rstd: &Self,
        grad: (&Self, &Layout),
        spec: NormSpec,
    ) -> Result<(Self, Option<Self>, Option<Self>)>;

    /// Attention of `self` as q `[b, h, tq, d]` over k `[b, h, tk, d]` and v
    /// `[b, h, tk, dv]`. Returns the output, stored token-major (`[b, tq, h, dv]`, so
    /// that merging the heads is a view), and the per-row log-sum-exp `[b, h, tq]`.
    fn attention(
        &self,
        layout: &Layout,
        k: (&Self, &Layout),
        v: (&Self, &Layout),
        spec: AttentionSpec,
    ) -> Result<(Self, Self)>;
    /// One fused Adam(W) update of the first `n` elements of `self` (the parameter) and
    /// its moment buffers `m` and `v`, in place, from the gradient view `grad`.
    fn adam_update(
        &mut self,
        n: usize,
        grad: (&Self, &Layout),
        m: &mut Self,
        v: &mut Self,
        step: &AdamStep,
    ) -> Result<()>;

    /// Backward of [`BackendStorage::attention`] with `self` as q: returns (dq, dk, dv),
    /// stored token-major like the output (`[b, t, h, d]`).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        layout: &Layout,
        k: (&Self, &Layout),
        v: (&Self, &Layout),
        out: (&Self, &Layout),
        lse: &Self,
        grad: (&Self, &Layout),
        spec: AttentionSpec,
    ) -> Result<(Self, Self, Self)>;
}
