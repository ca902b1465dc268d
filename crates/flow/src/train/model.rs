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

    /// The network of the configured kind.
    fn network(&self) -> &dyn VelocityModel {
        match self {
            TrainModel::Mlp(m) => m,
            TrainModel::Dit(m) => m,
        }
    }

    /// The network of the configured kind, mutably.
    fn network_mut(&mut self) -> &mut dyn VelocityModel {
        match self {
            TrainModel::Mlp(m) => m,
            TrainModel::Dit(m) => m,
        }
    }
}

// Written by hand: `impl_module!` lists the fields of a struct, and this enum's one
// field depends on the variant. Each method passes straight on to the network, without
// a name prefix, so the names are the network's own.
impl Module for TrainModel {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.network().visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.network_mut().visit_params_mut(f);
    }

    fn set_training(&mut self, training: bool) {
        self.network_mut().set_training(training);
    }
}

impl VelocityModel for TrainModel {
    fn velocity(&self, x: &Tensor, t: &Tensor, tt: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.network().velocity(x, t, tt, labels)
    }

    fn forward_rng(&self) -> &ForwardRng {
        self.network().forward_rng()
    }
}

#[cfg(test)]
mod tests {
    use super::TrainModel;
    use twinflow_engine::{DType, Device, Tensor};
    use twinflow_nn::{
        Dit, DitConfig, MlpVelocity, MlpVelocityConfig, Module, ParamBuilder, VelocityModel,
    };

    fn names(m: &dyn Module) -> Vec<String> {
        m.named_params().into_iter().map(|(n, _)| n).collect()
    }

    /// Whether a forward draws from the model's stream: label dropout does in train
    /// mode only.
    fn draws(model: &TrainModel, data_dim: usize) -> bool {
        let x = Tensor::zeros(&[2, data_dim], DType::F32, Device::Cpu).unwrap();
        let t = Tensor::full(0.5, &[2], DType::F32, Device::Cpu).unwrap();
        let labels = Tensor::from_vec(vec![0i64, 1], &[2], Device::Cpu).unwrap();
        let before = model.forward_rng().state();
        model.velocity(&x, &t, &t, &labels).unwrap();
        model.forward_rng().state() != before
    }

    #[test]
    fn names_and_train_mode_are_those_of_the_network() {
        let pb = &mut ParamBuilder::new(0);
        let mlp = MlpVelocity::new(
            pb,
            MlpVelocityConfig {
                data_dim: 4,
                width: 8,
                depth: 1,
                emb_dim: 4,
                num_classes: 3,
                label_dropout: 0.5,
                time_gated_skip: true,
                ..MlpVelocityConfig::default()
            },
        )
        .unwrap();
        let dit = Dit::new(
            pb,
            DitConfig {
                image_size: 4,
                channels: 1,
                patch: 2,
                dim: 8,
                depth: 1,
                heads: 2,
                mlp_ratio: 2,
                num_classes: 3,
                label_dropout: 0.5,
                ..DitConfig::default()
            },
        )
        .unwrap();
        let cases = [
            (names(&mlp), TrainModel::Mlp(mlp), 4),
            (names(&dit), TrainModel::Dit(dit), 16),
        ];
        for (want, mut model, data_dim) in cases {
            assert_eq!(names(&model), want);
            let mut mutable = Vec::new();
            model.visit_params_mut(&mut |n, _| mutable.push(n.to_string()));
            assert_eq!(mutable, want);
            assert!(draws(&model, data_dim));
            model.set_training(false);
            assert!(!draws(&model, data_dim));
            model.set_training(true);
            assert!(draws(&model, data_dim));
        }
    }
}
