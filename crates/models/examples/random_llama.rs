//! A random-weight Llama as an HF folder (config.json, bf16 model.safetensors), for timing
//! generation at a real model's attention shape without its weights (tokenizer.json comes from
//! `fmlab tokenizer train --out DIR/tokenizer.json`).
//!
//!   cargo run --release -p fmlab-models --example random_llama -- DIR VOCAB HIDDEN INTER LAYERS HEADS KV_HEADS CTX

use fmlab_models::{Llama, LlamaConfig};
use fmlab_nn::VarBuilder;
use fmlab_tensor::{DType, Tensor};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(a.len(), 8, "usage: random_llama DIR VOCAB HIDDEN INTER LAYERS HEADS KV_HEADS CTX");
    let n = |i: usize| a[i].parse::<usize>().unwrap_or_else(|_| panic!("argument {i}: `{}` is not a number", a[i]));
    let cfg = LlamaConfig { vocab_size: n(1), hidden_size: n(2), intermediate_size: n(3), num_hidden_layers: n(4), num_attention_heads: n(5), num_key_value_heads: n(6), rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: n(7), tie_word_embeddings: true };
    let m = Llama::load(&VarBuilder::new(DType::F32, 0), &cfg).expect("a valid config");
    let vars: Vec<(String, Tensor)> = m.vars.iter().map(|(k, t)| (format!("model.{k}"), t.to_dtype(DType::BF16))).collect();
    let dir = std::path::Path::new(&a[0]);
    std::fs::create_dir_all(dir).expect("the output folder");
    fmlab_nn::safetensors_io::save(&dir.join("model.safetensors"), &vars, None).expect("model.safetensors");
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).expect("config.json");
    let params: usize = vars.iter().map(|(_, t)| t.numel()).sum();
    eprintln!("{}: {params} parameters", dir.display());
}
