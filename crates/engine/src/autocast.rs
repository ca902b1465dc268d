//! Autocast: the mixed-precision scope. Inside it, ops cast their operands by one of
//! three rules, PyTorch's:
//!
//! - **low precision** (`lowered`): matrix products (`matmul`, `linear`) and attention
//!   run in the scope's dtype (bf16 or f16; f32 accumulation in the kernels) and return
//!   it, so activations between products stay in the low dtype;
//! - **f32** (`widened`): norms, softmax, sums and means, `mse`, and the unary ops
//!   that lose accuracy in half precision (exp, log, powf, rsqrt, recip) cast low
//!   operands to f32 and return f32;
//! - **widest** (`promoted`): ops combining tensors (binary ops, `addcmul`, `cat`,
//!   comparisons, `where_cond`) cast operands of mixed float dtypes to the widest of
//!   them (bf16 with f16 gives f32), so an f32 residual stream plus a bf16 product is
//!   f32.
//!
//! Every other op runs in its operand's dtype. Every cast is the recorded
//! [`Tensor::to_dtype`] op, so parameters stay f32 (master weights) and their gradients
//! arrive in f32. Outside a scope nothing is cast and mixed dtypes are an error.
//!
//! Low-precision copies are reused within a scope: a variable's for the whole scope (a
//! model called several times in a step casts its weights once, as PyTorch caches
//! weight casts), and those of the last few other tensors cast, so that an activation
//! feeding the q, k and v products is cast once, not three times (only a few, so that a
//! long scope does not keep every activation alive). Copies are kept only while a graph
//! is recorded; the cache is emptied when the scope ends and when a backward runs
//! (which frees the copies' graph nodes), and an entry is not reused after its tensor
//! is written in place.
//!
//! The state is per thread, like [`crate::no_grad`]; a backward pass runs with autocast
//! off, so it replays exactly the dtypes the forward recorded.

use crate::autograd::is_grad_enabled;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::TensorId;
use crate::Tensor;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
    static CAST_CACHE: RefCell<CastCache> = RefCell::new(CastCache::default());
}

/// Other tensors' copies kept besides the variables': enough for the q, k and v
/// products of one activation, each also casting a weight and a bias that are views
/// (slices of one `qkv` variable) rather than variables.
const RECENT_COPIES: usize = 8;

/// A source tensor and the dtype of its copy.
type CastKey = (TensorId, DType);

/// Low-precision copies, each with its source's storage version when it was made.
#[derive(Default)]
struct CastCache {
    /// Variables' copies, for the whole scope.
    variables: HashMap<CastKey, (u64, Tensor)>,
    /// The last [`RECENT_COPIES`] other copies, oldest first.
    recent: VecDeque<(CastKey, u64, Tensor)>,
}

impl CastCache {
    fn get(&self, key: CastKey, version: u64) -> Option<Tensor> {
        let variable = self.variables.get(&key).map(|(v, copy)| (*v, copy));
        let recent = || self.recent.iter().find(|(k, ..)| *k == key);
        let (v, copy) = variable.or_else(|| recent().map(|(_, v, copy)| (*v, copy)))?;
        (v == version).then(|| copy.clone())
    }

    fn insert(&mut self, key: CastKey, version: u64, copy: Tensor, variable: bool) {
        if variable {
            self.variables.insert(key, (version, copy));
            return;
        }
        if self.recent.len() == RECENT_COPIES {
            self.recent.pop_front();
        }
        self.recent.push_back((key, version, copy));
    }

    fn clear(&mut self) {
        self.variables.clear();
        self.recent.clear();
    }
}

/// The low-precision dtype of the current autocast scope on this thread, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// While alive, sets the autocast dtype of this thread (`None` turns autocast off);
/// the previous setting comes back when it is dropped.
pub struct AutocastGuard {
    previous: Option<DType>,
}

