//! `fmlab clip …`: a trained CLIP put to use — write scenes as PNGs, index a folder of images by
//! their embeddings (HNSW, cosine), search it with text.

mod index;
mod scenes;
mod search;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use fmlab_models::clip::Clip;
use fmlab_train::clip::ClipMeta;

#[derive(Subcommand)]
pub enum ClipCmd {
    /// Write generated scenes as PNGs with their captions (captions.jsonl).
    Scenes(scenes::ScenesArgs),
    /// Embed every PNG of a folder with a CLIP run's image tower into an HNSW index.
    Index(index::IndexArgs),
    /// The images of an index closest to a text, by a CLIP run's text tower.
    Search(search::SearchArgs),
}

pub fn run(cmd: ClipCmd) -> Result<()> {
    match cmd {
        ClipCmd::Scenes(a) => scenes::run(a),
        ClipCmd::Index(a) => index::run(a),
        ClipCmd::Search(a) => search::run(a),
    }
}

/// A `train clip` run's model (on `device`) and tokenizer, its checkpoint verified.
pub(crate) fn load(run: &Path, device: fmlab_tensor::Device) -> Result<(Clip, fmlab_tokenizer::Tokenizer, ClipMeta)> {
    let inner = run.join("checkpoint");
    let dir: PathBuf = if inner.is_dir() { inner } else { run.to_path_buf() };
    let (ck, meta): (PathBuf, ClipMeta) = fmlab_train::checkpoint::open(&dir).with_context(|| format!("--checkpoint {} (a `train clip` run)", run.display()))?;
    let tok = fmlab_tokenizer::Tokenizer::load(&ck.join("tokenizer.fmtok"))?;
    let (model, vb) = fmlab_train::checkpoint::load_model::<Clip>(&ck, &meta.config.model)?;
    vb.to_device(device);
    Ok((model, tok, meta))
}
