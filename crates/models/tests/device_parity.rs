//! The inference models (`fmlab generate`'s Llama, `fmlab embed`'s BERT) on the GPU against the
//! same weights on the CPU: small random-weight models (the real checkpoints are too large to
//! carry to the GPU machine in one call; their parity with transformers is checked on the CPU by
//! smollm2.rs and minilm.rs). The GPU tests need a GPU: `scripts/gpu-check.sh run tests` runs
//! them with `--ignored`; the bf16-on-the-CPU test (the compute-dtype plumbing alone) runs in CI.
//!
//! Tolerances: f32 on both devices differs only in summation order (cuBLAS vs the gemm crate):
//! 1e-4 of the logits' scale. bf16 activations (the GPU default for generate) round every
//! activation and GEMM input to 8 mantissa bits, a few roundings deep: 5e-2 of scale.

use fmlab_models::llama::{KvCache, Llama, LlamaConfig};
use fmlab_models::{Bert, BertConfig};
use fmlab_nn::VarBuilder;
use fmlab_tensor::{DType, Device, Tensor};

fn gpu() -> Device {
    let d = Device::Cuda(0);
    d.init().unwrap_or_else(|e| panic!("these tests need a GPU: {e}"));
    d
}

/// max |a - b| / max |b|
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

fn llama() -> Llama {
    // head_dim 64 (the flash kernel's case in bf16), GQA 4 query heads over 2 key/value heads,
    // tied embeddings (SmolLM2's shape, scaled down).
    let cfg = LlamaConfig { vocab_size: 300, hidden_size: 256, intermediate_size: 512, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 128, tie_word_embeddings: true };
    Llama::load(&VarBuilder::new(DType::F32, 7), &cfg).unwrap()
}

/// Logits of a 20-token prompt, then 5 decode steps through the KV cache.
fn run_llama(m: &Llama) -> Vec<Vec<f32>> {
    let _ng = fmlab_tensor::no_grad();
    let mut cache = KvCache::default();
    let ids: Vec<i32> = (0..20).map(|i| (i * 37 % 300) as i32).collect();
    let mut out = vec![m.forward(&Tensor::from_vec(ids, &[1, 20]), &mut cache).to_vec::<f32>()];
    for t in [5, 77, 123, 250, 9] {
        out.push(m.forward(&Tensor::from_vec(vec![t], &[1, 1]), &mut cache).to_vec::<f32>());
    }
    out
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn llama_logits_and_kv_cache_decoding_on_the_gpu_match_the_cpu() {
    let mut m = llama();
    let want = run_llama(&m);
    for (dtype, tol) in [(DType::F32, 1e-4f32), (DType::BF16, 5e-2)] {
        m.to_device(gpu(), dtype);
        assert!(m.device().is_cuda());
        let got = run_llama(&m);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let e = rel(g, w);
            eprintln!("llama {dtype} on the GPU, {}: logits relative error {e:.2e}", if i == 0 { "prompt".to_string() } else { format!("decode step {i}") });
            assert!(e <= tol, "llama {dtype} step {i}: {e:.2e} > {tol:.0e}");
        }
        m.to_device(Device::Cpu, DType::F32);
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn bert_embeddings_on_the_gpu_match_the_cpu() {
    let cfg = BertConfig { vocab_size: 200, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 256, max_position_embeddings: 64, type_vocab_size: 2, layer_norm_eps: 1e-12, hidden_act: "gelu".into() };
    let m = Bert::load(&VarBuilder::new(DType::F32, 3), &cfg).unwrap();
    // Different lengths: padding masks in the batch.
    let seqs: Vec<Vec<u32>> = (0..5).map(|i| (0..(7 + 9 * i)).map(|j| ((i * 31 + j * 7) % 200) as u32).collect()).collect();
    let want = m.embed_ids(&seqs, 0, 8).to_vec::<f32>();
    m.to_device(gpu());
    let got = m.embed_ids(&seqs, 0, 8);
    assert!(got.device().is_cuda());
    let e = rel(&got.to_vec::<f32>(), &want);
    eprintln!("bert f32 on the GPU: embeddings relative error {e:.2e}");
    assert!(e <= 1e-4, "bert embeddings differ by {e:.2e}");
}

#[test]
fn llama_in_bf16_on_the_cpu_tracks_f32() {
    let mut m = llama();
    let want = run_llama(&m);
    m.to_device(Device::Cpu, DType::BF16);
    let got = run_llama(&m);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel(g, w);
        assert!(e <= 5e-2, "llama bf16 on the CPU, step {i}: logits relative error {e:.2e}");
    }
    // The weights stay f32 masters; only the activations changed dtype.
    assert!(m.vars.iter().all(|(_, v)| v.dtype() == DType::F32));
}
