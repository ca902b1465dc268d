//! `twinflow train-classifier`: trains the evaluation classifier on MNIST-10k (all but
//! the held-out last 1,000 digits) and saves it as a checkpoint.

use super::error::CliResult;
use super::output::{check_output, OutputKind};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use twinflow::flow::classifier::{
    held_out_split, save_classifier, train_classifier, ClassifierFile, ClassifierTraining,
    TrainEvent, MNIST_HELD_OUT,
};
use twinflow::flow::data::ImageDataset;

/// Where `train-classifier` writes and `eval` reads the classifier by default.
pub const DEFAULT_CLASSIFIER: &str = "runs/classifier/classifier.safetensors";

#[derive(Debug, Args)]
pub struct TrainClassifierArgs {
    /// Where to save the classifier (a safetensors checkpoint, written atomically; an
    /// existing file there must be a classifier too).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CLASSIFIER)]
    out: PathBuf,
    /// Passes over the 9,000 training digits.
    #[arg(long, value_name = "N", default_value_t = ClassifierTraining::default().epochs)]
    epochs: usize,
    /// Seed of the initialisation, batch order, shifts and dropout.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// The directory holding data/ (data/mnist-10k is read from it).
    #[arg(long, value_name = "DIR", default_value = ".")]
    root: PathBuf,
    /// Images per training step.
    #[arg(long, value_name = "B", default_value_t = ClassifierTraining::default().batch_size)]
    batch_size: usize,
    /// Peak learning rate of Adam (one epoch of linear warm-up, then cosine to 0).
    #[arg(long, value_name = "LR", default_value_t = ClassifierTraining::default().lr)]
    lr: f64,
    /// Largest random shift of a training image, in pixels per axis (0: no augmentation).
    #[arg(long, value_name = "P", default_value_t = ClassifierTraining::default().max_shift)]
    max_shift: usize,
    /// Train on only the first N of the 9,000 training digits (quick runs; the held-out
    /// 1,000 stay the same).
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
    check_output(&a.out, OutputKind::Classifier, "--out")?;
    let data = ImageDataset::mnist_10k(&a.root)?;
    let (mut train, held_out) = held_out_split(&data, MNIST_HELD_OUT)?;
    if let Some(n) = a.train_images {
        if n == 0 || n > train.len() {
            return Err(format!("--train-images must be in 1..={}, got {n}", train.len()).into());
        }
        train.images.truncate(n * train.dim());
        train.labels.truncate(n);
    }
    eprintln!(
        "training on {} digits, holding out the last {} of {} ({} epochs)",
        train.len(),
        held_out.len(),
        data.len(),
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
        held_out: format!(
            "the last {} of the {} digits of data/mnist-10k",
            held_out.len(),
            data.len()
        ),
    };
    // Checked again: a file may have appeared there during the training.
    check_output(&a.out, OutputKind::Classifier, "--out")?;
    save_classifier(&a.out, &model, &meta)?;
    eprintln!(
        "held-out accuracy {:.2}% after {:.0} s; saved the classifier to {}",
        100.0 * held_out_accuracy,
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
