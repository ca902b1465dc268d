//! `twinflow`: train flow models from a TOML config, sample from checkpoints, dump data.

mod cli {
    pub mod classify;
    pub mod curves;
    pub mod error;
    pub mod eval;
    pub mod grids;
    pub mod npy;
    pub mod plot;
    pub mod progress;
    pub mod sampler_args;
}

use clap::{Args, Parser, Subcommand};
use cli::curves::write_curves;
use cli::error::CliResult;
use cli::grids::{image_shape, write_sample_grids};
use cli::progress::TrainProgress;
use cli::sampler_args::SamplerArgs;
use cli::{npy, plot};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use twinflow::engine::{report, Error};
use twinflow::flow::data::{DataConfig, DataSource};
use twinflow::flow::eval::{sample_batched, SampleLabels, DEFAULT_SAMPLE_BATCH};
use twinflow::flow::train::{Precision, RestoreOptions, TrainConfig, TrainEvent, Trainer};

/// The config used by `train` without `--config`.
const DEFAULT_CONFIG: &str = include_str!("../configs/mnist-twinflow.toml");
/// Its name (the default run directory is `runs/<name>`).
const DEFAULT_CONFIG_NAME: &str = "mnist-twinflow";

/// TwinFlow: one-step generative models on a from-scratch autodiff engine.
#[derive(Debug, Parser)]
#[command(name = "twinflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model from a TOML config; writes config.toml, metrics.jsonl, samples/
    /// (PNG grids at the config's sample_nfe) and checkpoints/ (latest.safetensors and
    /// step-<N>.safetensors) under the run directory.
    Train(TrainArgs),
    /// Draw samples from a checkpoint into a .npy array (plus .labels.npy) or a .png picture.
    Sample(SampleArgs),
    /// Write real samples of a dataset, exactly as training draws them, to a .npy array
    /// (plus .labels.npy).
    Data(DataArgs),
    /// Train the evaluation classifier (a small CNN) on MNIST-10k, holding out the last
    /// 1,000 digits, and save it as a checkpoint.
    TrainClassifier(cli::classify::TrainClassifierArgs),
    /// Score a checkpoint at several NFEs (distances to true samples for 2-D toys,
    /// classifier accuracy and Fréchet distance for images); prints a table, writes JSON.
    Eval(cli::eval::EvalArgs),
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// The training config (TOML; unknown keys are errors). Without it, the built-in
    /// configs/mnist-twinflow.toml is used: TwinFlow on the shipped MNIST-10k.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The run directory [default: runs/<config file stem>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Train until this many optimizer steps in total (overrides the config's `steps`;
    /// with --resume, the step to continue to).
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
    /// Seed of model init, data and the method's draws (overrides the config's `seed`;
    /// not allowed with --resume, which restores the saved random state).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Continue the run from DIR/checkpoints/latest.safetensors with the config saved in
    /// it (--config only names the default DIR then).
    #[arg(long)]
    resume: bool,
    /// Train on this device: cpu, cuda or cuda:N (overrides the config's `device`; CUDA
    /// needs a build with `--features cuda` and an NVIDIA GPU).
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Precision of the products and attention: f32, bf16 or f16 (autocast; parameters
    /// stay f32; f16 adds a dynamic loss scaler). Overrides the config's `precision`;
    /// not allowed with --resume.
    #[arg(long, value_name = "TYPE", value_parser = ["f32", "bf16", "f16"])]
    precision: Option<String>,
    /// Start from the weights of this trainer checkpoint (θ from its online weights, θ⁻
    /// from its EMA weights) instead of a random init; the step, optimizer, EMA warm-up,
    /// random streams and data order start fresh. Overrides the config's `init_from`;
    /// not allowed with --resume.
    #[arg(long, value_name = "FILE")]
    init_from: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SampleArgs {
    /// The checkpoint to sample from (e.g. runs/moons-twinflow/checkpoints/latest.safetensors).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Number of sampler steps K of the UCGM sampler (= network evaluations without guidance).
    #[arg(long, value_name = "K", default_value_t = 1)]
    nfe: usize,
    /// Number of samples.
    #[arg(long, value_name = "N")]
    n: usize,
    /// Class labels: `all` cycles 0, 1, …, num_classes−1; a number L gives every sample class L.
    #[arg(long, value_name = "all|L", default_value = "all")]
    labels: String,
    /// Seed of the initial noise (sample i starts from row i of one N(0, I) draw, as in
    /// `eval` and the training run's sample pictures).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Samples per sampler call: bounds memory at large --n or NFE.
    #[arg(long, value_name = "B", default_value_t = DEFAULT_SAMPLE_BATCH)]
    batch_size: usize,
    /// Sample from the EMA weights instead of the online weights.
    #[arg(long)]
    ema: bool,
    /// Where to sample: cpu, cuda or cuda:N (whatever device the run trained on).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
    /// Output: FILE.npy (float32 [N, D], labels in FILE.labels.npy as int64 [N]) or FILE.png
    /// (a scatter plot for 2-D data, a grid with one row per class for image data).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct DataArgs {
    /// The dataset: moons, 8gaussians, checkerboard, spirals, mnist, fashion-mnist, or
    /// the user's files: idx, npy, image-folder (with --path and --labels).
    #[arg(long, value_name = "NAME")]
    dataset: String,
    /// The data file (idx: the IDX image file; npy: the array) or folder
    /// (image-folder).
    #[arg(long, value_name = "PATH")]
    path: Option<PathBuf>,
    /// The labels file (idx: the IDX label file; npy: an int64 array).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, value_name = "N")]
    n: usize,
    /// Seed of the data stream (the seed given to the dataset source).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// The directory holding data/ (mnist) or the Fashion-MNIST files (fashion-mnist;
    /// by default $FASHION_MNIST_DIR or where Debian's package installs them).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Output: FILE.npy (float32 [N, D]; the labels go to FILE.labels.npy, int64 [N]) or
    /// FILE.png (a scatter plot for 2-D data, a grid with one row per class for images).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train(a),
        Command::Sample(a) => sample(a),
        Command::Data(a) => data(a),
        Command::TrainClassifier(a) => cli::classify::run(a),
        Command::Eval(a) => cli::eval::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&*e));
            ExitCode::FAILURE
        }
    }
}

