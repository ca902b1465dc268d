//! Dtype conversion; gradients flow back through casts between float dtypes.

use crate::backend::BackendStorage;
use crate::dtype::DType;
use crate::error::Result;
use crate::Tensor;

impl Tensor {
    /// The values converted to `dtype` (the tensor itself when it already has it),
    /// rounded to nearest, ties to even.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let s = self.storage().to_dtype(self.layout(), dtype)?;
        if !dtype.is_float() || !self.dtype().is_float() {
            // Integers carry no gradient, in either direction.
            return Ok(Tensor::from_storage(s, self.shape()));
        }
        Tensor::from_op(
            "to_dtype",
            s,
            self.shape(),
            &[self],
            |x, _, g| Ok(vec![Some(g.to_dtype(x[0].dtype())?)]),
            move |d, _| d.tangent_or_zeros(0)?.to_dtype(dtype),
        )
    }
}
