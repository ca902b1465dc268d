//! The trainer: builds a model, its EMA, AdamW, the method and the data from a
//! [`TrainConfig`], runs training steps, logs metrics as JSON lines and saves and
//! resumes checkpoints that reproduce an uninterrupted run exactly on the CPU.
//!
//! One step ([`Trainer::step`]): draw a batch; update the EMA θ⁻ (before the method
//! runs, docs/method.md §4); compute the method's loss with the method's generator;
//! backpropagate; optionally zero non-finite gradient entries; measure (and optionally
//! clip) the global gradient norm; set the scheduled learning rate; AdamW step.
//! With `precision = "bf16"` or `"f16"` the method's loss is computed in an autocast
//! scope; with f16 the loss is scaled before backpropagation and a step whose
//! gradients overflow is skipped (counted in `skipped`) while the scale backs off.
//!
//! A non-finite loss or gradient norm follows [`NanPolicy`]: `stop` returns an error
//! naming the step and leaves the trainer refusing to save (so the last checkpoint on
//! disk stays the last good one); `skip` leaves the parameters and optimizer untouched,
//! counts the step as skipped and goes on, until more steps in a row or a larger share
//! of the steps than the config's bounds (`max_consecutive_skips`,
//! `max_skip_fraction`) were skipped, which stops the run as `stop` does. A save
//! refuses parameters that are not all finite, whatever the policy.
//!
//! Checkpoints (`<dir>/checkpoints/step-<N>.safetensors` and `latest.safetensors`, both
//! written atomically) hold the model, the EMA, AdamW's state, the step, the method's and
//! the model's generator states, and, in the config metadata, the resolved
//! [`TrainConfig`], the data source's [`DataState`] and the skipped-step count.
//!
//! The loop over steps ([`Trainer::train_to`]) keeps the run directory up to date and
//! tells its caller each step, save and sample-picture moment ([`TrainEvent`]); the
//! caller may stop it early ([`TrainControl::Stop`]), which still saves. The run
//! directory as a whole (its lock, starting over, the metrics log after a crash) is
//! [`run_dir`]'s.
//!
//! A run with [`TrainConfig::init_from`] starts from another run's weights: θ from that
//! checkpoint's online weights, θ⁻ from its EMA weights (or θ), everything else fresh.
//! Resuming such a run restores its own checkpoint and never reads the init file again.

mod config;
mod model;
pub mod parallel;
pub mod run_dir;
mod training_loop;

pub use config::{
    DataConfig, ModelConfig, ModelKind, NanPolicy, OptimizerConfig, Precision, TrainConfig,
};
pub use model::TrainModel;
pub use training_loop::{TrainControl, TrainEvent, TrainSummary};

use crate::data::{DataSource, DataState};
use crate::method::{Batch, FlowMethod, StepContext, StepLoss};
use parallel::Shards;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use twinflow_engine::comm::Communicator;
use twinflow_engine::{AutocastGuard, Device, Error, Generator, Gradients, Result, Tensor};
use twinflow_nn::{
    clean_and_clip_grad_norm, clip_grad_norm, Adam, Checkpoint, Dit, Ema, LossScaler,
    LossScalerConfig, LossScalerState, LrSchedule, MlpVelocity, Module, Optimizer, ParamBuilder,
    VelocityModel,
};

const OP: &str = "train";
/// Generator name of the method's stream in checkpoints.
const RNG_METHOD: &str = "method";
/// Generator name of the model's forward stream in checkpoints.
const RNG_MODEL: &str = "model";
/// Seed offsets so that init, data and method draw from unrelated streams.
const DATA_SEED: u64 = 0x0DA7_A5EE_D000_0001;
const METHOD_SEED: u64 = 0x3E7_0D5E_ED00_0002;

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// The step's number (1 for the first step).
    pub step: u64,
    /// The total loss.
    pub loss: f64,
    /// Every loss term the method reports, by name.
    pub terms: Vec<(String, f64)>,
    /// The learning rate of this step's update.
    pub lr: f64,
    /// The global gradient norm before clipping (NaN when the step was skipped
    /// before backpropagation).
    pub grad_norm: f64,
    /// Gradient entries replaced by 0 (with `clean_non_finite`).
    pub cleaned: usize,
    /// Batch samples per second of wall time of this step.
    pub samples_per_sec: f64,
    /// Whether the update was skipped (non-finite loss or norm, policy `skip`).
    pub skipped: bool,
}

