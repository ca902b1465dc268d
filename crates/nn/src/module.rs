//! The `Module` trait: named parameters, train/eval mode, freezing.

use twinflow_engine::{Result, Tensor};

/// A piece of a model that owns parameters (and possibly sub-modules).
///
/// Parameters are engine variables ([`Tensor::into_variable`]); a frozen parameter is a
/// plain (detached) tensor, so it receives no gradient and optimizers skip it. Names
/// are hierarchical, joined by dots (`blocks.0.attn.qkv.weight`), as in PyTorch's
/// `state_dict`, so checkpoints line up with PyTorch models.
pub trait Module {
    /// Calls `f(name, parameter)` for every parameter, names relative to this module.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor));

    /// Calls `f(name, parameter)` for every parameter, allowing it to be replaced
    /// (freezing, copying for an EMA model).
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor));

    /// Switches train mode (dropout active) or eval mode. Containers pass it on.
    fn set_training(&mut self, _training: bool) {}

    /// Every parameter with its full name, in a fixed order.
    fn named_params(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_params(&mut |n, t| out.push((n.to_string(), t.clone())));
        out
    }

    /// Number of scalar parameters.
    fn param_count(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |_, t| n += t.elem_count());
        n
    }

    /// Stops gradients to every parameter (they become constants sharing storage).
    fn freeze(&mut self) {
        self.visit_params_mut(&mut |_, t| *t = t.detach());
    }

    /// Makes every parameter trainable again.
    fn unfreeze(&mut self) -> Result<()> {
        let mut result = Ok(());
        self.visit_params_mut(&mut |_, t| {
            if !t.is_variable() && result.is_ok() {
                result = t.clone().into_variable().map(|v| *t = v);
            }
        });
        result
    }
}

/// A module mapping one tensor to one tensor.
pub trait Forward {
    /// Applies the module.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// Joins a child's prefix and a parameter name.
fn joined(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

/// Visits a child module's parameters under `prefix`.
pub fn visit_child(prefix: &str, child: &dyn Module, f: &mut dyn FnMut(&str, &Tensor)) {
    child.visit_params(&mut |n, t| f(&joined(prefix, n), t));
}

/// Visits a child module's parameters mutably under `prefix`.
pub fn visit_child_mut(prefix: &str, child: &mut dyn Module, f: &mut dyn FnMut(&str, &mut Tensor)) {
    child.visit_params_mut(&mut |n, t| f(&joined(prefix, n), t));
}

/// A list of modules named `0`, `1`, … (PyTorch's `ModuleList`).
impl<M: Module> Module for Vec<M> {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        for (i, m) in self.iter().enumerate() {
            visit_child(&i.to_string(), m, f);
        }
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for (i, m) in self.iter_mut().enumerate() {
            visit_child_mut(&i.to_string(), m, f);
        }
    }
    fn set_training(&mut self, training: bool) {
        self.iter_mut().for_each(|m| m.set_training(training));
    }
}

/// An optional sub-module (e.g. a bias-free layer's missing bias).
impl<M: Module> Module for Option<M> {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(m) = self {
            m.visit_params(f);
        }
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        if let Some(m) = self {
            m.visit_params_mut(f);
        }
    }
    fn set_training(&mut self, training: bool) {
        if let Some(m) = self {
            m.set_training(training);
        }
    }
}
