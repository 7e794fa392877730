//! Llama: RMSNorm, rotary positions (rotate-half, the checkpoint's base), SwiGLU MLP,
//! grouped-query attention, optionally tied embeddings; a KV cache for generation.
//!
//! B = batch, T = new tokens, S = cached + new tokens, C = hidden, H = query heads,
//! Hkv = key/value heads, D = head dim. Keys are HF's `LlamaForCausalLM` names without the
//! `model.` prefix; `from_gguf` maps llama.cpp's names onto them.

use std::collections::HashMap;

use fmlab_nn::gguf::Gguf;
use fmlab_nn::{cached_attention, Embedding, Linear, Mlp, MlpKind, NnError, RmsNorm, VarBuilder, WeightLayout};
use fmlab_tensor::{rope_tables, DType, Device, Tensor};

/// HF's `LlamaConfig` fields (unknown fields in config.json are ignored).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: usize,
    #[serde(default = "rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn rms_eps() -> f64 {
    1e-6
}
fn rope_theta() -> f64 {
    10000.0
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    mlp: Mlp,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    /// Parameters under HF's names (without `model.`), in creation order.
    pub vars: Vec<(String, Tensor)>,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    /// Activations' dtype (f32 masters are cast per use); see `to_device`.
    pub compute_dtype: DType,
}

/// The cache `forward` appends to: nn's contiguous one (any `fmlab_nn::KvCache` will do).
pub type KvCache = fmlab_nn::ContiguousKvCache;

