//! Fused ops: the CPU and CUDA kernels of one op step (a forward, or its backward)
//! written side by side in the op's own file, as an impl of [`FusedOp`].
//!
//! The primitives (elementwise maps, reductions, products, indexing) are methods of
//! [`BackendStorage`](crate::backend::BackendStorage), shared by many ops and
//! implemented once per backend. A fused op serves a single `Tensor` method, so giving
//! it trait methods meant a declaration in `backend.rs`, a dispatch in `storage.rs` and
//! a pass-through method in `cpu/mod.rs` and `cuda/mod.rs`. Instead the op names its
//! operands once, as `Storage` ([`FusedOp::Inputs`]), and
//! [`Storage::fused`](crate::storage::Storage::fused) does for every fused op what
//! those dispatch methods did one by one: it opens the profiler's scope, unwraps each
//! operand to the lead operand's backend (an error naming the op when one sits on
//! another device), refuses views whose dtypes differ, and calls [`FusedOp::cpu`] or
//! [`FusedOp::cuda`].
//!
//! A fused op still ships with its backward: the forward's `Tensor` method records a
//! backward rule that runs the backward's own `FusedOp` (see `ops/norm.rs`).

use crate::backend::BackendStorage;
use crate::cpu::CpuStorage;
#[cfg(feature = "cuda")]
use crate::cuda::CudaStorage;
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;
use crate::storage::{Native, Storage};
use crate::Device;

/// A view: storage of type `S` and the layout that reads it.
pub(crate) type View<'a, S> = (&'a S, &'a Layout);

/// The kernels of one fused op step on every backend.
pub(crate) trait FusedOp<'a> {
    /// The op's name: in profiles and in the errors of the operand checks.
    const NAME: &'static str;
    /// The operands as `Storage`, a tuple whose first element, the lead, picks the
    /// backend (see [`Operands`]).
    type Inputs: Operands;
    /// What the kernels return: fresh `Storage` (`CpuStorage` and `CudaStorage` turn
    /// into it with `.into()`), or `()` for an update in place.
    type Output;

    /// The kernels on the host.
    fn cpu(&self, inputs: BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output>;

    /// The kernels on a GPU.
    #[cfg(feature = "cuda")]
    fn cuda(&self, inputs: BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output>;
}

/// The inputs of the fused op `Op` on backend storage `B`: its
/// [`Inputs`](FusedOp::Inputs) tuple with every `Storage` replaced by `B`.
pub(crate) type BackendInputs<'a, Op, B> = <<Op as FusedOp<'a>>::Inputs as Operands>::On<B>;

/// One operand of a fused op as the op holds it, `Storage`, which the dispatch turns
/// into the backend's own storage type.
pub(crate) trait Operand {
    /// The operand on backend storage `B`.
    type On<B: Native>;
    /// The operand on `B`, or `Error::DeviceMismatch` naming `op` when it is not on
    /// `device`.
    fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>>;
    /// The dtype of a view the kernels read, which must agree with the other such views;
    /// `None` for the operands the kernels check themselves: buffers passed without a
    /// layout (statistics a forward saved, in `stats_dtype`) and views written in place.
    fn read_dtype(&self) -> Option<DType>;
}

/// A view the kernels read.
impl<'a> Operand for (&'a Storage, &'a Layout) {
    type On<B: Native> = View<'a, B>;
    fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>> {
        Ok((B::of(op, device, self.0)?, self.1))
    }
    fn read_dtype(&self) -> Option<DType> {
        Some(self.0.dtype())
    }
}

/// A view the kernels write in place.
impl<'a> Operand for (&'a mut Storage, &'a Layout) {
    type On<B: Native> = (&'a mut B, &'a Layout);
    fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>> {
        Ok((B::of_mut(op, device, self.0)?, self.1))
    }
    fn read_dtype(&self) -> Option<DType> {
        None
    }
}

