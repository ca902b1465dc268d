//! `twinflow train`: trains a model from a TOML config into a run directory, or
//! continues the run there. The directory is locked for the whole command; a run in it
//! is only continued (`--resume`) or replaced (`--overwrite`) when asked; before the
//! first step the directory is put back in step with the checkpoint the run starts
//! from (the metrics log cut back, a killed writer's temporaries removed); Ctrl-C or
//! SIGTERM stops after the current step, saved.

use super::curves::write_curves;
use super::error::CliError;
use super::error::CliResult;
use super::grids::write_sample_grids;
use super::launch;
use super::progress::TrainProgress;
use super::ranks::{ProcessRank, Ranks};
use super::signals::{self, StopSignals};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twinflow::engine::comm::{Communicator, ThreadGroup};
use twinflow::engine::cpu::on_worker_thread;
use twinflow::engine::{report, Error};
use twinflow::flow::train::run_dir::{self, RunLock};
use twinflow::flow::train::{
    Precision, RestoreOptions, TrainConfig, TrainControl, TrainEvent, Trainer,
};

/// The config used by `train` without `--config`.
const DEFAULT_CONFIG: &str = include_str!("../../configs/mnist-twinflow.toml");
/// Its name (the default run directory is `runs/<name>`).
const DEFAULT_CONFIG_NAME: &str = "mnist-twinflow";

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The training config (TOML; unknown keys are errors). Without it, the built-in
    /// configs/mnist-twinflow.toml is used: TwinFlow on the shipped MNIST-10k.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The run directory [default: runs/<config file stem>]. One `train` at a time may
    /// use it (it is locked through DIR/train.lock).
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
    /// Continue the run from DIR/checkpoints/latest.safetensors (or, when that file is
    /// missing or unreadable, the newest readable step-<N>.safetensors) with the config
    /// saved in it (--config only names the default DIR then, and a warning lists where
    /// it differs from the saved config).
    #[arg(long)]
    resume: bool,
    /// Start a new run in a directory that holds one: its checkpoints/, samples/,
    /// metrics.jsonl, config.toml and eval.json are deleted first (once the new config
    /// has been checked). Without it, `train` refuses such a directory.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Train on this device: cpu, cuda or cuda:N (overrides the config's `device`; CUDA
    /// needs a build with `--features cuda` and an NVIDIA GPU).
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Data-parallel training on several devices, comma-separated: `cuda:0,cuda:1,…`
    /// starts one process per GPU (sharing gradients through NCCL; needs a build with
    /// `--features nccl`) and supervises them; `cpu,cpu,…` trains that many ranks on
    /// threads of this process. The config's batch is cut evenly across the ranks; only
    /// rank 0 writes the run directory. An external launcher may instead set RANK,
    /// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each process
    /// (docs/distributed.md).
    #[arg(long, value_name = "LIST", conflicts_with = "device")]
    devices: Option<String>,
    /// The directory holding data/ (mnist) or the Fashion-MNIST files (overrides the
    /// config's `data.root`; with --resume, the root saved in the checkpoint).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
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
    /// Stop after the step during which this many minutes of training have passed,
    /// saved as at the last step (for runs compared at equal wall-clock time; the
    /// learning-rate schedule still follows the step count).
    #[arg(long, value_name = "M", value_parser = positive_minutes)]
    minutes: Option<f64>,
}

/// A time budget in minutes: a finite number above zero.
fn positive_minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(m),
        _ => Err(format!("{s:?} is not a number of minutes above zero")),
    }
}

/// Runs `train`; the exit code is 130 or 143 when SIGINT or SIGTERM stopped it.
pub fn run(mut a: TrainArgs) -> CliResult<ExitCode> {
    let ranks = Ranks::from(a.devices.as_deref(), |name| std::env::var(name).ok())?;
    if let Ranks::Process(p) = &ranks {
        a.device = Some(p.device(a.device.as_deref()));
    }
    match ranks {
        Ranks::Launch(devices) => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            launch::run(&devices, &args)
        }
        Ranks::Process(p) if p.rank > 0 => follow(&a, &p),
        // One rank: the loop runs on a worker of the CPU pool (see `on_worker_thread`);
        // thread ranks block on each other, so they stay on their own threads.
        Ranks::Single => on_worker_thread(|| lead(a, Ranks::Single)),
        ranks => lead(a, ranks),
    }
}

/// The run directory: `--out`, or runs/<config file stem>.
fn run_directory(a: &TrainArgs) -> PathBuf {
    let stem = match &a.config {
        Some(path) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into()),
        None => DEFAULT_CONFIG_NAME.into(),
    };
    a.out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&stem))
}