impl Llama {
    pub fn load(vb: &VarBuilder, cfg: &LlamaConfig) -> Result<Llama, NnError> {
        let (c, std) = (cfg.hidden_size, 0.02);
        let kv = cfg.num_key_value_heads * cfg.head_dim();
        let l = WeightLayout::OutIn;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let b = vb.pp("layers").pp(i);
            let a = b.pp("self_attn");
            layers.push(Layer {
                input_norm: RmsNorm::new(&b.pp("input_layernorm"), c, cfg.rms_norm_eps)?,
                q: Linear::new(&a.pp("q_proj"), c, c, false, l, std)?,
                k: Linear::new(&a.pp("k_proj"), c, kv, false, l, std)?,
                v: Linear::new(&a.pp("v_proj"), c, kv, false, l, std)?,
                o: Linear::new(&a.pp("o_proj"), c, c, false, l, std)?,
                post_norm: RmsNorm::new(&b.pp("post_attention_layernorm"), c, cfg.rms_norm_eps)?,
                mlp: Mlp::new(&b.pp("mlp"), c, cfg.intermediate_size, MlpKind::SwiGlu, false, l, std, std)?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(Linear::new(&vb.pp("lm_head"), c, cfg.vocab_size, false, l, std)?) };
        let embed = Embedding::new(&vb.pp("embed_tokens"), cfg.vocab_size, c, std)?;
        let norm = RmsNorm::new(&vb.pp("norm"), c, cfg.rms_norm_eps)?;
        Ok(Llama { embed, layers, norm, lm_head, cfg: cfg.clone(), vars: vb.vars(), compute_dtype: DType::F32 })
    }

    /// Moves every weight to `device` in place and computes in `dtype` from then on (bf16: the
    /// f32 weights cast per use, norms and softmax accumulating in f32 inside their kernels).
    pub fn to_device(&mut self, device: Device, dtype: DType) {
        for (_, v) in &self.vars {
            v.move_to_device(device);
        }
        self.compute_dtype = dtype;
    }

    /// Loads a llama-architecture GGUF (dequantized to f32): config from its metadata, tensors
    /// renamed to HF's, Q/K rows un-permuted (llama.cpp's converter interleaves them for its RoPE).
    pub fn from_gguf(g: &Gguf) -> Result<Llama, NnError> {
        let arch = g.meta("general.architecture")?.as_str().unwrap_or("");
        if arch != "llama" {
            return Err(NnError::Other(format!("GGUF architecture `{arch}` is not llama")));
        }
        let u = |k: &str| -> Result<usize, NnError> { g.meta(&format!("llama.{k}"))?.as_u64().map(|x| x as usize).ok_or_else(|| NnError::Other(format!("llama.{k} is not an integer"))) };
        let f = |k: &str| -> Result<f64, NnError> { g.meta(&format!("llama.{k}"))?.as_f64().ok_or_else(|| NnError::Other(format!("llama.{k} is not a number"))) };
        let n_head = u("attention.head_count")?;
        let n_kv = u("attention.head_count_kv").unwrap_or(n_head);
        let tied = g.info("output.weight").is_none();
        let embd = g.info("token_embd.weight").ok_or_else(|| NnError::MissingKey("token_embd.weight".into()))?;
        let cfg = LlamaConfig {
            vocab_size: embd.shape[0],
            hidden_size: u("embedding_length")?,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: n_head,
            num_key_value_heads: n_kv,
            rms_norm_eps: f("attention.layer_norm_rms_epsilon")?,
            rope_theta: f("rope.freq_base").unwrap_or(10000.0),
            max_position_embeddings: u("context_length")?,
            tie_word_embeddings: tied,
        };
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for info in &g.tensors {
            let x = g.tensor(&info.name)?;
            let hf = match info.name.as_str() {
                "token_embd.weight" => "embed_tokens.weight".to_string(),
                "output_norm.weight" => "norm.weight".to_string(),
                "output.weight" => "lm_head.weight".to_string(),
                n => {
                    let rest = n.strip_prefix("blk.").ok_or_else(|| NnError::Other(format!("unexpected GGUF tensor `{n}`")))?;
                    let (i, field) = rest.split_once('.').unwrap();
                    let f = match field {
                        "attn_norm.weight" => "input_layernorm.weight",
                        "ffn_norm.weight" => "post_attention_layernorm.weight",
                        "attn_q.weight" => "self_attn.q_proj.weight",
                        "attn_k.weight" => "self_attn.k_proj.weight",
                        "attn_v.weight" => "self_attn.v_proj.weight",
                        "attn_output.weight" => "self_attn.o_proj.weight",
                        "ffn_gate.weight" => "mlp.gate_proj.weight",
                        "ffn_up.weight" => "mlp.up_proj.weight",
                        "ffn_down.weight" => "mlp.down_proj.weight",
                        other => return Err(NnError::Other(format!("unexpected GGUF tensor `{n}` ({other})"))),
                    };
                    format!("layers.{i}.{f}")
                }
            };
            let x = if hf.ends_with("q_proj.weight") {
                unpermute(&x, n_head)
            } else if hf.ends_with("k_proj.weight") {
                unpermute(&x, n_kv)
            } else {
                x
            };
            t.insert(hf, x);
        }
        let vb = VarBuilder::from_tensors(t, DType::F32);
        let m = Llama::load(&vb, &cfg)?;
        let unused = vb.unused_keys();
        if !unused.is_empty() {
            return Err(NnError::Other(format!("GGUF has tensors the model does not use: {}", unused.join(", "))));
        }
        Ok(m)
    }

    /// Loads an HF folder: `config.json`, one `model.safetensors` (keys `model.*`, `lm_head.weight`).
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Llama, NnError> {
        let cp = dir.join("config.json");
        let text = std::fs::read_to_string(&cp).map_err(|e| NnError::file(&cp, e))?;
        let mut cfg: LlamaConfig = serde_json::from_str(&text).map_err(|e| NnError::file(&cp, e))?;
        if cfg.num_key_value_heads == 0 {
            cfg.num_key_value_heads = cfg.num_attention_heads;
        }
        let wp = dir.join("model.safetensors");
        if !wp.is_file() && dir.join("model.safetensors.index.json").is_file() {
            return Err(NnError::file(&wp, "sharded checkpoints (model.safetensors.index.json) are not supported yet"));
        }
        let mut t: HashMap<String, Tensor> = crate::hf_strip(fmlab_nn::safetensors_io::load(&wp)?, "model.");
        if cfg.tie_word_embeddings {
            t.remove("lm_head.weight");
        }
        t.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
        let vb = VarBuilder::from_tensors(t, DType::F32);
        let m = Llama::load(&vb, &cfg).map_err(|e| NnError::file(&wp, e))?;
        let unused = vb.unused_keys();
        if !unused.is_empty() {
            return Err(NnError::file(&wp, format!("tensors the model does not use: {}", unused.join(", "))));
        }
        Ok(m)
    }

    /// Where the weights are.
    pub fn device(&self) -> Device {
        self.embed.weight.device()
    }

    /// ids [B, T] → logits [B, T, V], appending this block's keys/values to `cache`.
    pub fn forward(&self, ids: &Tensor, cache: &mut dyn fmlab_nn::KvCache) -> Tensor {
        let (b, t) = (ids.dim(0), ids.dim(1));
        let (h, hkv, d) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim());
        let past = cache.len();
        assert!(past + t <= self.cfg.max_position_embeddings, "{} tokens exceed the context of {}", past + t, self.cfg.max_position_embeddings);
        let dev = self.device();
        let (cos, sin) = rope_tables(t, d, self.cfg.rope_theta, past, self.compute_dtype); // [T, D/2]
        let (cos, sin) = (cos.to_device(dev), sin.to_device(dev));
        let mut x = self.embed.forward(ids).to_dtype(self.compute_dtype); // [B, T, C] (ids stay on the host)
        for (li, l) in self.layers.iter().enumerate() {
            let xn = l.input_norm.forward(&x);
            let q = l.q.forward(&xn).reshape(&[b, t, h, d]).transpose(1, 2).rope(&cos, &sin); // [B, H, T, D]
            let k = l.k.forward(&xn).reshape(&[b, t, hkv, d]).transpose(1, 2).rope(&cos, &sin); // [B, Hkv, T, D]
            let v = l.v.forward(&xn).reshape(&[b, t, hkv, d]).transpose(1, 2); // [B, Hkv, T, D]
            let (k, v) = cache.append(li, &k, &v); // [B, Hkv, S, D], the cache's own buffers
            // GQA: query head i reads key/value head i / (H / Hkv), K and V read in place.
            let y = cached_attention(&q, &k, &v); // [B, H, T, D]
            let y = y.transpose(1, 2).reshape(&[b, t, h * d]); // [B, T, C]
            x = x.add(&l.o.forward(&y));
            x = x.add(&l.mlp.forward(&l.post_norm.forward(&x)));
        }
        let x = self.norm.forward(&x);
        let logits = match &self.lm_head {
            Some(head) => head.forward(&x),
            None => x.matmul(&self.embed.weight.t().to_dtype(x.dtype())),
        };
        logits.to_dtype(DType::F32)
    }
}

