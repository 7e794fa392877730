//! `fmlab clip search --checkpoint RUN --index I "a red circle"`: the k images of the index whose
//! embeddings are closest (cosine) to the text's.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use fmlab_index::{file, Value};

#[derive(Args)]
pub struct SearchArgs {
    /// The `train clip` run whose image tower built the index.
    #[arg(long)]
    checkpoint: PathBuf,
    /// An index from `fmlab clip index`.
    #[arg(long)]
    index: PathBuf,
    /// Images to return (≥ 1).
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The text to search for.
    text: String,
}

pub fn run(a: SearchArgs) -> Result<()> {
    if a.k == 0 {
        bail!("--k 0: must be at least 1");
    }
    if a.text.trim().is_empty() {
        bail!("the search text is empty");
    }
    let device = crate::device::resolve(&a.device)?;
    let (h, payloads) = file::load(&a.index)?;
    let (clip, tok, _) = super::load(&a.checkpoint, device)?;
    if h.dim() != clip.cfg.embed {
        bail!("--index {}: {}-d vectors, but this CLIP embeds in {} dimensions (built by another run?)", a.index.display(), h.dim(), clip.cfg.embed);
    }
    let q = fmlab_train::clip::embed_text(&clip, &tok, &a.text);
    println!("| rank | image | cosine distance |");
    println!("|---|---|---|");
    for (r, (id, d)) in h.search(&q, a.k, (4 * a.k).max(64), None).into_iter().enumerate() {
        let name = payloads.as_ref().and_then(|p| match p[id as usize].get("file") {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        });
        println!("| {} | {} | {d:.4} |", r + 1, name.unwrap_or_else(|| format!("#{id}")));
    }
    Ok(())
}
