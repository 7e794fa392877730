//! `fmlab clip index --checkpoint RUN --images DIR --out I`: every PNG of DIR (sorted by name)
//! embedded by the run's image tower into an HNSW index (cosine), each vector's payload its
//! file name.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use fmlab_data::images::Image;
use fmlab_index::{file, Hnsw, HnswParams, Metric, Payload, Value};

#[derive(Args)]
pub struct IndexArgs {
    /// A `train clip` run folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// A folder of PNGs of the model's input size.
    #[arg(long)]
    images: PathBuf,
    /// The index file to write.
    #[arg(long)]
    out: PathBuf,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(a: IndexArgs) -> Result<()> {
    let device = crate::device::resolve(&a.device)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.images).map_err(|e| anyhow::anyhow!("--images {}: {e}", a.images.display()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png"))).collect();
    files.sort();
    if files.is_empty() {
        bail!("--images {}: no .png files", a.images.display());
    }
    let (clip, _, _) = super::load(&a.checkpoint, device)?;
    let images: Vec<Image> = files.iter().map(|f| Image::load_png(f)).collect::<Result<_, _>>()?;
    let v = &clip.cfg.vision;
    if let Some((f, im)) = files.iter().zip(&images).find(|(_, im)| (im.width, im.height, im.channels) != (v.image, v.image, v.channels)) {
        bail!("{}: {} × {} with {} channel(s); the model takes {} × {} with {}", f.display(), im.width, im.height, im.channels, v.image, v.image, v.channels);
    }
    let emb = fmlab_train::clip::embed_images(&clip, &images)?;
    let h = Hnsw::build(&emb, clip.cfg.embed, Metric::Cosine, HnswParams { m: 16, ef_construction: 200, seed: 100 });
    let payloads: Vec<Payload> = files.iter().map(|f| [("file".to_string(), Value::Str(f.file_name().unwrap_or_default().to_string_lossy().into_owned()))].into_iter().collect()).collect();
    file::save(&h, Some(&payloads), &a.out)?;
    eprintln!("indexed {} images ({}-d CLIP embeddings) -> {}", files.len(), clip.cfg.embed, a.out.display());
    Ok(())
}