fn train(a: TrainArgs) -> CliResult<()> {
    let stem = match &a.config {
        Some(path) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into()),
        None => DEFAULT_CONFIG_NAME.into(),
    };
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&stem));
    let (mut trainer, target) = if a.resume {
        if a.init_from.is_some() {
            return Err(
                "--init-from cannot be combined with --resume (a resumed run continues from \
                 its own checkpoint, which holds its weights)"
                    .into(),
            );
        }
        if a.seed.is_some() || a.precision.is_some() {
            return Err(
                "--seed and --precision cannot be combined with --resume (the run \
                 continues with its saved random state and precision)"
                    .into(),
            );
        }
        let latest = dir.join("checkpoints").join("latest.safetensors");
        if !latest.is_file() {
            return Err(format!("cannot resume: no checkpoint at {}", latest.display()).into());
        }
        let options = RestoreOptions {
            device: a.device.clone(),
            ..RestoreOptions::default()
        };
        let trainer = Trainer::from_checkpoint_with(&latest, &options)?;
        let target = a.steps.unwrap_or(trainer.config().steps);
        (trainer, target)
    } else {
        let mut cfg = match &a.config {
            Some(path) => {
                if !path.is_file() {
                    return Err(format!("config file {} not found", path.display()).into());
                }
                TrainConfig::load(path)?
            }
            None => {
                TrainConfig::from_toml(DEFAULT_CONFIG, "configs/mnist-twinflow.toml (built in)")?
            }
        };
        if let Some(steps) = a.steps {
            cfg.steps = steps;
        }
        if let Some(seed) = a.seed {
            cfg.seed = seed;
        }
        if let Some(device) = &a.device {
            cfg.device = device.clone();
        }
        if let Some(init_from) = &a.init_from {
            cfg.init_from = Some(init_from.clone());
        }
        if let Some(precision) = &a.precision {
            cfg.precision = match precision.as_str() {
                "bf16" => Precision::Bf16,
                "f16" => Precision::F16,
                _ => Precision::F32,
            };
        }
        let target = cfg.steps;
        (Trainer::new(cfg)?, target)
    };
    if trainer.step_count() >= target {
        eprintln!(
            "run in {} is already at step {} (target {target}); nothing to do",
            dir.display(),
            trainer.step_count()
        );
        return Ok(());
    }
    let mut progress = TrainProgress::new(trainer.step_count(), target, trainer.config().log_every);
    let mut grids = Vec::new();
    let log_every = trainer.config().log_every;
    let summary = trainer.train_to(target, &dir, |trainer, event| {
        match event {
            TrainEvent::Step(record) => {
                progress.step(record);
                if log_every > 0 && record.step % log_every == 0 {
                    write_curves(&dir).map_err(Error::External)?;
                }
            }
            TrainEvent::Saved(_) => {}
            TrainEvent::SamplesDue { last } => {
                let written = progress
                    .suspend(|| write_sample_grids(trainer, &dir))
                    .map_err(Error::External)?;
                if last {
                    grids = written;
                }
            }
        }
        Ok(())
    })?;
    progress.finish();
    let curves = write_curves(&dir)?;
    if let Some(r) = summary.last {
        eprintln!(
            "trained to step {} (loss {:.4}); run directory {}",
            r.step,
            r.loss,
            dir.display()
        );
    }
    if let Some(first) = grids.first() {
        eprintln!(
            "sample pictures at NFE {:?} in {}",
            trainer.config().sample_nfe,
            first.parent().unwrap_or(&dir).display()
        );
    }
    if let Some(curves) = curves {
        eprintln!("training curves in {}", curves.display());
    }
    Ok(())
}

