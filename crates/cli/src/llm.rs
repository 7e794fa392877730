//! What `generate` and `chat` share: the Llama-family model flags (low-level, as typed), their
//! validated form, and loading the model they name.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use fmlab_engine::{Generation, Sampler, SamplingParams};
use fmlab_models::llama::LoadedLlama;
use fmlab_tensor::{DType, Device};
use fmlab_tokenizer::AllowedSpecial;

#[derive(Args, Clone)]
pub struct GenArgs {
    /// `smollm2` (the asset cache's SmolLM2-135M-Instruct GGUF), a llama GGUF file, or an HF folder
    /// (config.json, model.safetensors, tokenizer.json[, tokenizer_config.json with chat_template]).
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7, allow_hyphen_values = true)]
    temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Keep the smallest set of tokens with this much probability, in (0, 1].
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    top_p: f64,
    /// Drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    min_p: f64,
    /// > 1 discourages tokens already in the context (HF's rule: logit / p if positive, × p if not).
    #[arg(long, default_value_t = 1.1, allow_hyphen_values = true)]
    repetition_penalty: f64,
    /// Seed of the draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep going past end-of-sequence tokens (fixed-length runs for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Activations: auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    precision: String,
}

/// `GenArgs` checked: the model file found, the device started, the sampling flags in range.
pub struct Gen {
    /// As named on the command line (for messages).
    pub name: String,
    pub path: PathBuf,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
    pub device: Device,
    pub precision: DType,
}

impl GenArgs {
    pub fn validate(self) -> Result<Gen> {
        let sampling = SamplingParams { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, min_p: self.min_p, repetition_penalty: self.repetition_penalty, seed: self.seed };
        sampling.check().map_err(anyhow::Error::msg)?;
        let device = crate::device::resolve(&self.device)?;
        let precision = crate::device::precision(&self.precision, device)?;
        let path = if self.model == "smollm2" {
            let p = crate::assets::cache_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            if !p.is_file() {
                bail!("--model smollm2: the GGUF is not in the asset cache ({} missing; {}); run `scripts/fetch-assets.sh smollm2`", p.display(), crate::assets::cache_hint());
            }
            p
        } else {
            let p = PathBuf::from(&self.model);
            if !p.exists() {
                bail!("--model {}: no such file or folder (expected `smollm2`, a .gguf file or an HF folder)", self.model);
            }
            p
        };
        Ok(Gen { name: self.model, path, max_tokens: self.max_tokens, sampling, ignore_eos: self.ignore_eos, device, precision })
    }
}

impl Gen {
    /// The model, on the device and precision asked for.
    pub fn load(&self) -> Result<LoadedLlama> {
        let mut lm = LoadedLlama::open(&self.path)?;
        lm.model.to_device(self.device, self.precision);
        Ok(lm)
    }

    /// Generates after `prompt` with `lm`, streaming text to `out`.
    pub fn generate(&self, lm: &LoadedLlama, prompt: &str, out: &mut dyn Write) -> Result<Generation> {
        let ids = lm.tok.encode(prompt, &AllowedSpecial::All);
        let ctx = lm.model.cfg.max_position_embeddings;
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        if ids.len() + 1 > ctx {
            bail!("the prompt is {} tokens; the model's context is {ctx}", ids.len());
        }
        let mut sampler = Sampler::new(self.sampling.clone());
        let stops: &[u32] = if self.ignore_eos { &[] } else { &lm.stops };
        // The context's end stops it (no sliding window for a chat model).
        crate::sampling::stream(&lm.model, &lm.tok, &ids, self.max_tokens, &mut sampler, stops, false, out)
    }
}
