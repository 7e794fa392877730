//! `fmlab sample`: generate text from a checkpoint.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use fmlab_tensor::{no_grad, Rng, Tensor};
use fmlab_tokenizer::AllowedSpecial;

use crate::checkpoint;
use crate::sampling::{sample_token, SamplingParams, TextStream};

#[derive(Args)]
pub struct SampleArgs {
    /// A checkpoint directory, or a run folder containing `checkpoint/`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of samples.
    #[arg(long, default_value_t = 1)]
    num: usize,
}

pub fn checkpoint_dir(p: &std::path::Path) -> Result<PathBuf> {
    let inner = p.join("checkpoint");
    checkpoint::resolve(if inner.is_dir() || inner.with_extension("old").is_dir() { &inner } else { p })
}

pub fn run(a: SampleArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        bail!("--top-p {}: must be in (0, 1]", a.top_p);
    }
    if a.temperature < 0.0 {
        bail!("--temperature {}: must be >= 0", a.temperature);
    }
    let dir = checkpoint_dir(&a.checkpoint)?;
    let meta = checkpoint::read_meta(&dir)?;
    let tok = checkpoint::tokenizer_of(&dir, &meta)?;
    let (model, _) = checkpoint::load_model(&dir, &meta)?;
    let eot = tok.special_id("<|endoftext|>");
    let params = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p };
    let mut rng = Rng::new(a.seed);
    let n_ctx = meta.config.model.n_ctx;
    let _ng = no_grad();
    for i in 0..a.num {
        let mut ids: Vec<u32> = tok.encode(&a.prompt, &AllowedSpecial::All);
        if ids.is_empty() {
            // Unconditional samples start from the document separator, as in training.
            ids.push(eot.unwrap_or(0));
        }
        let mut out = std::io::stdout().lock();
        if a.num > 1 {
            writeln!(out, "--- sample {} ---", i + 1)?;
        }
        write!(out, "{}", a.prompt)?;
        let mut text = TextStream::default();
        for _ in 0..a.max_tokens {
            // No KV cache yet: re-run the window of the last n_ctx tokens.
            let ctx = &ids[ids.len().saturating_sub(n_ctx)..];
            let x = Tensor::from_vec(ctx.iter().map(|&t| t as i32).collect(), &[1, ctx.len()]);
            let logits = model.forward(&x, None); // [1, T, V]
            let last = logits.narrow(1, ctx.len() - 1, 1).to_vec::<f32>();
            let next = sample_token(&last, &params, &mut rng);
            if Some(next) == eot {
                break;
            }
            ids.push(next);
            text.push(&tok, next, &mut out)?;
        }
        text.finish(&tok, &mut out)?;
        writeln!(out)?;
    }
    Ok(())
}