/// A view the kernels read in whatever float dtype it has, converting as they read it:
/// the gradient of an output that an op wrote in another dtype than its inputs (a norm
/// writing the low dtype of the products that follow it). Left out of the dtype check.
pub(crate) struct AnyFloat<'a>(pub View<'a, Storage>);

impl<'a> Operand for AnyFloat<'a> {
    type On<B: Native> = View<'a, B>;
    fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>> {
        self.0.on(op, device)
    }
    fn read_dtype(&self) -> Option<DType> {
        None
    }
}

/// A whole buffer read without a layout (contiguous statistics).
impl<'a> Operand for &'a Storage {
    type On<B: Native> = &'a B;
    fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>> {
        B::of(op, device, self)
    }
    fn read_dtype(&self) -> Option<DType> {
        None
    }
}

/// An optional operand (a norm's weight or bias).
impl<T: Operand> Operand for Option<T> {
    type On<B: Native> = Option<T::On<B>>;
    fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>> {
        self.map(|x| x.on(op, device)).transpose()
    }
    fn read_dtype(&self) -> Option<DType> {
        self.as_ref().and_then(Operand::read_dtype)
    }
}

/// An operand that can lead a fused op: a view, whose storage picks the backend and
/// whose dtype, element count and device the profiler records.
pub(crate) trait Lead: Operand {
    /// The view's dtype, element count and device.
    fn describe(&self) -> (DType, usize, Device);
}

impl<'a> Lead for (&'a Storage, &'a Layout) {
    fn describe(&self) -> (DType, usize, Device) {
        (self.0.dtype(), self.1.elem_count(), self.0.device())
    }
}

impl<'a> Lead for (&'a mut Storage, &'a Layout) {
    fn describe(&self) -> (DType, usize, Device) {
        (self.0.dtype(), self.1.elem_count(), self.0.device())
    }
}

/// All the operands of a fused op: a tuple of [`Operand`]s led by a [`Lead`].
pub(crate) trait Operands {
    /// The operands on backend storage `B`, in the same tuple.
    type On<B: Native>;
    /// Every operand on `B` (see [`Operand::on`]).
    fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>>;
    /// The lead's dtype, element count and device.
    fn lead(&self) -> (DType, usize, Device);
    /// The dtypes of the views the kernels read, in order (see [`Operand::read_dtype`]).
    fn read_dtypes(&self) -> Vec<DType>;
}

/// [`Operands`] for the tuples of a lead and up to eight more operands (each given as
/// its type parameter and a variable name).
macro_rules! operand_tuples {
    ($(($Lead:ident $lead:ident $(, $Rest:ident $rest:ident)*)),* $(,)?) => {$(
        impl<$Lead: Lead, $($Rest: Operand),*> Operands for ($Lead, $($Rest,)*) {
            type On<B: Native> = ($Lead::On<B>, $($Rest::On<B>,)*);
            fn on<B: Native>(self, op: &'static str, device: Device) -> Result<Self::On<B>> {
                let ($lead, $($rest,)*) = self;
                Ok(($lead.on(op, device)?, $($rest.on(op, device)?,)*))
            }
            fn lead(&self) -> (DType, usize, Device) {
                self.0.describe()
            }
            fn read_dtypes(&self) -> Vec<DType> {
                let ($lead, $($rest,)*) = self;
                [$lead.read_dtype(), $($rest.read_dtype(),)*].into_iter().flatten().collect()
            }
        }
    )*};
}

operand_tuples!(
    (L l),
    (L l, A a),
    (L l, A a, C c),
    (L l, A a, C c, D d),
    (L l, A a, C c, D d, E e),
    (L l, A a, C c, D d, E e, G g),
    (L l, A a, C c, D d, E e, G g, H h),
    (L l, A a, C c, D d, E e, G g, H h, I i),
    (L l, A a, C c, D d, E e, G g, H h, I i, J j),
);
