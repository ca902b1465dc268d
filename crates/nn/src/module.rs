//! The `Module` trait: named parameters, train/eval mode, freezing; and
//! [`impl_module!`](crate::impl_module), which writes a module's `Module` impl from the
//! list of its fields.

use twinflow_engine::{Result, Tensor};

/// The engine's tensor under a path that [`impl_module!`](crate::impl_module)'s expansion
/// can name in crates that do not depend on the engine themselves.
#[doc(hidden)]
pub use twinflow_engine::Tensor as MacroTensor;

/// A piece of a model that owns parameters (and possibly sub-modules).
///
/// Parameters are engine variables ([`Tensor::into_variable`]); a frozen parameter is a
/// plain (detached) tensor, so it receives no gradient and optimizers skip it. Names
/// are hierarchical, joined by dots (`blocks.0.attn.qkv.weight`), as in PyTorch's
/// `state_dict`, so checkpoints line up with PyTorch models.
///
/// A module whose parameters and sub-modules are its fields gets this impl from
/// [`impl_module!`](crate::impl_module), which lists each field once for both visitors
/// and for [`set_training`](Module::set_training).
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

/// One field of a module as [`impl_module!`](crate::impl_module) sees it: a parameter
/// ([`Tensor`]), an optional parameter (`Option<Tensor>`, absent = no parameter), or a
/// sub-module (any [`Module`], `Vec<M>` and `Option<M>` included).
pub trait ModuleField {
    /// Calls `f` for the field's parameters: a parameter is named `name`; a sub-module's
    /// parameters are named `name.<their name>`, or just `<their name>` when `name` is
    /// empty (a sub-module that sits in its parent's namespace).
    fn visit_field(&self, name: &str, f: &mut dyn FnMut(&str, &Tensor));

    /// [`visit_field`](ModuleField::visit_field) allowing the parameters to be replaced.
    fn visit_field_mut(&mut self, name: &str, f: &mut dyn FnMut(&str, &mut Tensor));

    /// Passes train/eval mode on to a sub-module; a parameter has no mode.
    fn set_field_training(&mut self, _training: bool) {}
}

impl ModuleField for Tensor {
    fn visit_field(&self, name: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(name, self);
    }
    fn visit_field_mut(&mut self, name: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(name, self);
    }
}

impl ModuleField for Option<Tensor> {
    fn visit_field(&self, name: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(t) = self {
            f(name, t);
        }
    }
    fn visit_field_mut(&mut self, name: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        if let Some(t) = self {
            f(name, t);
        }
    }
}

impl<M: Module> ModuleField for M {
    fn visit_field(&self, name: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        match name {
            "" => self.visit_params(f),
            _ => visit_child(name, self, f),
        }
    }
    fn visit_field_mut(&mut self, name: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        match name {
            "" => self.visit_params_mut(f),
            _ => visit_child_mut(name, self, f),
        }
    }
    fn set_field_training(&mut self, training: bool) {
        self.set_training(training);
    }
}

