//! [`Tensor`]: a view (layout) into shared storage, plus its place in the autodiff graph.

use crate::autograd::{AccumulatingBackwardFn, BackwardFn, GradMeta, Node, Rule};
use crate::backend::BackendStorage;
use crate::cpu::CpuStorage;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::forward_ad::{self, JvpFn};
use crate::layout::Layout;
use crate::sizes;
use crate::storage::Storage;
use crate::Device;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Identifies a tensor in the autodiff graph and in [`crate::Gradients`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// An n-dimensional array that records the ops that made it, so that
/// [`Tensor::backward`] can compute gradients.
///
/// Cloning is cheap (a reference count); views share storage with their source.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

/// Storage shared by all views of it, with a count of in-place writes so that a
/// backward can refuse to use values overwritten since the forward.
struct SharedStorage {
    data: RwLock<Storage>,
    version: AtomicU64,
}

impl SharedStorage {
    fn new(storage: Storage) -> Arc<Self> {
        Arc::new(SharedStorage {
            data: RwLock::new(storage),
            version: AtomicU64::new(0),
        })
    }
}

pub(crate) struct Inner {
    id: TensorId,
    storage: Arc<SharedStorage>,
    layout: Layout,
    dtype: DType,
    device: Device,
    pub(crate) grad: GradMeta,
    /// The forward-mode tangent, set once right after the tensor is made inside a
    /// [`crate::jvp`] call (see [`crate::forward_ad`]).
    tangent: Mutex<Option<(u64, Tensor)>>,
}

/// A tensor that does not keep its storage alive (forward mode's list of the tensors
/// holding tangents).
pub(crate) struct WeakTensor(Weak<Inner>);

impl WeakTensor {
    /// The tensor, if it is still alive.
    pub(crate) fn upgrade(&self) -> Option<Tensor> {
        self.0.upgrade().map(Tensor)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor[{:?}, {}, {}{}]",
            self.shape(),
            self.dtype(),
            self.device(),
            if self.requires_grad() { ", grad" } else { "" }
        )
    }
}