/// The step to train to: `--steps` when resuming with it, else the config's.
fn target_step(a: &TrainArgs, trainer: &Trainer) -> u64 {
    match (a.resume, a.steps) {
        (true, Some(steps)) => steps,
        _ => trainer.config().steps,
    }
}

/// Trains as the only rank or as rank 0, which owns the run directory, draws the
/// progress and pictures, and hears Ctrl-C for all ranks.
fn lead(a: TrainArgs, ranks: Ranks) -> CliResult<ExitCode> {
    let dir = run_directory(&a);
    // Everything that can be checked without the run directory comes first, so that a
    // mistake in the command leaves the directory as it was.
    let config = if a.resume {
        check_resume_flags(&a)?;
        None
    } else {
        Some(new_run_config(&a)?)
    };
    let _lock = RunLock::acquire(&dir)?;
    let mut trainer = match config.clone() {
        None => resume(&a, &dir)?,
        Some(cfg) => start(&a, &dir, cfg)?,
    };
    let target = target_step(&a, &trainer);
    tidy_run_directory(&dir, trainer.step_count())?;
    if trainer.step_count() >= target {
        eprintln!(
            "run in {} is already at step {} (target {target}); nothing to do",
            dir.display(),
            trainer.step_count()
        );
        return Ok(ExitCode::SUCCESS);
    }
    warn_if_world_size_changed(&trainer, ranks.world_size());
    let mut threads = Vec::new();
    match &ranks {
        Ranks::Threads(n) => {
            let build = RankBuild::of(&a, &dir, config);
            let (comm, started) = start_thread_ranks(build, *n, target, &dir)?;
            threads = started;
            trainer = trainer.with_communicator(comm)?;
        }
        Ranks::Process(p) => {
            let comm = p.join(trainer.device())?;
            trainer = trainer.with_communicator(comm)?;
        }
        Ranks::Single | Ranks::Launch(_) => {}
    }
    let stop_signals = StopSignals::install()?;
    let mut progress = TrainProgress::new(trainer.step_count(), target, trainer.config().log_every);
    let mut grids = Vec::new();
    let log_every = trainer.config().log_every;
    let deadline = a
        .minutes
        .map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let mut out_of_time = false;
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
        out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        Ok(match stop_signals.received().is_some() || out_of_time {
            true => TrainControl::Stop,
            false => TrainControl::Continue,
        })
    });
    let summary = finish_thread_ranks(summary, threads)?;
    progress.finish();
    let curves = write_curves(&dir)?;
    if let Some(r) = &summary.last {
        eprintln!(
            "trained to step {} (loss {:.4}); run directory {}",
            r.step,
            r.loss,
            dir.display()
        );
    }
    if let Some(signal) = stop_signals.received() {
        if let Some(checkpoint) = &summary.checkpoint {
            eprintln!(
                "stopped by {} after step {}; saved {}; continue with `twinflow train --out \
                 {} --resume`",
                signals::name(signal),
                trainer.step_count(),
                checkpoint.display(),
                dir.display()
            );
        }
        return Ok(signals::exit_code(signal));
    }
    if out_of_time && summary.stopped_early {
        eprintln!(
            "the --minutes budget ran out at step {} (of {target}); saved",
            trainer.step_count()
        );
        // A stopped loop draws no end-of-run pictures: a finished budget is an end.
        grids = write_sample_grids(&trainer, &dir)?;
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
    Ok(ExitCode::SUCCESS)
}

/// Trains as a rank process other than 0: builds the same trainer as rank 0 (from the
/// config, or from the run directory's checkpoint), joins the group and steps with the
/// others, writing nothing. A first Ctrl-C or SIGTERM is left to rank 0, which stops
/// every rank after the same step; a second ends this process at once.
fn follow(a: &TrainArgs, p: &ProcessRank) -> CliResult<ExitCode> {
    let in_rank = |e: CliError| -> CliError { format!("rank {}: {}", p.rank, report(&*e)).into() };
    let stop_signals = StopSignals::install()?;
    let dir = run_directory(a);
    let trainer = match a.resume {
        true => {
            check_resume_flags(a)?;
            resume(a, &dir).map_err(in_rank)?
        }
        false => Trainer::new(new_run_config(a)?).map_err(|e| in_rank(e.into()))?,
    };
    let target = target_step(a, &trainer);
    if trainer.step_count() >= target {
        return Ok(ExitCode::SUCCESS);
    }
    let comm = p.join(trainer.device()).map_err(in_rank)?;
    let mut trainer = trainer
        .with_communicator(comm)
        .map_err(|e| in_rank(e.into()))?;
    trainer
        .train_to(target, &dir, |_, _| Ok(TrainControl::Continue))
        .map_err(|e| in_rank(e.into()))?;
    Ok(match stop_signals.received() {
        Some(signal) => signals::exit_code(signal),
        None => ExitCode::SUCCESS,
    })
}

