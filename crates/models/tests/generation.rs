//! The engine's generation loop (KV cache, one token a step) against the naive path (the whole
//! sequence run again every step, no cache, as `fmlab sample` and the Llama cache did before the
//! engine): the same tokens at temperature 0, and with a seed the same draws — for GPT-2 past its
//! context (the window slides) and for a grouped-query Llama.

use fmlab_engine::{generate, CausalLm, Sampler, SamplingParams, Stop};
use fmlab_models::{Gpt2, Gpt2Config, Llama, LlamaConfig};
use fmlab_nn::{ContiguousKvCache, VarBuilder};
use fmlab_tensor::{DType, Tensor};

fn last_row(logits: &Tensor) -> Vec<f32> {
    let t = logits.dim(1);
    logits.narrow(1, t - 1, 1).to_dtype(DType::F32).to_vec::<f32>()
}

/// The naive loop: each step runs the last `ctx` tokens from scratch.
fn naive(step: &dyn Fn(&[u32]) -> Vec<f32>, prompt: &[u32], n: usize, ctx: usize, params: SamplingParams) -> Vec<u32> {
    let _ng = fmlab_tensor::no_grad();
    let mut s = Sampler::new(params);
    let mut ids = prompt.to_vec();
    let mut seen: Vec<u32> = Vec::new();
    for &t in prompt {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let mut last = step(&ids[ids.len().saturating_sub(ctx)..]);
        let next = s.next(&mut last, &seen);
        if !seen.contains(&next) {
            seen.push(next);
        }
        ids.push(next);
        out.push(next);
    }
    out
}

fn ids(x: &[u32]) -> Tensor {
    Tensor::from_vec(x.iter().map(|&t| t as i32).collect(), &[1, x.len()])
}

#[test]
fn gpt2_cached_generation_equals_rerunning_the_window() {
    // n_ctx 16 and 40 new tokens: the window slides for most of them.
    let cfg = Gpt2Config { vocab_size: 96, n_ctx: 16, n_embd: 32, n_layer: 2, n_head: 4, dropout: 0.0, layer_norm_eps: 1e-5 };
    let m = Gpt2::load(&VarBuilder::new(DType::F32, 11), &cfg).unwrap();
    let prompt = [5u32, 17, 42, 3, 88];
    for params in [SamplingParams::default(), SamplingParams { temperature: 0.9, top_k: 20, top_p: 0.9, seed: 7, ..Default::default() }] {
        let want = naive(&|w| last_row(&m.forward(&ids(w), None)), &prompt, 40, cfg.n_ctx, params.clone());
        let g = generate(&m, &prompt, 40, &mut Sampler::new(params.clone()), &[], true, &mut |_| true);
        assert_eq!(g.stop, Stop::MaxTokens);
        assert_eq!(g.tokens, want, "{params:?}");
    }
}

#[test]
fn llama_gqa_cached_generation_equals_the_no_cache_path() {
    // 4 query heads over 2 key/value heads; the context ends the run (no sliding).
    let cfg = LlamaConfig { vocab_size: 120, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 24, tie_word_embeddings: true };
    let m = Llama::load(&VarBuilder::new(DType::F32, 3), &cfg).unwrap();
    let prompt = [1u32, 9, 33, 70, 2, 2];
    let step = |w: &[u32]| last_row(&m.forward(&ids(w), &mut ContiguousKvCache::default()));
    for params in [SamplingParams { repetition_penalty: 1.3, ..Default::default() }, SamplingParams { temperature: 0.8, top_p: 0.95, min_p: 0.05, seed: 3, ..Default::default() }] {
        let g = generate(&m, &prompt, 100, &mut Sampler::new(params.clone()), &[], false, &mut |_| true);
        // It ends when the sequence fills the context: 24 − 6 = 18 new tokens, the last drawn
        // after 23 (the context's last position is never run).
        assert_eq!((g.stop, g.tokens.len()), (Stop::Context, cfg.max_position_embeddings - prompt.len()), "{params:?}");
        let want = naive(&step, &prompt, g.tokens.len(), m.max_context(), params.clone());
        assert_eq!(g.tokens, want, "{params:?}");
    }
}

#[test]
fn stop_tokens_and_the_callback_end_generation() {
    let cfg = Gpt2Config { vocab_size: 96, n_ctx: 16, n_embd: 32, n_layer: 1, n_head: 4, dropout: 0.0, layer_norm_eps: 1e-5 };
    let m = Gpt2::load(&VarBuilder::new(DType::F32, 5), &cfg).unwrap();
    let all = generate(&m, &[1, 2, 3], 8, &mut Sampler::new(SamplingParams::default()), &[], true, &mut |_| true).tokens;
    let stop = all[3];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let g = generate(&m, &[1, 2, 3], 8, &mut Sampler::new(SamplingParams::default()), &[stop], true, &mut |_| true);
    assert_eq!((g.stop, &g.tokens[..]), (Stop::StopToken(stop), &all[..first]));
    let mut n = 0;
    let g = generate(&m, &[1, 2, 3], 8, &mut Sampler::new(SamplingParams::default()), &[], true, &mut |_| {
        n += 1;
        n < 2
    });
    assert_eq!((g.stop, g.tokens.len()), (Stop::Caller, 2));
}
