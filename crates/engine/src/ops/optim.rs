//! In-place optimizer updates on parameter storage (not recorded in the graph).

use crate::backend::{AdamStep, BackendStorage};
use crate::error::{Error, Result};
use crate::Tensor;

impl Tensor {
    /// One fused Adam/AdamW step on this parameter, in place: reads `grad`, updates the
    /// moment buffers `m` and `v` (f32, the parameter's shape, contiguous) and the
    /// parameter (f32, contiguous from the start of its storage).
    pub fn adam_update(
        &self,
        grad: &Tensor,
        m: &Tensor,
        v: &Tensor,
        step: &AdamStep,
    ) -> Result<()> {
        const OP: &str = "adam_update";
        for t in [grad, m, v] {
            if t.shape() != self.shape() {
                return Err(Error::shapes(OP, &[self.shape(), t.shape()]));
            }
        }
        let own_storage = |t: &Tensor| t.is_contiguous() && t.layout().offset() == 0;
        if ![self, m, v].into_iter().all(own_storage) {
            return Err(Error::invalid(
                OP,
                "parameter and moments must be contiguous from offset 0",
            ));
        }
        let distinct = !self.shares_storage(m) && !self.shares_storage(v) && !m.shares_storage(v);
        if !distinct || [m, v].iter().any(|t| t.shares_storage(grad)) {
            return Err(Error::invalid(
                OP,
                "parameter, gradient and moments must not share storage",
            ));
        }
        if step.step == 0 {
            return Err(Error::invalid(OP, "steps are counted from 1"));
        }
        // A gradient viewing the parameter's own storage is copied before the write.
        let grad = if grad.shares_storage(self) {
            grad.contiguous_copy()?
        } else {
            grad.clone()
        };
        let g = grad.storage();
        let (mut ms, mut vs) = (m.storage_mut(), v.storage_mut());
        self.storage_mut().adam_update(
            self.elem_count(),
            (&g, grad.layout()),
            &mut ms,
            &mut vs,
            step,
        )
    }
}
