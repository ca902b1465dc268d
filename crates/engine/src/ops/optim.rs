//! In-place optimizer updates on parameter storage (not recorded in the graph).

use crate::backend::{AdamStep, BackendStorage};
use crate::cpu::{adam, ema, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{adam_list, elementwise, CudaStorage};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::Layout;
use crate::profile;
use crate::storage::{Native, Storage};
use crate::{Device, Tensor};
use parking_lot::{RwLockReadGuard, RwLockWriteGuard};
use std::collections::HashSet;

/// One parameter's share of an Adam step ([`Tensor::adam_update_many`]): the f32
/// parameter and its moment buffers (the parameter's shape, contiguous from the start of
/// their storage), its gradient (any float view of that shape) and the step's
/// hyper-parameters with this parameter's step count.
#[derive(Debug, Clone, Copy)]
pub struct AdamTensors<'a> {
    /// The parameter, updated in place.
    pub param: &'a Tensor,
    /// Its gradient.
    pub grad: &'a Tensor,
    /// The first moment `m`, updated in place.
    pub exp_avg: &'a Tensor,
    /// The second moment `v`, updated in place.
    pub exp_avg_sq: &'a Tensor,
    /// Hyper-parameters and step number.
    pub step: AdamStep,
}

impl AdamTensors<'_> {
    /// Refuses what the update cannot take, naming the problem.
    fn check(&self) -> Result<()> {
        const OP: &str = "adam_update";
        let (p, g, m, v) = (self.param, self.grad, self.exp_avg, self.exp_avg_sq);
        for t in [g, m, v] {
            if t.shape() != p.shape() {
                return Err(Error::shapes(OP, &[p.shape(), t.shape()]));
            }
        }
        if ![p, m, v].into_iter().all(contiguous_from_start) {
            return Err(Error::invalid(
                OP,
                "parameter and moments must be contiguous from offset 0",
            ));
        }
        let distinct = !p.shares_storage(m) && !p.shares_storage(v) && !m.shares_storage(v);
        if !distinct || [m, v].iter().any(|t| t.shares_storage(g)) {
            return Err(Error::invalid(
                OP,
                "parameter, gradient and moments must not share storage",
            ));
        }
        if self.step.step == 0 {
            return Err(Error::invalid(OP, "steps are counted from 1"));
        }
        Ok(())
    }

    /// The tensors written in place.
    fn written(&self) -> [&Tensor; 3] {
        [self.param, self.exp_avg, self.exp_avg_sq]
    }
}

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
        Tensor::adam_update_many(&[AdamTensors {
            param: self,
            grad,
            exp_avg: m,
            exp_avg_sq: v,
            step: *step,
        }])
    }

    /// The Adam/AdamW step of every parameter in `list`, in place, each as
    /// [`Tensor::adam_update`] would make it; on CUDA a few launches for the whole list
    /// (a multi-tensor step) instead of one a parameter. All tensors must be on one
    /// device, and no tensor written may share storage with another of the list.
    pub fn adam_update_many(list: &[AdamTensors<'_>]) -> Result<()> {
        const OP: &str = "adam_update";
        let Some(first) = list.first() else {
            return Ok(());
        };
        for item in list {
            item.check()?;
        }
        let mut written = HashSet::new();
        for t in list.iter().flat_map(|t| t.written()) {
            if !written.insert(t.storage_key()) {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "a parameter or moment buffer of shape {:?} is listed twice (or \
                         shares storage with another)",
                        t.shape()
                    ),
                ));
            }
        }
        // A gradient viewing storage the step writes is copied before the writes.
        let grads = list
            .iter()
            .map(|t| match written.contains(&t.grad.storage_key()) {
                true => t.grad.contiguous_copy(),
                false => Ok(t.grad.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        let device = first.param.device();
        let elements = list.iter().map(|t| t.param.elem_count()).sum();
        let _profiled = profile::scope(OP, || (DType::F32, elements, device));
        let mut locked = Locked::new(list, &grads);
        match device {
            Device::Cpu => locked.cpu(list, device),
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => locked.cuda(list, device),
        }
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

/// The f32 copy a CPU view needs before [`f32_values`] can read it: none for a
/// contiguous f32 view, which is read where it lies.
fn f32_copy(view: View<'_, CpuStorage>) -> Result<Option<CpuStorage>> {
    Ok(match view {
        (CpuStorage::F32(_), l) if l.is_contiguous() => None,
        (storage, l) => Some(storage.to_dtype(l, DType::F32)?),
    })
}

/// The `n` values of a CPU view as f32: from its copy where [`f32_copy`] made one, else
/// where they lie.
fn f32_values<'s>(
    (storage, l): View<'s, CpuStorage>,
    n: usize,
    copy: &'s Option<CpuStorage>,
    op: &'static str,
) -> Result<&'s [f32]> {
    match (copy, storage) {
        (Some(CpuStorage::F32(v)), _) => Ok(&v[..n]),
        (None, CpuStorage::F32(v)) => Ok(&v[l.offset()..l.offset() + n]),
        (Some(other), _) | (None, other) => {
            Err(Error::dtypes(op, &[storage.dtype(), other.dtype()]))
        }
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
        let copy = f32_copy(online)?;
        let online = f32_values(online, n, &copy, Self::NAME)?;
        ema::update(&mut avg[..n], online, self.0);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ((avg, al), online): BackendInputs<'a, Self, CudaStorage>) -> Result<()> {
        elementwise::ema(avg, al.elem_count(), online, self.0)
    }
}

/// The storages of a list's tensors, locked for the step: written ones (parameter, m, v
/// of each entry) for writing, gradients for reading.
struct Locked<'t> {
    written: Vec<[RwLockWriteGuard<'t, Storage>; 3]>,
    grads: Vec<RwLockReadGuard<'t, Storage>>,
}

impl<'t> Locked<'t> {
    fn new(list: &'t [AdamTensors<'t>], grads: &'t [Tensor]) -> Self {
        Locked {
            written: list
                .iter()
                .map(|t| t.written().map(|w| w.storage_mut()))
                .collect(),
            grads: grads.iter().map(|g| g.storage()).collect(),
        }
    }

    /// Every parameter's step in one parallel pass (`adam::update_many`).
    fn cpu(&mut self, list: &[AdamTensors<'_>], device: Device) -> Result<()> {
        const OP: &str = "adam_update";
        // A contiguous f32 gradient (the usual case) is read where it lies.
        let copies = (list.iter().zip(&self.grads))
            .map(|(item, g)| f32_copy((CpuStorage::of(OP, device, g)?, item.grad.layout())))
            .collect::<Result<Vec<_>>>()?;
        let mut slices = Vec::with_capacity(list.len());
        let entries = list.iter().zip(&mut self.written).zip(&self.grads);
        for (((item, [p, m, v]), g), copy) in entries.zip(&copies) {
            let n = item.param.elem_count();
            let g = CpuStorage::of(OP, device, g)?;
            let p = CpuStorage::of_mut(OP, device, p)?;
            let m = CpuStorage::of_mut(OP, device, m)?;
            let v = CpuStorage::of_mut(OP, device, v)?;
            let dtypes = [p.dtype(), g.dtype(), m.dtype(), v.dtype()];
            let g = f32_values((g, item.grad.layout()), n, copy, OP)?;
            match (p, m, v) {
                (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                    slices.push(adam::AdamSlices {
                        p: &mut p[..n],
                        g,
                        m: &mut m[..n],
                        v: &mut v[..n],
                        step: &item.step,
                    })
                }
                _ => return Err(Error::dtypes(OP, &dtypes)),
            }
        }
        adam::update_many(slices);
        Ok(())
    }

    /// Every parameter's step in a few launches (`cuda::adam_list`).
    #[cfg(feature = "cuda")]
    fn cuda(&mut self, list: &[AdamTensors<'_>], device: Device) -> Result<()> {
        const OP: &str = "adam_update";
        let mut items = Vec::with_capacity(list.len());
        for ((item, [p, m, v]), g) in list.iter().zip(&mut self.written).zip(&self.grads) {
            items.push(adam_list::AdamOperands {
                p: CudaStorage::of_mut(OP, device, p)?,
                g: (CudaStorage::of(OP, device, g)?, item.grad.layout()),
                m: CudaStorage::of_mut(OP, device, m)?,
                v: CudaStorage::of_mut(OP, device, v)?,
                n: item.param.elem_count(),
                step: item.step,
            });
        }
        adam_list::adam_many(&items)
    }
}
