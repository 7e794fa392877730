//! Sentence embeddings from a sentence-transformers BERT folder (all-MiniLM-L6-v2's layout:
//! config.json, model.safetensors, a WordPiece tokenizer.json, optionally
//! sentence_bert_config.json): texts → mean-pooled, normalized vectors, batched by length.

use std::path::Path;

use fmlab_nn::NnError;
use fmlab_tokenizer::WordPiece;

use crate::{Bert, BertConfig};

pub struct Embedder {
    pub model: Bert,
    pub tok: WordPiece,
    /// The longest input in tokens (sentence-transformers' max_seq_length, else the positions').
    pub max_len: usize,
}

impl Embedder {
    /// Loads a model folder (every file checked, named in the error).
    pub fn from_dir(dir: &Path) -> Result<Embedder, NnError> {
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            if !dir.join(f).is_file() {
                return Err(NnError::file(&dir.join(f), "missing (a model folder needs config.json, model.safetensors, tokenizer.json)"));
            }
        }
        let cp = dir.join("config.json");
        let cfg: BertConfig = serde_json::from_str(&std::fs::read_to_string(&cp).map_err(|e| NnError::file(&cp, e))?).map_err(|e| NnError::file(&cp, e))?;
        let tp = dir.join("tokenizer.json");
        let tok = WordPiece::from_hf_json(&tp).map_err(|e| NnError::file(&tp, e))?;
        let wp = dir.join("model.safetensors");
        let model = Bert::load_hf(fmlab_nn::safetensors_io::load(&wp)?, &cfg).map_err(|e| NnError::file(&wp, e))?;
        // sentence-transformers' limit, else the position table's.
        let max_len = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(cfg.max_position_embeddings, |m| m as usize);
        Ok(Embedder { model, tok, max_len })
    }

    pub fn embed(&self, texts: &[String], batch: usize, max_len: usize) -> Vec<Vec<f32>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tok.encode(t, max_len).ids).collect();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let sorted: Vec<Vec<u32>> = order.iter().map(|&i| ids[i].clone()).collect();
        let e = self.model.embed_ids(&sorted, self.tok.pad_id(), batch).to_vec::<f32>();
        let d = self.model.cfg.hidden_size;
        let mut out = vec![Vec::new(); texts.len()];
        for (k, &i) in order.iter().enumerate() {
            out[i] = e[k * d..(k + 1) * d].to_vec();
        }
        out
    }
}
