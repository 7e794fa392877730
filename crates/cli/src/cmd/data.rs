//! `fmlab data prepare`: documents → train/val token shards, split by document (whole plays,
//! whole years, whole files — never random lines), tokenized in parallel, streamed in batches of
//! documents so a corpus larger than memory passes through.
//!
//! Document readers, chosen by file name:
//! - `*.jsonl`: one JSON object per line, its `"text"` field is a document (OpenWebText/TinyStories
//!   jsonl);
//! - any other file: text; if it contains `<|endoftext|>`, each separated piece is a document
//!   (TinyStories `.txt`), otherwise the whole file is one (a play, an address, an OWT file).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fmlab_data::Shard;

use crate::assets::{cache_dir, expand_inputs, load_tokenizer};

#[derive(Subcommand)]
pub enum DataCmd {
    /// Tokenize a corpus into train/val shards (held out by document).
    Prepare(PrepareArgs),
}

#[derive(Args)]
pub struct PrepareArgs {
    /// A named corpus from the asset cache: shakespeare, sotu, linux-docs, python-docs, or mix
    /// (all four; each held out separately, so validation has documents of every kind).
    #[arg(long)]
    corpus: Option<String>,
    /// Files or folders instead of (or in addition to) --corpus.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    /// `gpt2`, or a tokenizer file (.fmtok or tokenizer.json).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Output folder: train.tok, val.tok, prepare.json.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of documents held out for validation (the last ones, in file-name order).
    #[arg(long, default_value_t = 0.1)]
    val_frac: f64,
}

/// The documents of one file.
pub fn run(cmd: DataCmd) -> Result<()> {
    let DataCmd::Prepare(a) = cmd;
    if !(0.0..1.0).contains(&a.val_frac) {
        bail!("--val-frac {}: must be in [0, 1)", a.val_frac);
    }
    // Groups of files: each group is split into train/val on its own.
    let mut groups: Vec<Vec<PathBuf>> = Vec::new();
    if !a.input.is_empty() {
        groups.push(expand_inputs(&a.input)?);
    }
    if let Some(c) = &a.corpus {
        let names: Vec<&str> = match c.as_str() {
            "mix" => vec!["shakespeare", "sotu", "linux-docs", "python-docs"],
            "shakespeare" | "sotu" | "linux-docs" | "python-docs" => vec![c.as_str()],
            _ => bail!("--corpus {c}: known corpora are shakespeare, sotu, linux-docs, python-docs and mix"),
        };
        for n in names {
            let d = cache_dir().join(n);
            if !d.join(".ok").is_file() {
                bail!("--corpus {c}: {} is missing ({}); run `scripts/fetch-assets.sh {n}`", d.display(), crate::assets::cache_hint());
            }
            let mut files = expand_inputs(&[d])?;
            files.retain(|f| f.file_name().is_none_or(|x| x != ".ok"));
            groups.push(files);
        }
    }
    let files: Vec<PathBuf> = groups.iter().flatten().cloned().collect();
    if files.is_empty() {
        bail!("nothing to prepare: give --corpus or --input");
    }
    let tok = load_tokenizer(&a.tokenizer)?;
    let tok_name = crate::assets::tokenizer_id(&a.tokenizer);
    let t0 = Instant::now();
    let p = fmlab_data::documents::prepare(&groups, &tok, a.val_frac)?;
    let (train, val, n_docs, n_val_docs, bytes) = (p.train, p.val, p.documents, p.val_documents, p.bytes);
    if n_docs == 0 {
        bail!("--input: no documents found in {} files", files.len());
    }
    let secs = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let (tp, vp) = (a.out.join("train.tok"), a.out.join("val.tok"));
    let (nt, nv) = (train.len(), val.len());
    Shard { tokenizer: tok_name.clone(), tokens: train }.save(&tp)?;
    Shard { tokenizer: tok_name.clone(), tokens: val }.save(&vp)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let stats = serde_json::json!({
        "files": files.len(), "documents": n_docs, "train_documents": n_docs - n_val_docs, "val_documents": n_val_docs,
        "bytes": bytes, "train_tokens": nt, "val_tokens": nv, "tokenizer": tok_name,
        "seconds": secs, "tokens_per_second": (nt + nv) as f64 / secs,
        "train_shard_bytes": size(&tp), "val_shard_bytes": size(&vp),
    });
    fmlab_train::ledger::write_file(&a.out.join("prepare.json"), serde_json::to_string_pretty(&stats)?)?;
    eprintln!(
        "{} documents ({} files, {:.1} MB) → {nt} train / {nv} val tokens in {secs:.2}s ({:.0} tokens/s); shards {} ({} bytes), {} ({} bytes)",
        n_docs, files.len(), bytes as f64 / 1e6, (nt + nv) as f64 / secs, tp.display(), size(&tp), vp.display(), size(&vp)
    );
    Ok(())
}