impl StepRecord {
    /// The record as one JSON object: `step`, `loss`, every term, `lr`, `grad_norm`,
    /// `samples_per_sec`, `skipped` (non-finite numbers become `null`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("step".into(), self.step.into());
        map.insert("loss".into(), self.loss.into());
        for (name, value) in &self.terms {
            map.insert(name.clone(), (*value).into());
        }
        map.insert("lr".into(), self.lr.into());
        map.insert("grad_norm".into(), self.grad_norm.into());
        map.insert("samples_per_sec".into(), self.samples_per_sec.into());
        map.insert("skipped".into(), self.skipped.into());
        serde_json::Value::Object(map)
    }
}

/// The trainer's part of the checkpoint metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainMeta {
    train: TrainConfig,
    data_state: DataState,
    skipped: u64,
    /// The count behind the skip bounds (absent in checkpoints of older versions).
    #[serde(default)]
    non_finite_skips: NonFiniteSkips,
    /// The f16 loss scaler's state (precision `f16` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss_scale: Option<LossScalerState>,
    /// The data-parallel ranks that trained the run (absent, meaning 1, in checkpoints
    /// of older versions and of single-rank runs).
    #[serde(default = "one_rank", skip_serializing_if = "is_one_rank")]
    world_size: usize,
}

fn one_rank() -> usize {
    1
}

fn is_one_rank(n: &usize) -> bool {
    *n == 1
}

/// What [`Trainer::from_checkpoint_with`] changes in the saved config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreOptions {
    /// The directory holding `data/`, instead of the saved `data.root`.
    pub data_root: Option<PathBuf>,
    /// The device name (`cpu`, `cuda`, `cuda:N`), instead of the saved `device`.
    pub device: Option<String>,
}

/// Steps skipped for a non-finite loss or gradient norm (`nan_policy = "skip"`), which
/// the config bounds; the f16 loss scaler's overflow skips are not among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NonFiniteSkips {
    /// All of the run.
    total: u64,
    /// Those since the last step that updated the parameters.
    in_a_row: u64,
}

/// A run continued by [`Trainer::resume_with`], and the checkpoint it continues from.
#[derive(Debug)]
pub struct Resumed {
    /// The restored trainer.
    pub trainer: Trainer,
    /// The checkpoint it was restored from.
    pub checkpoint: PathBuf,
    /// The checkpoints tried before it and passed over because they could not be read
    /// (a torn or damaged file), one line each saying which and why.
    pub passed_over: Vec<String>,
}

