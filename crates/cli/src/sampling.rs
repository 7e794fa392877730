//! Choosing the next token from logits: temperature, top-k, top-p (nucleus), seeded.

use fmlab_tensor::Rng;

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = all).
    pub top_p: f64,
}

pub fn sample_token(logits: &[f32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
    if p.temperature <= 0.0 {
        return argmax();
    }
    // (id, logit / T) sorted by descending logit; ties by id for determinism.
    let mut cand: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &v)| (i as u32, v as f64 / p.temperature)).collect();
    cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.truncate(p.top_k);
    }
    let m = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - m).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= z);
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, &q) in probs.iter().enumerate() {
            cum += q;
            if cum >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
    }
    let u = rng.uniform();
    let mut cum = 0.0;
    for (i, &q) in probs.iter().enumerate() {
        cum += q;
        if u < cum {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

/// Writes generated tokens as text as soon as they form whole UTF-8 characters (a character may
/// span several byte-level tokens); `finish` flushes whatever is left, with replacement chars.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u32>,
}

impl TextStream {
    pub fn push(&mut self, tok: &fmlab_tokenizer::Tokenizer, id: u32, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        self.pending.push(id);
        let bytes = tok.decode_bytes(&self.pending)?;
        if let Ok(s) = std::str::from_utf8(&bytes) {
            write!(out, "{s}")?;
            out.flush()?;
            self.pending.clear();
        }
        Ok(())
    }

    pub fn finish(&mut self, tok: &fmlab_tokenizer::Tokenizer, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        if !self.pending.is_empty() {
            write!(out, "{}", tok.decode(&self.pending)?)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// Samples up to `max_tokens` continuations of `prompt` from a GPT-2 (no KV cache: each step
/// re-runs the last n_ctx tokens), streaming the text to `out`; stops at `<|endoftext|>`.
pub fn generate(
    model: &fmlab_models::Gpt2,
    tok: &fmlab_tokenizer::Tokenizer,
    prompt: &str,
    max_tokens: usize,
    params: &SamplingParams,
    rng: &mut Rng,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    use fmlab_tensor::Tensor;
    let eot = tok.special_id("<|endoftext|>");
    let mut ids: Vec<u32> = tok.encode(prompt, &fmlab_tokenizer::AllowedSpecial::All);
    if ids.is_empty() {
        // Unconditional samples start from the document separator, as in training.
        ids.push(eot.unwrap_or(0));
    }
    let n_ctx = model.cfg.n_ctx;
    let _ng = fmlab_tensor::no_grad();
    write!(out, "{prompt}")?;
    let mut text = TextStream::default();
    for _ in 0..max_tokens {
        let ctx = &ids[ids.len().saturating_sub(n_ctx)..];
        let x = Tensor::from_vec(ctx.iter().map(|&t| t as i32).collect(), &[1, ctx.len()]);
        let logits = model.forward(&x, None); // [1, T, V]
        let last = logits.narrow(1, ctx.len() - 1, 1).to_vec::<f32>();
        let next = sample_token(&last, params, rng);
        if Some(next) == eot {
            break;
        }
        ids.push(next);
        text.push(tok, next, out)?;
    }
    text.finish(tok, out)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut rng = Rng::new(0);
        assert_eq!(sample_token(&logits, &SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 }, &mut rng), 1);
        // top-k 1 is greedy whatever the temperature.
        for _ in 0..50 {
            assert_eq!(sample_token(&logits, &SamplingParams { temperature: 5.0, top_k: 1, top_p: 1.0 }, &mut rng), 1);
        }
        // top-p 0.5: tokens 1 and 3 hold ~0.47 and ~0.43, so only {1, 3} can appear.
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[sample_token(&logits, &SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.5 }, &mut rng) as usize] += 1;
        }
        assert!(seen[0] == 0 && seen[2] == 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
        // Plain sampling follows the softmax: token 1 ≈ e^3 / Σ ≈ 0.47.
        let mut ones = 0;
        for _ in 0..20000 {
            ones += (sample_token(&logits, &SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 }, &mut rng) == 1) as usize;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let want = 3f64.exp() / z;
        assert!((ones as f64 / 20000.0 - want).abs() < 0.02, "{} vs {want}", ones as f64 / 20000.0);
    }
}
