//! `train gpt`'s checkpoints: its resolved run config and the GPT-2 model over the train crate's
//! checkpoint format (fmlab_train::checkpoint: model.safetensors with HF GPT-2 names,
//! optim.safetensors, meta.json, the tokenizer; written crash-safely).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fmlab_models::Gpt2;
use fmlab_nn::VarBuilder;
use fmlab_tensor::DType;

use crate::assets::load_tokenizer;

pub use fmlab_train::gpt::RunConfig;

/// meta.json of a `train gpt` checkpoint.
pub type Meta = fmlab_train::Meta<RunConfig>;

/// A `--checkpoint` argument, opened: a checkpoint directory, or a run folder with `checkpoint/`
/// in it.
pub fn open_arg(p: &Path) -> Result<(PathBuf, Meta)> {
    let inner = p.join("checkpoint");
    let alt = |s: &str| inner.with_file_name(format!("checkpoint.{s}")).is_dir();
    open(if inner.is_dir() || alt("old") || alt("tmp") { &inner } else { p }, "--checkpoint")
}

/// The checkpoint directory to read (an interrupted save cleaned up first), its meta.json, and
/// every file verified against the checksums in it; errors start with `flag`.
pub fn open(dir: &Path, flag: &str) -> Result<(PathBuf, Meta)> {
    fmlab_train::checkpoint::open(dir).with_context(|| flag.to_string())
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

/// The git commit this binary was built from (`-dirty` when the tracked files differed), recorded
/// at build time by build.rs; None when it was built outside a git checkout.
pub fn git_commit() -> Option<String> {
    Some(env!("FMLAB_BUILD_COMMIT")).filter(|c| !c.is_empty()).map(str::to_string)
}