/// A training run in progress.
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    model: TrainModel,
    params: Vec<Tensor>,
    ema: Ema<TrainModel>,
    optimizer: Adam,
    schedule: LrSchedule,
    method: Box<dyn FlowMethod<TrainModel>>,
    method_rng: Generator,
    data: DataSource,
    /// The dynamic loss scaler of precision `f16`.
    scaler: Option<LossScaler>,
    step: u64,
    skipped: u64,
    non_finite_skips: NonFiniteSkips,
    /// The step that stopped on a non-finite loss, if any.
    stopped: Option<u64>,
    /// The shards of each step's batch and this rank's share ([`parallel`]).
    shards: Shards,
    /// The seed of the model's forward stream as built, from which every shard's
    /// dropout stream derives when there are several (the stream itself then carries a
    /// shard's seed).
    forward_seed: u64,
    /// The other ranks of a data-parallel run.
    comm: Option<Box<dyn Communicator>>,
    /// The world size saved in the checkpoint this run was restored from.
    resumed_world_size: Option<usize>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("skipped", &self.skipped)
            .field("stopped", &self.stopped)
            .field("method", &self.method.name())
            .field("dataset", &self.data.name())
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Builds everything from `cfg` (validated first), seeded by `cfg.seed`; with
    /// `init_from`, θ and θ⁻ are then loaded from that checkpoint (see
    /// [`TrainConfig::init_from`]), and a checkpoint that is missing, not a trainer
    /// checkpoint or of another network is an error naming the file and the difference.
    pub fn new(cfg: TrainConfig) -> Result<Trainer> {
        let mut trainer = Trainer::build(cfg)?;
        if let Some(path) = trainer.cfg.init_from.clone() {
            trainer.start_from_weights(&path)?;
        }
        Ok(trainer)
    }

    /// Everything built from `cfg` and freshly initialised from `cfg.seed`, ignoring
    /// `init_from` (restoring a checkpoint overwrites the weights anyway).
    fn build(cfg: TrainConfig) -> Result<Trainer> {
        cfg.validate()?;
        let data = DataSource::from_config(&cfg.data, cfg.seed ^ DATA_SEED)?;
        let device = Device::open(&cfg.device)?;
        let mut pb = ParamBuilder::new(cfg.seed);
        let model = move_to(build_model(&mut pb, &cfg, &data)?, device)?;
        let params: Vec<Tensor> = model.named_params().into_iter().map(|(_, t)| t).collect();
        let ema = Ema::new(&model, cfg.ema_decay)?;
        let optimizer = Adam::new(model.named_params(), cfg.optimizer.adam())?;
        let schedule = cfg.lr_schedule();
        let scaler = (cfg.precision == Precision::F16)
            .then(|| LossScaler::new(LossScalerConfig::default()))
            .transpose()?;
        let method = cfg.method.build(cfg.time, model.null_label())?;
        let min_rows = cfg.method.min_batch();
        let shards = Shards::new((0, 1), cfg.micro_batches, cfg.data.batch_size, min_rows)?;
        let forward_seed = model.forward_rng().state().seed;
        Ok(Trainer {
            method_rng: Generator::new(cfg.seed ^ METHOD_SEED),
            cfg,
            device,
            model,
            params,
            ema,
            optimizer,
            schedule,
            method,
            data,
            scaler,
            step: 0,
            skipped: 0,
            non_finite_skips: NonFiniteSkips::default(),
            stopped: None,
            shards,
            forward_seed,
            comm: None,
            resumed_world_size: None,
        })
    }

    /// This trainer as one rank of a data-parallel run through `comm`: every rank is
    /// built from the same config (and, when resuming, the same checkpoint); θ and θ⁻
    /// are then copied from rank 0, each rank computes its shards of every batch, and
    /// only rank 0 writes the run directory. Refuses a batch that does not cut into the
    /// ranks' shards (see [`parallel`]).
    pub fn with_communicator(mut self, comm: Box<dyn Communicator>) -> Result<Trainer> {
        let ranks = (comm.rank(), comm.world_size());
        let (micro, batch) = (self.cfg.micro_batches, self.cfg.data.batch_size);
        self.shards = Shards::new(ranks, micro, batch, self.cfg.method.min_batch())?;
        let shadow = self
            .ema
            .shadow()
            .map(Module::named_params)
            .unwrap_or_default();
        for (_, p) in self.model.named_params().into_iter().chain(shadow) {
            comm.broadcast(&p, 0)?;
        }
        self.comm = Some(comm);
        Ok(self)
    }

    /// Whether this rank writes the run directory: rank 0, or the only rank.
    pub fn is_writer(&self) -> bool {
        self.comm.as_ref().is_none_or(|c| c.rank() == 0)
    }

    /// How many data-parallel ranks train this run (1 without a communicator).
    pub fn world_size(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world_size())
    }

    /// For a run restored from a checkpoint, how many ranks trained it until then
    /// (saved in the checkpoint). Continuing with another world size changes how each
    /// batch is cut into shards, so the run no longer replays bit for bit what an
    /// uninterrupted run would have done (its statistics are unchanged).
    pub fn resumed_world_size(&self) -> Option<usize> {
        self.resumed_world_size
    }

    /// Replaces the freshly initialised θ and θ⁻ by those of the trainer checkpoint at
    /// `path`: θ ← its online weights, θ⁻ ← its EMA weights, or θ when it saved none.
    /// The step, optimizer, EMA warm-up, generators and data order stay as built.
    fn start_from_weights(&mut self, path: &Path) -> Result<()> {
        let fail = |why: String| Error::invalid(OP, format!("init_from: {why}"));
        let caused = |e| Error::caused(OP, "init_from", e);
        let ck = Checkpoint::load(path).map_err(caused)?;
        let saved = train_meta(&ck, path).map_err(fail)?.train;
        check_same_network(&saved.model, &self.cfg.model)
            .map_err(|why| fail(format!("{}: {why}", path.display())))?;
        ck.restore_model(&mut self.model).map_err(caused)?;
        // `Ema::new` copied the random init (and a decay target of 1 would keep that
        // copy forever): a fresh EMA of the loaded θ, with a fresh warm-up.
        self.ema = Ema::new(&self.model, self.cfg.ema_decay)?;
        if let Some(shadow) = self.ema.shadow_mut().filter(|_| ck.has_ema_weights()) {
            ck.restore_ema_weights(shadow).map_err(caused)?;
        }
        Ok(())
    }

    /// Reads the TOML config at `path` and builds a trainer from it.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Trainer> {
        Trainer::new(TrainConfig::load(path)?)
    }

    /// Continues the run saved under `dir`; see [`Trainer::resume_with`].
    pub fn resume(dir: impl AsRef<Path>) -> Result<Trainer> {
        Trainer::resume_with(dir, &RestoreOptions::default()).map(|r| r.trainer)
    }

    /// Continues the run saved under `dir` from `dir/checkpoints/latest.safetensors`,
    /// or, when that file is missing or cannot be read (torn, damaged), from the newest
    /// readable `step-<N>.safetensors` (every save writes both, each atomically). Fails
    /// naming the directory when it holds no checkpoint, and naming every file tried
    /// when none can be read.
    pub fn resume_with(dir: impl AsRef<Path>, options: &RestoreOptions) -> Result<Resumed> {
        let dir = dir.as_ref();
        let latest = latest_path(dir);
        let mut candidates: Vec<PathBuf> = latest
            .exists()
            .then(|| latest.clone())
            .into_iter()
            .collect();
        candidates.extend(
            run_dir::step_checkpoints(dir)?
                .into_iter()
                .rev()
                .map(|(_, path)| path),
        );
        if candidates.is_empty() {
            return Err(Error::invalid(
                OP,
                format!(
                    "cannot resume: no checkpoint at {} (nor any step-<N>.safetensors beside it)",
                    latest.display()
                ),
            ));
        }
        let mut passed_over = Vec::new();
        for path in candidates {
            match Checkpoint::load(&path) {
                Ok(ck) => {
                    let trainer = Trainer::from_loaded_checkpoint(&ck, &path, options)?;
                    return Ok(Resumed {
                        trainer,
                        checkpoint: path,
                        passed_over,
                    });
                }
                Err(e) => passed_over.push(twinflow_engine::report(&e)),
            }
        }
        Err(Error::invalid(
            OP,
            format!(
                "cannot resume from {}: no readable checkpoint ({})",
                dir.display(),
                passed_over.join("; ")
            ),
        ))
    }

    /// Continues the run saved in the checkpoint file `path`: rebuilds the trainer from
    /// the saved config, then restores the model, EMA, optimizer, step, skipped count,
    /// data state and every generator.
    pub fn from_checkpoint(path: impl AsRef<Path>) -> Result<Trainer> {
        Trainer::restore(path.as_ref(), &RestoreOptions::default())
    }

    /// As [`Trainer::from_checkpoint`], with the saved config's data root or device
    /// replaced where `options` says, e.g. to evaluate a run from another working
    /// directory, or a GPU-trained run on the CPU.
    pub fn from_checkpoint_with(
        path: impl AsRef<Path>,
        options: &RestoreOptions,
    ) -> Result<Trainer> {
        Trainer::restore(path.as_ref(), options)
    }

    fn restore(path: &Path, options: &RestoreOptions) -> Result<Trainer> {
        Trainer::from_loaded_checkpoint(&Checkpoint::load(path)?, path, options)
    }

    /// [`Trainer::from_checkpoint_with`] for a checkpoint already loaded from `path`
    /// (which names it in errors): rebuilds the trainer saved in `ck`.
    pub fn from_loaded_checkpoint(
        ck: &Checkpoint,
        path: &Path,
        options: &RestoreOptions,
    ) -> Result<Trainer> {
        let mut meta = train_meta(ck, path).map_err(|why| Error::invalid(OP, why))?;
        if let Some(root) = &options.data_root {
            meta.train.data.root = Some(root.clone());
        }
        if let Some(device) = &options.device {
            meta.train.device = device.clone();
        }
        // The checkpoint errors name the file; the others get it here.
        let saved_in = |e| Error::caused(OP, format!("the run saved in {}", path.display()), e);
        // Not `new`: the checkpoint holds the weights, and a run started with
        // `init_from` must resume even when that file is gone.
        let mut t = Trainer::build(meta.train).map_err(saved_in)?;
        ck.restore_model(&mut t.model)?;
        ck.restore_ema(&mut t.ema)?;
        ck.restore_optimizer(&mut t.optimizer)?;
        t.method_rng.set_state(ck.rng(RNG_METHOD)?);
        t.model.forward_rng().set_state(ck.rng(RNG_MODEL)?);
        t.data.set_state(meta.data_state).map_err(saved_in)?;
        t.step = ck.step;
        t.skipped = meta.skipped;
        t.non_finite_skips = meta.non_finite_skips;
        t.resumed_world_size = Some(meta.world_size);
        if let (Some(scaler), Some(state)) = (&mut t.scaler, meta.loss_scale) {
            scaler.load_state(state).map_err(saved_in)?;
        }
        Ok(t)
    }

    /// The device the model trains on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Steps taken (skipped ones included).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Steps whose update was skipped (policy `skip`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The f16 loss scaler's current scale (`None` unless precision is f16).
    pub fn loss_scale(&self) -> Option<f64> {
        self.scaler.as_ref().map(LossScaler::scale_factor)
    }

    /// The online model θ.
    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    /// θ⁻: the EMA copy (θ itself when `ema_decay` is 0).
    pub fn ema_model(&self) -> &TrainModel {
        self.ema.model(&self.model)
    }

    /// The data source.
    pub fn data(&self) -> &DataSource {
        &self.data
    }

    /// One training step on the next batch of the data source.
    pub fn step(&mut self) -> Result<StepRecord> {
        self.check_not_stopped()?;
        let (x, labels) = self.data.next_batch(self.cfg.data.batch_size)?;
        let (x, labels) = (x.to_device(self.device)?, labels.to_device(self.device)?);
        self.step_on(&Batch::new(x, labels))
    }

    /// One training step on a given batch (the data source is not drawn from): the
    /// whole batch of every rank (see [`parallel`] for how it is cut into shards).
    pub fn step_on(&mut self, batch: &Batch) -> Result<StepRecord> {
        self.check_not_stopped()?;
        let start = Instant::now();
        let step = self.step + 1;
        let lr = self.schedule.lr_at(self.step);
        // §4: θ⁻ moves before the method's forwards of this step.
        self.ema.update(&self.model)?;
        let shards = self.shards;
        let rows = shard_rows(batch, shards.total)?;
        let (mut losses, mut grads) = (ShardLosses::default(), None);
        for s in shards.local_indices() {
            let part = match shards.total {
                1 => batch.clone(),
                _ => Batch::new(
                    batch.x.narrow(0, s * rows, rows)?,
                    batch.labels.narrow(0, s * rows, rows)?,
                ),
            };
            let out = self.shard_loss(s, &part)?;
            if losses.add(&out)? {
                let g = match &self.scaler {
                    Some(scaler) => scaler.scale(&out.loss)?.backward()?,
                    None => out.loss.backward()?,
                };
                drop(out);
                grads = Some(self.accumulate(grads, g)?);
            }
        }
        let StepLosses {
            loss,
            terms,
            non_finite,
        } = losses.over_ranks(self.comm.as_deref(), self.device, shards.total)?;
        let mut record = StepRecord {
            step,
            loss,
            terms,
            lr,
            grad_norm: f64::NAN,
            cleaned: 0,
            samples_per_sec: 0.0,
            skipped: false,
        };
        let Some(mut grads) = grads.filter(|_| !non_finite) else {
            return self.non_finite(record, format!("non-finite loss {loss}"));
        };
        self.combine(&mut grads)?;
        if self.unscale_overflowed(&mut grads)? {
            return Ok(self.skip(record));
        }
        let max_norm = self.cfg.grad_clip.unwrap_or(f64::INFINITY);
        (record.grad_norm, record.cleaned) = match self.cfg.clean_non_finite {
            true => clean_and_clip_grad_norm(&mut grads, self.params.iter(), max_norm)?,
            false => (clip_grad_norm(&mut grads, self.params.iter(), max_norm)?, 0),
        };
        if !record.grad_norm.is_finite() {
            let why = format!("non-finite gradient norm {}", record.grad_norm);
            return self.non_finite(record, why);
        }
        self.optimizer.set_learning_rate(lr)?;
        self.optimizer.step(&grads)?;
        self.step = step;
        self.non_finite_skips.in_a_row = 0;
        record.samples_per_sec = batch.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
        Ok(record)
    }

    /// The method's loss on shard `shard` of this step. With several shards, the
    /// shard's own streams are put in place first ([`parallel::shard_stream`]).
    fn shard_loss(&mut self, shard: usize, batch: &Batch) -> Result<StepLoss> {
        if self.shards.total > 1 {
            let method = parallel::shard_stream(self.cfg.seed ^ METHOD_SEED, shard, self.step);
            self.method_rng.set_state(method);
            let forward = parallel::shard_stream(self.forward_seed, shard, self.step);
            self.model.forward_rng().set_state(forward);
        }
        // Products and attention of the forward in `precision` (backward follows).
        let _autocast = AutocastGuard::new(self.cfg.precision.autocast())?;
        let ema = self.ema.model(&self.model);
        let mut ctx = StepContext::new(&self.model, ema, &mut self.method_rng)
            .with_frozen_ema(self.cfg.ema_decay == 1.0);
        self.method.loss(&mut ctx, batch)
    }

    /// `sum` (the gradients of the shards so far) plus one more shard's: the sum is
    /// kept only with several shards; one shard's gradients pass through unchanged.
    fn accumulate(&self, sum: Option<Gradients>, grads: Gradients) -> Result<Gradients> {
        let Some(mut sum) = sum else {
            return Ok(grads);
        };
        for p in &self.params {
            let total = match (sum.remove(p), grads.get(p)) {
                (Some(a), Some(b)) => a.add(b)?,
                (Some(a), None) => a,
                (None, Some(b)) => b.clone(),
                (None, None) => continue,
            };
            sum.insert(p, total);
        }
        Ok(sum)
    }

    /// The step's gradient from this rank's sum: all ranks' sums added (in rank order)
    /// and divided by the shard count. Nothing to do for a single shard.
    fn combine(&self, grads: &mut Gradients) -> Result<()> {
        // One shard in all means one rank: nothing to combine.
        if self.shards.total == 1 {
            return Ok(());
        }
        // Every rank sends every parameter's gradient, zeros where it has none.
        let mut flat = self
            .params
            .iter()
            .map(|p| grads.remove(p).map_or_else(|| p.zeros_like(), Ok))
            .collect::<Result<Vec<_>>>()?;
        parallel::combine_gradients(&mut flat, self.comm.as_deref(), self.shards.total)?;
        for (p, g) in self.params.iter().zip(flat) {
            grads.insert(p, g);
        }
        Ok(())
    }

    /// With the f16 loss scaler: unscales the gradients, moves the scale, and says
    /// whether they overflowed (then the step must be skipped). False without one.
    fn unscale_overflowed(&mut self, grads: &mut Gradients) -> Result<bool> {
        let Some(scaler) = &mut self.scaler else {
            return Ok(false);
        };
        let found_inf = scaler.unscale_and_check(grads, self.params.iter())?;
        scaler.update(found_inf);
        Ok(found_inf)
    }

    /// Counts the step as taken and skipped, leaving parameters and optimizer as they are.
    fn skip(&mut self, mut record: StepRecord) -> StepRecord {
        self.step = record.step;
        self.skipped += 1;
        record.skipped = true;
        record.samples_per_sec = 0.0;
        record
    }

    /// Applies the NaN policy to a step whose loss or gradient norm is not finite.
    fn non_finite(&mut self, record: StepRecord, why: String) -> Result<StepRecord> {
        match self.cfg.nan_policy {
            NanPolicy::Stop => {
                self.stopped = Some(record.step);
                Err(Error::invalid(
                    OP,
                    format!(
                        "{why} at step {}; stopping (nan_policy = \"stop\"); the last \
                         saved checkpoint is left as it was",
                        record.step
                    ),
                ))
            }
            NanPolicy::Skip => {
                let record = self.skip(record);
                self.non_finite_skips.total += 1;
                self.non_finite_skips.in_a_row += 1;
                match self.skip_bound_exceeded() {
                    None => Ok(record),
                    Some(bound) => {
                        self.stopped = Some(record.step);
                        Err(Error::invalid(
                            OP,
                            format!(
                                "{why} at step {}, skipped (nan_policy = \"skip\"), and {bound}; \
                                 stopping; the last saved checkpoint is left as it was",
                                record.step
                            ),
                        ))
                    }
                }
            }
        }
    }

    /// The bound of the config that the skips so far exceed, as a phrase, if any.
    fn skip_bound_exceeded(&self) -> Option<String> {
        let skips = self.non_finite_skips;
        let cfg = &self.cfg;
        if skips.in_a_row > cfg.max_consecutive_skips {
            return Some(format!(
                "that makes {} skipped steps in a row, more than max_consecutive_skips = {}",
                skips.in_a_row, cfg.max_consecutive_skips
            ));
        }
        let fraction = skips.total as f64 / self.step.max(1) as f64;
        if self.step >= cfg.skip_fraction_min_steps && fraction > cfg.max_skip_fraction {
            return Some(format!(
                "that makes {} of {} steps skipped ({:.1}%), more than max_skip_fraction = {} \
                 (checked from step skip_fraction_min_steps = {})",
                skips.total,
                self.step,
                100.0 * fraction,
                cfg.max_skip_fraction,
                cfg.skip_fraction_min_steps
            ));
        }
        None
    }

    fn check_not_stopped(&self) -> Result<()> {
        match self.stopped {
            Some(step) => Err(Error::invalid(
                OP,
                format!("training stopped on a non-finite value at step {step}"),
            )),
            None => Ok(()),
        }
    }

    /// Saves a checkpoint as `dir/checkpoints/step-<N>.safetensors` and
    /// `dir/checkpoints/latest.safetensors` (each written atomically); returns the
    /// first path. Refused after a stop on a non-finite value, and when a parameter of
    /// θ or θ⁻ holds a NaN or infinity (the error names it): the checkpoints on disk
    /// then stay as they were, the last good ones.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        if let Some(step) = self.stopped {
            return Err(Error::invalid(
                OP,
                format!("refusing to save: training stopped on a non-finite value at step {step}"),
            ));
        }
        if let Some(name) = self.first_non_finite_parameter()? {
            return Err(Error::invalid(
                OP,
                format!(
                    "refusing to save step {}: parameter {name} holds a NaN or infinity; the \
                     saved checkpoints are left as they were",
                    self.step
                ),
            ));
        }
        let ckdir = dir.as_ref().join(run_dir::CHECKPOINTS_DIR);
        std::fs::create_dir_all(&ckdir).map_err(|e| Error::io(OP, &ckdir, e))?;
        let meta = TrainMeta {
            train: self.cfg.clone(),
            data_state: self.data.state(),
            skipped: self.skipped,
            non_finite_skips: self.non_finite_skips,
            loss_scale: self.scaler.as_ref().map(LossScaler::state),
            world_size: self.world_size(),
        };
        let meta = serde_json::to_value(&meta)
            .map_err(|e| Error::invalid(OP, format!("cannot encode the config: {e}")))?;
        let ck = Checkpoint::new(self.step, &self.model)
            .with_ema(&self.ema)
            .with_optimizer(&self.optimizer)
            .with_rng(RNG_METHOD, self.method_rng.state())
            .with_rng(RNG_MODEL, self.model.forward_rng().state())
            .with_config(meta);
        let path = ckdir.join(format!("step-{}.safetensors", self.step));
        ck.save(&path)?;
        ck.save(latest_path(dir.as_ref()))?;
        Ok(path)
    }

    /// The name of the first parameter of θ (`model.<name>`) or θ⁻ (`ema.<name>`) that
    /// holds a non-finite value, if any.
    fn first_non_finite_parameter(&self) -> Result<Option<String>> {
        let shadow = self
            .ema
            .shadow()
            .map(Module::named_params)
            .unwrap_or_default();
        let params = self.model.named_params().into_iter().map(|p| ("model", p));
        for (prefix, (name, tensor)) in params.chain(shadow.into_iter().map(|p| ("ema", p))) {
            if tensor.to_vec::<f32>()?.iter().any(|v| !v.is_finite()) {
                return Ok(Some(format!("{prefix}.{name}")));
            }
        }
        Ok(None)
    }

    /// Appends `record` as one JSON line to `dir/metrics.jsonl`.
    pub fn log(&self, dir: impl AsRef<Path>, record: &StepRecord) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(OP, dir, e))?;
        let path = dir.join(run_dir::METRICS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(OP, &path, e))?;
        writeln!(file, "{}", record.to_json()).map_err(|e| Error::io(OP, &path, e))
    }
}

