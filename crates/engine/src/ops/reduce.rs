//! Reductions over any dims: sum, max and min are primitives; mean, var and logsumexp
//! are built from them.

use super::{check_float, check_same};
use crate::autocast::widened;
use crate::backend::{BackendStorage, BinaryOp, ReduceOp};
use crate::cpu::CpuStorage;
#[cfg(feature = "cuda")]
use crate::cuda::{rows, CudaStorage};
use crate::error::{Error, Result};
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::{broadcast_shapes, normalize_dims, Layout};
use crate::storage::Storage;
use crate::Tensor;

impl Tensor {
    /// `op` over `dims`, keeping them as size-1 dims.
    fn reduce_keepdim(&self, name: &'static str, dims: &[isize], op: ReduceOp) -> Result<Tensor> {
        check_float(name, self)?;
        let dims = normalize_dims(name, dims, self.shape())?;
        let mut shape = self.shape().to_vec();
        dims.iter().for_each(|&d| shape[d] = 1);
        let s = self.storage().reduce(self.layout(), &dims, op)?;
        let signed: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
        Tensor::from_op(
            name,
            s,
            &shape,
            &[self],
            move |x, out, g| {
                let x = &x[0];
                let g = g.broadcast_to(x.shape())?;
                let dims: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
                Ok(vec![Some(match op {
                    ReduceOp::Sum => g,
                    // The gradient is shared among the elements equal to the extreme value,
                    // like PyTorch's amax/amin.
                    ReduceOp::Max | ReduceOp::Min => {
                        let (hit, ties) = extremes(x, out, &dims)?;
                        g.mul(&hit)?.div(&ties)?
                    }
                })])
            },
            move |d, out| {
                let t = d.tangent_or_zeros(0)?;
                match op {
                    ReduceOp::Sum => t.sum_keepdim(&signed),
                    // The mean tangent of the tied extremes: the backward's sharing, read
                    // the other way.
                    ReduceOp::Max | ReduceOp::Min => {
                        let (hit, ties) = extremes(d.primal(0), out, &signed)?;
                        t.sum_product_keepdim(&hit, &signed)?.div(&ties)
                    }
                }
            },
        )
    }

    /// Σ over `dims`, keeping them; in f32 inside an autocast scope (so are the mean and
    /// variance built on it).
    pub(crate) fn sum_keepdim(&self, dims: &[isize]) -> Result<Tensor> {
        if let Some(x) = widened(&[self])? {
            return x[0].sum_keepdim(dims);
        }
        self.reduce_keepdim("sum", dims, ReduceOp::Sum)
    }

    /// Σ over `dims` of `self · other` (broadcast together): a dot product along `dims`,
    /// computed without the product in memory where the backend fuses the two (the
    /// CUDA backend does for contiguous operands reduced over leading or middle dims).
    /// In f32 inside an autocast scope, as `sum`.
    pub fn sum_product(&self, other: &Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        finish_reduce(self.sum_product_keepdim(other, dims)?, dims, keepdim)
    }

    /// [`Tensor::sum_product`] keeping the reduced dims.
    pub(crate) fn sum_product_keepdim(&self, other: &Tensor, dims: &[isize]) -> Result<Tensor> {
        const OP: &str = "sum_product";
        if let Some(x) = widened(&[self, other])? {
            return x[0].sum_product_keepdim(&x[1], dims);
        }
        check_float(OP, self)?;
        check_same(OP, &[self, other])?;
        let shape = broadcast_shapes(OP, self.shape(), other.shape())?;
        let (la, lb) = (
            self.layout().broadcast_to(OP, &shape)?,
            other.layout().broadcast_to(OP, &shape)?,
        );
        let dims = normalize_dims(OP, dims, &shape)?;
        let mut summed = shape.clone();
        dims.iter().for_each(|&d| summed[d] = 1);
        let inputs = ((&*self.storage(), &la), (&*other.storage(), &lb));
        let s = Storage::fused(&SumProduct(&dims), inputs)?;
        let signed: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
        Tensor::from_op(
            OP,
            s,
            &summed,
            &[self, other],
            move |v, _, g| {
                let (a, b) = (&v[0], &v[1]);
                let g = g.broadcast_to(&shape)?;
                let ga = a.requires_grad().then(|| g.mul_sum_to_shape(b, a.shape()));
                let gb = b.requires_grad().then(|| g.mul_sum_to_shape(a, b.shape()));
                Ok(vec![ga.transpose()?, gb.transpose()?])
            },
            // Product rule inside the sum: Σ ta·b + Σ a·tb.
            move |d, _| {
                let (a, b) = (d.primal(0), d.primal(1));
                match (d.tangent(0), d.tangent(1)) {
                    (Some(ta), Some(tb)) => ta
                        .sum_product_keepdim(b, &signed)?
                        .add(&a.sum_product_keepdim(tb, &signed)?),
                    (Some(ta), None) => ta.sum_product_keepdim(b, &signed),
                    _ => a.sum_product_keepdim(&d.tangent_or_zeros(1)?, &signed),
                }
            },
        )
    }

