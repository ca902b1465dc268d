//! The evaluation classifier: its conv and pooling composites against direct loops (and
//! finite differences), the shift augmentation, the held-out split, a quick training
//! run that learns well above chance, and its checkpoint file.

use std::path::{Path, PathBuf};
use twinflow::engine::gradcheck::{gradcheck, GradcheckOptions};
use twinflow::engine::{Generator, Result, Tensor};
use twinflow::flow::classifier::{
    accuracy, features, held_out_split, load_classifier, predict, random_shifts, save_classifier,
    train_classifier, ClassifierFile, ClassifierTraining, TrainEvent, MNIST_HELD_OUT,
};
use twinflow::flow::data::ImageDataset;
use twinflow::nn::{max_pool_2x2, ClassifierConfig, Conv2d, Forward};

use crate::common::{f64_builder, randn, randomize, ravel, vals};

/// Convolution `[B, H, W, Ci]` → `[B, Ho, Wo, Co]` by the definition, weight
/// `[Co, Ci, K, K]`.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f64],
    [b, h, w, ci]: [usize; 4],
    weight: &[f64],
    bias: &[f64],
    co: usize,
    k: usize,
    pad: usize,
) -> Vec<f64> {
    let (ho, wo) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
    let mut out = vec![0.0; b * ho * wo * co];
    for n in 0..b {
        for oy in 0..ho {
            for ox in 0..wo {
                for o in 0..co {
                    let mut acc = bias[o];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (y, x_) = (oy + ky, ox + kx);
                            if y < pad || x_ < pad || y - pad >= h || x_ - pad >= w {
                                continue;
                            }
                            for c in 0..ci {
                                let xv = x[ravel(&[n, y - pad, x_ - pad, c], &[b, h, w, ci])];
                                acc += xv * weight[ravel(&[o, c, ky, kx], &[co, ci, k, k])];
                            }
                        }
                    }
                    out[ravel(&[n, oy, ox, o], &[b, ho, wo, co])] = acc;
                }
            }
        }
    }
    out
}

#[test]
fn conv_matches_the_definition() -> Result<()> {
    for (k, pad, shape) in [
        (3, 1, [2, 5, 6, 3]),
        (2, 0, [1, 4, 3, 2]),
        (3, 2, [1, 2, 2, 1]),
    ] {
        let co = 4;
        let mut conv = Conv2d::new(&mut f64_builder(0), shape[3], co, k, pad)?;
        randomize(&mut conv, 1, 0.5);
        let x = randn(2, &shape);
        let y = conv.forward(&x)?;
        let want = naive_conv(
            &vals(&x),
            shape,
            &vals(&conv.weight),
            &vals(&conv.bias),
            co,
            k,
            pad,
        );
        let (ho, wo) = conv.output_size(shape[1], shape[2])?;
        assert_eq!(y.shape(), [shape[0], ho, wo, co]);
        for (a, b) in vals(&y).iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "k {k} pad {pad}: {a} vs {b}");
        }
    }
    let conv = Conv2d::new(&mut f64_builder(0), 2, 3, 3, 0)?;
    assert!(
        conv.forward(&randn(0, &[1, 4, 4, 3])).is_err(),
        "wrong channels"
    );
    assert!(
        conv.forward(&randn(0, &[1, 2, 4, 2])).is_err(),
        "image below kernel"
    );
    Ok(())
}

#[test]
fn conv_gradients_match_finite_differences() -> Result<()> {
    let mut conv = Conv2d::new(&mut f64_builder(0), 2, 3, 3, 1)?;
    randomize(&mut conv, 1, 0.5);
    let inputs = [
        randn(2, &[2, 4, 3, 2]),
        conv.weight.clone(),
        conv.bias.clone(),
    ];
    let f = |xs: &[Tensor]| {
        let mut c = conv.clone();
        c.weight = xs[1].clone();
        c.bias = xs[2].clone();
        c.forward(&xs[0])
    };
    let report = gradcheck(f, &inputs, &GradcheckOptions::default())?;
    assert_eq!(report.checked, 2 * 4 * 3 * 2 + 3 * 2 * 9 + 3);
    Ok(())
}

