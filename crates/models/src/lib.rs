//! Model definitions. Modules are plain structs built by `load(vb, cfg)`; the key paths they ask
//! the `VarBuilder` for are HF's, so HF safetensors load without mapping tables.

pub mod bert;
pub mod chat;
pub mod clip;
pub mod gpt2;
pub mod llama;
mod lm;
pub mod sentence;
pub mod vit;

pub use bert::{Bert, BertConfig};
pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::{KvCache, Llama, LlamaConfig};
pub use vit::{Vit, VitConfig};

/// Strips a key prefix (`model.`, `bert.`, `transformer.`) where present.
pub(crate) fn hf_strip(t: std::collections::HashMap<String, fmlab_tensor::Tensor>, prefix: &str) -> std::collections::HashMap<String, fmlab_tensor::Tensor> {
    t.into_iter().map(|(k, v)| (k.strip_prefix(prefix).map(str::to_string).unwrap_or(k), v)).collect()
}
