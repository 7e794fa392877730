//! `fmlab generate`: text from a Llama-family model (SmolLM2 from its GGUF, or an HF folder) by
//! the engine's loop — KV cache, temperature / top-k / top-p / min-p / repetition penalty,
//! seeded — streamed as it comes.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use fmlab_models::chat::Message;

use crate::llm::GenArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    gen: GenArgs,
    /// The text to continue (or, with --chat, the user message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let gen = a.gen.validate()?;
    let lm = gen.load()?;
    let prompt = if a.chat {
        let t = lm.template.as_ref().context("--chat: the model has no chat template")?;
        t.render(&[Message { role: "user".into(), content: a.prompt }], true)
    } else {
        a.prompt
    };
    let mut out = std::io::stdout().lock();
    // Steps: the forward passes that drew a token, a drawn stop token among them.
    let g = gen.generate(&lm, &prompt, &mut out)?;
    writeln!(out)?;
    let precision = crate::device::precision_name(lm.model.compute_dtype);
    let on = match lm.model.device() {
        fmlab_tensor::Device::Cpu => format!("cpu, {precision}, {} threads", rayon::current_num_threads()),
        d => format!("{d}, {precision}"),
    };
    eprintln!("{} tokens in {:.2}s ({:.1} tokens/s, prompt + KV cache, {on})", g.steps, g.seconds, g.steps as f64 / g.seconds);
    Ok(())
}
