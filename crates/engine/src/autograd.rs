//! Reverse-mode autodiff: the graph node each op leaves behind, the backward walk, the
//! gradient store, and the no-grad scope.
//!
//! Every op that reads a tensor needing a gradient records a [`Node`]: its inputs and a
//! backward rule that maps the output gradient to input gradients using ordinary
//! tensor ops (so it runs on any backend). [`Tensor::backward`] orders the graph
//! topologically, runs the rules from the output back to the variables, adds up
//! gradients of tensors used more than once, and frees each node once it has run.

use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

/// A backward rule: `(inputs, output, output gradient) → one gradient per input`
/// (`None` where an input gets none, e.g. a mask or indices).
pub trait BackwardFn:
    Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static
{
}
impl<F> BackwardFn for F where
    F: Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static
{
}

/// A backward rule that is also handed the gradient already gathered for its first
/// input (from that input's other consumers, which the walk reached first) and
/// returns the first input's *total* gradient: it adds what it computes into that
/// gradient in the same pass, where the walk would otherwise add the two in a pass of
/// its own. A layer norm on a residual stream is the case: `dx = dresidual + dnorm`.
pub(crate) trait AccumulatingBackwardFn:
    Fn(&[Tensor], &Tensor, &Tensor, Option<&Tensor>) -> Result<Vec<Option<Tensor>>>
    + Send
    + Sync
    + 'static
{
}
impl<F> AccumulatingBackwardFn for F where
    F: Fn(&[Tensor], &Tensor, &Tensor, Option<&Tensor>) -> Result<Vec<Option<Tensor>>>
        + Send
        + Sync
        + 'static
{
}

/// A node's backward rule.
pub(crate) enum Rule {
    /// Gradients of the inputs, which the walk adds to those gathered so far.
    Plain(Box<dyn BackwardFn>),
    /// As `Plain`, but the first input's gradient comes back as its total.
    Accumulating(Box<dyn AccumulatingBackwardFn>),
}

/// What an op left in the graph.
pub(crate) struct Node {
    op: &'static str,
    inputs: Vec<Tensor>,
    /// Storage versions of the inputs when the op ran.
    versions: Vec<u64>,
    backward: Rule,
}

impl Drop for Node {
    /// Frees the graph behind this node iteratively: the default recursive drop of a
    /// long chain of ops (thousands deep) would overflow the stack.
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.inputs);
        while let Some(t) = pending.pop() {
            if let Some(mut node) = t.into_sole_node() {
                pending.append(&mut node.inputs);
            }
        }
    }
}

impl Node {
    /// Refuses to run a backward rule on inputs overwritten in place since the forward.
    fn check_versions(&self) -> Result<()> {
        match self
            .inputs
            .iter()
            .zip(&self.versions)
            .position(|(t, &v)| t.version() != v)
        {
            None => Ok(()),
            Some(i) => Err(Error::Autograd(format!(
                "input {i} of {} was modified in place (assign) after the forward; update \
                 variables only after backward",
                self.op
            ))),
        }
    }

    /// Runs the rule on the output gradient `g`. An accumulating rule is handed the
    /// gradient gathered so far for the first input, unless that input appears again
    /// among the inputs (its other gradients would then be left out of the total);
    /// the second value says whether the first gradient returned is such a total.
    fn run(
        &self,
        out: &Tensor,
        g: &Tensor,
        grads: &HashMap<TensorId, Tensor>,
    ) -> Result<(Vec<Option<Tensor>>, bool)> {
        match &self.backward {
            Rule::Plain(rule) => Ok((rule(&self.inputs, out, g)?, false)),
            Rule::Accumulating(rule) => {
                let first = self.inputs[0].id();
                let once = self.inputs[1..].iter().all(|t| t.id() != first);
                let gathered = once.then(|| grads.get(&first)).flatten();
                Ok((rule(&self.inputs, out, g, gathered)?, gathered.is_some()))
            }
        }
    }
}

/// A tensor's relation to the graph.
pub(crate) enum GradMeta {
    /// A constant: no gradient flows into or through it.
    None,
    /// A leaf whose gradient is reported.
    Variable,
    /// An op's result; the node is taken (and freed) when backward runs through it.
    Node(Mutex<Option<Node>>),
}

impl GradMeta {
    /// A node for an op's result when the graph should record it.
    pub(crate) fn for_op(op: &'static str, inputs: &[&Tensor], backward: impl BackwardFn) -> Self {
        Self::for_rule(op, inputs, || Rule::Plain(Box::new(backward)))
    }

