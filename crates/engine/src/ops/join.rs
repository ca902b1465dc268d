//! Joining and splitting: cat (primitive), stack and chunk (built on views and cat).

use super::check_same;
use crate::autocast::promoted;
use crate::backend::BackendStorage;
use crate::error::{Error, Result};
use crate::layout::{normalize_dim, Layout};
use crate::storage::Storage;
use crate::Tensor;

impl Tensor {
    /// The tensors joined along `dim`; all other dims must agree.
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        if let Some(x) = promoted(tensors)? {
            return Tensor::cat(&x.iter().collect::<Vec<_>>(), dim);
        }
        check_same("cat", tensors)?;
        let d = normalize_dim("cat", dim, first.shape())?;
        let agrees = |t: &&Tensor| {
            t.rank() == first.rank()
                && (0..t.rank()).all(|i| i == d || t.shape()[i] == first.shape()[i])
        };
        if !tensors.iter().all(agrees) {
            let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
            return Err(Error::shapes("cat", &shapes));
        }
        let mut shape = first.shape().to_vec();
        shape[d] = tensors.iter().map(|t| t.shape()[d]).sum();
        let mut out = Storage::zeros(shape.iter().product(), first.dtype(), first.device())?;
        let mut starts = Vec::with_capacity(tensors.len());
        let mut at = 0;
        for t in tensors {
            let dst = Layout::contiguous(&shape).narrow(d, at, t.shape()[d]);
            t.storage().copy_into(t.layout(), &mut out, &dst)?;
            starts.push(at);
            at += t.shape()[d];
        }
        Tensor::from_op(
            "cat",
            out,
            &shape,
            tensors,
            move |x, _, g| {
                x.iter()
                    .zip(&starts)
                    .map(|(t, &s)| Ok(Some(g.narrow(d as isize, s, t.shape()[d])?)))
                    .collect()
            },
            // The tangents joined the same way, zeros for inputs that carry none.
            move |duals, _| {
                let tangents = (0..tensors.len())
                    .map(|i| duals.tangent_or_zeros(i))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&tangents.iter().collect::<Vec<_>>(), d as isize)
            },
        )
    }

    /// The tensors (all of one shape) stacked along a new dim `dim`.
    pub fn stack(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        if let Some(t) = tensors.iter().find(|t| t.shape() != tensors[0].shape()) {
            return Err(Error::shapes("stack", &[tensors[0].shape(), t.shape()]));
        }
        let expanded = tensors
            .iter()
            .map(|t| t.unsqueeze(dim))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&expanded.iter().collect::<Vec<_>>(), dim)
    }

    /// `n` views along `dim` of (nearly) equal size; the last may be smaller, as in
    /// PyTorch.
    pub fn chunk(&self, n: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = normalize_dim("chunk", dim, self.shape())?;
        if n == 0 {
            return Err(Error::invalid("chunk", "needs at least one chunk"));
        }
        let size = self.shape()[d].div_ceil(n).max(1);
        (0..self.shape()[d])
            .step_by(size)
            .map(|start| self.narrow(dim, start, size.min(self.shape()[d] - start)))
            .collect()
    }
}
