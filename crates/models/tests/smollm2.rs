//! SmolLM2-135M-Instruct from its GGUF against transformers loading the same GGUF (fixture from
//! tools/make_smollm2_fixture.py): tokenizer ids, last-position logits, 64 greedy tokens, and the
//! KV-cache path against the no-cache path.
//!
//! Logit tolerance: both sides run f32 on identical dequantized weights; they differ only in
//! summation order over 30 layers. 2e-3 · max(1, |logit|) covers that with margin (measured:
//! see the eprintln); a real bug (wrong RoPE, GQA mapping, un-permutation) moves logits by units.

use std::path::PathBuf;

use fmlab_models::llama::{tokenizer_from_gguf, KvCache, Llama};
use fmlab_nn::gguf::Gguf;
use fmlab_tensor::Tensor;
use fmlab_tokenizer::AllowedSpecial;

fn gguf_path() -> PathBuf {
    std::env::var_os("FMLAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fmlab")).join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2.json")).unwrap()).unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

fn last_logits(logits: &Tensor) -> Vec<f32> {
    let t = logits.dim(1);
    logits.narrow(1, t - 1, 1).to_vec::<f32>()
}

#[test]
fn smollm2_tokenizer_logits_and_greedy_generation_match_transformers() {
    let g = Gguf::open(&gguf_path()).unwrap_or_else(|e| panic!("{e}; run scripts/fetch-assets.sh smollm2"));
    let fx = fixture();
    let tok = tokenizer_from_gguf(&g).unwrap();
    let texts: Vec<String> = serde_json::from_value(fx["texts"].clone()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(fx["ids"].clone()).unwrap();
    assert!(texts.len() >= 200);
    for (t, w) in texts.iter().zip(&want) {
        assert_eq!(&tok.encode(t, &AllowedSpecial::All), w, "ids of {t:?}");
    }

    let model = Llama::from_gguf(&g).unwrap();
    let _ng = fmlab_tensor::no_grad();
    let want_logits = fmlab_nn::safetensors_io::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2_logits.safetensors").as_ref()).unwrap();
    let prompt_ids: Vec<Vec<u32>> = serde_json::from_value(fx["prompt_ids"].clone()).unwrap();
    let greedy: Vec<Vec<u32>> = serde_json::from_value(fx["greedy"].clone()).unwrap();
    let prompts: Vec<String> = serde_json::from_value(fx["prompts"].clone()).unwrap();
    for (i, ids) in prompt_ids.iter().enumerate() {
        assert_eq!(&tok.encode(&prompts[i], &AllowedSpecial::All), ids);
        let x = Tensor::from_vec(ids.iter().map(|&t| t as i32).collect(), &[1, ids.len()]);
        let mut cache = KvCache::default();
        let got = last_logits(&model.forward(&x, &mut cache));
        let w = want_logits[&format!("logits{i}")].to_vec::<f32>();
        let worst = got.iter().zip(&w).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
        eprintln!("prompt {i}: max scaled logit difference {worst:.2e}");
        assert!(worst < 2e-3, "prompt {i}: logits differ by {worst}");
        // Greedy generation with the cache, one token at a time.
        let mut next = argmax(&got);
        let mut out = vec![next];
        while out.len() < greedy[i].len() {
            let x = Tensor::from_vec(vec![next as i32], &[1, 1]);
            next = argmax(&last_logits(&model.forward(&x, &mut cache)));
            out.push(next);
        }
        assert_eq!(out, greedy[i], "greedy tokens of prompt {i}: got {:?}", tok.decode(&out));
        // The no-cache path (re-running the whole sequence) picks the same tokens.
        let mut seq = ids.clone();
        for step in 0..8 {
            let x = Tensor::from_vec(seq.iter().map(|&t| t as i32).collect(), &[1, seq.len()]);
            let t = argmax(&last_logits(&model.forward(&x, &mut KvCache::default())));
            assert_eq!(t, greedy[i][step], "no-cache step {step}");
            seq.push(t);
        }
    }
}

#[test]
fn unsupported_or_truncated_gguf_is_a_clear_error() {
    let d = std::env::temp_dir().join(format!("fmlab-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let b = std::fs::read(gguf_path()).expect("run scripts/fetch-assets.sh smollm2");
    std::fs::write(d.join("t.gguf"), &b[..b.len() / 2]).unwrap();
    let e = Gguf::open(&d.join("t.gguf")).err().unwrap().to_string();
    assert!(e.contains("t.gguf") && e.contains("truncated"), "{e}");
    std::fs::write(d.join("x.gguf"), b"GGUF\x09\x00\x00\x00").unwrap();
    let e = Gguf::open(&d.join("x.gguf")).err().unwrap().to_string();
    assert!(e.contains("version 9"), "{e}");
    // Rewrite one tensor's type to Q4_K (12): loading it must name the type, not misread bytes.
    let g = Gguf::open(&gguf_path()).unwrap();
    let name = b"blk.0.attn_q.weight";
    let pos = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let mut m = b.clone();
    let type_at = pos + 4 + 2 * 8; // n_dims u32, two u64 dims
    m[type_at..type_at + 4].copy_from_slice(&12u32.to_le_bytes());
    std::fs::write(d.join("q.gguf"), &m).unwrap();
    let e = fmlab_nn::gguf::Gguf::open(&d.join("q.gguf")).and_then(|g| g.tensor("blk.0.attn_q.weight")).err().unwrap().to_string();
    assert!(e.contains("Q4_K"), "{e}");
    assert!(g.tensor("blk.0.attn_q.weight").is_ok());
    // No tokenizer in the file: rename the key that names its model.
    let key = b"tokenizer.ggml.model";
    let p = b.windows(key.len()).position(|w| w == key).unwrap();
    let mut nt = b.clone();
    nt[p + key.len() - 1] = b'X';
    std::fs::write(d.join("nt.gguf"), &nt).unwrap();
    let e = tokenizer_from_gguf(&Gguf::open(&d.join("nt.gguf")).unwrap()).err().unwrap().to_string();
    assert!(e.contains("tokenizer.ggml.model") && e.contains("missing"), "{e}");
}

#[test]
fn dequantization_of_every_supported_block_type() {
    use half::f16;
    // Q8_0: d = 0.5, q = -3..
    let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 3) as u8));
    let v = fmlab_nn::gguf::dequantize(8, &q8, 32);
    assert_eq!(v[0], -1.5);
    assert_eq!(v[31], 14.0);
    // Q4_0 / Q4_1: byte j holds element j (low nibble) and j + 16 (high nibble).
    let mut q40 = f16::from_f32(2.0).to_le_bytes().to_vec();
    q40.extend((0..16).map(|j| (j as u8) | (15 << 4)));
    let v = fmlab_nn::gguf::dequantize(2, &q40, 32);
    assert_eq!((v[0], v[5], v[16]), (-16.0, -6.0, 14.0));
    let mut q41 = f16::from_f32(0.25).to_le_bytes().to_vec();
    q41.extend(f16::from_f32(-1.0).to_le_bytes());
    q41.extend((0..16).map(|j| (j as u8) | (1 << 4)));
    let v = fmlab_nn::gguf::dequantize(3, &q41, 32);
    assert_eq!((v[0], v[4], v[20]), (-1.0, 0.0, -0.75));
    let v = fmlab_nn::gguf::dequantize(1, &f16::from_f32(3.5).to_le_bytes(), 1);
    assert_eq!(v, vec![3.5]);
    let v = fmlab_nn::gguf::dequantize(30, &half::bf16::from_f32(-2.0).to_le_bytes(), 1);
    assert_eq!(v, vec![-2.0]);
}