/// The trainer's metadata of a checkpoint, or why it is not a trainer checkpoint
/// (naming the file). The network its config declares must be the one its tensors
/// hold: the sizes in a file are checked against its contents before anything is built
/// from them, so that a damaged or crafted file cannot make the trainer allocate a
/// network of its choosing.
fn train_meta(ck: &Checkpoint, path: &Path) -> std::result::Result<TrainMeta, String> {
    let bad = |why: String| format!("{}: not a trainer checkpoint: {why}", path.display());
    let meta = ck
        .config
        .clone()
        .ok_or_else(|| bad("it holds no training config".into()))?;
    let meta: TrainMeta =
        serde_json::from_value(meta).map_err(|e| bad(format!("its config: {e}")))?;
    let model = &meta.train.model;
    let held = ck.model_parameter_count();
    if model.parameter_count() != Some(held) {
        let declared = model
            .parameter_count()
            .map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
        return Err(format!(
            "{}: its config declares a network (model.kind = \"{}\") of {declared} \
             parameters, but the file holds {held} parameter values: it is damaged, or was \
             not written by twinflow",
            path.display(),
            model.kind.name()
        ));
    }
    Ok(meta)
}

/// Refuses a saved network of another kind or class count than `ours`, naming both
/// values; the parameter-by-parameter check of the tensors follows.
fn check_same_network(saved: &ModelConfig, ours: &ModelConfig) -> std::result::Result<(), String> {
    if saved.kind != ours.kind {
        return Err(format!(
            "the checkpoint's network is model.kind = \"{}\", this run's \"{}\"; the \
             network kind must match",
            saved.kind.name(),
            ours.kind.name()
        ));
    }
    let (theirs, mine) = (saved.num_classes(), ours.num_classes());
    if theirs != mine {
        return Err(format!(
            "the checkpoint's network has {theirs} classes (model.{}.num_classes), this \
             run's {mine}; the class count must match",
            ours.kind.name()
        ));
    }
    Ok(())
}

