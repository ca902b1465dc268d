//! Forward-mode autodiff: Jacobian-vector products through every op.
//!
//! [`jvp`] runs a closure on *dual* tensors, each primal carrying a tangent. Every op
//! that reads a tensor carrying a tangent gives its result a tangent too, computed at
//! once by the op's JVP rule (the `JvpFn` it passes next to its backward rule) from
//! the inputs, their tangents and the output. Tangents are plain constants: rules run
//! with graph recording, autocast and forward mode itself switched off, so a tangent
//! never records a graph and never gets a tangent of its own. Primal results record
//! their reverse-mode graph as usual, so a loss on them backpropagates while their
//! tangents serve as stop-gradient targets (what MeanFlow needs).
//!
//! Tangents travel only inside the [`jvp`] call that set them, on its thread; outside
//! it, and in later calls, they count for nothing. An input without a tangent counts as a zero tangent.

use crate::error::{Error, Result};
use crate::tensor::WeakTensor;
use crate::Tensor;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// The level of the [`jvp`] call running on this thread, 0 outside one (and inside
    /// a JVP rule).
    static LEVEL: Cell<u64> = const { Cell::new(0) };
}

/// Each [`jvp`] call gets a fresh level: a tangent counts only at the level that set
/// it, so a tensor kept from an earlier call carries nothing into a later one.
static NEXT_LEVEL: AtomicU64 = AtomicU64::new(1);

/// The level of the running [`jvp`] call on this thread, if any.
pub(crate) fn current_level() -> Option<u64> {
    Some(LEVEL.with(Cell::get)).filter(|&l| l != 0)
}

/// Sets this thread's level until dropped.
struct LevelGuard {
    previous: u64,
}

impl LevelGuard {
    fn new(level: u64) -> Self {
        LevelGuard {
            previous: LEVEL.with(|l| l.replace(level)),
        }
    }
}

impl Drop for LevelGuard {
    fn drop(&mut self) {
        LEVEL.with(|l| l.set(self.previous));
    }
}

thread_local! {
    /// The tensors given a tangent by the running [`jvp`] call.
    static HOLDERS: RefCell<Vec<WeakTensor>> = const { RefCell::new(Vec::new()) };
}

/// Records that `t` holds a tangent of the running call, to be released at its end.
pub(crate) fn register(t: &Tensor) {
    HOLDERS.with(|h| h.borrow_mut().push(t.downgrade()));
}

/// At the end of a [`jvp`] call (returning or failing), releases the tangents of every
/// tensor that is still alive: the activations a backward keeps would otherwise hold
/// theirs, as much memory again, until the backward frees them.
struct ReleaseTangents;

impl Drop for ReleaseTangents {
    fn drop(&mut self) {
        for held in HOLDERS.with(|h| std::mem::take(&mut *h.borrow_mut())) {
            if let Some(t) = held.upgrade() {
                t.clear_tangent();
            }
        }
    }
}

/// An op's inputs and their tangents, as a JVP rule sees them.
pub(crate) struct Duals<'a> {
    inputs: &'a [&'a Tensor],
    tangents: Vec<Option<Tensor>>,
}

impl Duals<'_> {
    /// Input `i`.
    pub(crate) fn primal(&self, i: usize) -> &Tensor {
        self.inputs[i]
    }

    /// The tangent of input `i`, or `None` for an input that carries none (zero).
    pub(crate) fn tangent(&self, i: usize) -> Option<&Tensor> {
        self.tangents.get(i).and_then(Option::as_ref)
    }

    /// The tangent of input `i`, zeros of its shape when it carries none.
    pub(crate) fn tangent_or_zeros(&self, i: usize) -> Result<Tensor> {
        match self.tangent(i) {
            Some(t) => Ok(t.clone()),
            None => self.inputs[i].zeros_like(),
        }
    }
}