impl Tensor {
    fn build(storage: Arc<SharedStorage>, layout: Layout, grad: GradMeta) -> Tensor {
        let (dtype, device) = {
            let s = storage.data.read_recursive();
            (s.dtype(), s.device())
        };
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            storage,
            layout,
            dtype,
            device,
            grad,
            tangent: Mutex::new(None),
        }))
    }

    /// A constant (no gradient) tensor over fresh contiguous storage.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        Tensor::from_storage_in(storage, Layout::contiguous(shape))
    }

    /// A constant tensor viewing fresh storage through `layout` (a permutation of it,
    /// say).
    pub(crate) fn from_storage_in(storage: Storage, layout: Layout) -> Tensor {
        Tensor::build(SharedStorage::new(storage), layout, GradMeta::None)
    }

    /// The result of an op: fresh contiguous storage, recorded in the graph with its
    /// backward rule when any input needs a gradient and gradients are enabled, and
    /// given the tangent its JVP rule computes when an input carries one.
    pub(crate) fn from_op(
        op: &'static str,
        storage: Storage,
        shape: &[usize],
        inputs: &[&Tensor],
        backward: impl BackwardFn,
        jvp: impl JvpFn,
    ) -> Result<Tensor> {
        Tensor::from_op_in(
            op,
            storage,
            Layout::contiguous(shape),
            inputs,
            backward,
            jvp,
        )
    }

    /// [`Tensor::from_op`] for a result that views its fresh storage through `layout`.
    pub(crate) fn from_op_in(
        op: &'static str,
        storage: Storage,
        layout: Layout,
        inputs: &[&Tensor],
        backward: impl BackwardFn,
        jvp: impl JvpFn,
    ) -> Result<Tensor> {
        let grad = GradMeta::for_op(op, inputs, backward);
        Tensor::recorded(storage, layout, grad, inputs, jvp)
    }

    /// [`Tensor::from_op`] with a backward rule that adds its first input's gradient
    /// into the one gathered so far (see [`AccumulatingBackwardFn`]).
    pub(crate) fn from_op_accumulating(
        op: &'static str,
        storage: Storage,
        shape: &[usize],
        inputs: &[&Tensor],
        backward: impl AccumulatingBackwardFn,
        jvp: impl JvpFn,
    ) -> Result<Tensor> {
        let grad = GradMeta::for_rule(op, inputs, || Rule::Accumulating(Box::new(backward)));
        Tensor::recorded(storage, Layout::contiguous(shape), grad, inputs, jvp)
    }

    /// An op's result in fresh `storage` with its place in the graph, `grad`, and the
    /// tangent `jvp` gives it when an input carries one.
    fn recorded(
        storage: Storage,
        layout: Layout,
        grad: GradMeta,
        inputs: &[&Tensor],
        jvp: impl JvpFn,
    ) -> Result<Tensor> {
        let out = Tensor::build(SharedStorage::new(storage), layout, grad);
        forward_ad::attach(out, inputs, jvp)
    }

    /// A view of `self`'s storage under a new layout, recorded in the graph like an op;
    /// its tangent is the same view of `self`'s (`jvp` applies it).
    pub(crate) fn view_op(
        &self,
        op: &'static str,
        layout: Layout,
        backward: impl BackwardFn,
        jvp: impl JvpFn,
    ) -> Result<Tensor> {
        let grad = GradMeta::for_op(op, &[self], backward);
        self.view_recorded(layout, grad, jvp)
    }

    /// [`Tensor::view_op`] with a backward rule that adds into the gradient gathered so
    /// far for `self` (see [`AccumulatingBackwardFn`]).
    pub(crate) fn view_op_accumulating(
        &self,
        op: &'static str,
        layout: Layout,
        backward: impl AccumulatingBackwardFn,
        jvp: impl JvpFn,
    ) -> Result<Tensor> {
        let grad = GradMeta::for_rule(op, &[self], || Rule::Accumulating(Box::new(backward)));
        self.view_recorded(layout, grad, jvp)
    }

    fn view_recorded(&self, layout: Layout, grad: GradMeta, jvp: impl JvpFn) -> Result<Tensor> {
        let out = Tensor::build(self.0.storage.clone(), layout, grad);
        forward_ad::attach(out, &[self], jvp)
    }

    /// Whether this handle is the only way to its values: no clone of it, no weak
    /// reference, no other view of its storage, and it covers that storage densely from
    /// the start. Only then may a gradient being summed be written in place without
    /// another holder seeing the change (the walk hands one gradient to several inputs
    /// as clones, and `cat`'s backward hands out views of one storage).
    pub(crate) fn is_sole_dense_handle(&self) -> bool {
        let storage = &self.0.storage;
        Arc::strong_count(&self.0) == 1
            && Arc::weak_count(&self.0) == 0
            && Arc::strong_count(storage) == 1
            && Arc::weak_count(storage) == 0
            && self.is_contiguous()
            && self.layout().offset() == 0
            && self.elem_count() == storage.data.read_recursive().len()
    }

    /// The forward-mode tangent this tensor carries inside a [`crate::jvp`] call.
    pub(crate) fn tangent(&self) -> Option<Tensor> {
        let held = self.0.tangent.lock();
        let (level, t) = held.as_ref()?;
        (Some(*level) == forward_ad::current_level()).then(|| t.clone())
    }

    /// Whether a tangent is held at all, of any level (for tests of its release).
    #[cfg(test)]
    pub(crate) fn holds_tangent(&self) -> bool {
        self.0.tangent.lock().is_some()
    }

    /// Drops the tangent (at the end of its `jvp` call).
    pub(crate) fn clear_tangent(&self) {
        self.0.tangent.lock().take();
    }

    pub(crate) fn downgrade(&self) -> WeakTensor {
        WeakTensor(Arc::downgrade(&self.0))
    }

    /// Gives a fresh tensor its tangent.
    pub(crate) fn set_tangent(&self, tangent: Tensor) -> Result<()> {
        let level = forward_ad::current_level()
            .ok_or_else(|| Error::Autograd("a tangent is set only inside jvp".into()))?;
        let mut held = self.0.tangent.lock();
        if held.is_some() {
            return Err(Error::Autograd(
                "a tensor's tangent is set only once".into(),
            ));
        }
        *held = Some((level, tangent));
        forward_ad::register(self);
        Ok(())
    }

    /// The same values and gradient flow without the tangent: an identity in the graph
    /// when `self` needs a gradient.
    pub(crate) fn without_tangent(&self) -> Tensor {
        let grad = GradMeta::for_op("unpack_dual", &[self], |_, _, g: &Tensor| {
            Ok(vec![Some(g.clone())])
        });
        Tensor::build(self.0.storage.clone(), self.layout().clone(), grad)
    }

    /// A tensor holding `data` with the given shape.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_slice(&data, shape, device)
    }

    /// A tensor with `data` copied in (into host memory aligned to a cache line, from
    /// which a GPU tensor is uploaded).
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize], device: Device) -> Result<Tensor> {
        let n = sizes::elem_count("from_vec", shape)?;
        if data.len() != n {
            return Err(Error::invalid(
                "from_vec",
                format!(
                    "{} values do not fill shape {shape:?} ({n} elements)",
                    data.len()
                ),
            ));
        }
        let cpu = T::to_storage("from_vec", data)?;
        Ok(Tensor::from_storage(Storage::from_cpu(cpu, device)?, shape))
    }

    /// A tensor of f64 values converted to `dtype`.
    pub fn from_f64s(
        data: &[f64],
        shape: &[usize],
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let t = Tensor::from_slice(data, shape, Device::Cpu)?;
        let t = if dtype == DType::F64 {
            t
        } else {
            t.to_dtype(dtype)?
        };
        t.to_device(device)
    }

    /// Every element equal to `value`. A shape too large for the machine is an error
    /// ([`Error::OutOfMemory`]), as for every tensor made from a shape.
    pub fn full(value: f64, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n = sizes::elem_count("full", shape)?;
        let cpu = CpuStorage::from_f64_fn(n, dtype, |_| value)?;
        Ok(Tensor::from_storage(Storage::from_cpu(cpu, device)?, shape))
    }

    /// Zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n = sizes::elem_count("zeros", shape)?;
        Ok(Tensor::from_storage(
            Storage::zeros(n, dtype, device)?,
            shape,
        ))
    }

    /// Ones.
    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    /// A rank-0 tensor.
    pub fn scalar(value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(value, &[], dtype, device)
    }

    /// `0, 1, …, n−1`.
    pub fn arange(n: usize, dtype: DType, device: Device) -> Result<Tensor> {
        let cpu = CpuStorage::from_f64_fn(n, dtype, |i| i as f64)?;
        Ok(Tensor::from_storage(Storage::from_cpu(cpu, device)?, &[n]))
    }

    /// Zeros with `self`'s shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype(), self.device())
    }

    /// Ones with `self`'s shape, dtype and device.
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape(), self.dtype(), self.device())
    }

    /// Unique id (the key of its gradient in [`crate::Gradients`]).
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// The dims.
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }

    /// Size of dim `d` (negative counts from the end).
    pub fn dim(&self, d: isize) -> Result<usize> {
        let d = crate::layout::normalize_dim("dim", d, self.shape())?;
        Ok(self.shape()[d])
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// Where the storage lives.
    pub fn device(&self) -> Device {
        self.0.device
    }

    /// Shape, strides and offset into the storage.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    /// True when the view is row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    /// Read access to the storage (shared by all views of it). Several read guards
    /// of one storage may be held at once, as `a.mul(&a)` needs.
    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.data.read_recursive()
    }

    /// How many in-place writes ([`Tensor::assign`]) the storage has seen.
    pub(crate) fn version(&self) -> u64 {
        self.0.storage.version.load(Ordering::Acquire)
    }

    /// True when both tensors view the same storage.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// A key equal for exactly the tensors that share storage (for sets of them).
    pub(crate) fn storage_key(&self) -> usize {
        Arc::as_ptr(&self.0.storage) as usize
    }

    /// The elements, row-major, as `T` (which must be the tensor's dtype).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::dtypes("to_vec", &[self.dtype(), T::DTYPE]));
        }
        let cpu = self.storage().view_to_cpu(self.layout())?;
        Ok(cpu.as_slice::<T>().map(<[T]>::to_vec).unwrap_or_default())
    }

    /// The elements, row-major, converted to f64 (any dtype).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let cpu = self.storage().view_to_cpu(self.layout())?;
        Ok(cpu.to_f64_vec(&Layout::contiguous(self.shape())))
    }

    /// The single element of a one-element tensor, as f64.
    pub fn item(&self) -> Result<f64> {
        match self.elem_count() {
            1 => Ok(self.to_vec_f64()?[0]),
            n => Err(Error::invalid(
                "item",
                format!(
                    "needs exactly one element, the tensor has shape {:?} ({n})",
                    self.shape()
                ),
            )),
        }
    }

    /// A copy on `device` (the same tensor when it is already there). Gradients flow
    /// through the copy.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let cpu = self.storage().to_cpu()?;
        let storage = Storage::from_cpu(cpu, device)?;
        let layout = self.layout().clone();
        let grad = GradMeta::for_op("to_device", &[self], |x, _, g: &Tensor| {
            Ok(vec![Some(g.to_device(x[0].device())?)])
        });
        let out = Tensor::build(SharedStorage::new(storage), layout, grad);
        forward_ad::attach(out, &[self], move |d, _| {
            d.tangent_or_zeros(0)?.to_device(device)
        })
    }

    /// The same values cut from the graph: no gradient flows back through the result
    /// and it carries no tangent (a stop-gradient for both modes of autodiff).
    pub fn detach(&self) -> Tensor {
        Tensor::build(
            self.0.storage.clone(),
            self.layout().clone(),
            GradMeta::None,
        )
    }

    /// A trainable variable holding `self`'s values: a graph leaf whose gradient
    /// [`Tensor::backward`] reports and whose storage optimizers update in place.
    pub fn into_variable(self) -> Result<Tensor> {
        let t = if self.is_contiguous() && self.layout().offset() == 0 {
            self
        } else {
            self.detach().contiguous()?
        };
        if !t.dtype().is_float() {
            return Err(Error::dtypes("into_variable", &[t.dtype()]));
        }
        Ok(Tensor::build(
            t.0.storage.clone(),
            t.layout().clone(),
            GradMeta::Variable,
        ))
    }

    /// True for variables (see [`Tensor::into_variable`]).
    pub fn is_variable(&self) -> bool {
        matches!(self.0.grad, GradMeta::Variable)
    }

    /// True when gradients flow back from this tensor: a variable, or the result of
    /// ops on one recorded outside a no-grad scope.
    pub fn requires_grad(&self) -> bool {
        !matches!(self.0.grad, GradMeta::None)
    }

    pub(crate) fn take_node(&self) -> Option<Node> {
        self.0.grad.take_node()
    }

    /// The node of a tensor this handle is the last owner of (so that dropping the
    /// graph can walk it without recursion).
    pub(crate) fn into_sole_node(self) -> Option<Node> {
        Arc::into_inner(self.0).and_then(|inner| inner.grad.take_node())
    }

    pub(crate) fn node_inputs(&self) -> Option<Vec<Tensor>> {
        self.0.grad.inputs()
    }

    /// Overwrites this tensor's elements in place with `src`'s (cast to this dtype).
    /// Every view of the storage sees the change. Meant for optimizer updates; it is
    /// not recorded in the graph.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shapes("assign", &[self.shape(), src.shape()]));
        }
        // A source that shares our storage is read before the write lock is taken.
        let src = if self.shares_storage(src) {
            src.detach().contiguous_copy()?
        } else {
            src.clone()
        };
        let from = src.storage();
        from.copy_into(src.layout(), &mut self.storage_mut(), self.layout())
    }

    /// Write access to the storage for an in-place update; counts as a modification
    /// (see [`Tensor::assign`]).
    pub(crate) fn storage_mut(&self) -> parking_lot::RwLockWriteGuard<'_, Storage> {
        let guard = self.0.storage.data.write();
        self.0.storage.version.fetch_add(1, Ordering::AcqRel);
        guard
    }

    /// Counts an in-place write made behind the storage's back (by a collective on the
    /// device's stream), as [`Tensor::assign`] does.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn bump_version(&self) {
        self.0.storage.version.fetch_add(1, Ordering::AcqRel);
    }

    /// A contiguous copy (always a copy, unlike [`Tensor::contiguous`]); no gradient.
    pub(crate) fn contiguous_copy(&self) -> Result<Tensor> {
        let s = self.storage().copy_strided(self.layout())?;
        Ok(Tensor::from_storage(s, self.shape()))
    }
}