/// Implements [`Module`] for a struct from the list of its parameter and sub-module
/// fields, each written once: `visit_params` and `visit_params_mut` visit them in the
/// listed order (which is the order of `named_params()`, and so of checkpoints), and
/// `set_training` passes the mode on to every one of them, so no container can forget
/// a child that has dropout.
///
/// Each field is a [`ModuleField`]: a `Tensor`, an `Option<Tensor>` or a [`Module`]
/// (`Vec<M>` and `Option<M>` included). It is named after itself unless renamed with
/// `as "name"`; `as ""` puts a sub-module's parameters directly in this module's
/// namespace. Tuple fields are written by index (`0 as "w"`). Fields that are neither
/// parameters nor modules (sizes, configs, random streams) are left out. A module that
/// keeps its own train/eval flag names that `bool` field after the braces with
/// `training_flag: field`; `set_training` stores the mode there too.
///
/// ```
/// use twinflow_nn::{impl_module, Dropout, LayerNorm, Linear, Mlp};
/// use twinflow_engine::Tensor;
///
/// struct Block {
///     /// Parameter `scale`.
///     scale: Tensor,
///     /// Parameters `norm.weight`, `norm.bias`.
///     norm: LayerNorm,
///     /// Parameters `fc1.*`, `fc2.*`: in the block's namespace, not under `mlp.`.
///     mlp: Mlp,
///     /// No parameters, but switched to eval mode with the block.
///     dropout: Dropout,
///     /// Parameters `heads.0.weight`, `heads.0.bias`, `heads.1.weight`, …
///     heads: Vec<Linear>,
///     /// Not a parameter: left out.
///     width: usize,
/// }
///
/// impl_module! { Block { scale, norm, mlp as "", dropout, heads } }
///
/// struct Gate {
///     weight: Tensor,
///     training: bool,
/// }
///
/// impl_module! { Gate { weight } training_flag: training }
/// ```
#[macro_export]
macro_rules! impl_module {
    // A field's parameter name: its own, or the one given with `as`.
    (@name $field:tt) => {
        stringify!($field)
    };
    (@name $field:tt $name:literal) => {
        $name
    };
    (
        $module:ty { $($field:tt $(as $name:literal)?),* $(,)? }
        $(training_flag: $flag:ident)?
    ) => {
        impl $crate::module::Module for $module {
            // A module without fields leaves its arguments unused.
            #[allow(unused_variables)]
            fn visit_params(&self, f: &mut dyn FnMut(&str, &$crate::module::MacroTensor)) {
                $($crate::module::ModuleField::visit_field(
                    &self.$field,
                    $crate::impl_module!(@name $field $($name)?),
                    f,
                );)*
            }
            #[allow(unused_variables)]
            fn visit_params_mut(
                &mut self,
                f: &mut dyn FnMut(&str, &mut $crate::module::MacroTensor),
            ) {
                $($crate::module::ModuleField::visit_field_mut(
                    &mut self.$field,
                    $crate::impl_module!(@name $field $($name)?),
                    f,
                );)*
            }
            #[allow(unused_variables)]
            fn set_training(&mut self, training: bool) {
                $(self.$flag = training;)?
                $($crate::module::ModuleField::set_field_training(&mut self.$field, training);)*
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Module;
    use twinflow_engine::{DType, Device, Tensor};

    fn scalar(v: f64) -> Tensor {
        Tensor::from_f64s(&[v], &[1], DType::F64, Device::Cpu).unwrap()
    }

    /// A leaf with a parameter, an optional one and its own train/eval flag.
    struct Leaf {
        w: Tensor,
        b: Option<Tensor>,
        training: bool,
    }

    impl_module! { Leaf { w, b } training_flag: training }

    fn leaf(with_bias: bool) -> Leaf {
        Leaf {
            w: scalar(1.0),
            b: with_bias.then(|| scalar(2.0)),
            training: true,
        }
    }

    /// Every kind of field the macro takes.
    struct Tree {
        scale: Tensor,
        leaves: Vec<Leaf>,
        inline: Leaf,
        absent: Option<Leaf>,
        present: Option<Leaf>,
        renamed: Leaf,
        // Not listed: neither a parameter nor a module.
        size: usize,
    }

    impl_module! { Tree { scale, leaves, inline as "", absent, present, renamed as "r" } }

    struct Pair(Tensor, Tree);

    impl_module! { Pair { 0 as "first", 1 as "second" } }

    fn pair() -> Pair {
        let tree = Tree {
            scale: scalar(3.0),
            leaves: vec![leaf(true), leaf(false)],
            inline: leaf(false),
            absent: None,
            present: Some(leaf(true)),
            renamed: leaf(true),
            size: 7,
        };
        Pair(scalar(0.0), tree)
    }

    fn leaves_of(tree: &Tree) -> Vec<&Leaf> {
        let mut leaves: Vec<&Leaf> = tree.leaves.iter().collect();
        leaves.extend([&tree.inline, &tree.renamed]);
        leaves.extend(&tree.present);
        leaves
    }

    #[test]
    fn fields_are_visited_in_the_listed_order_under_their_names() {
        let mut m = pair();
        let want = [
            "first",
            "second.scale",
            "second.leaves.0.w",
            "second.leaves.0.b",
            "second.leaves.1.w",
            "second.w",
            "second.present.w",
            "second.present.b",
            "second.r.w",
            "second.r.b",
        ];
        let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, want);
        let mut visited = Vec::new();
        m.visit_params_mut(&mut |n, t| {
            visited.push(n.to_string());
            *t = scalar(-1.0);
        });
        assert_eq!(visited, want);
        assert!(m
            .named_params()
            .iter()
            .all(|(_, t)| t.to_vec_f64().unwrap() == [-1.0]));
        assert_eq!(m.1.size, 7);
    }

    #[test]
    fn set_training_reaches_every_nested_module() {
        let mut m = pair();
        for training in [false, true, false] {
            m.set_training(training);
            assert!(leaves_of(&m.1).iter().all(|l| l.training == training));
        }
    }
}