/// How thread ranks 1.. build their trainers (on their own threads: a trainer stays on
/// the thread that built it), as rank 0 built its own.
#[derive(Clone)]
enum RankBuild {
    /// A new run from this config.
    New(Box<TrainConfig>),
    /// The run saved in this directory, restored with these options.
    Resume(PathBuf, RestoreOptions),
}

impl RankBuild {
    fn of(a: &TrainArgs, dir: &Path, config: Option<TrainConfig>) -> RankBuild {
        match config {
            Some(cfg) => RankBuild::New(Box::new(cfg)),
            None => RankBuild::Resume(dir.to_path_buf(), restore_options(a)),
        }
    }

    fn build(self) -> twinflow::engine::Result<Trainer> {
        match self {
            RankBuild::New(cfg) => Trainer::new(*cfg),
            RankBuild::Resume(dir, options) => Ok(Trainer::resume_with(dir, &options)?.trainer),
        }
    }
}

/// A running thread rank.
type ThreadRank = std::thread::JoinHandle<twinflow::engine::Result<()>>;

/// Starts thread ranks 1..n of a thread group, each building its trainer by `build`
/// and stepping to `target`; returns rank 0's communicator and the threads.
fn start_thread_ranks(
    build: RankBuild,
    n: usize,
    target: u64,
    dir: &Path,
) -> CliResult<(Box<dyn Communicator>, Vec<ThreadRank>)> {
    let mut comms = ThreadGroup::new(n, None)?.into_iter();
    let lead = comms.next().ok_or("an empty thread group")?;
    let threads = comms
        .map(|comm| {
            let (dir, build) = (dir.to_path_buf(), build.clone());
            std::thread::spawn(move || {
                let mut trainer = build.build()?.with_communicator(Box::new(comm))?;
                trainer.train_to(target, &dir, |_, _| Ok(TrainControl::Continue))?;
                Ok(())
            })
        })
        .collect();
    Ok((Box::new(lead), threads))
}

/// Rank 0's result once the thread ranks have ended: its own error first, else the
/// first thread rank's, named by rank.
fn finish_thread_ranks<T>(
    lead: twinflow::engine::Result<T>,
    threads: Vec<ThreadRank>,
) -> CliResult<T> {
    let ends: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
    let lead = lead?;
    for (i, end) in ends.into_iter().enumerate() {
        match end {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("rank {}: {}", i + 1, report(&e)).into()),
            Err(_) => return Err(format!("rank {} panicked", i + 1).into()),
        }
    }
    Ok(lead)
}

/// Says so when a resumed run continues on another number of ranks than it was
/// trained on until now.
fn warn_if_world_size_changed(trainer: &Trainer, world_size: usize) {
    if let Some(saved) = trainer.resumed_world_size().filter(|&w| w != world_size) {
        eprintln!(
            "warning: this run was trained on {saved} rank(s) and continues on {world_size}: \
             each batch is now cut into other shards (with their own random streams) and \
             the gradients summed in another order, so the run goes on with the same \
             statistics but will not match, bit for bit, a run that stayed on {saved}"
        );
    }
}

/// Refuses the flags that a resumed run cannot honour.
fn check_resume_flags(a: &TrainArgs) -> CliResult<()> {
    if a.init_from.is_some() {
        return Err(
            "--init-from cannot be combined with --resume (a resumed run continues from its \
             own checkpoint, which holds its weights)"
                .into(),
        );
    }
    if a.seed.is_some() || a.precision.is_some() {
        return Err(
            "--seed and --precision cannot be combined with --resume (the run continues \
             with its saved random state and precision)"
                .into(),
        );
    }
    Ok(())
}