/// A JVP rule: `(inputs with their tangents, output) → the output's tangent`. The
/// tangent may come back with any shape that broadcasts to the output's.
pub(crate) trait JvpFn: FnOnce(&Duals<'_>, &Tensor) -> Result<Tensor> {}
impl<F> JvpFn for F where F: FnOnce(&Duals<'_>, &Tensor) -> Result<Tensor> {}

/// True when an op on `inputs` must compute a tangent: forward mode is on and one of
/// them carries one. Ops with a fused forward-and-tangent kernel ask before their
/// forward.
pub(crate) fn wants_tangent(inputs: &[&Tensor]) -> bool {
    inputs.iter().any(|t| t.tangent().is_some())
}

/// Gives `out` (an op's fresh result) the tangent `rule` computes, when the op's
/// inputs carry tangents.
pub(crate) fn attach(out: Tensor, inputs: &[&Tensor], rule: impl JvpFn) -> Result<Tensor> {
    if !wants_tangent(inputs) {
        return Ok(out);
    }
    let duals = Duals {
        inputs,
        tangents: inputs.iter().map(|t| t.tangent()).collect(),
    };
    let tangent = {
        let _plain = LevelGuard::new(0);
        let _no_grad = crate::autograd::NoGradGuard::new();
        let _no_autocast = crate::autocast::AutocastGuard::new(None)?;
        let t = rule(&duals, &out)?;
        fit_tangent(t, &out)?
    };
    out.set_tangent(tangent)?;
    Ok(out)
}

/// The tangent in the output's dtype, broadcast to its shape.
fn fit_tangent(t: Tensor, out: &Tensor) -> Result<Tensor> {
    let t = t.to_dtype(out.dtype())?;
    match t.shape() == out.shape() {
        true => Ok(t),
        false => t.broadcast_to(out.shape()),
    }
}

/// Runs `f` on `primals` carrying `tangents` and returns `f`'s outputs and their
/// tangents, the Jacobian-vector products J·v.
///
/// The outputs keep the reverse-mode graph (through the primals too, where they need
/// gradients), so a loss on them backpropagates as usual; the output tangents are
/// constants with no graph. An output that does not depend on the primals gets a zero
/// tangent. Works inside [`no_grad`](crate::no_grad) too (then nothing records a graph).
/// Each tangent must have its primal's shape and device; it is cast to the primal's
/// dtype. Calls do not nest.
///
/// ```
/// use twinflow_engine::{jvp, Device, Tensor};
/// # fn main() -> twinflow_engine::Result<()> {
/// let x = Tensor::from_vec(vec![1.0f64, 2.0], &[2], Device::Cpu)?;
/// let v = Tensor::from_vec(vec![1.0f64, 0.0], &[2], Device::Cpu)?;
/// let (out, tangents) = jvp(|p| Ok(vec![p[0].square()?]), &[x], &[v])?;
/// assert_eq!(out[0].to_vec::<f64>()?, vec![1.0, 4.0]);
/// assert_eq!(tangents[0].to_vec::<f64>()?, vec![2.0, 0.0]); // 2x·v
/// # Ok(())
/// # }
/// ```
pub fn jvp<F>(f: F, primals: &[Tensor], tangents: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)>
where
    F: FnOnce(&[Tensor]) -> Result<Vec<Tensor>>,
{
    if current_level().is_some() {
        return Err(Error::Autograd(
            "jvp calls do not nest: forward mode is already on in this thread".into(),
        ));
    }
    if primals.len() != tangents.len() {
        return Err(Error::invalid(
            "jvp",
            format!("{} primals but {} tangents", primals.len(), tangents.len()),
        ));
    }
    let _level = LevelGuard::new(NEXT_LEVEL.fetch_add(1, Ordering::Relaxed));
    let _release = ReleaseTangents;
    let duals = primals
        .iter()
        .zip(tangents)
        .enumerate()
        .map(|(i, (p, t))| make_dual(i, p, t))
        .collect::<Result<Vec<_>>>()?;
    let outputs = f(&duals)?;
    let mut out_tangents = Vec::with_capacity(outputs.len());
    let mut primal_outputs = Vec::with_capacity(outputs.len());
    for out in outputs {
        out_tangents.push(match out.tangent() {
            Some(t) => t,
            None => out.zeros_like()?,
        });
        primal_outputs.push(out.without_tangent());
    }
    Ok((primal_outputs, out_tangents))
}

/// Primal `i` carrying tangent `t`, checked against it.
fn make_dual(i: usize, primal: &Tensor, t: &Tensor) -> Result<Tensor> {
    if t.shape() != primal.shape() {
        return Err(Error::invalid(
            "jvp",
            format!(
                "tangent {i} has shape {:?}, its primal {:?}",
                t.shape(),
                primal.shape()
            ),
        ));
    }
    if t.device() != primal.device() {
        return Err(Error::DeviceMismatch {
            op: "jvp",
            lhs: primal.device().to_string(),
            rhs: t.device().to_string(),
        });
    }
    if !primal.dtype().is_float() {
        return Err(Error::invalid(
            "jvp",
            format!(
                "primal {i} is {}: only float tensors carry tangents",
                primal.dtype()
            ),
        ));
    }
    let dual = primal.without_tangent();
    dual.set_tangent(t.detach().to_dtype(primal.dtype())?)?;
    Ok(dual)
}

#[cfg(test)]
mod tests {
    use super::jvp;
    use crate::{Device, Result, Tensor};

    /// A tensor that outlives its call (kept by a graph or by the caller) does not keep
    /// its tangent's memory.
    #[test]
    fn tangents_are_released_when_the_call_ends() -> Result<()> {
        let x = Tensor::from_vec(vec![1.0f64, 2.0], &[2], Device::Cpu)?.into_variable()?;
        let mut kept = None;
        let (out, _) = jvp(
            |p| {
                let e = p[0].exp()?;
                assert!(e.holds_tangent());
                kept = Some(e.clone());
                Ok(vec![e.sin()?])
            },
            std::slice::from_ref(&x),
            &[x.ones_like()?],
        )?;
        assert!(!kept.expect("kept").holds_tangent());
        // The graph, which keeps `e` for the backward, still works.
        out[0].sum_all()?.backward()?;
        Ok(())
    }
}
