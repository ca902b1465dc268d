//! Indexing by i64 tensors: index_select (embedding lookup) and gather, whose
//! gradients scatter-add back.

use super::check_float;
use crate::backend::BackendStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::normalize_dim;
use crate::Tensor;

fn check_ids(op: &'static str, ids: &Tensor, x: &Tensor) -> Result<()> {
    if ids.dtype() != DType::I64 {
        return Err(Error::invalid(
            op,
            format!("indices must be i64, got {}", ids.dtype()),
        ));
    }
    if ids.device() != x.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: x.device().to_string(),
            rhs: ids.device().to_string(),
        });
    }
    Ok(())
}

impl Tensor {
    /// Slices along `dim` picked by the 1-D i64 tensor `ids` (an embedding lookup for
    /// `dim = 0`). The gradient adds up where an index repeats.
    pub fn index_select(&self, ids: &Tensor, dim: isize) -> Result<Tensor> {
        check_ids("index_select", ids, self)?;
        let d = normalize_dim("index_select", dim, self.shape())?;
        if ids.rank() != 1 {
            return Err(Error::invalid(
                "index_select",
                format!("indices must be 1-D, got shape {:?}", ids.shape()),
            ));
        }
        let mut shape = self.shape().to_vec();
        shape[d] = ids.elem_count();
        let s = self
            .storage()
            .index_select(self.layout(), &ids.storage(), ids.layout(), d)?;
        Tensor::from_op(
            "index_select",
            s,
            &shape,
            &[self, ids],
            move |x, _, g| {
                let (src, ids) = (&x[0], &x[1]);
                let gs = g.storage().index_add(
                    g.layout(),
                    &ids.storage(),
                    ids.layout(),
                    d,
                    src.shape(),
                )?;
                Ok(vec![Some(Tensor::from_storage(gs, src.shape())), None])
            },
            move |duals, _| {
                duals
                    .tangent_or_zeros(0)?
                    .index_select(duals.primal(1), d as isize)
            },
        )
    }

    /// `out[i][j][k] = self[i][ids[i][j][k]][k]` for `dim = 1` (likewise for any dim).
    /// `ids` has `self`'s rank and no dim larger than `self`'s, except along `dim`.
    pub fn gather(&self, ids: &Tensor, dim: isize) -> Result<Tensor> {
        check_ids("gather", ids, self)?;
        check_float("gather", self)?;
        let d = normalize_dim("gather", dim, self.shape())?;
        let fits = ids.rank() == self.rank()
            && (0..self.rank()).all(|i| i == d || ids.shape()[i] <= self.shape()[i]);
        if !fits {
            return Err(Error::shapes("gather", &[self.shape(), ids.shape()]));
        }
        let s = self
            .storage()
            .gather(self.layout(), &ids.storage(), ids.layout(), d)?;
        Tensor::from_op(
            "gather",
            s,
            ids.shape(),
            &[self, ids],
            move |x, _, g| {
                let (src, ids) = (&x[0], &x[1]);
                let gs = g.storage().scatter_add(
                    g.layout(),
                    &ids.storage(),
                    ids.layout(),
                    d,
                    src.shape(),
                )?;
                Ok(vec![Some(Tensor::from_storage(gs, src.shape())), None])
            },
            move |duals, _| {
                duals
                    .tangent_or_zeros(0)?
                    .gather(duals.primal(1), d as isize)
            },
        )
    }
}