impl AutocastGuard {
    /// Enters an autocast scope of `dtype` (bf16 or f16; any other dtype is refused),
    /// or leaves autocast with `None`.
    pub fn new(dtype: Option<DType>) -> Result<Self> {
        if let Some(dt) = dtype.filter(|d| !matches!(d, DType::BF16 | DType::F16)) {
            return Err(Error::invalid(
                "autocast",
                format!("the autocast dtype must be bf16 or f16, got {dt}"),
            ));
        }
        Ok(AutocastGuard {
            previous: AUTOCAST.with(|a| a.replace(dtype)),
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.previous));
        if self.previous.is_none() {
            forget_casts();
        }
    }
}

/// Runs `f` in an autocast scope of `dtype` (bf16 or f16).
pub fn autocast<T>(dtype: DType, f: impl FnOnce() -> T) -> Result<T> {
    let _guard = AutocastGuard::new(Some(dtype))?;
    Ok(f())
}

/// Empties this thread's cache of low-precision copies.
pub(crate) fn forget_casts() {
    CAST_CACHE.with(|c| c.borrow_mut().clear());
}

/// The operands of a low-precision op (a product, attention) cast to the scope's dtype,
/// or `None` when nothing is to be cast: no scope, every operand already in it, or an
/// f64 operand (never lowered, so that gradient checks in f64 stay exact).
pub(crate) fn lowered(inputs: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    let Some(low) = autocast_dtype() else {
        return Ok(None);
    };
    if inputs.iter().any(|t| t.dtype() == DType::F64) {
        return Ok(None);
    }
    let needs = |d: DType| d.is_float() && d != low;
    cast_where(inputs, needs, |t| cast_cached(t, low))
}

/// The operands of an f32 op cast to f32 where they are bf16/f16, or `None` when none
/// is (or outside a scope).
pub(crate) fn widened(inputs: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    if autocast_dtype().is_none() {
        return Ok(None);
    }
    cast_where(inputs, is_half, |t| t.to_dtype(DType::F32))
}

/// Operands of mixed float dtypes cast to the widest of them, or `None` when they
/// agree (or outside a scope).
pub(crate) fn promoted(inputs: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    if autocast_dtype().is_none() {
        return Ok(None);
    }
    let floats = || inputs.iter().map(|t| t.dtype()).filter(|d| d.is_float());
    let Some(first) = floats().next() else {
        return Ok(None);
    };
    if floats().all(|d| d == first) {
        return Ok(None);
    }
    let widest = floats().max_by_key(|&d| width(d)).unwrap_or(first);
    // bf16 and f16 each lose what the other keeps: they meet in f32.
    let target = match is_half(widest) {
        true => DType::F32,
        false => widest,
    };
    let needs = |d: DType| d.is_float() && d != target;
    cast_where(inputs, needs, |t| t.to_dtype(target))
}

/// The operands whose dtype `needs` a cast, cast by `cast` (the others as they are);
/// `None` when none does.
fn cast_where(
    inputs: &[&Tensor],
    needs: impl Fn(DType) -> bool,
    cast: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Option<Vec<Tensor>>> {
    if !inputs.iter().any(|t| needs(t.dtype())) {
        return Ok(None);
    }
    let each = |t: &Tensor| match needs(t.dtype()) {
        true => cast(t),
        false => Ok(t.clone()),
    };
    inputs
        .iter()
        .map(|t| each(t))
        .collect::<Result<_>>()
        .map(Some)
}

/// `t` cast to `dtype`, reusing (and, while recording a graph, keeping) the copy made
/// earlier in the scope.
fn cast_cached(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let (key, version) = ((t.id(), dtype), t.version());
    if let Some(copy) = CAST_CACHE.with(|c| c.borrow().get(key, version)) {
        return Ok(copy);
    }
    let copy = t.to_dtype(dtype)?;
    // A copy made under no_grad has no graph node: later recorded products must not
    // reuse it, or no gradient would reach the variable.
    if is_grad_enabled() {
        let variable = t.is_variable();
        CAST_CACHE.with(|c| c.borrow_mut().insert(key, version, copy.clone(), variable));
    }
    Ok(copy)
}

fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// Rank of a dtype for promotion (integers take no part).
fn width(dtype: DType) -> u8 {
    match dtype {
        DType::I64 => 0,
        DType::F16 | DType::BF16 => 1,
        DType::F32 => 2,
        DType::F64 => 3,
    }
}