fn build_model(pb: &mut ParamBuilder, cfg: &TrainConfig, data: &DataSource) -> Result<TrainModel> {
    let (dim, classes) = (data.dim(), data.num_classes());
    let mismatch = |what: &str, got: usize, want: usize| {
        Error::invalid(
            "config",
            format!(
                "{what} is {got} but dataset \"{}\" has {want}",
                cfg.data.dataset
            ),
        )
    };
    match cfg.model.kind {
        ModelKind::Mlp => {
            let m = cfg.model.mlp.unwrap_or_default();
            if m.data_dim != dim {
                return Err(mismatch("model.mlp.data_dim", m.data_dim, dim));
            }
            if m.num_classes != classes {
                return Err(mismatch("model.mlp.num_classes", m.num_classes, classes));
            }
            Ok(TrainModel::Mlp(MlpVelocity::new(pb, m)?))
        }
        ModelKind::Dit => {
            let d = cfg.model.dit.unwrap_or_default();
            if let Some(shape) = data.image_shape() {
                if d.channels != shape.channels {
                    return Err(mismatch("model.dit.channels", d.channels, shape.channels));
                }
                if shape.rows != shape.cols {
                    return Err(Error::invalid(
                        "config",
                        format!(
                            "model.kind = \"dit\" needs square images, dataset \"{}\" has \
                             {}×{}",
                            cfg.data.dataset, shape.cols, shape.rows
                        ),
                    ));
                }
                if d.image_size != shape.rows {
                    return Err(mismatch("model.dit.image_size", d.image_size, shape.rows));
                }
            }
            let d_dim = d.channels * d.image_size * d.image_size;
            if d_dim != dim {
                return Err(mismatch("model.dit channels·image_size²", d_dim, dim));
            }
            if d.num_classes != classes {
                return Err(mismatch("model.dit.num_classes", d.num_classes, classes));
            }
            Ok(TrainModel::Dit(Dit::new(pb, d)?))
        }
    }
}

