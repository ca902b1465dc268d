//! Matrix products, 2-D and batched with broadcast batch dims, and the linear layer's
//! product with its bias added by the same kernel; transposed operands are read in
//! place through their strides.

use super::{check_float, check_same};
use crate::autocast::lowered;
use crate::backend::BackendStorage;
use crate::cpu::CpuStorage;
#[cfg(feature = "cuda")]
use crate::cuda::CudaStorage;
use crate::error::{Error, Result};
use crate::forward_ad::Duals;
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::broadcast_shapes;
use crate::profile::{self, ProductShape};
use crate::storage::Storage;
use crate::Tensor;

/// The tangent of `a·b (+ bias)`: ta·b + a·tb (+ tbias), the terms whose tangents exist.
fn product_tangent(d: &Duals, out: &Tensor) -> Result<Tensor> {
    let (a, b) = (d.primal(0), d.primal(1));
    let mut terms = Vec::with_capacity(3);
    if let Some(ta) = d.tangent(0) {
        terms.push(ta.matmul(b)?);
    }
    if let Some(tb) = d.tangent(1) {
        terms.push(a.matmul(tb)?);
    }
    if let Some(tbias) = d.tangent(2) {
        terms.push(tbias.clone());
    }
    let mut sum = terms.pop().map_or_else(|| out.zeros_like(), Ok)?;
    for t in terms {
        sum = t.add(&sum)?;
    }
    Ok(sum)
}

impl Tensor {
    /// `self · rhs` for `[..., m, k] · [..., k, n]`; batch dims broadcast. Runs in and
    /// returns the low dtype inside an autocast scope (see [`crate::autocast()`]).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        if let Some(x) = lowered(&[self, rhs])? {
            return x[0].matmul(&x[1]);
        }
        self.product("matmul", rhs, None)
    }

    /// A linear layer, `self · weightᵀ + bias`, for `self` `[..., k]`, `weight` `[n, k]`
    /// (PyTorch's layout) and `bias` `[n]`. The bias is added by the product's kernel
    /// (as PyTorch's `addmm`), not by a separate pass over the output. Runs in and
    /// returns the low dtype inside an autocast scope (see [`crate::autocast()`]).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        if let Some(x) = lowered(&inputs)? {
            return x[0].linear(&x[1], x.get(2));
        }
        let k = self.shape().last().copied();
        let fits = weight.rank() == 2
            && k == Some(weight.shape()[1])
            && bias.is_none_or(|b| b.shape() == [weight.shape()[0]]);
        if !fits {
            let mut shapes = vec![self.shape(), weight.shape()];
            shapes.extend(bias.map(|b| b.shape()));
            return Err(Error::shapes("linear", &shapes));
        }
        match self.rank() {
            1 => self
                .unsqueeze(0)?
                .product("linear", &weight.t()?, bias)?
                .squeeze(0),
            _ => self.product("linear", &weight.t()?, bias),
        }
    }

    /// `[..., m, k] · [k, n]` as one `[(...)·m, k] · [k, n]` product (a linear layer):
    /// one large product instead of many small ones, and in the backward the weight
    /// gradient comes out summed over the batch by the product itself.
    fn product_folded(
        &self,
        name: &'static str,
        rhs: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (lead, k) = self.shape().split_at(self.rank() - 1);
        let rows = lead.iter().product();
        let out = self.reshape(&[rows, k[0]])?.product(name, rhs, bias)?;
        out.reshape(&[lead, &[rhs.shape()[1]]].concat())
    }

    /// `self · rhs (+ bias)`, the op behind [`Tensor::matmul`] and [`Tensor::linear`].
    fn product(&self, name: &'static str, rhs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        check_float(name, self)?;
        let mut operands = vec![self, rhs];
        operands.extend(bias);
        check_same(name, &operands)?;
        let (a, b) = (self.shape(), rhs.shape());
        let (ra, rb) = (a.len(), b.len());
        if ra < 2 || rb < 2 || a[ra - 1] != b[rb - 2] {
            return Err(Error::shapes(name, &[a, b]));
        }
        let batch = broadcast_shapes(name, &a[..ra - 2], &b[..rb - 2])
            .map_err(|_| Error::shapes(name, &[a, b]))?;
        if rb == 2 && ra > 2 && self.is_contiguous() {
            return self.product_folded(name, rhs, bias);
        }
        let with = |tail: &[usize]| [batch.as_slice(), tail].concat();
        let la = self.layout().broadcast_to(name, &with(&a[ra - 2..]))?;
        let lb = rhs.layout().broadcast_to(name, &with(&b[rb - 2..]))?;
        let shape = with(&[a[ra - 2], b[rb - 1]]);
        let lbias = bias
            .map(|t| t.layout().broadcast_to(name, &shape))
            .transpose()?;
        let bias_storage = bias.map(|t| t.storage());
        let bias_view = bias_storage.as_deref().zip(lbias.as_ref());
        let s = self.storage().matmul(&la, &rhs.storage(), &lb, bias_view)?;
        Tensor::from_op(
            name,
            s,
            &shape,
            &operands,
            |x, _, g| {
                let (a, b) = (&x[0], &x[1]);
                let ga = a
                    .requires_grad()
                    .then(|| g.matmul(&b.t()?)?.sum_to_shape(a.shape()));
                let bias = x.get(2).filter(|bias| bias.requires_grad());
                let (gb, gbias) = match (b.requires_grad(), bias) {
                    (true, Some(bias)) => {
                        let (gb, gbias) = weight_and_bias_gradients(a, b, g, bias)?;
                        (Some(gb), Some(gbias))
                    }
                    (true, None) => (Some(weight_gradient(a, b, g)?), None),
                    (false, bias) => {
                        let gbias = bias.map(|bias| g.sum_to_shape(bias.shape()));
                        (None, gbias.transpose()?)
                    }
                };
                let mut grads = vec![ga.transpose()?, gb];
                if x.len() > 2 {
                    grads.push(gbias);
                }
                Ok(grads)
            },
            product_tangent,
        )
    }
}

