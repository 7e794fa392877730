//! all-MiniLM-L6-v2 against sentence-transformers (fixture from tools/make_minilm_fixture.py):
//! WordPiece ids identical to HF's on 220 sentences, and every sentence embedding with cosine
//! similarity ≥ 0.9999 to the reference. The weights come from the asset cache
//! (`scripts/fetch-assets.sh minilm`); a missing cache fails loudly.

use std::path::PathBuf;

use fmlab_models::{Bert, BertConfig};
use fmlab_tokenizer::WordPiece;

fn model_dir() -> PathBuf {
    std::env::var_os("FMLAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fmlab")).join("minilm")
}

fn fixture() -> serde_json::Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm_tokens.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn wordpiece_ids_match_hf_and_embeddings_match_sentence_transformers() {
    let dir = model_dir();
    let tok = WordPiece::from_hf_json(&dir.join("tokenizer.json")).unwrap_or_else(|e| panic!("{e}; run scripts/fetch-assets.sh minilm"));
    let fx = fixture();
    let max_len = fx["max_seq_length"].as_u64().unwrap() as usize;
    let sentences: Vec<String> = serde_json::from_value(fx["sentences"].clone()).unwrap();
    let want_ids: Vec<Vec<u32>> = serde_json::from_value(fx["ids"].clone()).unwrap();
    assert!(sentences.len() >= 200);
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| tok.encode(s, max_len).ids).collect();
    for (i, (g, w)) in ids.iter().zip(&want_ids).enumerate() {
        assert_eq!(g, w, "token ids of sentence {i} {:?}", sentences[i]);
    }

    let cfg: BertConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let model = Bert::load_hf(fmlab_nn::safetensors_io::load(&dir.join("model.safetensors")).unwrap(), &cfg).unwrap();
    let emb = model.embed_ids(&ids, tok.pad_id(), 16);
    let want = &fmlab_nn::safetensors_io::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm_embeddings.safetensors").as_ref()).unwrap()["embeddings"];
    assert_eq!(emb.shape(), want.shape());
    let (g, w) = (emb.to_vec_f64(), want.to_vec_f64());
    let d = cfg.hidden_size;
    let mut worst = (1.0f64, 0);
    for i in 0..sentences.len() {
        let (a, b) = (&g[i * d..(i + 1) * d], &w[i * d..(i + 1) * d]);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        if cos < worst.0 {
            worst = (cos, i);
        }
    }
    eprintln!("minilm: worst cosine {:.7} (sentence {})", worst.0, worst.1);
    assert!(worst.0 >= 0.9999, "sentence {} {:?}: cosine {}", worst.1, sentences[worst.1], worst.0);
}