/// The model with every parameter moved to `device` as a trainable leaf there. Models
/// are built on the CPU first, so that a seed gives the same initial weights on every
/// device.
fn move_to(mut model: TrainModel, device: Device) -> Result<TrainModel> {
    if device == Device::Cpu {
        return Ok(model);
    }
    let mut result = Ok(());
    model.visit_params_mut(&mut |_, p| {
        if result.is_ok() {
            match p.detach().to_device(device).and_then(Tensor::into_variable) {
                Ok(moved) => *p = moved,
                Err(e) => result = Err(e),
            }
        }
    });
    result.map(|()| model)
}

/// Rows per shard of `batch` cut into `shards`, refusing a batch that does not cut.
fn shard_rows(batch: &Batch, shards: usize) -> Result<usize> {
    match batch.len() % shards {
        0 => Ok(batch.len() / shards),
        _ => Err(Error::invalid(
            OP,
            format!(
                "a batch of {} does not cut into {shards} equal shards",
                batch.len()
            ),
        )),
    }
}

/// The loss values of this rank's shards, summed.
#[derive(Default)]
struct ShardLosses {
    loss: f64,
    terms: Vec<(&'static str, f64)>,
    non_finite: usize,
}

impl ShardLosses {
    /// Adds one shard's loss; says whether it is finite (then it is backpropagated).
    fn add(&mut self, out: &StepLoss) -> Result<bool> {
        let loss = out.value()?;
        self.loss += loss;
        if self.terms.is_empty() {
            self.terms = out.terms.iter().map(|&(n, _)| (n, 0.0)).collect();
        }
        for ((_, sum), (_, v)) in self.terms.iter_mut().zip(&out.terms) {
            *sum += v;
        }
        let finite = loss.is_finite();
        self.non_finite += usize::from(!finite);
        Ok(finite)
    }

