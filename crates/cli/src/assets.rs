//! Where fetched assets live: `FMLAB_CACHE`, else `./.cache/fmlab` (the repo's cache when run from
//! the repo root), else `~/.cache/fmlab`. Set once here, in the binary, and passed down.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fmlab_tokenizer::Tokenizer;

pub fn cache_dir() -> PathBuf {
    if let Some(p) = fmlab_settings::string("FMLAB_CACHE") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(".cache/fmlab");
    if local.is_dir() {
        return local;
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/fmlab"),
        None => local,
    }
}

/// Resolves `--tokenizer`: `gpt2` (the real GPT-2 files from the asset cache), or a file in our
/// format (`.fmtok`), a HF `tokenizer.json`, or GPT-2's `encoder.json` (with `vocab.bpe` beside it).
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    if spec == "gpt2" {
        let d = cache_dir().join("gpt2");
        let (enc, bpe) = (d.join("encoder.json"), d.join("vocab.bpe"));
        if !enc.is_file() || !bpe.is_file() {
            bail!(
                "--tokenizer gpt2: GPT-2's vocabulary is not in the asset cache ({} missing); run `scripts/fetch-assets.sh gpt2` (or set FMLAB_CACHE)",
                if enc.is_file() { bpe.display() } else { enc.display() }
            );
        }
        return Ok(Tokenizer::from_gpt2_files(&enc, &bpe)?);
    }
    let p = PathBuf::from(spec);
    if !p.is_file() {
        bail!("--tokenizer {spec}: no such file (expected `gpt2`, a .fmtok file or a tokenizer.json)");
    }
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let tok = if name == "encoder.json" {
        Tokenizer::from_gpt2_files(&p, &p.with_file_name("vocab.bpe"))
    } else if name.ends_with(".json") {
        Tokenizer::from_hf_json(&p)
    } else {
        Tokenizer::load(&p)
    };
    tok.with_context(|| format!("--tokenizer {spec}"))
}

/// The id stored in token shards for a `--tokenizer` spec: `gpt2`, or the tokenizer file's name.
pub fn tokenizer_id(spec: &str) -> String {
    if spec == "gpt2" {
        return spec.to_string();
    }
    std::path::Path::new(spec).file_name().map_or_else(|| spec.to_string(), |n| n.to_string_lossy().to_string())
}

/// Expands `--input` paths: files as given, directories recursively (sorted, regular files).
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).with_context(|| format!("--input {}", d.display()))? {
                    let e = e?.path();
                    if e.is_dir() {
                        stack.push(e);
                    } else if e.is_file() && !e.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                        found.push(e);
                    }
                }
            }
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("--input {}: no such file or directory", p.display());
        }
    }
    Ok(out)
}
