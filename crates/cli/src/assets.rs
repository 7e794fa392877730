//! Where fetched assets live, found from any working directory: `FMLAB_CACHE` if set; else the
//! first of `./.cache/fmlab`, the repository the binary was built in (`<repo>/.cache/fmlab`, found
//! from the binary's path: it sits in `<repo>/target/<profile>/`), and `~/.cache/fmlab` that
//! exists. Set once here, in the binary, and passed down.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use fmlab_tokenizer::Tokenizer;

/// FMLAB_CACHE, unless unset or empty.
fn cache_env() -> Option<String> {
    fmlab_settings::string("FMLAB_CACHE").filter(|p| !p.is_empty())
}

/// The places looked in, in order (FMLAB_CACHE alone when it is set).
fn candidates() -> Vec<PathBuf> {
    if let Some(p) = cache_env() {
        return vec![PathBuf::from(p)];
    }
    let mut v = vec![PathBuf::from(".cache/fmlab")];
    // <repo>/target/<profile>/fmlab (or .../deps/ for test binaries): the first ancestor with a
    // Cargo.toml is the repository.
    if let Some(repo) = std::env::current_exe().ok().and_then(|e| e.ancestors().skip(1).find(|a| a.join("Cargo.toml").is_file()).map(|a| a.to_path_buf())) {
        v.push(repo.join(".cache/fmlab"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".cache/fmlab"));
    }
    v
}

/// The first candidate that exists; when none does yet, the second (the binary's repository,
/// where scripts/fetch-assets.sh puts assets, if the binary is in one), else the first.
pub fn cache_dir() -> PathBuf {
    let c = candidates();
    c.iter().find(|p| p.is_dir()).or(c.get(1)).unwrap_or(&c[0]).clone()
}

/// Where `cache_dir` looked, for the error of a missing asset.
pub fn cache_hint() -> String {
    if cache_env().is_some() {
        return format!("FMLAB_CACHE = {}", cache_dir().display());
    }
    let c: Vec<String> = candidates().iter().map(|p| p.display().to_string()).collect();
    format!("looked in {} (the first that exists is used; set FMLAB_CACHE to choose)", c.join(", "))
}

/// Resolves `--tokenizer`: `gpt2` (the real GPT-2 files from the asset cache), or a file in our
/// format (`.fmtok`), a HF `tokenizer.json`, or GPT-2's `encoder.json` (with `vocab.bpe` beside it).
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    if spec == "gpt2" {
        let d = cache_dir().join("gpt2");
        let (enc, bpe) = (d.join("encoder.json"), d.join("vocab.bpe"));
        if !enc.is_file() || !bpe.is_file() {
            bail!(
                "--tokenizer gpt2: GPT-2's vocabulary is not in the asset cache ({} missing; {}); run `scripts/fetch-assets.sh gpt2`",
                if enc.is_file() { bpe.display() } else { enc.display() },
                cache_hint()
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
