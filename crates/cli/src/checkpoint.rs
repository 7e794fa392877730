//! Training checkpoints: a directory with `model.safetensors` (HF GPT-2 names), `optim.safetensors`
//! (AdamW moments), `meta.json` (resolved run config, step, RNG states) and the tokenizer.
//!
//! Written as `<dir>.tmp`, then swapped in with renames, so a crash mid-write leaves the previous
//! checkpoint intact (`load` also falls back to `<dir>.old` if a crash hit between the renames).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::{safetensors_io, AdamW, VarBuilder};
use fmlab_tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::assets::load_tokenizer;

pub const FORMAT: &str = "fmlab-checkpoint";
pub const VERSION: u32 = 1;

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

#[derive(Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub config: RunConfig,
    /// Optimizer steps completed.
    pub step: u64,
    pub sampler_rng: [u64; 4],
    pub dropout_rng: [u64; 4],
    pub git_commit: Option<String>,
}

pub fn save(dir: &Path, model_vars: &[(String, Tensor)], opt: &AdamW, meta: &Meta, tokenizer_file: Option<&Path>) -> Result<()> {
    let tmp = with_suffix(dir, "tmp");
    let old = with_suffix(dir, "old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    safetensors_io::save(&tmp.join("model.safetensors"), model_vars, None)?;
    let mut moments = Vec::new();
    for p in &opt.params {
        moments.push((format!("m.{}", p.name), p.m.clone()));
        moments.push((format!("v.{}", p.name), p.v.clone()));
    }
    let om: HashMap<String, String> = [("adam_step".to_string(), opt.step.to_string())].into();
    safetensors_io::save(&tmp.join("optim.safetensors"), &moments, Some(om))?;
    if let Some(t) = tokenizer_file {
        std::fs::copy(t, tmp.join("tokenizer.fmtok")).with_context(|| format!("copying tokenizer {}", t.display()))?;
    }
    safetensors_io::write_atomic(&tmp.join("meta.json"), serde_json::to_string_pretty(meta)?.as_bytes())?;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).with_context(|| format!("moving aside {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("installing {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn with_suffix(dir: &Path, s: &str) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(format!(".{s}"));
    PathBuf::from(p)
}

/// The checkpoint directory to read: `dir`, or `dir.old` if a crash hit between the renames.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join("meta.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let old = with_suffix(dir, "old");
    if old.join("meta.json").is_file() {
        eprintln!("note: {} is incomplete; using {}", dir.display(), old.display());
        return Ok(old);
    }
    bail!("--checkpoint {}: not a checkpoint directory (no meta.json)", dir.display())
}

pub fn read_meta(dir: &Path) -> Result<Meta> {
    let p = dir.join("meta.json");
    let s = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    let m: Meta = serde_json::from_str(&s).with_context(|| format!("{}: not a valid checkpoint meta.json", p.display()))?;
    if m.format != FORMAT || m.version != VERSION {
        bail!("{}: format {} version {}; this fmlab reads {FORMAT} version {VERSION}", p.display(), m.format, m.version);
    }
    Ok(m)
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
    let p = dir.join("model.safetensors");
    let t = safetensors_io::load(&p)?;
    let (m, vb) = Gpt2::load_hf(t, &meta.config.model, DType::F32).with_context(|| format!("{}", p.display()))?;
    Ok((m, vb))
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
    let p = dir.join("optim.safetensors");
    let t = safetensors_io::load(&p)?;
    let meta = safetensors_io::metadata(&p)?;
    for prm in &opt.params {
        for (k, dst) in [(format!("m.{}", prm.name), &prm.m), (format!("v.{}", prm.name), &prm.v)] {
            let src = t.get(&k).with_context(|| format!("{}: no tensor `{k}`", p.display()))?;
            if src.shape() != dst.shape() {
                bail!("{}: `{k}` has shape {:?}, expected {:?}", p.display(), src.shape(), dst.shape());
            }
            dst.set_data(src);
        }
    }
    opt.step = meta.get("adam_step").and_then(|s| s.parse().ok()).with_context(|| format!("{}: no adam_step", p.display()))?;
    Ok(())
}

/// The git commit this binary was built from (`-dirty` when the tracked files differed), recorded
/// at build time by build.rs; None when it was built outside a git checkout.
pub fn git_commit() -> Option<String> {
    Some(env!("FMLAB_BUILD_COMMIT")).filter(|c| !c.is_empty()).map(str::to_string)
}
