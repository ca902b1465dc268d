//! Views (no copy): reshape of contiguous data, permute, transpose, broadcast, squeeze,
//! unsqueeze, narrow; and `contiguous`, the copy that ends a chain of views. A view's
//! tangent is the same view of the input's tangent.

use crate::backend::{BackendStorage, BinaryOp};
use crate::error::{Error, Result};
use crate::layout::{normalize_dim, Layout};
use crate::storage::Storage;
use crate::Tensor;

impl Tensor {
    /// The same elements under `shape` (same element count). A view when the tensor is
    /// contiguous, a copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.elem_count() {
            return Err(Error::shapes("reshape", &[self.shape(), shape]));
        }
        let src = self.contiguous()?;
        let layout = src
            .layout()
            .reshape(shape)
            .ok_or_else(|| Error::shapes("reshape", &[self.shape(), shape]))?;
        let to = shape.to_vec();
        src.view_op(
            "reshape",
            layout,
            |x, _, g| Ok(vec![Some(g.reshape(x[0].shape())?)]),
            move |d, _| d.tangent_or_zeros(0)?.reshape(&to),
        )
    }

    /// Dims reordered: dim `i` of the result is dim `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut sorted = perm.to_vec();
        sorted.sort_unstable();
        if sorted != (0..self.rank()).collect::<Vec<_>>() {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the dims of shape {:?}",
                    self.shape()
                ),
            ));
        }
        let mut inverse = vec![0; perm.len()];
        perm.iter().enumerate().for_each(|(i, &p)| inverse[p] = i);
        let layout = self.layout().permute(perm);
        let perm = perm.to_vec();
        self.view_op(
            "permute",
            layout,
            move |_, _, g| Ok(vec![Some(g.permute(&inverse)?)]),
            move |d, _| d.tangent_or_zeros(0)?.permute(&perm),
        )
    }

    /// Dims `a` and `b` swapped.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let a = normalize_dim("transpose", a, self.shape())?;
        let b = normalize_dim("transpose", b, self.shape())?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// The last two dims swapped (the matrix transpose of each batch entry).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid(
                "t",
                format!("needs rank ≥ 2, got shape {:?}", self.shape()),
            ));
        }
        self.transpose(-2, -1)
    }

    /// The tensor broadcast to `shape` (NumPy rules) without copying.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let layout = self.layout().broadcast_to("broadcast_to", shape)?;
        let to = shape.to_vec();
        self.view_op(
            "broadcast_to",
            layout,
            |x, _, g| Ok(vec![Some(g.sum_to_shape(x[0].shape())?)]),
            move |d, _| d.tangent_or_zeros(0)?.broadcast_to(&to),
        )
    }

    /// The size-1 dim `dim` removed.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim("squeeze", dim, self.shape())?;
        if self.shape()[d] != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!(
                    "dim {dim} of shape {:?} has size {}, not 1",
                    self.shape(),
                    self.shape()[d]
                ),
            ));
        }
        let layout = self.layout().squeeze(d);
        self.view_op(
            "squeeze",
            layout,
            move |_, _, g| Ok(vec![Some(g.unsqueeze(d as isize)?)]),
            move |duals, _| duals.tangent_or_zeros(0)?.squeeze(d as isize),
        )
    }

    /// A size-1 dim inserted at `dim` (`-1` appends).
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let rank = self.rank() as isize;
        let d = if dim < 0 { dim + rank + 1 } else { dim };
        if !(0..=rank).contains(&d) {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim,
                shape: self.shape().to_vec(),
            });
        }
        let layout = self.layout().unsqueeze(d as usize);
        self.view_op(
            "unsqueeze",
            layout,
            move |_, _, g| Ok(vec![Some(g.squeeze(d)?)]),
            move |duals, _| duals.tangent_or_zeros(0)?.unsqueeze(d),
        )
    }

    /// Elements `start..start+len` along `dim`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = normalize_dim("narrow", dim, self.shape())?;
        if start + len > self.shape()[d] {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{} exceeds dim {dim} of shape {:?}",
                    start + len,
                    self.shape()
                ),
            ));
        }
        let layout = self.layout().narrow(d, start, len);
        self.view_op_accumulating(
            "narrow",
            layout,
            move |x, _, g, gathered| {
                let total = match gathered {
                    Some(total) => total.plus_narrowed(g, d, start)?,
                    None => g.pad_into(x[0].shape(), d, start)?,
                };
                Ok(vec![Some(total)])
            },
            move |duals, _| duals.tangent_or_zeros(0)?.narrow(d as isize, start, len),
        )
    }

    /// `self` (a gradient being summed) with `g` added at `start..` along `dim`: in
    /// place where nothing else can see `self` change, so that the gradients of a
    /// tensor's chunks (adaLN's six modulation vectors) are written into one buffer
    /// instead of each being padded to the whole and the pads added.
    fn plus_narrowed(&self, g: &Tensor, dim: usize, start: usize) -> Result<Tensor> {
        if !self.is_sole_dense_handle() || self.dtype() != g.dtype() {
            return self.add(&g.pad_into(self.shape(), dim, start)?);
        }
        let dst = self.layout().narrow(dim, start, g.shape()[dim]);
        let sum = self
            .storage()
            .binary(&dst, &g.storage(), g.layout(), BinaryOp::Add)?;
        sum.copy_into(
            &Layout::contiguous(g.shape()),
            &mut self.storage_mut(),
            &dst,
        )?;
        Ok(self.clone())
    }

    /// Zeros of `shape` with `self` written at `start..` along `dim` (narrow's backward).
    pub(crate) fn pad_into(&self, shape: &[usize], dim: usize, start: usize) -> Result<Tensor> {
        let mut s = Storage::zeros(shape.iter().product(), self.dtype(), self.device())?;
        let dst = Layout::contiguous(shape).narrow(dim, start, self.shape()[dim]);
        self.storage().copy_into(self.layout(), &mut s, &dst)?;
        Ok(Tensor::from_storage(s, shape))
    }

    /// The tensor itself when contiguous, else a contiguous copy (gradients flow through).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let s = self.storage().copy_strided(self.layout())?;
        Tensor::from_op(
            "contiguous",
            s,
            self.shape(),
            &[self],
            |_, _, g| Ok(vec![Some(g.clone())]),
            |d, _| d.tangent_or_zeros(0),
        )
    }

    /// All dims merged into one.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.elem_count()])
    }
}
