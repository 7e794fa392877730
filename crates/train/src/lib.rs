//! Training, for every model and command that trains: the `Trainer` step (eager or one CUDA
//! graph; gradient accumulation, global-norm clipping, AdamW, the non-finite checks), evaluation
//! over fixed windows (`eval`), MFU (`mfu`), checkpoints for any model (`checkpoint`: the
//! crash-safe directory protocol and the `Checkpointed` trait) and the experiment ledger
//! (`ledger`); and GPT-2 pre-training's loop around the step (`gpt`). `fmlab train gpt` and
//! `fmlab bench train` both run their steps through it.

pub mod bench;
pub mod checkpoint;
pub mod clip;
pub mod eval;
pub mod gpt;
pub mod interrupt;
pub mod ledger;
pub mod mfu;
pub mod step;
pub mod sweep;

pub use checkpoint::{Checkpointed, Meta};
pub use step::{NoHooks, StepHooks, StepOptions, StepOut, Trainer};

/// What the world (or a diverging run) can cause while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("non-finite loss ({loss}); first non-finite tensor: {first}")]
    NonFiniteLoss { loss: f64, first: String },
    #[error("non-finite gradient norm; first non-finite tensor: {first}")]
    NonFiniteNorm { first: String },
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error(transparent)]
    Nn(#[from] fmlab_nn::NnError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("interrupted after step {step}: checkpoint written; resume with --resume {run_dir}")]
    Interrupted { step: u64, run_dir: String },
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub fn file(path: &std::path::Path, msg: impl std::fmt::Display) -> TrainError {
        TrainError::File { path: path.display().to_string(), msg: msg.to_string() }
    }
}
