//! Text around the engine's generation loop (which works on token ids): streaming tokens out as
//! UTF-8 text, and GPT-2 sampling from a prompt.

use fmlab_engine::{CausalLm, Generation, Sampler};
use fmlab_tokenizer::Tokenizer;

/// Writes generated tokens as text as soon as they form whole UTF-8 characters (a character may
/// span several byte-level tokens); `finish` flushes whatever is left, with replacement chars.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u32>,
}

impl TextStream {
    pub fn push(&mut self, tok: &Tokenizer, id: u32, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        self.pending.push(id);
        let bytes = tok.decode_bytes(&self.pending)?;
        if let Ok(s) = std::str::from_utf8(&bytes) {
            write!(out, "{s}")?;
            out.flush()?;
            self.pending.clear();
        }
        Ok(())
    }

    pub fn finish(&mut self, tok: &Tokenizer, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        if !self.pending.is_empty() {
            write!(out, "{}", tok.decode(&self.pending)?)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// Samples up to `max_tokens` tokens after `prompt` from `model` (the engine's generation loop:
/// KV cache, `sampler`'s logits processor), streaming the prompt and then the text to `out`;
/// ends at `<|endoftext|>`. Past the context the window slides (each step then re-runs the last
/// n_ctx tokens). An empty prompt starts from the document separator, as in training.
pub fn generate(model: &dyn CausalLm, tok: &Tokenizer, prompt: &str, max_tokens: usize, sampler: &mut Sampler, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let eot = tok.special_id("<|endoftext|>");
    let mut ids: Vec<u32> = tok.encode(prompt, &fmlab_tokenizer::AllowedSpecial::All);
    if ids.is_empty() {
        ids.push(eot.unwrap_or(0));
    }
    write!(out, "{prompt}")?;
    stream(model, tok, &ids, max_tokens, sampler, &eot.into_iter().collect::<Vec<_>>(), true, out)?;
    writeln!(out)?;
    Ok(())
}

/// `fmlab_engine::generate` with each token written to `out` as text as soon as it is whole.
#[allow(clippy::too_many_arguments)]
pub fn stream(model: &dyn CausalLm, tok: &Tokenizer, ids: &[u32], max_tokens: usize, sampler: &mut Sampler, stops: &[u32], slide: bool, out: &mut dyn std::io::Write) -> anyhow::Result<Generation> {
    let mut text = TextStream::default();
    let mut failed: Option<anyhow::Error> = None;
    let g = fmlab_engine::generate(model, ids, max_tokens, sampler, stops, slide, &mut |t| match text.push(tok, t, out) {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    text.finish(tok, out)?;
    Ok(g)
}