/// The config of a new run: `--config` (or the built-in one) with the flags applied.
fn new_run_config(a: &TrainArgs) -> CliResult<TrainConfig> {
    let mut cfg = match &a.config {
        Some(path) => {
            if path.is_dir() {
                return Err(format!(
                    "--config {} is a directory; give a TOML file",
                    path.display()
                )
                .into());
            }
            if !path.is_file() {
                return Err(format!("config file {} not found", path.display()).into());
            }
            TrainConfig::load(path)?
        }
        None => TrainConfig::from_toml(DEFAULT_CONFIG, "configs/mnist-twinflow.toml (built in)")?,
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
    if let Some(root) = &a.root {
        cfg.data.root = Some(root.clone());
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
    Ok(cfg)
}

/// The run saved in `dir`, restored (from an older checkpoint, said on stderr, when the
/// newest cannot be read).
fn resume(a: &TrainArgs, dir: &Path) -> CliResult<Trainer> {
    let resumed = Trainer::resume_with(dir, &restore_options(a))?;
    if let Some(path) = &a.config {
        warn_if_config_ignored(a, path, resumed.trainer.config());
    }
    if !resumed.passed_over.is_empty() {
        for why in &resumed.passed_over {
            eprintln!("warning: passed over an unreadable checkpoint: {why}");
        }
        eprintln!(
            "resuming from {} (step {})",
            resumed.checkpoint.display(),
            resumed.trainer.step_count()
        );
    }
    Ok(resumed.trainer)
}

/// What `--device` and `--root` change in a resumed run's saved config.
fn restore_options(a: &TrainArgs) -> RestoreOptions {
    RestoreOptions {
        device: a.device.clone(),
        data_root: a.root.clone(),
    }
}

/// Warns when `--config` (which `--resume` does not apply) differs from the config the
/// run continues with, listing the keys that differ, so that an edit to the file (more
/// `steps`, another learning rate) is not silently ignored. The flags that do apply to
/// a resumed run (`--device`, `--root`, `--steps`) are applied to the file's config
/// before comparing.
fn warn_if_config_ignored(a: &TrainArgs, path: &Path, saved: &TrainConfig) {
    let ignored = |why: String| {
        eprintln!(
            "warning: --resume continues with the config saved in the run; --config {} \
             is ignored ({why})",
            path.display()
        )
    };
    let mut given = match TrainConfig::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            return ignored(format!(
                "it cannot be read: {}",
                twinflow::engine::report(&e)
            ))
        }
    };
    if let Some(device) = &a.device {
        given.device = device.clone();
    }
    if let Some(root) = &a.root {
        given.data.root = Some(root.clone());
    }
    if a.steps.is_some() {
        given.steps = saved.steps;
    }
    let (Ok(given), Ok(saved)) = (serde_json::to_value(&given), serde_json::to_value(saved)) else {
        return;
    };
    let mut keys = Vec::new();
    differing_keys("", &given, &saved, &mut keys);
    if !keys.is_empty() {
        ignored(format!("it differs at {}", keys.join(", ")));
    }
}

/// The dotted keys at which `a` and `b` differ, appended to `out` under `prefix`.
fn differing_keys(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                let null = Value::Null;
                differing_keys(
                    &path,
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// A new run in `dir` from `cfg`: refused when `dir` holds a run, unless `--overwrite`,
/// which deletes that run once the new one is built.
fn start(a: &TrainArgs, dir: &Path, cfg: TrainConfig) -> CliResult<Trainer> {
    if !a.overwrite {
        if let Some(existing) = run_dir::existing_checkpoint(dir)? {
            return Err(format!(
                "run directory {} already holds a run ({}); pass --resume to continue it, \
                 or --overwrite to delete its checkpoints, metrics and samples and start a \
                 new run",
                dir.display(),
                existing.display()
            )
            .into());
        }
    }
    // Built before anything is deleted: a config that fails to build (or an --init-from
    // that cannot be read, which may even be the old run's checkpoint) costs nothing.
    let trainer = Trainer::new(cfg)?;
    if a.overwrite {
        run_dir::clear_run(dir)?;
    }
    Ok(trainer)
}

/// Puts `dir` back in step with a run at `step`: removes the temporaries of a killed
/// save and cuts the metrics log back to `step`, saying what was removed.
fn tidy_run_directory(dir: &Path, step: u64) -> CliResult<()> {
    let stale = run_dir::remove_stale_temporaries(dir)?;
    if !stale.is_empty() {
        eprintln!(
            "removed {} temporary file(s) of an interrupted save (e.g. {})",
            stale.len(),
            stale[0].display()
        );
    }
    let repair = run_dir::reconcile_metrics(dir, step)?;
    if repair.changed() {
        eprintln!(
            "{}: removed {} line(s) after step {step}, {} repeated and {} unreadable \
             line(s); {} kept",
            dir.join(run_dir::METRICS_FILE).display(),
            repair.after_checkpoint,
            repair.superseded,
            repair.unreadable,
            repair.kept
        );
    }
    Ok(())
}