#[test]
fn max_pool_takes_each_window_maximum_and_routes_the_gradient_there() -> Result<()> {
    let shape = [2, 4, 6, 3];
    let x = randn(3, &shape).into_variable()?;
    let y = max_pool_2x2(&x)?;
    assert_eq!(y.shape(), [2, 2, 3, 3]);
    let xv = vals(&x);
    let mut want_grad = vec![0.0; xv.len()];
    for (i, &got) in vals(&y).iter().enumerate() {
        let [n, py, px, c] =
            <[usize; 4]>::try_from(crate::common::unravel(i, &[2, 2, 3, 3])).unwrap();
        let window = [(0, 0), (0, 1), (1, 0), (1, 1)]
            .map(|(dy, dx)| ravel(&[n, 2 * py + dy, 2 * px + dx, c], &shape));
        let best = *window
            .iter()
            .max_by(|&&a, &&b| xv[a].total_cmp(&xv[b]))
            .unwrap();
        assert_eq!(got, xv[best]);
        want_grad[best] = 1.0;
    }
    let grads = y.sum_all()?.backward()?;
    assert_eq!(vals(grads.get(&x).unwrap()), want_grad);
    assert!(
        max_pool_2x2(&randn(0, &[1, 3, 4, 1])).is_err(),
        "odd height"
    );
    Ok(())
}

#[test]
fn random_shifts_move_whole_images_within_the_limit() -> Result<()> {
    // A single ink pixel at (2, 2) of a 5×5 image, background −1.
    let mut image = [-1.0f32; 25];
    image[2 * 5 + 2] = 1.0;
    let images = image.repeat(200);
    let mut gen = Generator::new(0);
    assert_eq!(random_shifts(&images, 5, 5, 0, &mut gen)?, images);
    let shifted = random_shifts(&images, 5, 5, 2, &mut gen)?;
    let mut seen = std::collections::HashSet::new();
    for img in shifted.chunks_exact(25) {
        let ink: Vec<usize> = (0..25).filter(|&i| img[i] == 1.0).collect();
        assert_eq!(ink.len(), 1, "the pixel stays inside a ±2 shift");
        assert_eq!(img.iter().filter(|&&v| v == -1.0).count(), 24);
        seen.insert(ink[0]);
    }
    assert_eq!(seen.len(), 25, "every offset in −2..=2 × −2..=2 occurs");
    // A corner pixel shifted by up to 1 stays (moved or not) or leaves the image.
    let mut corner = [-1.0f32; 9];
    corner[0] = 1.0;
    let moved = random_shifts(&corner.repeat(100), 3, 3, 1, &mut gen)?;
    let ink: Vec<usize> = moved
        .chunks_exact(9)
        .map(|m| m.iter().filter(|&&v| v == 1.0).count())
        .collect();
    assert!(ink.contains(&0) && ink.contains(&1) && ink.iter().all(|&c| c <= 1));
    Ok(())
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn held_out_split_keeps_the_last_digits_apart() -> Result<()> {
    let data = ImageDataset::mnist_10k(repo())?;
    let (train, held_out) = held_out_split(&data, MNIST_HELD_OUT)?;
    assert_eq!((train.len(), held_out.len()), (9000, 1000));
    assert_eq!(held_out.image(0), data.image(9000));
    assert_eq!(held_out.labels[999], data.labels[9999]);
    assert_eq!(train.image(8999), data.image(8999));
    assert_eq!(held_out.num_classes(), 10, "the tail holds every class");
    assert!(held_out_split(&data, 0).is_err());
    assert!(held_out_split(&data, 10_000).is_err());
    Ok(())
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("twinflow-classifier-{name}-{}", std::process::id()))
}

