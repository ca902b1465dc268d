//! Dtype conversion; gradients flow back through casts between float dtypes.

use crate::backend::BackendStorage;
use crate::dtype::DType;
use crate::error::Result;
use crate::Tensor;

impl Tensor {
    /// The values converted to `dtype` (the tensor itself when it already has it).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let s = self.storage().to_dtype(self.layout(), dtype)?;
        Ok(Tensor::from_op(
            "to_dtype",
            s,
            self.shape(),
            &[self],
            |x, _, g| {
                let back = x[0].dtype().is_float().then(|| g.to_dtype(x[0].dtype()));
                Ok(vec![back.transpose()?])
            },
        ))
    }
}
