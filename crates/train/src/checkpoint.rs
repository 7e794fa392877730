//! Training checkpoints, for any model: a directory with `model.safetensors` (the model's named
//! parameters), `optim.safetensors` (AdamW's moments and step), `meta.json` (the resolved run
//! config of whatever type the trainer has, the step, the data and dropout RNG states) and, when
//! the run has a tokenizer file of its own, `tokenizer.fmtok`.
//!
//! Written as `<dir>.tmp`, then swapped in with renames, so a crash mid-write leaves the previous
//! checkpoint intact; `resolve` cleans up after one (a stale `.tmp` is removed, a `.old` left
//! between the renames is moved back or removed, each with a message). meta.json lists the SHA-256
//! of every other file (version 2), and `open` verifies them all before anything is read: a
//! flipped bit is refused with the file's name instead of loading as garbage.
//! A model joins by implementing `Checkpointed` (how it is rebuilt from its tensors).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fmlab_nn::{safetensors_io, AdamW, NnError, VarBuilder};
use fmlab_tensor::{DType, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::TrainError;

pub const FORMAT: &str = "fmlab-checkpoint";
/// 2: meta.json lists the files' checksums. Version 1 (without them) is still read.
pub const VERSION: u32 = 2;

/// meta.json: what the checkpoint is of and where the run stood.
#[derive(Clone, Serialize, Deserialize)]
pub struct Meta<C> {
    pub format: String,
    pub version: u32,
    /// The run's resolved configuration (the trainer's own type).
    pub config: C,
    /// Optimizer steps completed.
    pub step: u64,
    pub sampler_rng: [u64; 4],
    pub dropout_rng: [u64; 4],
    pub git_commit: Option<String>,
    /// SHA-256 of each file of the checkpoint but meta.json, by name (filled in by `save`).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// A model a checkpoint can hold: rebuilt from its tensors (every key and shape checked).
pub trait Checkpointed: Sized {
    type Config;
    fn from_checkpoint(tensors: HashMap<String, Tensor>, cfg: &Self::Config) -> Result<(Self, VarBuilder), NnError>;
}

impl Checkpointed for fmlab_models::Gpt2 {
    type Config = fmlab_models::Gpt2Config;
    fn from_checkpoint(tensors: HashMap<String, Tensor>, cfg: &Self::Config) -> Result<(Self, VarBuilder), NnError> {
        fmlab_models::Gpt2::load_hf(tensors, cfg, DType::F32)
    }
}

/// Writes a checkpoint of `model_vars` and `opt` with `meta` to `dir` (crash-safe; see the
/// module docs), copying `tokenizer_file` in when given.
pub fn save<C: Serialize>(dir: &Path, model_vars: &[(String, Tensor)], opt: &AdamW, meta: &Meta<C>, tokenizer_file: Option<&Path>) -> Result<(), TrainError> {
    let tmp = with_suffix(dir, "tmp");
    let old = with_suffix(dir, "old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::file(&tmp, format!("creating: {e}")))?;
    safetensors_io::save(&tmp.join("model.safetensors"), model_vars, None)?;
    let mut moments = Vec::new();
    for p in &opt.params {
        moments.push((format!("m.{}", p.name), p.m.clone()));
        moments.push((format!("v.{}", p.name), p.v.clone()));
    }
    let om: HashMap<String, String> = [("adam_step".to_string(), opt.step.to_string())].into();
    safetensors_io::save(&tmp.join("optim.safetensors"), &moments, Some(om))?;
    if let Some(t) = tokenizer_file {
        std::fs::copy(t, tmp.join("tokenizer.fmtok")).map_err(|e| TrainError::file(t, format!("copying the tokenizer: {e}")))?;
    }
    // Checksums of what was written, read back from the files themselves.
    let mut json = serde_json::to_value(meta)?;
    let mut files = BTreeMap::new();
    for name in ["model.safetensors", "optim.safetensors", "tokenizer.fmtok"] {
        let p = tmp.join(name);
        if p.is_file() {
            files.insert(name.to_string(), fmlab_fs::sha256_file(&p).map_err(|e| TrainError::file(&p, e))?);
        }
    }
    json["files"] = serde_json::to_value(files)?;
    let json = serde_json::to_string_pretty(&json)?;
    safetensors_io::write_atomic(&tmp.join("meta.json"), json.as_bytes())?;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| TrainError::file(dir, format!("moving aside: {e}")))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::file(dir, format!("installing: {e}")))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn with_suffix(dir: &Path, s: &str) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(format!(".{s}"));
    PathBuf::from(p)
}

/// The checkpoint directory to read, after cleaning up an interrupted save (each step said on
/// stderr): a stale `dir.tmp` is removed (the save never finished; `dir` is the last good one);
/// with `dir` complete, a leftover `dir.old` is removed; without it, `dir.old` (the previous
/// checkpoint, moved aside by a save that crashed before installing the new one) is moved back.
pub fn resolve(dir: &Path) -> Result<PathBuf, TrainError> {
    let tmp = with_suffix(dir, "tmp");
    let old = with_suffix(dir, "old");
    if tmp.exists() {
        eprintln!("note: removing {}: an interrupted checkpoint save (the last complete checkpoint is kept)", tmp.display());
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::file(&tmp, format!("removing an interrupted save: {e}")))?;
    }
    if dir.join("meta.json").is_file() {
        if old.exists() {
            eprintln!("note: removing {}: the checkpoint before {} (a save stopped before cleaning up)", old.display(), dir.display());
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::file(&old, format!("removing: {e}")))?;
        }
        return Ok(dir.to_path_buf());
    }
    if old.join("meta.json").is_file() {
        eprintln!("note: {} is missing or incomplete; restoring the previous checkpoint {}", dir.display(), old.display());
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| TrainError::file(dir, format!("removing an incomplete checkpoint: {e}")))?;
        }
        std::fs::rename(&old, dir).map_err(|e| TrainError::file(&old, format!("moving back: {e}")))?;
        return Ok(dir.to_path_buf());
    }
    Err(TrainError::file(dir, "not a checkpoint directory (no meta.json)"))
}

