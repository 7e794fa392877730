//! `fmlab eval clip --checkpoint RUN`: image↔text retrieval of a CLIP run's checkpoint on fresh
//! scenes of its held-out compositions (never seen in training, nor in the run's own
//! evaluations), R@1/5/10 both ways with the chance level; recorded in RUN/evals.jsonl.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use fmlab_data::scenes::{SceneGen, Split};
use fmlab_models::clip::Clip;
use fmlab_train::clip::ClipMeta;

#[derive(Args)]
pub struct EvalClipArgs {
    /// A `train clip` run folder (or its checkpoint folder).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Held-out scenes to rank among (≥ 10).
    #[arg(long, default_value_t = 1000)]
    scenes: usize,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(a: EvalClipArgs) -> Result<()> {
    if a.scenes < 10 {
        bail!("--scenes {}: must be at least 10", a.scenes);
    }
    let device = crate::device::resolve(&a.device)?;
    let inner = a.checkpoint.join("checkpoint");
    let dir = if inner.is_dir() { inner } else { a.checkpoint.clone() };
    let (ck, meta): (PathBuf, ClipMeta) = fmlab_train::checkpoint::open(&dir).with_context(|| format!("--checkpoint {} (a `train clip` run)", a.checkpoint.display()))?;
    let tok = fmlab_tokenizer::Tokenizer::load(&ck.join("tokenizer.fmtok"))?;
    let (model, vb) = fmlab_train::checkpoint::load_model::<Clip>(&ck, &meta.config.model)?;
    vb.to_device(device);
    let cfg = &meta.config;
    let gen = SceneGen::new(cfg.image, cfg.max_objects, cfg.data_seed);
    // Another stream of test scenes than the training loop's evaluations (seed ^ 0xe7a1).
    let scenes = gen.scenes(Split::Test, cfg.data_seed ^ 0xe7a2, a.scenes);
    let r = fmlab_train::clip::retrieval(&model, &tok, &scenes);
    println!("checkpoint step {} ({}, {:?} loss); {} scenes of the held-out (colour, shape) pairs {:?}", meta.step, cfg.preset, cfg.model.loss, a.scenes, gen.held_out);
    println!("| direction | R@1 | R@5 | R@10 |");
    println!("|---|---|---|---|");
    println!("| image → text | {:.3} | {:.3} | {:.3} |", r.i2t[0], r.i2t[1], r.i2t[2]);
    println!("| text → image | {:.3} | {:.3} | {:.3} |", r.t2i[0], r.t2i[1], r.t2i[2]);
    println!("chance R@1 {:.4} (1 / scenes; scenes that share a caption make it a little higher)", r.chance_r1);
    if let Some(run) = ck.parent().filter(|r| r.join("run.json").is_file()) {
        let rec = serde_json::json!({"kind": "clip retrieval", "scenes": a.scenes, "recall": r, "checkpoint_step": meta.step, "git_commit": crate::checkpoint::git_commit(), "device": device.to_string()});
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(run.join("evals.jsonl"))?;
        writeln!(f, "{rec}")?;
    }
    Ok(())
}