    /// Σ over `dims`.
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        finish_reduce(self.sum_keepdim(dims)?, dims, keepdim)
    }

    /// Σ of every element (rank-0 result).
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&all_dims(self), false)
    }

    /// Maximum over `dims`.
    pub fn max(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let r = self.reduce_keepdim("max", dims, ReduceOp::Max)?;
        finish_reduce(r, dims, keepdim)
    }

    /// Minimum over `dims`.
    pub fn min(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let r = self.reduce_keepdim("min", dims, ReduceOp::Min)?;
        finish_reduce(r, dims, keepdim)
    }

    /// Number of elements the reduction over `dims` combines.
    fn reduced_count(&self, name: &'static str, dims: &[isize]) -> Result<usize> {
        let dims = normalize_dims(name, dims, self.shape())?;
        Ok(dims.iter().map(|&d| self.shape()[d]).product())
    }

    /// Mean over `dims`.
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let n = self.reduced_count("mean", dims)?;
        self.sum(dims, keepdim)?.mul_scalar(1.0 / n as f64)
    }

    /// Mean of every element (rank-0 result).
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&all_dims(self), false)
    }

    /// Variance over `dims`, dividing by `n − correction` (0: population variance,
    /// 1: PyTorch's default unbiased estimate).
    pub fn var(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        let n = self.reduced_count("var", dims)?;
        if n <= correction {
            return Err(Error::invalid(
                "var",
                format!("{n} elements per reduction leave no degrees of freedom with correction {correction}"),
            ));
        }
        let centred = self.sub(&self.mean(dims, true)?)?;
        centred
            .square()?
            .sum(dims, keepdim)?
            .mul_scalar(1.0 / (n - correction) as f64)
    }

    /// ln Σ eˣ over `dims`, computed stably by shifting by the (constant) maximum.
    pub fn logsumexp(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let shift = self.max(dims, true)?.detach();
        let lse = self
            .sub(&shift)?
            .exp()?
            .sum_keepdim(dims)?
            .log()?
            .add(&shift)?;
        finish_reduce(lse, dims, keepdim)
    }
}

/// The mask of the elements of `x` equal to their reduction's extreme `out`, and how
/// many tie in each reduction.
fn extremes(x: &Tensor, out: &Tensor, dims: &[isize]) -> Result<(Tensor, Tensor)> {
    let hit = x.eq(out)?;
    let ties = hit.sum_keepdim(dims)?;
    Ok((hit, ties))
}

fn all_dims(t: &Tensor) -> Vec<isize> {
    (0..t.rank() as isize).collect()
}

/// Drops the reduced dims from a keep-dim result unless `keepdim` (the kept dims have
/// the input's sizes, the reduced ones size 1).
fn finish_reduce(reduced: Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
    if keepdim {
        return Ok(reduced);
    }
    let dims = normalize_dims("reduce", dims, reduced.shape())?;
    let shape: Vec<usize> = (0..reduced.rank())
        .filter(|d| !dims.contains(d))
        .map(|d| reduced.shape()[d])
        .collect();
    reduced.reshape(&shape)
}

/// The kernels of Σ over the sorted dims of `x · y` (two views of one shape), in the
/// keep-dim shape. Where the layouts allow, both backends fold the product into the
/// reduction, so the product never reaches memory (the CPU: two contiguous views laid
/// out alike, reduced over consecutive dims); elsewhere the host multiplies, then sums.
struct SumProduct<'d>(&'d [usize]);

impl<'a> FusedOp<'a> for SumProduct<'_> {
    const NAME: &'static str = "sum_product";
    type Inputs = (View<'a, Storage>, View<'a, Storage>);
    type Output = Storage;

    fn cpu(&self, (x, y): BackendInputs<'a, Self, CpuStorage>) -> Result<Storage> {
        if let Some(summed) = x.0.sum_product(x.1, y.0, y.1, self.0) {
            return Ok(summed.into());
        }
        let product = x.0.binary(x.1, y.0, y.1, BinaryOp::Mul)?;
        let summed = product.reduce(&Layout::contiguous(x.1.shape()), self.0, ReduceOp::Sum)?;
        Ok(summed.into())
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (x, y): BackendInputs<'a, Self, CudaStorage>) -> Result<Storage> {
        Ok(rows::sum_product(x.0, x.1, y, self.0)?.into())
    }
}
