//! Ctrl-C and SIGTERM during training. The first signal asks the training loop to stop after the
//! step it is in: it writes a checkpoint and returns `TrainError::Interrupted` (the binary exits
//! with status 130 and says how to resume). A second signal exits at once, status 130: checkpoint
//! saves are crash-safe (checkpoint.rs), so that leaves the last complete checkpoint as it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler for SIGINT and SIGTERM (once per process; later calls do nothing).
pub fn install() -> Result<(), crate::TrainError> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting now (the last complete checkpoint is kept)");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing this step and writing a checkpoint (interrupt again to exit at once)");
        })
        .map_err(|e| crate::TrainError::Other(format!("installing the Ctrl-C handler: {e}")));
    });
    res
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// A training loop's check between steps: when a stop was asked for, writes a checkpoint
/// (`save`, unless the loop just wrote one at this step) and returns `TrainError::Interrupted`
/// with the resume command's folder; otherwise nothing.
pub fn checkpoint_if_requested(step: u64, saved_at: Option<u64>, run_dir: &std::path::Path, save: impl FnOnce() -> Result<(), crate::TrainError>) -> Result<(), crate::TrainError> {
    if !requested() {
        return Ok(());
    }
    if saved_at != Some(step) {
        save()?;
    }
    Err(crate::TrainError::Interrupted { step, run_dir: run_dir.display().to_string() })
}

/// Asks the loop to stop as a first signal would (tests; a caller's own stop condition).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}
