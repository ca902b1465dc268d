//! The networks the trainer builds, behind one type.

use twinflow_engine::{Result, Tensor};
use twinflow_nn::{Dit, ForwardRng, MlpVelocity, Module, VelocityModel};

/// A velocity network of one of the configured kinds.
#[derive(Debug, Clone)]
pub enum TrainModel {
    /// A residual MLP.
    Mlp(MlpVelocity),
    /// A diffusion transformer.
    Dit(Dit),
}

impl TrainModel {
    /// The label that means "no class" (for guidance).
    pub fn null_label(&self) -> i64 {
        match self {
            TrainModel::Mlp(m) => m.null_label(),
            TrainModel::Dit(m) => m.null_label(),
        }
    }
}

impl Module for TrainModel {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        match self {
            TrainModel::Mlp(m) => m.visit_params(f),
            TrainModel::Dit(m) => m.visit_params(f),
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        match self {
            TrainModel::Mlp(m) => m.visit_params_mut(f),
            TrainModel::Dit(m) => m.visit_params_mut(f),
        }
    }

    fn set_training(&mut self, training: bool) {
        match self {
            TrainModel::Mlp(m) => m.set_training(training),
            TrainModel::Dit(m) => m.set_training(training),
        }
    }
}

impl VelocityModel for TrainModel {
    fn velocity(&self, x: &Tensor, t: &Tensor, tt: &Tensor, labels: &Tensor) -> Result<Tensor> {
        match self {
            TrainModel::Mlp(m) => m.velocity(x, t, tt, labels),
            TrainModel::Dit(m) => m.velocity(x, t, tt, labels),
        }
    }

    fn forward_rng(&self) -> &ForwardRng {
        match self {
            TrainModel::Mlp(m) => m.forward_rng(),
            TrainModel::Dit(m) => m.forward_rng(),
        }
    }
}
