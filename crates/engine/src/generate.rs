//! The generation loop: prefill the prompt into a KV cache, then one token a step, each through
//! the logits processor, until a stop token, the token budget, the caller, or the context ends.

use std::time::Instant;

use fmlab_tensor::{no_grad, Tensor};

use crate::{CausalLm, Sampler};

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A stop token was drawn (it is not in `tokens`).
    StopToken(u32),
    /// `max_new` tokens were made.
    MaxTokens,
    /// The model's context is full (with `slide: false`).
    Context,
    /// The caller's callback said stop.
    Caller,
}

/// What `generate` made.
#[derive(Debug)]
pub struct Generation {
    /// The new tokens, in order (a stop token not included).
    pub tokens: Vec<u32>,
    pub stop: Stop,
    /// Forward passes that drew a token (the stop token's included).
    pub steps: usize,
    pub seconds: f64,
}

/// Generates after `prompt` (one sequence) with `model`: up to `max_new` tokens, ending early at
/// any of `stops`. `on_token` sees each token as it is made (to stream it) and returns false to
/// stop. With `slide`, a full context keeps going on the last `max_context` tokens (each step
/// then runs the whole window again, as a model without a cache would); without, it ends when the
/// sequence reaches the context.
#[allow(clippy::too_many_arguments)]
pub fn generate(model: &dyn CausalLm, prompt: &[u32], max_new: usize, sampler: &mut Sampler, stops: &[u32], slide: bool, on_token: &mut dyn FnMut(u32) -> bool) -> Generation {
    assert!(!prompt.is_empty(), "generate: an empty prompt");
    let _ng = no_grad();
    let t0 = Instant::now();
    let ctx = model.max_context();
    let mut cache = model.new_cache(1, ctx);
    // The repetition penalty's tokens: each once, in first-seen order.
    let mut in_context = vec![false; model.vocab_size()];
    let mut seen: Vec<u32> = Vec::new();
    let mut note = |t: u32, seen: &mut Vec<u32>| {
        if let Some(s) = in_context.get_mut(t as usize) {
            if !*s {
                *s = true;
                seen.push(t);
            }
        }
    };
    for &t in prompt {
        note(t, &mut seen);
    }
    let mut ids: Vec<u32> = prompt.to_vec();
    let window = |ids: &[u32]| ids[ids.len().saturating_sub(ctx)..].to_vec();
    // The block to run next: the prompt (its last `ctx` tokens), then one token at a time.
    let mut input = window(&ids);
    let (mut tokens, mut steps) = (Vec::new(), 0);
    let stop = loop {
        if tokens.len() >= max_new {
            break Stop::MaxTokens;
        }
        // Without sliding, the context's last position stays free (as `fmlab generate` always
        // had it: a block runs only while the sequence is shorter than the context).
        if !slide && cache.len() + input.len() >= ctx {
            break Stop::Context;
        }
        if cache.len() + input.len() > ctx {
            cache.clear();
            input = window(&ids);
        }
        let x = Tensor::from_vec(input.iter().map(|&t| t as i32).collect(), &[1, input.len()]);
        let logits = model.forward(&x, cache.as_mut()); // [1, T, V]
        let mut last = logits.narrow(1, input.len() - 1, 1).to_vec::<f32>();
        let next = sampler.next(&mut last, &seen);
        steps += 1;
        if stops.contains(&next) {
            break Stop::StopToken(next);
        }
        note(next, &mut seen);
        ids.push(next);
        tokens.push(next);
        input = vec![next];
        if !on_token(next) {
            break Stop::Caller;
        }
    };
    Generation { tokens, stop, steps, seconds: t0.elapsed().as_secs_f64() }
}
