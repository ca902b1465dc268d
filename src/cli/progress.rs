//! Progress of a training run on the terminal: a bar with the loss, speed and time
//! left when stderr is a terminal, and a plain line every `log_every` steps otherwise
//! (a log file or a CI job would see nothing of a bar).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;
use twinflow::flow::train::StepRecord;

/// Shows the steps of one `train` command.
pub struct TrainProgress {
    bar: Option<ProgressBar>,
    target: u64,
    line_every: u64,
    started: Instant,
    start_step: u64,
}

impl TrainProgress {
    /// Progress from step `start` to `target`; without a terminal, a line every
    /// `line_every` steps (none when 0).
    pub fn new(start: u64, target: u64, line_every: u64) -> TrainProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(target);
            bar.set_position(start);
            bar.reset_eta();
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps | loss {msg} | {per_sec} | ETA {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        TrainProgress {
            bar,
            target,
            line_every,
            started: Instant::now(),
            start_step: start,
        }
    }

    /// Shows a finished step.
    pub fn step(&mut self, record: &StepRecord) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{:.4}", record.loss));
            bar.set_position(record.step);
        } else if self.line_every > 0 && record.step.is_multiple_of(self.line_every) {
            eprintln!("{}", self.line(record));
        }
    }

    /// `step N/T | loss L | S steps/s | ETA Xs`, the bar's content as a log line.
    fn line(&self, record: &StepRecord) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = record.step.saturating_sub(self.start_step) as f64;
        let rate = done / elapsed.max(1e-9);
        let left = self.target.saturating_sub(record.step) as f64 / rate.max(1e-9);
        format!(
            "step {}/{} | loss {:.4} | {rate:.2} steps/s | ETA {left:.0}s",
            record.step, self.target, record.loss
        )
    }

    /// Runs `f` (which may print) with the bar hidden.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