enum OutKind {
    Npy,
    Png,
}

fn out_kind(path: &Path, png_ok: bool) -> CliResult<OutKind> {
    let s = path.to_string_lossy();
    if s.ends_with(".npy") {
        Ok(OutKind::Npy)
    } else if png_ok && s.ends_with(".png") {
        Ok(OutKind::Png)
    } else {
        let want = if png_ok { ".npy or .png" } else { ".npy" };
        Err(format!("--out must end in {want}, got {}", path.display()).into())
    }
}

fn write_npy(path: &Path, x: &[f32], labels: &[i64], dim: usize) -> CliResult<()> {
    npy::write_f32(path, x, labels.len(), dim)?;
    let lp = npy::labels_path(path);
    npy::write_i64(&lp, labels)?;
    eprintln!("wrote {} and {}", path.display(), lp.display());
    Ok(())
}

fn sample(a: SampleArgs) -> CliResult<()> {
    let kind = out_kind(&a.out, true)?;
    if a.n == 0 {
        return Err("--n must be positive".into());
    }
    if a.nfe == 0 {
        return Err("--nfe must be at least 1".into());
    }
    if a.batch_size == 0 {
        return Err("--batch-size must be positive".into());
    }
    if !a.checkpoint.is_file() {
        return Err(format!("checkpoint {} not found", a.checkpoint.display()).into());
    }
    let options = RestoreOptions {
        device: Some(a.device.clone()),
        ..RestoreOptions::default()
    };
    let trainer = Trainer::from_checkpoint_with(&a.checkpoint, &options)?;
    let classes = trainer.data().num_classes().max(1);
    let dim = trainer.data().dim();
    let labels = if a.labels == "all" {
        SampleLabels::Cycle { n: a.n }
    } else {
        let l: i64 = a.labels.parse().map_err(|_| {
            format!(
                "--labels must be `all` or a class number, got {:?}",
                a.labels
            )
        })?;
        let labels = SampleLabels::Given(vec![l; a.n]);
        labels
            .resolve(classes)
            .map_err(|e| format!("--labels {l}: {e}"))?;
        labels
    };
    let sampler = a.sampler.resolve(&trainer.config().sampler(), a.nfe)?;
    let bar = ProgressBar::new(a.n as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} samples | {per_sec} | ETA {eta}")
    {
        bar.set_style(style);
    }
    let (x, labels) = sample_batched(
        &trainer,
        &sampler,
        &labels,
        a.seed,
        a.ema,
        a.batch_size,
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    match kind {
        OutKind::Npy => write_npy(&a.out, &x, &labels, dim),
        OutKind::Png => {
            let image = image_shape(&trainer, dim);
            if dim == 2 {
                plot::scatter(&a.out, &x, &labels, 512)?;
            } else if let Some(size) = image {
                plot::image_grid(&a.out, &x, &labels, size, classes)?;
            } else {
                return Err(format!(
                    "cannot draw {dim}-dimensional samples as a picture (only 2-D points and \
                     grayscale images); write .npy instead"
                )
                .into());
            }
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
    }
}

fn data(a: DataArgs) -> CliResult<()> {
    let kind = out_kind(&a.out, true)?;
    if a.n == 0 {
        return Err("--n must be positive".into());
    }
    let cfg = DataConfig {
        root: a.root,
        path: a.path,
        labels: a.labels,
        ..DataConfig::named(&a.dataset, a.n)
    };
    let mut source = DataSource::from_config(&cfg, a.seed)?;
    let (x, labels) = source.next_batch(a.n)?;
    let x: Vec<f32> = x.to_vec()?;
    let labels: Vec<i64> = labels.to_vec()?;
    let dim = source.dim();
    match kind {
        OutKind::Npy => write_npy(&a.out, &x, &labels, dim),
        OutKind::Png => {
            let classes = source.num_classes().max(1);
            if dim == 2 {
                plot::scatter(&a.out, &x, &labels, 512)?;
            } else if let Some(shape) = source.image_shape() {
                plot::image_grid(&a.out, &x, &labels, shape, classes)?;
            } else {
                return Err(format!(
                    "cannot draw {dim}-dimensional vectors as a picture; write .npy instead"
                )
                .into());
            }
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
    }
}