/// The gradient `aᵀ·g` of a product's right operand `b`. When `b` is a transposed
/// view of a contiguous matrix (a linear layer's `weightᵀ`), it is computed as
/// `(gᵀ·a)ᵀ`: the same products, but the weight's gradient then comes out contiguous
/// after the transpose's backward, instead of as a transposed view that every later
/// pass over it (gradient norm, optimizer) walks with a stride of a whole row.
fn weight_gradient(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<Tensor> {
    if is_weight(a, b)? {
        return g.t()?.matmul(a)?.t();
    }
    a.t()?.matmul(g)?.sum_to_shape(b.shape())
}

/// Whether `a·b` is a linear layer's product: a 2-D input times the transposed view of
/// a contiguous 2-D weight.
fn is_weight(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(b.rank() == 2 && a.rank() == 2 && !b.is_contiguous() && b.t()?.is_contiguous())
}

/// The gradients of a linear layer's weight (as [`weight_gradient`]) and bias
/// (`Σ_rows g`), through [`linear_param_grads`] where `a·b` is a linear layer's product.
fn weight_and_bias_gradients(
    a: &Tensor,
    b: &Tensor,
    g: &Tensor,
    bias: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let n = g.shape()[g.rank() - 1];
    if !is_weight(a, b)? || bias.shape() != [n] || g.rank() != 2 {
        return Ok((weight_gradient(a, b, g)?, g.sum_to_shape(bias.shape())?));
    }
    let (w, sums) = linear_param_grads(g, a)?;
    Ok((w.t()?, sums))
}

/// A linear layer's parameter gradients from its output's gradient `g` `[rows, n]` and
/// its input `x` `[rows, k]`: the weight's, `gᵀ·x` `[n, k]`, and the bias's, `Σ_rows g`
/// `[n]`, in one product where the backend sums `g` in the same pass
/// ([`WeightBiasGradients`]), else by a sum after it.
pub(crate) fn linear_param_grads(g: &Tensor, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let gt = g.t()?;
    let n = g.shape()[1];
    let _product = profile::product_scope(WeightBiasGradients::NAME, || {
        let shape = ProductShape::of_views(gt.layout(), x.layout());
        (g.dtype(), g.device(), shape)
    });
    let (w, sums) = Storage::fused(
        &WeightBiasGradients,
        ((&gt.storage(), gt.layout()), (&x.storage(), x.layout())),
    )?;
    let sums = match sums {
        Some(s) => Tensor::from_storage(s, &[n]),
        None => g.sum_to_shape(&[n])?,
    };
    Ok((Tensor::from_storage(w, &[n, x.shape()[1]]), sums))
}

/// The parameter gradients a caller wants, `(weight, bias)`, of a linear layer as
/// [`linear_param_grads`]: from one product when both are wanted.
pub(crate) fn wanted_linear_param_grads(
    g: &Tensor,
    x: &Tensor,
    (weight, bias): (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if weight && bias {
        let (w, b) = linear_param_grads(g, x)?;
        return Ok((Some(w), Some(b)));
    }
    Ok((
        weight.then(|| g.t()?.matmul(x)).transpose()?,
        bias.then(|| g.sum_to_shape(&[g.shape()[1]])).transpose()?,
    ))
}

/// `gᵀ·a` for views `gᵀ` `[n, rows]` and `a` `[rows, k]`, and, where the backend sums
/// them in the same call (cuBLASLt's `BGRADB` epilogue on CUDA; on the CPU, the AVX-512
/// micro-kernel adding up the `gᵀ` values it reads), the sums of `gᵀ`'s rows (a linear
/// layer's bias gradient); `None` leaves the sum to the caller.
struct WeightBiasGradients;

impl<'a> FusedOp<'a> for WeightBiasGradients {
    const NAME: &'static str = "weight_bias_gradients";
    type Inputs = (View<'a, Storage>, View<'a, Storage>);
    type Output = (Storage, Option<Storage>);

    fn cpu(&self, (gt, a): BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        if let Some((w, sums)) = gt.0.weight_bias_gradients(gt.1, a.0, a.1) {
            return Ok((w.into(), Some(sums.into())));
        }
        Ok((gt.0.matmul(gt.1, a.0, a.1, None)?.into(), None))
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (gt, a): BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        use crate::cuda::matmul::product_with_lhs_sums;
        if let Some((w, sums)) = product_with_lhs_sums(gt, a)? {
            return Ok((w.into(), Some(sums.into())));
        }
        Ok((gt.0.matmul(gt.1, a.0, a.1, None)?.into(), None))
    }
}
