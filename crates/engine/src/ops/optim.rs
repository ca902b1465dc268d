//! In-place optimizer updates on parameter storage (not recorded in the graph).

use crate::backend::{AdamStep, BackendStorage};
use crate::cpu::{adam, ema, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{elementwise, CudaStorage};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::Layout;
use crate::storage::Storage;
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
        if ![self, m, v].into_iter().all(contiguous_from_start) {
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
        let (m, v) = ((&mut *ms, m.layout()), (&mut *vs, v.layout()));
        let param = (&mut *self.storage_mut(), self.layout());
        Storage::fused(&AdamUpdate(*step), (param, (&*g, grad.layout()), m, v))
    }

    /// The moving-average update of a parameter copy, in place:
    /// `self ← online + (self − online)·decay`, the same arithmetic as
    /// `online.addcmul(&self.sub(online)?, decay)` in one pass and without its two
    /// intermediate tensors. `self` is f32, contiguous from the start of its storage and
    /// shares no storage with `online`, a float view of the same shape.
    pub fn ema_update(&self, online: &Tensor, decay: f64) -> Result<()> {
        const OP: &str = "ema_update";
        super::check_float(OP, online)?;
        if online.shape() != self.shape() {
            return Err(Error::shapes(OP, &[self.shape(), online.shape()]));
        }
        if !contiguous_from_start(self) {
            return Err(Error::invalid(
                OP,
                "the average must be contiguous from offset 0",
            ));
        }
        if self.shares_storage(online) {
            return Err(Error::invalid(
                OP,
                "the average and the online tensor must not share storage",
            ));
        }
        let theirs = online.storage();
        let avg = (&mut *self.storage_mut(), self.layout());
        let update = EmaUpdate(decay as f32);
        Storage::fused(&update, (avg, (&*theirs, online.layout())))
    }
}

/// Whether `t` is contiguous from the start of its storage, as the in-place updates
/// need the tensors they write.
fn contiguous_from_start(t: &Tensor) -> bool {
    t.is_contiguous() && t.layout().offset() == 0
}

/// The `n` values of a CPU view as f32: where they lie for a contiguous f32 view, else
/// converted into `converted`, which holds the copy.
fn f32_values<'s>(
    (storage, l): View<'s, CpuStorage>,
    n: usize,
    converted: &'s mut Option<CpuStorage>,
    op: &'static str,
) -> Result<&'s [f32]> {
    if let CpuStorage::F32(v) = storage {
        if l.is_contiguous() {
            return Ok(&v[l.offset()..l.offset() + n]);
        }
    }
    match converted.insert(storage.to_dtype(l, DType::F32)?) {
        CpuStorage::F32(v) => Ok(&v[..n]),
        other => Err(Error::dtypes(op, &[storage.dtype(), other.dtype()])),
    }
}

/// The moving-average update's kernels: the f32 average (the lead), contiguous from
/// offset 0, written in place from the online view, which is converted to f32.
struct EmaUpdate(f32);

impl<'a> FusedOp<'a> for EmaUpdate {
    const NAME: &'static str = "ema_update";
    type Inputs = ((&'a mut Storage, &'a Layout), View<'a, Storage>);
    type Output = ();

    fn cpu(&self, ((avg, al), online): BackendInputs<'a, Self, CpuStorage>) -> Result<()> {
        let n = al.elem_count();
        let dtypes = [avg.dtype(), online.0.dtype()];
        let CpuStorage::F32(avg) = avg else {
            return Err(Error::dtypes(Self::NAME, &dtypes));
        };
        // A contiguous f32 online tensor (a parameter) is read where it lies.
        let mut converted = None;
        let online = f32_values(online, n, &mut converted, Self::NAME)?;
        ema::update(&mut avg[..n], online, self.0);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ((avg, al), online): BackendInputs<'a, Self, CudaStorage>) -> Result<()> {
        elementwise::ema(avg, al.elem_count(), online, self.0)
    }
}

/// The update's kernels: parameter (the lead) and moments, views of the same shape
/// contiguous from offset 0, written in place from the gradient view; all f32 but the
/// gradient, which is converted.
struct AdamUpdate(AdamStep);

impl<'a> FusedOp<'a> for AdamUpdate {
    const NAME: &'static str = "adam_update";
    type Inputs = (
        (&'a mut Storage, &'a Layout),
        View<'a, Storage>,
        (&'a mut Storage, &'a Layout),
        (&'a mut Storage, &'a Layout),
    );
    type Output = ();

    fn cpu(
        &self,
        ((p, pl), grad, (m, _), (v, _)): BackendInputs<'a, Self, CpuStorage>,
    ) -> Result<()> {
        let n = pl.elem_count();
        let dtypes = [p.dtype(), grad.0.dtype(), m.dtype(), v.dtype()];
        // A contiguous f32 gradient (the usual case) is read where it lies.
        let mut converted = None;
        let g = f32_values(grad, n, &mut converted, Self::NAME)?;
        match (p, m, v) {
            (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                adam::update(&mut p[..n], g, &mut m[..n], &mut v[..n], &self.0);
                Ok(())
            }
            _ => Err(Error::dtypes(Self::NAME, &dtypes)),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        ((p, pl), grad, (m, _), (v, _)): BackendInputs<'a, Self, CudaStorage>,
    ) -> Result<()> {
        elementwise::adam(p, pl.elem_count(), grad, m, v, &self.0)
    }
}
