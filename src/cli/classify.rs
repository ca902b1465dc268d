//! `twinflow train-classifier`: trains the evaluation classifier of an image dataset
//! (MNIST-10k by default) on its fixed training split, measures it on the held-out
//! images, and saves it as a checkpoint that names the dataset.

use super::error::CliResult;
use super::output::{check_output, OutputKind};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use twinflow::flow::classifier::{
    dataset_identity, eval_split, save_classifier, train_classifier, ClassifierFile,
    ClassifierTraining, TrainEvent,
};
use twinflow::flow::data::DataConfig;
use twinflow::nn::ClassifierConfig;

/// Where `train-classifier` writes and `eval` reads MNIST-10k's classifier by default.
pub const DEFAULT_CLASSIFIER: &str = "runs/classifier/classifier.safetensors";

/// Where `train-classifier` writes and `eval` reads the classifier of the dataset
/// `data` by default: [`DEFAULT_CLASSIFIER`] for MNIST-10k, else
/// `runs/classifier/<dataset>[-<file or folder name>].safetensors`.
pub fn default_classifier(data: &DataConfig) -> PathBuf {
    if data.dataset == "mnist" {
        return PathBuf::from(DEFAULT_CLASSIFIER);
    }
    let stem = data
        .path
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| format!("-{}", s.to_string_lossy()))
        .unwrap_or_default();
    PathBuf::from(format!(
        "runs/classifier/{}{stem}.safetensors",
        data.dataset
    ))
}

#[derive(Debug, Args)]
pub struct TrainClassifierArgs {
    /// The image dataset: mnist (the shipped MNIST-10k, holding out its last 1,000),
    /// fashion-mnist (holding out its test split), or idx, npy, image-folder with --path
    /// (and --labels), holding out a fixed random 10%.
    #[arg(long, value_name = "NAME", default_value = "mnist")]
    dataset: String,
    /// The data file or folder (idx, npy, image-folder).
    #[arg(long, value_name = "PATH")]
    path: Option<PathBuf>,
    /// The labels file (idx, npy).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Where to save the classifier (a safetensors checkpoint, written atomically; an
    /// existing file there must be a classifier too)
    /// [default: runs/classifier/classifier.safetensors for mnist,
    /// runs/classifier/<dataset>[-<path's name>].safetensors otherwise, where `eval`
    /// looks for it].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Passes over the training images.
    #[arg(long, value_name = "N", default_value_t = ClassifierTraining::default().epochs)]
    epochs: usize,
    /// Seed of the initialisation, batch order, shifts and dropout.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// The directory holding data/ (mnist) or the Fashion-MNIST files (fashion-mnist).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Images per training step.
    #[arg(long, value_name = "B", default_value_t = ClassifierTraining::default().batch_size)]
    batch_size: usize,
    /// Peak learning rate of Adam (one epoch of linear warm-up, then cosine to 0).
    #[arg(long, value_name = "LR", default_value_t = ClassifierTraining::default().lr)]
    lr: f64,
    /// Largest random shift of a training image, in pixels per axis (0: no augmentation).
    #[arg(long, value_name = "P", default_value_t = ClassifierTraining::default().max_shift)]
    max_shift: usize,
    /// Train on only the first N of the training images (quick runs; the held-out images
    /// stay the same).
    #[arg(long, value_name = "N")]
    train_images: Option<usize>,
}

/// Runs `train-classifier`.
pub fn run(a: TrainClassifierArgs) -> CliResult<()> {
    let cfg = ClassifierTraining {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        max_shift: a.max_shift,
        seed: a.seed,
        ..ClassifierTraining::default()
    };
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err("--epochs and --batch-size must be positive".into());
    }
    let data = DataConfig {
        root: a.root.clone(),
        path: a.path.clone(),
        labels: a.labels.clone(),
        ..DataConfig::named(&a.dataset, 1)
    };
    let out = a.out.clone().unwrap_or_else(|| default_classifier(&data));
    check_output(&out, OutputKind::Classifier, "--out")?;
    let split = eval_split(&data)?;
    let (mut train, held_out) = (split.train, split.held_out);
    let shape = train.shape();
    if shape.rows != shape.cols {
        return Err(format!("the evaluation classifier needs square images, not {shape}").into());
    }
    let cfg = ClassifierTraining {
        model: ClassifierConfig {
            image_size: shape.rows,
            channels: shape.channels,
            num_classes: train.num_classes().max(held_out.num_classes()),
            ..cfg.model
        },
        ..cfg
    };
    if let Some(n) = a.train_images {
        if n == 0 || n > train.len() {
            return Err(format!("--train-images must be in 1..={}, got {n}", train.len()).into());
        }
        train.images.truncate(n * train.dim());
        train.labels.truncate(n);
    }
    eprintln!(
        "training on {} images, holding out {} ({} epochs)",
        train.len(),
        split.description,
        cfg.epochs
    );
    let started = Instant::now();
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps | loss {msg} | {per_sec} | ETA {eta}",
    ) {
        bar.set_style(style);
    }
    let (model, epochs) = train_classifier(&cfg, &train, &held_out, |event| match event {
        TrainEvent::Step { step, total, loss } => {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
            bar.set_message(format!("{loss:.4}"));
        }
        // Printed around the bar (`println` on the bar drops lines when stderr is not a
        // terminal).
        TrainEvent::Epoch(r) => bar.suspend(|| {
            eprintln!(
                "epoch {}/{}: loss {:.4}, train accuracy {:.2}% (augmented batches), \
             held-out accuracy {:.2}% ({:.1} s)",
                r.epoch,
                cfg.epochs,
                r.loss,
                100.0 * r.train_accuracy,
                100.0 * r.held_out_accuracy,
                r.seconds
            )
        }),
    })?;
    bar.finish_and_clear();
    let held_out_accuracy = epochs.last().map_or(0.0, |r| r.held_out_accuracy);
    let meta = ClassifierFile {
        training: cfg,
        epochs,
        held_out: split.description,
        dataset: Some(dataset_identity(&data)),
    };
    // Checked again: a file may have appeared there during the training.
    check_output(&out, OutputKind::Classifier, "--out")?;
    save_classifier(&out, &model, &meta)?;
    eprintln!(
        "held-out accuracy {:.2}% after {:.0} s; saved the classifier to {}",
        100.0 * held_out_accuracy,
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
