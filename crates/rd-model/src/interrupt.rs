//! Stopping a training run cleanly: a shared flag the training loop checks after every step.
//!
//! [`Interrupt::CtrlC`] installs, once per process, a handler for Ctrl-C (and SIGTERM/SIGHUP)
//! that sets a process-wide flag. The first signal asks the loop to save a checkpoint and return;
//! a second one ends the process at once (exit code 130) for users who cannot wait. Model files
//! are written atomically, so even that never leaves a torn file. The flag is never cleared: once
//! a user asked to stop, every later run in the same process stops at its first step too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::{ModelError, Result};

/// How a training run learns that it should stop.
#[derive(Debug, Clone, Default)]
pub enum Interrupt {
    /// Install the process-wide Ctrl-C / SIGTERM handler (once) and watch its flag.
    #[default]
    CtrlC,
    /// Watch this flag; whoever holds it sets it to stop the run (tests, GUIs, services).
    Flag(Arc<AtomicBool>),
    /// Never stop early.
    Never,
}

impl Interrupt {
    /// The flag to watch, installing the Ctrl-C handler when asked for.
    pub(crate) fn flag(&self) -> Result<Arc<AtomicBool>> {
        match self {
            Interrupt::CtrlC => ctrl_c_flag(),
            Interrupt::Flag(f) => Ok(Arc::clone(f)),
            Interrupt::Never => Ok(Arc::new(AtomicBool::new(false))),
        }
    }
}

static CTRL_C: OnceLock<std::result::Result<Arc<AtomicBool>, String>> = OnceLock::new();

/// The process-wide flag set by Ctrl-C (SIGINT), SIGTERM or SIGHUP, installing the handler on
/// first use. Errors when another handler was installed by someone else.
pub fn ctrl_c_flag() -> Result<Arc<AtomicBool>> {
    CTRL_C
        .get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let seen = Arc::clone(&flag);
            ctrlc::set_handler(move || {
                if seen.swap(true, Ordering::SeqCst) {
                    eprintln!("\nstopping now; the last checkpoint is intact");
                    std::process::exit(130);
                }
                eprintln!(
                    "\nstopping after this step and saving a checkpoint \
                     (press Ctrl-C again to quit at once)"
                );
            })
            .map(|()| flag)
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| {
            ModelError::Training(format!(
                "cannot install the Ctrl-C handler ({e}); if the program handles Ctrl-C itself, \
                 pass its flag with `Interrupt::Flag`"
            ))
        })
}
