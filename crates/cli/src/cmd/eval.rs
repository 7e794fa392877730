//! `fmlab eval`: loss, perplexity and bits-per-byte of a checkpoint on held-out text.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use fmlab_tensor::no_grad;

use crate::assets::expand_inputs;
use crate::checkpoint;
use crate::cmd::sample::checkpoint_dir;
use crate::corpus;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text files / directories (or token shards: then bits-per-byte is not reported).
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Window length (default: the model's n_ctx); windows do not overlap.
    #[arg(long)]
    seq: Option<usize>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let dir = checkpoint_dir(&a.checkpoint)?;
    let meta = checkpoint::read_meta(&dir)?;
    let tok = checkpoint::tokenizer_of(&dir, &meta)?;
    let (model, _) = checkpoint::load_model(&dir, &meta)?;
    let seq = a.seq.unwrap_or(meta.config.model.n_ctx);
    if seq == 0 || seq > meta.config.model.n_ctx {
        bail!("--seq {seq}: must be in 1..={}", meta.config.model.n_ctx);
    }
    let files = expand_inputs(&a.data)?;
    let tok_name = if meta.config.tokenizer == "gpt2" { "gpt2".to_string() } else { std::path::Path::new(&meta.config.tokenizer).file_name().unwrap().to_string_lossy().to_string() };
    let (tokens, _) = corpus::tokens_of(&files, &tok, &tok_name)?;
    if tokens.len() < 2 {
        bail!("--data: fewer than 2 tokens to evaluate");
    }
    let _ng = no_grad();
    let mut nats = 0.0;
    let mut n = 0usize;
    let mut predicted: Vec<u32> = Vec::with_capacity(tokens.len());
    for (x, y) in fmlab_data::eval_windows(&tokens, seq) {
        let l = y.numel();
        nats += model.loss(&x, &y, None).item() * l as f64;
        n += l;
        predicted.extend(y.to_vec::<i32>().into_iter().map(|t| t as u32));
    }
    // Bytes of the text the predicted tokens spell (specials such as <|endoftext|> count as
    // their literal text; they are a handful).
    let bytes = tok.decode_bytes(&predicted)?.len();
    let loss = nats / n as f64;
    println!("tokens evaluated  {n}");
    println!("loss (nats/token) {loss:.4}");
    println!("perplexity        {:.3}", loss.exp());
    println!("bits per byte     {:.4}", nats / std::f64::consts::LN_2 / bytes as f64);
    println!("bytes             {bytes}");
    Ok(())
}
