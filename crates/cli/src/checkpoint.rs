//! `train gpt`'s checkpoints: its resolved run config and the GPT-2 model over the train crate's
//! checkpoint format (fmlab_train::checkpoint: model.safetensors with HF GPT-2 names,
//! optim.safetensors, meta.json, the tokenizer; written crash-safely).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::{AdamW, VarBuilder};
use fmlab_tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::assets::load_tokenizer;


/// Everything a run was started with, after defaults and presets are applied (logged as
/// `config.json` in the run folder and in each checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub preset: String,
    pub model: Gpt2Config,
    pub tokenizer: String,
    pub data: Vec<PathBuf>,
    pub val_data: Vec<PathBuf>,
    pub batch: usize,
    pub seq: usize,
    pub grad_accum: usize,
    pub steps: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub grad_clip: f64,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Activation dtype of the run: "fp32", or "bf16" (mixed precision). Older runs: fp32.
    #[serde(default = "fp32")]
    pub precision: String,
}

fn fp32() -> String {
    "fp32".into()
}

/// meta.json of a `train gpt` checkpoint.
pub type Meta = fmlab_train::Meta<RunConfig>;

pub use fmlab_train::checkpoint::{FORMAT, VERSION};

pub fn save(dir: &Path, model_vars: &[(String, Tensor)], opt: &AdamW, meta: &Meta, tokenizer_file: Option<&Path>) -> Result<()> {
    Ok(fmlab_train::checkpoint::save(dir, model_vars, opt, meta, tokenizer_file)?)
}

/// A `--checkpoint` argument: a checkpoint directory, or a run folder with `checkpoint/` in it.
pub fn checkpoint_dir(p: &std::path::Path) -> Result<PathBuf> {
    let inner = p.join("checkpoint");
    resolve(if inner.is_dir() || inner.with_extension("old").is_dir() { &inner } else { p })
}

/// The checkpoint directory to read: `dir`, or `dir.old` if a crash hit between the renames.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    fmlab_train::checkpoint::resolve(dir).context("--checkpoint")
}

pub fn read_meta(dir: &Path) -> Result<Meta> {
    Ok(fmlab_train::checkpoint::read_meta(dir)?)
}

/// The tokenizer spec of a checkpoint: its own copy if it has one, else the named one.
pub fn tokenizer_of(dir: &Path, meta: &Meta) -> Result<fmlab_tokenizer::Tokenizer> {
    let own = dir.join("tokenizer.fmtok");
    if own.is_file() {
        return load_tokenizer(own.to_str().unwrap());
    }
    load_tokenizer(&meta.config.tokenizer)
}

/// Loads the model weights (every key and shape checked against the config).
pub fn load_model(dir: &Path, meta: &Meta) -> Result<(Gpt2, VarBuilder)> {
    Ok(fmlab_train::checkpoint::load_model::<Gpt2>(dir, &meta.config.model)?)
}

/// `load_model` for inference on `device`, computing in `precision` (weights stay f32).
pub fn load_model_on(dir: &Path, meta: &Meta, device: fmlab_tensor::Device, precision: DType) -> Result<Gpt2> {
    let (mut model, vb) = load_model(dir, meta)?;
    vb.to_device(device);
    model.compute_dtype = precision;
    Ok(model)
}

/// Restores AdamW moments and step count.
pub fn load_optimizer(dir: &Path, opt: &mut AdamW) -> Result<()> {
    Ok(fmlab_train::checkpoint::load_optimizer(dir, opt)?)
}

/// The git commit this binary was built from (`-dirty` when the tracked files differed), recorded
/// at build time by build.rs; None when it was built outside a git checkout.
pub fn git_commit() -> Option<String> {
    Some(env!("FMLAB_BUILD_COMMIT")).filter(|c| !c.is_empty()).map(str::to_string)
}