/// A short run (3 epochs of 1,536 digits, measured 86% held-out) learns far above
/// chance (10%); the checkpoint file rebuilds the same classifier. The full run's
/// accuracy is in docs/evaluation.md.
#[test]
fn quick_training_learns_and_the_file_round_trips() -> Result<()> {
    let data = ImageDataset::mnist_10k(repo())?;
    let (mut train, held_out) = held_out_split(&data, MNIST_HELD_OUT)?;
    train.images.truncate(1536 * 784);
    train.labels.truncate(1536);
    let cfg = ClassifierTraining {
        epochs: 3,
        ..ClassifierTraining::default()
    };
    let mut steps = 0;
    let (model, epochs) = train_classifier(&cfg, &train, &held_out, |e| {
        if let TrainEvent::Step { .. } = e {
            steps += 1
        }
    })?;
    assert_eq!(steps, 3 * 1536 / 64);
    assert_eq!(epochs.len(), 3);
    assert!(epochs[2].loss < epochs[0].loss);
    let acc = epochs[2].held_out_accuracy;
    assert!(acc > 0.8, "held-out accuracy {acc}");
    assert_eq!(accuracy(&model, &held_out.images, &held_out.labels)?, acc);

    let path = temp_file("roundtrip.safetensors");
    let meta = ClassifierFile {
        training: cfg,
        epochs,
        held_out: "test".into(),
        dataset: None,
    };
    save_classifier(&path, &model, &meta)?;
    let (loaded, loaded_meta) = load_classifier(&path)?;
    assert_eq!(loaded_meta.training, meta.training);
    // A file without a dataset is MNIST-10k's (files written before there were others).
    assert_eq!(loaded_meta.dataset(), "mnist");
    let accuracies =
        |m: &ClassifierFile| -> Vec<f64> { m.epochs.iter().map(|e| e.held_out_accuracy).collect() };
    assert_eq!(accuracies(&loaded_meta), accuracies(&meta));
    let some = &held_out.images[..50 * 784];
    assert_eq!(predict(&loaded, some)?, predict(&model, some)?);
    assert_eq!(features(&loaded, some)?, features(&model, some)?);
    std::fs::remove_file(&path).ok();
    Ok(())
}

#[test]
fn training_and_loading_errors_are_clear() -> Result<()> {
    let tiny = ImageDataset {
        images: vec![0.0; 2 * 16],
        labels: vec![0, 1],
        channels: 1,
        rows: 4,
        cols: 4,
        class_names: Vec::new(),
    };
    let err = train_classifier(&ClassifierTraining::default(), &tiny, &tiny, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("784-value images"), "{err}");
    let small = ClassifierTraining {
        model: ClassifierConfig {
            image_size: 4,
            conv: vec![2],
            hidden: 4,
            num_classes: 2,
            ..ClassifierConfig::default()
        },
        epochs: 0,
        ..ClassifierTraining::default()
    };
    assert!(train_classifier(&small, &tiny, &tiny, |_| {}).is_err());

    let missing = temp_file("missing.safetensors");
    let err = load_classifier(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
    let garbage = temp_file("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    assert!(load_classifier(&garbage).is_err());
    std::fs::remove_file(&garbage).ok();
    // A model checkpoint without classifier metadata is refused by name.
    let path = temp_file("plain.safetensors");
    let model = twinflow::nn::Linear::new(
        &mut twinflow::nn::ParamBuilder::new(0),
        2,
        2,
        Default::default(),
    )?;
    twinflow::nn::Checkpoint::new(0, &model).save(&path)?;
    let err = load_classifier(&path).unwrap_err().to_string();
    assert!(err.contains("not a classifier checkpoint"), "{err}");
    // A classifier file whose config declares a far larger network than its tensors
    // hold is refused before that network is built.
    let model =
        twinflow::nn::Classifier::new(&mut twinflow::nn::ParamBuilder::new(0), &small.model)?;
    let meta = ClassifierFile {
        training: small.clone(),
        epochs: Vec::new(),
        held_out: "none".into(),
        dataset: None,
    };
    save_classifier(&path, &model, &meta)?;
    let mut crafted = twinflow::nn::Checkpoint::load(&path)?;
    crafted.config.as_mut().unwrap()["training"]["model"]["hidden"] = serde_json::json!(10_000_000);
    crafted.save(&path)?;
    let err = load_classifier(&path).unwrap_err().to_string();
    assert!(
        err.contains("declares a network") && err.contains("10000000"),
        "{err}"
    );
    std::fs::remove_file(&path).ok();
    Ok(())
}
