//! `fmlab train …`: one trainer per file.

mod clip;
mod gpt;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TrainCmd {
    /// Pre-train a GPT-2 on text files or token shards.
    Gpt(gpt::GptArgs),
    /// Train a CLIP (ViT + BERT) on generated scenes with InfoNCE or SigLIP.
    Clip(clip::ClipArgs),
}

pub fn run(cmd: TrainCmd) -> Result<()> {
    match cmd {
        TrainCmd::Gpt(a) => gpt::run(a),
        TrainCmd::Clip(a) => clip::run(a),
    }
}
