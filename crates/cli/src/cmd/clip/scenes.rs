//! `fmlab clip scenes --out DIR`: generated scenes as PNGs (000000.png, …) and captions.jsonl
//! (file, split, captions), to look at, or to index with `fmlab clip index`.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use fmlab_data::scenes::{SceneGen, Split};

#[derive(Args)]
pub struct ScenesArgs {
    /// Folder to write to.
    #[arg(long)]
    out: PathBuf,
    /// Scenes to write (≥ 1).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// train (the training compositions) or test (each scene holds a held-out one).
    #[arg(long, default_value = "test")]
    split: String,
    /// The generator's seed (a run's --data-seed reproduces its held-out pairs).
    #[arg(long, default_value_t = 7)]
    data_seed: u64,
}

pub fn run(a: ScenesArgs) -> Result<()> {
    let split = match a.split.as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        s => bail!("--split {s}: expected train or test"),
    };
    if a.n == 0 {
        bail!("--n 0: nothing to write");
    }
    let gen = SceneGen::new(64, 3, a.data_seed);
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let mut lines = String::new();
    let progress = fmlab_progress::bar(a.n as u64, "writing scenes");
    for (i, s) in gen.scenes(split, a.data_seed ^ 0x5ce2e, a.n).iter().enumerate() {
        let name = format!("{i:06}.png");
        s.image.save_png(&a.out.join(&name))?;
        writeln!(lines, "{}", serde_json::json!({"file": name, "split": a.split, "captions": s.captions}))?;
        progress.inc(1);
    }
    fmlab_fs::write_atomic(&a.out.join("captions.jsonl"), lines.as_bytes()).with_context(|| format!("writing {}", a.out.join("captions.jsonl").display()))?;
    eprintln!("wrote {} scenes to {} (held-out (colour, shape) pairs {:?})", a.n, a.out.display(), gen.held_out);
    Ok(())
}
