//! Turning `--data` into token streams: token shards as they are, text files tokenized on the
//! fly (in parallel, documents joined by `<|endoftext|>` when the tokenizer has it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fmlab_data::Shard;
use fmlab_tokenizer::{AllowedSpecial, Tokenizer};
use rayon::prelude::*;

use crate::assets::expand_inputs;

fn is_shard(p: &Path) -> bool {
    let mut magic = [0u8; 8];
    std::fs::File::open(p).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok() && &magic == b"FMLSHARD"
}

/// Tokens of the given files (shards or text), in order; returns the tokens and the text bytes
/// they came from (0 for shards).
pub fn tokens_of(files: &[PathBuf], tok: &Tokenizer, tokenizer_name: &str) -> Result<(Vec<u32>, usize)> {
    let eot = tok.special_id("<|endoftext|>");
    let mut out = Vec::new();
    let mut bytes = 0;
    let (shards, texts): (Vec<&PathBuf>, Vec<&PathBuf>) = files.iter().partition(|p| is_shard(p));
    for s in shards {
        let sh = Shard::load(s)?;
        if sh.tokenizer != tokenizer_name {
            bail!("{}: tokenized with `{}`, but the run uses --tokenizer {tokenizer_name}", s.display(), sh.tokenizer);
        }
        sh.check_ids(s, tok.vocab_size())?;
        out.extend(sh.tokens);
    }
    // The same document readers as `data prepare` (text, TinyStories `<|endoftext|>`, .jsonl).
    let mut docs: Vec<String> = Vec::new();
    for p in &texts {
        docs.extend(fmlab_data::documents::read_documents(p).with_context(|| format!("--data {}", p.display()))?);
    }
    let progress = fmlab_progress::bar(docs.len() as u64, "tokenizing documents");
    let encoded: Vec<Vec<u32>> = docs
        .par_iter()
        .map_init(
            || tok.encoder(),
            |e, d| {
                let ids = e.encode(d, &AllowedSpecial::All);
                progress.inc(1);
                ids
            },
        )
        .collect();
    progress.finish();
    for (d, ids) in docs.iter().zip(encoded) {
        bytes += d.len();
        out.extend(ids);
        if let Some(e) = eot {
            out.push(e);
        }
    }
    Ok((out, bytes))
}

/// Splits `--data` into train and validation files by document: with no `--val-data`, the last
/// tenth of the (sorted) files is held out, or, for a single file, its last tenth of tokens.
pub struct Corpus {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub train_files: Vec<PathBuf>,
    pub val_files: Vec<PathBuf>,
}

pub fn load(data: &[PathBuf], val_data: &[PathBuf], tok: &Tokenizer, tokenizer_name: &str) -> Result<Corpus> {
    let files = expand_inputs(data)?;
    if files.is_empty() {
        bail!("--data: no files found");
    }
    if !val_data.is_empty() {
        let vf = expand_inputs(val_data)?;
        let (train, _) = tokens_of(&files, tok, tokenizer_name)?;
        let (val, _) = tokens_of(&vf, tok, tokenizer_name)?;
        return Ok(Corpus { train, val, train_files: files, val_files: vf });
    }
    if files.len() >= 2 {
        let n_val = (files.len() / 10).max(1);
        let (tf, vf) = files.split_at(files.len() - n_val);
        let (train, _) = tokens_of(tf, tok, tokenizer_name)?;
        let (val, _) = tokens_of(vf, tok, tokenizer_name)?;
        return Ok(Corpus { train, val, train_files: tf.to_vec(), val_files: vf.to_vec() });
    }
    let (all, _) = tokens_of(&files, tok, tokenizer_name)?;
    let cut = all.len() - all.len() / 10;
    Ok(Corpus { val: all[cut..].to_vec(), train: all[..cut].to_vec(), train_files: files.clone(), val_files: files })
}

/// Cross-entropy (nats/token) of `val` under the add-one-smoothed unigram distribution of
/// `train`: the loss a model that ignores context would reach.
pub fn unigram_baseline(train: &[u32], val: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![1.0f64; vocab];
    for &t in train {
        counts[t as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    -val.iter().map(|&t| (counts[t as usize] / total).ln()).sum::<f64>() / val.len() as f64
}
