//! The training loop: steps a [`Trainer`] to a target step, keeping the run directory
//! up to date (the resolved config, metrics lines, checkpoints) and telling its caller
//! what happened, so that a command line can draw progress and pictures without a loop
//! of its own, and stop it early (on Ctrl-C) without losing the step it reached.

use super::{StepRecord, Trainer};
use std::path::{Path, PathBuf};
use twinflow_engine::comm::ReduceOp;
use twinflow_engine::{Error, Result, Tensor};
use twinflow_nn::atomic_file;

/// What the loop tells its caller, in the order it happens.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// A step was taken (and its metrics line written when one was due).
    Step(&'a StepRecord),
    /// A checkpoint was saved (`step-<N>.safetensors`; `latest.safetensors` too).
    Saved(&'a Path),
    /// Sample pictures are due: every `sample_every` steps before the last, and once
    /// at the end, after the final checkpoint (`last` is true then).
    SamplesDue {
        /// Whether this is the end of the run.
        last: bool,
    },
}

/// What the caller of [`Trainer::train_to`] wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainControl {
    /// Go on.
    Continue,
    /// Stop after the current step: its metrics line and a checkpoint are written
    /// (unless already written), and the loop returns without further events of the
    /// step or the end-of-run pictures.
    Stop,
}

/// How a call of [`Trainer::train_to`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// The step the run started this call at.
    pub start: u64,
    /// The record of the last step taken (`None` when the run was already there).
    pub last: Option<StepRecord>,
    /// The final checkpoint (`None` when no step was taken).
    pub checkpoint: Option<PathBuf>,
    /// Whether the caller stopped the run before `target` ([`TrainControl::Stop`]).
    pub stopped_early: bool,
}

impl Trainer {
    /// Trains until step `config().steps`; see [`Trainer::train_to`].
    pub fn train(
        &mut self,
        dir: impl AsRef<Path>,
        on_event: impl FnMut(&Trainer, TrainEvent<'_>) -> Result<TrainControl>,
    ) -> Result<TrainSummary> {
        let target = self.cfg.steps;
        self.train_to(target, dir, on_event)
    }

    /// Trains until step `target` in the run directory `dir`: sets the config's
    /// `steps` to `target` and writes it as `dir/config.toml`, then steps, writing a
    /// metrics line every `log_every` steps and a checkpoint every `checkpoint_every`
    /// steps, and saves a final checkpoint unless the last step just saved one.
    /// `on_event` hears every step, save and sample-picture moment; its error stops
    /// the run at once, and its [`TrainControl::Stop`] stops it after the current
    /// step, saved: the step's metrics line (even off the `log_every` cadence, so that
    /// the log reaches the checkpoint) and a checkpoint. A run already at `target`
    /// does nothing and writes nothing.
    ///
    /// In a data-parallel run every rank calls it with the same `target`; only rank 0
    /// writes `dir` and hears events, and after every step the ranks agree on whether
    /// to stop (rank 0's answer, or any rank's failure), so a Ctrl-C or a spent time
    /// budget on rank 0 stops them all at the same step. An error on any rank aborts
    /// the communicator, so that the others fail with it instead of waiting.
    pub fn train_to(
        &mut self,
        target: u64,
        dir: impl AsRef<Path>,
        on_event: impl FnMut(&Trainer, TrainEvent<'_>) -> Result<TrainControl>,
    ) -> Result<TrainSummary> {
        let result = self.run_to(target, dir.as_ref(), on_event);
        if let (Err(e), Some(comm)) = (&result, &self.comm) {
            comm.abort(&twinflow_engine::report(e));
        }
        result
    }

    fn run_to(
        &mut self,
        target: u64,
        dir: &Path,
        mut on_event: impl FnMut(&Trainer, TrainEvent<'_>) -> Result<TrainControl>,
    ) -> Result<TrainSummary> {
        let start = self.step;
        let mut summary = TrainSummary {
            start,
            last: None,
            checkpoint: None,
            stopped_early: false,
        };
        if start >= target {
            return Ok(summary);
        }
        self.cfg.steps = target;
        if !self.is_writer() {
            // The other ranks of a data-parallel run only step and follow rank 0's
            // decision to stop: rank 0 writes and hears the events.
            while self.step < target && !summary.stopped_early {
                summary.last = Some(self.step()?);
                summary.stopped_early = self.agreed(TrainControl::Continue)? == TrainControl::Stop
                    && self.step < target;
            }
            return Ok(summary);
        }
        self.write_config(dir)?;
        let (log_every, checkpoint_every) = (self.cfg.log_every, self.cfg.checkpoint_every);
        let sample_every = self.cfg.sample_every;
        let mut saved_at = None;
        while self.step < target && !summary.stopped_early {
            let record = self.step()?;
            let n = record.step;
            let logged = is_multiple(n, log_every);
            if logged {
                self.log(dir, &record)?;
            }
            let mut control = on_event(self, TrainEvent::Step(&record))?;
            if is_multiple(n, checkpoint_every) {
                let path = self.save(dir)?;
                control = stop_if_asked(control, on_event(self, TrainEvent::Saved(&path))?);
                summary.checkpoint = Some(path);
                saved_at = Some(n);
            }
            if control == TrainControl::Continue && is_multiple(n, sample_every) && n < target {
                control = on_event(self, TrainEvent::SamplesDue { last: false })?;
            }
            control = self.agreed(control)?;
            if control == TrainControl::Stop && n < target {
                summary.stopped_early = true;
                if !logged && log_every > 0 {
                    self.log(dir, &record)?;
                }
            }
            summary.last = Some(record);
        }
        if saved_at != Some(self.step) {
            let path = self.save(dir)?;
            // Stopping or not, this is the loop's last save: its answer changes nothing.
            on_event(self, TrainEvent::Saved(&path))?;
            summary.checkpoint = Some(path);
        }
        if !summary.stopped_early {
            on_event(self, TrainEvent::SamplesDue { last: true })?;
        }
        Ok(summary)
    }

    /// `control` as every rank of a data-parallel run agrees on it: `Stop` when any
    /// rank asks to stop (only rank 0 has events to ask from). A single rank's own.
    fn agreed(&self, control: TrainControl) -> Result<TrainControl> {
        let Some(comm) = &self.comm else {
            return Ok(control);
        };
        let stop = f32::from(u8::from(control == TrainControl::Stop));
        let flag = Tensor::from_vec(vec![stop], &[1], self.device)?;
        comm.all_reduce(&flag, ReduceOp::Sum)?;
        Ok(match flag.item()? > 0.0 {
            true => TrainControl::Stop,
            false => TrainControl::Continue,
        })
    }

    /// Writes the resolved config as `dir/config.toml` (atomically), creating `dir`.
    fn write_config(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(super::OP, dir, e))?;
        let path = dir.join("config.toml");
        atomic_file::replace_file(&path, self.cfg.to_toml()?.as_bytes())
            .map_err(|e| Error::io(super::OP, &path, e))
    }
}

/// `Stop` when either answer asked to stop.
fn stop_if_asked(first: TrainControl, second: TrainControl) -> TrainControl {
    if first == TrainControl::Stop {
        first
    } else {
        second
    }
}

/// Whether something due every `every` steps (0: never) is due at step `n`.
fn is_multiple(n: u64, every: u64) -> bool {
    every > 0 && n.is_multiple_of(every)
}
