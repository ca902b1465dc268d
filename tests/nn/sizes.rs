//! Sizes from users and files: a network's parameter count is known from its config
//! before anything is built (and is the count of the network built), and a size too
//! large for the machine is an error, never a "capacity overflow" panic or an
//! allocation abort.

use twinflow::engine::{DType, Device, Error, Generator, Tensor};
use twinflow::nn::{
    Classifier, ClassifierConfig, Dit, DitConfig, MlpVelocity, MlpVelocityConfig, Module,
    ParamBuilder, MAX_PARAMETERS,
};

fn count(m: &dyn Module) -> usize {
    m.named_params().iter().map(|(_, t)| t.elem_count()).sum()
}

#[test]
fn parameter_counts_from_configs_are_those_of_the_networks_built() {
    let pb = &mut ParamBuilder::new(0);
    for (width, depth, emb_dim, skip) in [(8, 1, 4, false), (16, 3, 6, true), (5, 0, 2, true)] {
        let cfg = MlpVelocityConfig {
            data_dim: 3,
            width,
            depth,
            emb_dim,
            num_classes: 4,
            label_dropout: 0.1,
            time_gated_skip: skip,
            ..MlpVelocityConfig::default()
        };
        let built = MlpVelocity::new(pb, cfg).unwrap();
        assert_eq!(cfg.parameter_count(), Some(count(&built)), "{cfg:?}");
    }
    for (image_size, channels, patch, dim, depth, heads, mlp_ratio) in [
        (4, 1, 2, 8, 1, 2, 2),
        (6, 3, 3, 12, 2, 3, 1),
        (8, 1, 4, 4, 0, 1, 3),
    ] {
        let cfg = DitConfig {
            image_size,
            channels,
            patch,
            dim,
            depth,
            heads,
            mlp_ratio,
            num_classes: 3,
            label_dropout: 0.0,
            ..DitConfig::default()
        };
        let built = Dit::new(pb, cfg).unwrap();
        assert_eq!(cfg.parameter_count(), Some(count(&built)), "{cfg:?}");
    }
    for (image_size, channels, conv, hidden) in [
        (8, 1, vec![4, 6], 10),
        (12, 3, vec![5], 7),
        (4, 2, vec![], 3),
    ] {
        let cfg = ClassifierConfig {
            image_size,
            channels,
            conv,
            hidden,
            num_classes: 5,
            dropout: 0.25,
        };
        let built = Classifier::new(pb, &cfg).unwrap();
        assert_eq!(cfg.parameter_count(), Some(count(&built)), "{cfg:?}");
    }
}

#[test]
fn networks_too_large_to_build_are_refused_before_anything_is_allocated() {
    let pb = &mut ParamBuilder::new(0);
    let message = |e: Error| {
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
        e.to_string()
    };
    for width in [10_000_000_000usize, usize::MAX] {
        let cfg = MlpVelocityConfig {
            width,
            ..MlpVelocityConfig::default()
        };
        let e = message(MlpVelocity::new(pb, cfg).unwrap_err());
        assert!(
            e.contains("parameters") && e.contains(&width.to_string()),
            "{e}"
        );
    }
    // A depth of ten billion small blocks: refused at once, not after building them.
    let deep = MlpVelocityConfig {
        width: 8,
        depth: 10_000_000_000,
        ..MlpVelocityConfig::default()
    };
    let e = message(MlpVelocity::new(pb, deep).unwrap_err());
    assert!(e.contains(&MAX_PARAMETERS.to_string()), "{e}");
    let wide = DitConfig {
        dim: 1 << 40,
        ..DitConfig::default()
    };
    message(Dit::new(pb, wide).unwrap_err());
    let big = ClassifierConfig {
        hidden: usize::MAX,
        ..ClassifierConfig::default()
    };
    message(Classifier::new(pb, &big).unwrap_err());
    // Stages that halve the image away (more than 64 of them) are refused too, without
    // a shift overflow.
    let stages = ClassifierConfig {
        conv: vec![1; 70],
        ..ClassifierConfig::default()
    };
    assert!(Classifier::new(pb, &stages).is_err());
}

#[test]
fn tensors_of_huge_shapes_are_errors() {
    let huge: [&[usize]; 3] = [&[usize::MAX, 2], &[1 << 40, 1 << 40], &[0, usize::MAX, 2]];
    for shape in huge {
        for result in [
            Tensor::zeros(shape, DType::F32, Device::Cpu),
            Tensor::full(1.0, shape, DType::F64, Device::Cpu),
            Generator::new(0).randn(shape, DType::F32, Device::Cpu),
            Tensor::from_vec(Vec::<f32>::new(), shape, Device::Cpu),
        ] {
            let e = result.unwrap_err();
            assert!(matches!(e, Error::OutOfMemory { .. }), "{shape:?}: {e:?}");
        }
    }
    // Countable, but more bytes than the address space: refused before the allocator
    // is asked, on any machine.
    for result in [
        Tensor::zeros(&[1 << 62], DType::F32, Device::Cpu),
        Generator::new(0).uniform(&[1 << 61, 2], 0.0, 1.0, DType::F64, Device::Cpu),
    ] {
        let e = result.unwrap_err().to_string();
        assert!(e.contains("cannot allocate") && e.contains("bytes"), "{e}");
    }
}