/// The byte-level BPE tokenizer stored in a GGUF (`tokenizer.ggml.*`): tokens, merges, and as
/// specials the CONTROL (3) and USER_DEFINED (4) token types. The pre-tokenizer comes from
/// `tokenizer.ggml.pre` (`smollm`: digits split one by one; anything else: GPT-2's).
pub fn tokenizer_from_gguf(g: &Gguf) -> Result<fmlab_tokenizer::Tokenizer, NnError> {
    let strs = |k: &str| -> Result<Vec<String>, NnError> {
        g.meta(k)?.as_array().ok_or_else(|| NnError::Other(format!("{k} is not an array")))?.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| NnError::Other(format!("{k} holds a non-string")))).collect()
    };
    let model = g.meta("tokenizer.ggml.model")?.as_str().unwrap_or("");
    if model != "gpt2" {
        return Err(NnError::Other(format!("tokenizer.ggml.model `{model}` is not supported (only byte-level BPE, `gpt2`)")));
    }
    let tokens = strs("tokenizer.ggml.tokens")?;
    let merges = strs("tokenizer.ggml.merges")?;
    let types: Vec<u64> = match g.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let special: Vec<u32> = types.iter().enumerate().filter(|(_, &t)| t == 3 || t == 4).map(|(i, _)| i as u32).collect();
    let pattern = match g.metadata.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
        Some("smollm") => fmlab_tokenizer::Pattern::Custom(fmlab_tokenizer::pretok::SMOLLM_PATTERN.to_string()),
        _ => fmlab_tokenizer::Pattern::Gpt2,
    };
    fmlab_tokenizer::Tokenizer::from_byte_level_lists(&tokens, &merges, &special, pattern).map_err(|e| NnError::Other(format!("GGUF tokenizer: {e}")))
}

/// Undoes llama.cpp's Q/K row permutation: rows (head, pair, 2) ← (head, 2, pair).
fn unpermute(w: &Tensor, n_head: usize) -> Tensor {
    let (out, inp) = (w.dim(0), w.dim(1));
    let half = out / n_head / 2;
    // [H, D/2, 2, in] → [H, 2, D/2, in]
    w.reshape(&[n_head, half, 2, inp]).transpose(1, 2).contiguous().reshape(&[out, inp])
}

/// A Llama-family model with what generating from it needs: its tokenizer, chat template (if it
/// has one) and stop tokens.
pub struct LoadedLlama {
    pub model: Llama,
    pub tok: fmlab_tokenizer::Tokenizer,
    pub template: Option<crate::chat::ChatTemplate>,
    pub stops: Vec<u32>,
}

impl LoadedLlama {
    /// From a llama GGUF file or an HF folder (config.json, model.safetensors, tokenizer.json[,
    /// tokenizer_config.json with a chat_template]); errors name the file.
    pub fn open(path: &std::path::Path) -> Result<LoadedLlama, NnError> {
        use crate::chat::ChatTemplate;
        let ctx = |e: NnError| match e {
            NnError::File { .. } => e,
            e => NnError::file(path, e),
        };
        if path.is_dir() {
            let model = Llama::from_hf_dir(path)?;
            let tj = path.join("tokenizer.json");
            let tok = fmlab_tokenizer::Tokenizer::from_hf_json(&tj).map_err(|e| NnError::file(&tj, e))?;
            let tc = path.join("tokenizer_config.json");
            let template = std::fs::read_to_string(&tc)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["chat_template"].as_str().map(str::to_string))
                .map(|t| ChatTemplate::parse(&t).map_err(|e| NnError::file(&tc, e)))
                .transpose()?;
            let stops = ["<|endoftext|>", "<|im_end|>", "</s>"].iter().filter_map(|s| tok.special_id(s)).collect();
            return Ok(LoadedLlama { model, tok, template, stops });
        }
        if !path.is_file() {
            return Err(NnError::file(path, "no such file or folder (expected a .gguf file or an HF folder)"));
        }
        let g = Gguf::open(path)?;
        let tok = tokenizer_from_gguf(&g).map_err(ctx)?;
        let model = Llama::from_gguf(&g).map_err(ctx)?;
        let template = match g.metadata.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(t) => Some(ChatTemplate::parse(t).map_err(|e| NnError::file(path, e))?),
            None => None,
        };
        let mut stops: Vec<u32> = g.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()).map(|x| x as u32).into_iter().collect();
        stops.extend(["<|endoftext|>", "<|im_end|>"].iter().filter_map(|s| tok.special_id(s)));
        Ok(LoadedLlama { model, tok, template, stops })
    }
}
