//! `fmlab sample`: generate text from a checkpoint.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::checkpoint;
use crate::sampling::generate;
use fmlab_engine::{Sampler, SamplingParams};

#[derive(Args)]
pub struct SampleArgs {
    /// A checkpoint directory, or a run folder containing `checkpoint/`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue (empty: start from the document separator).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Tokens to generate per sample.
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8, allow_hyphen_values = true)]
    temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Keep the smallest set of tokens with this much probability, in (0, 1].
    #[arg(long, default_value_t = 0.95, allow_hyphen_values = true)]
    top_p: f64,
    /// Seed of the draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of samples.
    #[arg(long, default_value_t = 1)]
    num: usize,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Activations: auto (bf16 mixed precision on a GPU, fp32 on the CPU), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    precision: String,
}

/// `SampleArgs` checked, before any weights are read.
struct Sample {
    dir: PathBuf,
    meta: checkpoint::Meta,
    params: SamplingParams,
    device: fmlab_tensor::Device,
    precision: fmlab_tensor::DType,
}

impl SampleArgs {
    fn validate(&self) -> Result<Sample> {
        let params = SamplingParams { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed, ..Default::default() };
        params.check().map_err(anyhow::Error::msg)?;
        let (dir, meta) = checkpoint::open_arg(&self.checkpoint)?;
        let device = crate::device::resolve(&self.device)?;
        let precision = crate::device::precision(&self.precision, device)?;
        Ok(Sample { dir, meta, params, device, precision })
    }
}

pub fn run(a: SampleArgs) -> Result<()> {
    let Sample { dir, meta, params, device, precision } = a.validate()?;
    let tok = checkpoint::tokenizer_of(&dir, &meta)?;
    let model = checkpoint::load_model_on(&dir, &meta, device, precision)?;
    // One sampler for every sample: its draws continue from one to the next.
    let mut sampler = Sampler::new(params);
    let mut out = std::io::stdout().lock();
    for i in 0..a.num {
        if a.num > 1 {
            writeln!(out, "--- sample {} ---", i + 1)?;
        }
        generate(&model, &tok, &a.prompt, a.max_tokens, &mut sampler, &mut out)?;
    }
    Ok(())
}
