//! Neural-network building blocks on the tensor engine: a named parameter store with checkpoint
//! key paths (`VarBuilder`), layers, optimizers, LR schedules, gradient clipping, and safetensors
//! checkpoints with every key and shape checked.

mod casts;
pub mod gguf;
pub mod graph_step;
pub mod kv_cache;
pub mod layers;
pub mod optim;
pub mod safetensors_io;
pub mod schedule;
mod varbuilder;

pub use casts::{cast_like, with_casts};
pub use graph_step::{GraphStep, IdRange};
pub use kv_cache::{cached_attention, ContiguousKvCache, KvCache};
pub use layers::{Embedding, LayerNorm, Linear, Mlp, MlpKind, MultiHeadAttention, RmsNorm, WeightLayout};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig, Sgd};
pub use schedule::Schedule;
pub use varbuilder::{Init, VarBuilder, VarMap};

/// Errors the world can cause: files, formats, checkpoints that do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("checkpoint has no tensor `{0}` (the model needs it)")]
    MissingKey(String),
    #[error("checkpoint tensor `{key}` has shape {got:?}, the model needs {want:?}")]
    Shape { key: String, got: Vec<usize>, want: Vec<usize> },
    #[error("{0}")]
    Other(String),
}

impl NnError {
    pub fn file(path: &std::path::Path, msg: impl std::fmt::Display) -> NnError {
        NnError::File { path: path.display().to_string(), msg: msg.to_string() }
    }
}
