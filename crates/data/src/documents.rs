//! Corpora → token streams: documents read from files (plain text, TinyStories-style
//! `<|endoftext|>`-separated text, jsonl with a `"text"` field) and split into train and
//! validation by whole documents, never by lines.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::{ferr, DataError};

/// The documents of one file, by its name: `*.jsonl` → each line's `"text"`; any other file is
/// text, split at `<|endoftext|>` where it has one (TinyStories `.txt`), else one document.
pub fn read_documents(path: &Path) -> Result<Vec<String>, DataError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".jsonl") {
        let f = std::fs::File::open(path).map_err(|e| ferr(path, e))?;
        let mut docs = Vec::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| ferr(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| DataError::Other(format!("{} line {}: not JSON: {e}", path.display(), i + 1)))?;
            let t = v["text"].as_str().ok_or_else(|| DataError::Other(format!("{} line {}: no string field \"text\"", path.display(), i + 1)))?;
            docs.push(t.to_string());
        }
        return Ok(docs);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ferr(path, format!("(not UTF-8 text?) {e}")))?;
    Ok(if text.contains("<|endoftext|>") {
        text.split("<|endoftext|>").map(|d| d.trim_start_matches('\n').to_string()).filter(|d| !d.trim().is_empty()).collect()
    } else {
        vec![text]
    })
}

/// Token streams made from groups of files, each group split into train and validation by whole
/// documents (`prepare`).
pub struct Prepared {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub documents: usize,
    pub val_documents: usize,
    /// Bytes of text read.
    pub bytes: usize,
}

/// Documents → tokens: each group's documents in file order (and order within a file), the last
/// `val_frac` of them held out, tokenized in parallel a batch of 1024 documents at a time
/// (memory bounded by a batch), each followed by `<|endoftext|>` where the tokenizer has it.
pub fn prepare(groups: &[Vec<PathBuf>], tok: &fmlab_tokenizer::Tokenizer, val_frac: f64) -> Result<Prepared, DataError> {
    use rayon::prelude::*;
    let eot = tok.special_id("<|endoftext|>");
    // Documents in file order (and order within a file); the last val_frac of each group's
    // documents are held out.
    let (mut n_docs, mut n_val_docs, mut bytes) = (0usize, 0usize, 0usize);
    let mut train = Vec::new();
    let mut val = Vec::new();
    for group in groups {
        let mut docs: Vec<String> = Vec::new();
        for f in group {
            docs.extend(read_documents(f)?);
        }
        if docs.is_empty() {
            continue;
        }
        let n_val = if val_frac > 0.0 { ((docs.len() as f64 * val_frac).round() as usize).clamp(1, docs.len().saturating_sub(1).max(1)) } else { 0 };
        let n_train = docs.len() - n_val;
        n_docs += docs.len();
        n_val_docs += n_val;
        bytes += docs.iter().map(|d| d.len()).sum::<usize>();
        // Tokenize in parallel, a batch of documents at a time (bounded memory per batch).
        let progress = fmlab_progress::bar(docs.len() as u64, "tokenizing documents");
        for (bi, batch) in docs.chunks(1024).enumerate() {
            let enc: Vec<Vec<u32>> = batch.par_iter().map_init(|| tok.encoder(), |e, d| e.encode(d, &fmlab_tokenizer::AllowedSpecial::All)).collect();
            progress.inc(batch.len() as u64);
            for (j, ids) in enc.into_iter().enumerate() {
                let dst = if bi * 1024 + j < n_train { &mut train } else { &mut val };
                dst.extend(ids);
                if let Some(e) = eot {
                    dst.push(e);
                }
            }
        }
    }
    Ok(Prepared { train, val, documents: n_docs, val_documents: n_val_docs, bytes })
}
