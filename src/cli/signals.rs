//! Ctrl-C (SIGINT) and SIGTERM during `train`: the first asks the training loop to stop
//! after the current step, which it saves; a second ends the process at once with the
//! signal's exit status (the run directory's lock goes with the process, and the saves
//! are atomic, so even that loses nothing already saved).

use super::error::CliResult;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The stop signals received since [`StopSignals::install`].
pub struct StopSignals {
    /// The number of the last signal received (0: none).
    received: Arc<AtomicUsize>,
}

impl StopSignals {
    /// Installs the handlers of SIGINT and SIGTERM for the rest of the process.
    pub fn install() -> CliResult<StopSignals> {
        let received = Arc::new(AtomicUsize::new(0));
        // Set by the first signal; a signal that finds it set exits at once.
        let stopping = Arc::new(AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM] {
            // Registered before the flag is set, so that it sees the flag as the
            // previous signal left it (signal-hook runs the actions in order).
            flag::register_conditional_shutdown(signal, exit_status(signal), stopping.clone())?;
            flag::register(signal, stopping.clone())?;
            flag::register_usize(signal, received.clone(), signal as usize)?;
        }
        Ok(StopSignals { received })
    }

    /// The signal that asked to stop, if any.
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::SeqCst) {
            0 => None,
            signal => i32::try_from(signal).ok(),
        }
    }
}

/// The shell's exit status of a process ended by `signal`: 128 + its number (130 for
/// SIGINT, 143 for SIGTERM).
pub fn exit_status(signal: i32) -> i32 {
    128 + signal
}

/// [`exit_status`] as the process's exit code.
pub fn exit_code(signal: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(exit_status(signal)).unwrap_or(1))
}

/// The signal's name, for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT (Ctrl-C)",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