#[test]
fn chat_template_renders_like_transformers() {
    let g = Gguf::open(&gguf_path()).expect("run scripts/fetch-assets.sh smollm2");
    let t = fmlab_models::chat::ChatTemplate::parse(g.meta("tokenizer.chat_template").unwrap().as_str().unwrap()).unwrap();
    let m = [fmlab_models::chat::Message { role: "user".into(), content: "What is the tallest mountain in the world?".into() }];
    assert_eq!(t.render(&m, true), fixture()["chat_prompt"].as_str().unwrap());
    assert!(fmlab_models::chat::ChatTemplate::parse("{{ messages }}").is_err());
}

#[test]
fn the_same_model_loads_from_an_hf_safetensors_folder() {
    // Export the GGUF-loaded weights as an HF folder (config.json, model.safetensors with `model.`
    // keys, tokenizer.json), load that through the HF path, and require identical logits and ids.
    let g = Gguf::open(&gguf_path()).expect("run scripts/fetch-assets.sh smollm2");
    let m = Llama::from_gguf(&g).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    let d = std::env::temp_dir().join(format!("fmlab-hf-llama-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let named: Vec<(String, Tensor)> = m.vars.iter().map(|(k, v)| (format!("model.{k}"), v.clone())).collect();
    fmlab_nn::safetensors_io::save(&d.join("model.safetensors"), &named, None).unwrap();
    std::fs::write(d.join("config.json"), serde_json::to_string(&m.cfg).unwrap()).unwrap();
    tok.save_hf_json(&d.join("tokenizer.json")).unwrap();
    let m2 = Llama::from_hf_dir(&d).unwrap();
    let tok2 = fmlab_tokenizer::Tokenizer::from_hf_json(&d.join("tokenizer.json")).unwrap();
    let text = "In 2024, 3 cats met 12 dogs.";
    let ids = tok.encode(text, &AllowedSpecial::All);
    assert_eq!(tok2.encode(text, &AllowedSpecial::All), ids);
    let _ng = fmlab_tensor::no_grad();
    let x = Tensor::from_vec(ids.iter().map(|&t| t as i32).collect(), &[1, ids.len()]);
    let (a, b) = (m.forward(&x, &mut KvCache::default()), m2.forward(&x, &mut KvCache::default()));
    assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>());
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = Llama::from_hf_dir(&d).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}