    /// The step's loss and terms (means over all shards of all ranks) and whether any
    /// shard anywhere was not finite: every rank takes the same decision.
    fn over_ranks(
        self,
        comm: Option<&dyn Communicator>,
        device: Device,
        shards: usize,
    ) -> Result<StepLosses> {
        let mut values = vec![self.loss, self.non_finite as f64];
        values.extend(self.terms.iter().map(|&(_, v)| v));
        let totals = parallel::sum_over_ranks(&values, comm, device)?;
        let mean = |v: f64| v / shards as f64;
        let terms = self
            .terms
            .iter()
            .zip(&totals[2..])
            .map(|(&(n, _), &v)| (n.to_string(), mean(v)))
            .collect();
        Ok(StepLosses {
            loss: mean(totals[0]),
            terms,
            non_finite: totals[1] > 0.0,
        })
    }
}

/// The step's loss values over every shard of every rank.
struct StepLosses {
    /// The mean loss.
    loss: f64,
    /// The mean of each named term.
    terms: Vec<(String, f64)>,
    /// Whether some shard's loss was not finite.
    non_finite: bool,
}

fn latest_path(dir: &Path) -> PathBuf {
    dir.join(run_dir::CHECKPOINTS_DIR)
        .join(run_dir::LATEST_CHECKPOINT)
}
