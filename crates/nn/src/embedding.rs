//! `Embedding`: a table of learned vectors looked up by integer id.

use crate::impl_module;
use crate::init::{Init, ParamBuilder};
use crate::module::Forward;
use twinflow_engine::{Result, Tensor};

/// A `[num, dim]` table; `forward(ids)` returns the rows picked by the i64 `ids`
/// (PyTorch's `nn.Embedding`, parameter name `weight`).
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[num, dim]`.
    pub weight: Tensor,
}

impl Embedding {
    /// A table of `num` vectors of size `dim`, filled by `init`.
    pub fn new(pb: &mut ParamBuilder, num: usize, dim: usize, init: Init) -> Result<Self> {
        let weight = pb.param(&[num, dim], init, (num, dim))?;
        Ok(Embedding { weight })
    }

    /// Size of each vector.
    pub fn dim(&self) -> usize {
        self.weight.shape()[1]
    }
}

impl Forward for Embedding {
    /// `ids` of any shape (i64, each in `0..num`) → `[ids.shape.., dim]`. Out-of-range
    /// ids are an error.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.weight.index_select(&ids.flatten_all()?, 0)?;
        let shape = [ids.shape(), &[self.dim()]].concat();
        rows.reshape(&shape)
    }
}

impl_module! { Embedding { weight } }
