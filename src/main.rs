//! `twinflow`: train flow models from a TOML config, sample from checkpoints, dump data.

mod cli {
    pub mod classify;
    pub mod curves;
    pub mod error;
    pub mod eval;
    pub mod grids;
    pub mod launch;
    pub mod npy;
    pub mod output;
    pub mod plot;
    pub mod progress;
    pub mod ranks;
    pub mod sampler_args;
    pub mod signals;
    pub mod train;
}

use clap::{Args, Parser, Subcommand};
use cli::error::{CliError, CliResult};
use cli::grids::image_shape;
use cli::output::{check_output, OutputKind};
use cli::sampler_args::SamplerArgs;
use cli::{npy, plot};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use twinflow::engine::cpu::on_worker_thread;
use twinflow::engine::{report, sizes, Error};
use twinflow::flow::data::{DataConfig, DataSource};
use twinflow::flow::eval::{sample_batched, SampleLabels, DEFAULT_SAMPLE_BATCH};
use twinflow::flow::train::{RestoreOptions, Trainer};

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
    /// step-<N>.safetensors) under the run directory. Ctrl-C or SIGTERM stops after the
    /// current step, saved (exit status 130 or 143); a second one stops at once.
    Train(cli::train::TrainArgs),
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
    /// The directory holding data/ (mnist) or the Fashion-MNIST files [default: the root
    /// saved in the checkpoint's config]: for a checkpoint used away from where it was
    /// trained.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
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
    let success = |()| ExitCode::SUCCESS;
    // Commands other than `train` (which decides for itself, by its ranks) drive the
    // engine from a worker of its CPU pool: see `on_worker_thread`.
    let result = match cli.command {
        Command::Train(a) => cli::train::run(a),
        Command::Sample(a) => on_worker_thread(|| sample(a)).map(success),
        Command::Data(a) => on_worker_thread(|| data(a)).map(success),
        Command::TrainClassifier(a) => on_worker_thread(|| cli::classify::run(a)).map(success),
        Command::Eval(a) => on_worker_thread(|| cli::eval::run(a)).map(success),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&*e));
            ExitCode::FAILURE
        }
    }
}

enum OutKind {
    Npy,
    Png,
}

/// The kind of `--out` by its extension, checked before the work: a file (and, for
/// .npy, its labels file) that can be written there and replaces no file of another
/// kind.
fn out_kind(path: &Path, png_ok: bool) -> CliResult<OutKind> {
    let s = path.to_string_lossy();
    if s.ends_with(".npy") {
        check_output(path, OutputKind::Npy, "--out")?;
        check_output(&npy::labels_path(path), OutputKind::Npy, "--out")?;
        Ok(OutKind::Npy)
    } else if png_ok && s.ends_with(".png") {
        check_output(path, OutputKind::Png, "--out")?;
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
        data_root: a.root.clone(),
    };
    let trainer = Trainer::from_checkpoint_with(&a.checkpoint, &options)?;
    let classes = trainer.data().num_classes().max(1);
    let dim = trainer.data().dim();
    check_sample_count(a.n, dim)?;
    let labels = if a.labels == "all" {
        SampleLabels::Cycle { n: a.n }
    } else {
        let l: i64 = a.labels.parse().map_err(|_| {
            format!(
                "--labels must be `all` or a class number, got {:?}",
                a.labels
            )
        })?;
        let labels = SampleLabels::Given(sizes::try_filled("sample", a.n, l)?);
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
    )
    .map_err(|e| for_flag("--n", a.n, e))?;
    bar.finish_and_clear();
    match kind {
        OutKind::Npy => write_npy(&a.out, &x, &labels, dim),
        OutKind::Png => {
            let image = image_shape(&trainer, dim);
            plot::picture(&a.out, &x, &labels, dim, image, classes)?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
    }
}

/// Refuses `--n` samples of `dim` values whose float32 bytes overflow the address
/// space, naming the flag, before anything is allocated; sizes the machine can address
/// but not hold fail at their allocation, with the size asked for.
fn check_sample_count(n: usize, dim: usize) -> CliResult<()> {
    let bytes = n
        .checked_mul(dim)
        .and_then(|values| values.checked_mul(std::mem::size_of::<f32>()))
        .filter(|&bytes| isize::try_from(bytes).is_ok());
    match bytes {
        Some(_) => Ok(()),
        None => Err(format!(
            "--n {n}: {n} samples of {dim} values are more than memory can address"
        )
        .into()),
    }
}

/// `error`, prefixed by the flag and value that asked for the memory when it is an
/// allocation that failed (other errors pass unchanged).
pub(crate) fn for_flag(flag: &str, value: usize, error: Error) -> CliError {
    match error {
        Error::OutOfMemory { .. } => format!("{flag} {value}: {}", report(&error)).into(),
        other => other.into(),
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
    check_sample_count(a.n, source.dim())?;
    let (x, labels) = source
        .next_batch(a.n)
        .map_err(|e| for_flag("--n", a.n, e))?;
    let x: Vec<f32> = x.to_vec()?;
    let labels: Vec<i64> = labels.to_vec()?;
    let dim = source.dim();
    match kind {
        OutKind::Npy => write_npy(&a.out, &x, &labels, dim),
        OutKind::Png => {
            let classes = source.num_classes().max(1);
            plot::picture(&a.out, &x, &labels, dim, source.image_shape(), classes)?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
    }
}