    /// [`GradMeta::for_op`] with any kind of rule (built only when recorded).
    pub(crate) fn for_rule(
        op: &'static str,
        inputs: &[&Tensor],
        rule: impl FnOnce() -> Rule,
    ) -> Self {
        if !records(inputs) {
            return GradMeta::None;
        }
        GradMeta::Node(Mutex::new(Some(Node {
            op,
            inputs: inputs.iter().map(|&t| t.clone()).collect(),
            versions: inputs.iter().map(|t| t.version()).collect(),
            backward: rule(),
        })))
    }

    pub(crate) fn take_node(&self) -> Option<Node> {
        match self {
            GradMeta::Node(n) => n.lock().take(),
            _ => None,
        }
    }

    pub(crate) fn inputs(&self) -> Option<Vec<Tensor>> {
        match self {
            GradMeta::Node(n) => n.lock().as_ref().map(|n| n.inputs.clone()),
            _ => None,
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether an op on `inputs` is recorded in the graph: gradients are enabled and one
/// of them requires a gradient (what ops that save tensors for a backward check first).
pub(crate) fn records(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}

/// True unless inside a no-grad scope on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// While alive, ops on this thread record nothing (see [`no_grad`]).
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    /// Disables graph recording until the guard is dropped.
    pub fn new() -> Self {
        NoGradGuard {
            previous: GRAD_ENABLED.with(|g| g.replace(false)),
        }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Runs `f` without recording a graph: for evaluation, sampling and targets that must
/// not receive gradients.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = NoGradGuard::new();
    f()
}

/// Gradients of the variables, keyed by tensor.
#[derive(Default, Debug)]
pub struct Gradients(HashMap<TensorId, Tensor>);

impl Gradients {
    /// The gradient of `t`, if it received one.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }

    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.0.remove(&t.id())
    }

    /// Sets the gradient of `t` (e.g. after clipping).
    pub fn insert(&mut self, t: &Tensor, grad: Tensor) {
        self.0.insert(t.id(), grad);
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All (id, gradient) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&TensorId, &Tensor)> {
        self.0.iter()
    }
}

/// Tensors reachable from `root` through recorded nodes, inputs before outputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative post-order DFS: deep graphs must not overflow the stack.
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let inputs = t.node_inputs().unwrap_or_default();
        stack.push((t, true));
        for input in inputs.into_iter().rev() {
            if input.requires_grad() && !seen.contains(&input.id()) {
                stack.push((input, false));
            }
        }
    }
    order
}

impl Tensor {
    /// Gradients of this one-element tensor with respect to every variable it depends
    /// on. Frees the graph as it goes: a second call on the same graph is an error.
    pub fn backward(&self) -> Result<Gradients> {
        if self.elem_count() != 1 {
            return Err(Error::Autograd(format!(
                "needs a one-element output, got shape {:?}; pass an output gradient to \
                 backward_with",
                self.shape()
            )));
        }
        self.backward_with(&self.ones_like()?)
    }

    /// Backpropagates `grad` (the gradient of some scalar with respect to `self`).
    pub fn backward_with(&self, grad: &Tensor) -> Result<Gradients> {
        if !self.requires_grad() {
            return Err(Error::Autograd(
                "the tensor does not depend on any variable (or was made under no_grad)".into(),
            ));
        }
        if grad.shape() != self.shape() {
            return Err(Error::shapes(
                "backward_with",
                &[self.shape(), grad.shape()],
            ));
        }
        let order = topological_order(self);
        let mut grads = HashMap::from([(self.id(), grad.detach())]);
        let _no_grad = crate::autograd::NoGradGuard::new();
        // Backward rules replay the forward's dtypes; autocast must not lower them again.
        let _no_autocast = crate::autocast::AutocastGuard::new(None)?;
        // The walk frees the nodes of variables' cached low-precision copies.
        crate::autocast::forget_casts();
        for t in order.iter().rev() {
            if t.is_variable() {
                continue;
            }
            let Some(node) = t.take_node() else {
                return Err(Error::Autograd(
                    "the graph was already freed by an earlier backward".into(),
                ));
            };
            let Some(g) = grads.remove(&t.id()) else {
                continue;
            };
            node.check_versions()?;
            let (input_grads, first_is_total) = node.run(t, &g, &grads)?;
            for (i, (input, ig)) in node.inputs.iter().zip(input_grads).enumerate() {
                let Some(ig) = ig.filter(|_| input.requires_grad()) else {
                    continue;
                };
                if ig.shape() != input.shape() {
                    return Err(Error::Autograd(format!(
                        "{}: backward produced a gradient of shape {:?} for an input of shape {:?}",
                        node.op,
                        ig.shape(),
                        input.shape()
                    )));
                }
                let total = match grads.remove(&input.id()) {
                    Some(_) if i == 0 && first_is_total => ig,
                    Some(prev) => prev.add(&ig)?,
                    None => ig,
                };
                grads.insert(input.id(), total);
            }
        }
        Ok(Gradients(grads))
    }
}