/// `resolve`, `read_meta`, then `verify`: the checkpoint in `dir`, ready to read.
pub fn open<C: DeserializeOwned>(dir: &Path) -> Result<(PathBuf, Meta<C>), TrainError> {
    let dir = resolve(dir)?;
    let meta = read_meta(&dir)?;
    verify(&dir, &meta)?;
    Ok((dir, meta))
}

/// Every file meta.json lists has the checksum recorded when it was written; the error names
/// the first that does not (or is missing). A version-1 checkpoint has none to check (said once).
pub fn verify<C>(dir: &Path, meta: &Meta<C>) -> Result<(), TrainError> {
    if meta.version < 2 {
        eprintln!("note: {} was written before checkpoints carried checksums (version {}); its files are not verified", dir.display(), meta.version);
        return Ok(());
    }
    for (name, want) in &meta.files {
        let p = dir.join(name);
        let got = fmlab_fs::sha256_file(&p).map_err(|e| TrainError::file(&p, format!("listed in meta.json but unreadable: {e}")))?;
        if &got != want {
            return Err(TrainError::file(&p, format!("checksum mismatch: the file is corrupt or was changed after it was written (sha256 {got}, meta.json records {want}); refusing to load it")));
        }
    }
    for name in ["model.safetensors", "optim.safetensors"] {
        if !meta.files.contains_key(name) {
            return Err(TrainError::file(&dir.join("meta.json"), format!("lists no checksum for {name}")));
        }
    }
    Ok(())
}

/// meta.json of a checkpoint, its format and version checked.
pub fn read_meta<C: DeserializeOwned>(dir: &Path) -> Result<Meta<C>, TrainError> {
    let p = dir.join("meta.json");
    let s = std::fs::read_to_string(&p).map_err(|e| TrainError::file(&p, e))?;
    let m: Meta<C> = serde_json::from_str(&s).map_err(|e| TrainError::file(&p, format!("not a valid checkpoint meta.json: {e}")))?;
    if m.format != FORMAT || !(1..=VERSION).contains(&m.version) {
        return Err(TrainError::file(&p, format!("format {} version {}; this fmlab reads {FORMAT} versions 1 to {VERSION}", m.format, m.version)));
    }
    Ok(m)
}

/// The model of a checkpoint, rebuilt from model.safetensors with `cfg` (f32 weights on the CPU).
pub fn load_model<M: Checkpointed>(dir: &Path, cfg: &M::Config) -> Result<(M, VarBuilder), TrainError> {
    let p = dir.join("model.safetensors");
    let t = safetensors_io::load(&p)?;
    M::from_checkpoint(t, cfg).map_err(|e| TrainError::file(&p, e))
}

/// Restores AdamW's moments and step count from optim.safetensors.
pub fn load_optimizer(dir: &Path, opt: &mut AdamW) -> Result<(), TrainError> {
    let p = dir.join("optim.safetensors");
    let t = safetensors_io::load(&p)?;
    let meta = safetensors_io::metadata(&p)?;
    for prm in &opt.params {
        for (k, dst) in [(format!("m.{}", prm.name), &prm.m), (format!("v.{}", prm.name), &prm.v)] {
            let src = t.get(&k).ok_or_else(|| TrainError::file(&p, format!("no tensor `{k}`")))?;
            if src.shape() != dst.shape() {
                return Err(TrainError::file(&p, format!("`{k}` has shape {:?}, expected {:?}", src.shape(), dst.shape())));
            }
            dst.set_data(src);
        }
    }
    opt.step = meta.get("adam_step").and_then(|s| s.parse().ok()).ok_or_else(|| TrainError::file(&p, "no adam_step"))?;
    Ok(())
}
