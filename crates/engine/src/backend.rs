//! The contract between op code and devices.
//!
//! `ops/` decides shapes, dtypes and backward rules once; a backend only runs kernels.
//! Every backend's storage implements [`BackendStorage`], the primitives many ops share;
//! [`crate::storage::Storage`] dispatches to the one a tensor lives on. Inputs come with
//! their [`Layout`] (any strides, already broadcast to a common shape where the op needs
//! one); outputs are always fresh contiguous storage. The fused ops (softmax, the norms,
//! attention, `addcmul`, `sum_product`, the Adam update) are not trait methods: each
//! op's file in `ops/` holds its CPU and CUDA kernel calls side by side (see `fused.rs`);
//! their options ([`NormSpec`], [`AttentionSpec`], [`AdamStep`]) and [`stats_dtype`] are
//! here, shared by the ops and the kernels.

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

/// How many of x's `rows` share each row of a norm parameter of `param_len` values
/// (rows of `d`: one, or one per group of consecutive rows); all of them when there is
/// no parameter. Both backends' norm kernels index parameters by `row / this`.
pub(crate) fn norm_rows_per_group(param_len: Option<usize>, rows: usize, d: usize) -> usize {
    let groups = param_len.map_or(1, |n| (n / d.max(1)).max(1));
    (rows / groups).max(1)
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

impl AdamStep {
    /// The bias-corrected scalars the kernels take, in f32: the step size
    /// `lr / (1 − β₁ᵗ)` and `1 / √(1 − β₂ᵗ)`, which scales √v.
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step as f64;
        let step_size = self.lr / (1.0 - self.beta1.powf(t));
        let inv_sqrt_bc2 = 1.0 / (1.0 - self.beta2.powf(t)).sqrt();
        (step_size as f32, inv_sqrt_bc2 as f32)
    }
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

    /// `op` over the sorted `dims`; the result has the keep-dim shape.
    fn reduce(&self, layout: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self>;

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
}
