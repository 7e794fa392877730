//! `fmlab embed`: sentence embeddings with all-MiniLM-L6-v2 (or any BERT sentence-transformers
//! folder with config.json, model.safetensors and a WordPiece tokenizer.json).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fmlab_models::sentence::Embedder;

#[derive(Args)]
pub struct EmbedArgs {
    /// `minilm` (the asset cache's all-MiniLM-L6-v2) or a model folder.
    #[arg(long, default_value = "minilm")]
    model: String,
    /// One text per line (in addition to TEXT arguments).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Write an (N, dim) f32 .npy in input order; otherwise JSON lines to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Texts per forward pass (≥ 1).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Token limit per text, [CLS]/[SEP] included (default: the model's max_seq_length).
    #[arg(long)]
    max_len: Option<usize>,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N. The model runs in f32
    /// on either.
    #[arg(long, default_value = "auto")]
    device: String,
    texts: Vec<String>,
}

/// `--model`: `minilm` (the asset cache's all-MiniLM-L6-v2) or a model folder.
pub fn load_embedder(spec: &str) -> Result<Embedder> {
    let dir = if spec == "minilm" {
        let d = crate::assets::cache_dir().join("minilm");
        if !d.join("model.safetensors").is_file() {
            bail!("--model minilm: all-MiniLM-L6-v2 is not in the asset cache ({} missing; {}); run `scripts/fetch-assets.sh minilm`", d.display(), crate::assets::cache_hint());
        }
        d
    } else {
        PathBuf::from(spec)
    };
    Embedder::from_dir(&dir).with_context(|| format!("--model {spec}"))
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let mut texts = a.texts.clone();
    if let Some(p) = &a.input {
        let f = std::fs::File::open(p).with_context(|| format!("--input {}", p.display()))?;
        for l in std::io::BufReader::new(f).lines() {
            texts.push(l.with_context(|| format!("--input {}", p.display()))?);
        }
    }
    if texts.is_empty() {
        bail!("nothing to embed: give TEXT arguments or --input FILE");
    }
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    let device = crate::device::resolve(&a.device)?;
    let e = load_embedder(&a.model)?;
    e.model.to_device(device);
    let max_len = a.max_len.unwrap_or(e.max_len);
    if max_len < 2 || max_len > e.model.cfg.max_position_embeddings {
        bail!("--max-len {max_len}: must be in 2..={}", e.model.cfg.max_position_embeddings);
    }
    let t = Instant::now();
    let v = e.embed(&texts, a.batch, max_len);
    let secs = t.elapsed().as_secs_f64();
    let on = if device.is_cuda() { device.to_string() } else { format!("cpu, {} threads", rayon::current_num_threads()) };
    eprintln!("embedded {} texts in {secs:.2}s ({:.1} sentences/s, {on})", texts.len(), texts.len() as f64 / secs);
    match &a.out {
        Some(p) => {
            let flat: Vec<f32> = v.iter().flatten().copied().collect();
            fmlab_index::vectors::write_npy(p, &flat, e.model.cfg.hidden_size)?;
        }
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for (t, x) in texts.iter().zip(&v) {
                writeln!(out, "{}", serde_json::json!({"text": t, "embedding": x}))?;
            }
        }
    }
    Ok(())
}
