//! BERT encoder (post-LayerNorm, erf GELU, token-type embeddings, padding mask) and the
//! sentence-transformers head: mean pooling over real tokens, then L2 normalization.
//!
//! B = batch, T = tokens, C = hidden size. Keys are HF's `BertModel` names
//! (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...).

use fmlab_nn::{Embedding, LayerNorm, Linear, MultiHeadAttention, NnError, VarBuilder, WeightLayout};
use fmlab_tensor::{Device, AttnMask, DType, Tensor};

/// The fields of HF's `config.json` that the model needs (others are ignored).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "act")]
    pub hidden_act: String,
}

fn eps() -> f64 {
    1e-12
}
fn act() -> String {
    "gelu".into()
}

struct Layer {
    attn: MultiHeadAttention,
    attn_ln: LayerNorm,
    inter: Linear,
    out: Linear,
    out_ln: LayerNorm,
}

pub struct Bert {
    pub cfg: BertConfig,
    word: Embedding,
    pos: Embedding,
    token_type: Embedding,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    /// Every weight, by name (for moving the model to a device).
    pub vars: Vec<(String, Tensor)>,
}

impl Bert {
    pub fn load(vb: &VarBuilder, cfg: &BertConfig) -> Result<Bert, NnError> {
        if cfg.hidden_act != "gelu" {
            return Err(NnError::Other(format!("hidden_act {:?} is not supported (only gelu, the erf form)", cfg.hidden_act)));
        }
        let (c, std) = (cfg.hidden_size, 0.02);
        let e = vb.pp("embeddings");
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp("encoder.layer").pp(i);
            let a = l.pp("attention");
            layers.push(Layer {
                attn: MultiHeadAttention::new_named(&a, ["self.query", "self.key", "self.value", "output.dense"], c, c, cfg.num_attention_heads, true, std)?,
                attn_ln: LayerNorm::new(&a.pp("output.LayerNorm"), c, true, cfg.layer_norm_eps)?,
                inter: Linear::new(&l.pp("intermediate.dense"), c, cfg.intermediate_size, true, WeightLayout::OutIn, std)?,
                out: Linear::new(&l.pp("output.dense"), cfg.intermediate_size, c, true, WeightLayout::OutIn, std)?,
                out_ln: LayerNorm::new(&l.pp("output.LayerNorm"), c, true, cfg.layer_norm_eps)?,
            });
        }
        Ok(Bert {
            word: Embedding::new(&e.pp("word_embeddings"), cfg.vocab_size, c, std)?,
            pos: Embedding::new(&e.pp("position_embeddings"), cfg.max_position_embeddings, c, std)?,
            token_type: Embedding::new(&e.pp("token_type_embeddings"), cfg.type_vocab_size, c, std)?,
            emb_ln: LayerNorm::new(&e.pp("LayerNorm"), c, true, cfg.layer_norm_eps)?,
            layers,
            cfg: cfg.clone(),
            vars: vb.vars(),
        })
    }

    /// Moves every weight to `device` in place (f32 there too: embeddings are compared across
    /// devices to 1e-5).
    pub fn to_device(&self, device: Device) {
        for (_, v) in &self.vars {
            v.move_to_device(device);
        }
    }

    /// Where the weights are.
    pub fn device(&self) -> Device {
        self.word.weight.device()
    }

    /// Loads HF tensors; buffers the model does not use (`position_ids`, the pooler) are dropped,
    /// any other unused tensor is an error.
    pub fn load_hf(mut t: std::collections::HashMap<String, Tensor>, cfg: &BertConfig) -> Result<Bert, NnError> {
        t = crate::hf_strip(t, "bert.");
        t.retain(|k, _| k != "embeddings.position_ids" && !k.starts_with("pooler."));
        let vb = VarBuilder::from_tensors(t, DType::F32);
        let m = Bert::load(&vb, cfg)?;
        let unused = vb.unused_keys();
        if !unused.is_empty() {
            return Err(NnError::Other(format!("checkpoint has tensors the model does not use: {}", unused.join(", "))));
        }
        Ok(m)
    }

    /// ids [B, T] (i32), mask [B, T] (u8, 1 = real token) → hidden states [B, T, C].
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let t = ids.dim(1);
        assert!(t <= self.cfg.max_position_embeddings, "{t} tokens exceed max_position_embeddings {}", self.cfg.max_position_embeddings);
        // Ids stay on the host (the lookups read them there); the mask goes where the scores are.
        let pos = Tensor::arange(t, DType::I32);
        let types = Tensor::zeros(ids.shape(), DType::I32);
        let mut x = self.emb_ln.forward(&self.word.forward(ids).add(&self.pos.forward(&pos)).add(&self.token_type.forward(&types)));
        let m = AttnMask::KeyPadding(mask.to_device(self.device()));
        for l in &self.layers {
            // Post-LN: normalize after each residual add.
            x = l.attn_ln.forward(&x.add(&l.attn.forward(&x, None, &m)));
            x = l.out_ln.forward(&x.add(&l.out.forward(&l.inter.forward(&x).gelu_erf())));
        }
        x
    }

    /// Sentence embeddings [B, C]: mean over real tokens, L2-normalized (sentence-transformers'
    /// Pooling(mean) + Normalize).
    pub fn embed(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let dev = self.device();
        let h = self.forward(ids, mask); // [B, T, C]
        let m = mask.to_dtype(DType::F32).unsqueeze(2).to_device(dev); // [B, T, 1]
        let summed = h.mul(&m).sum(&[1], false); // [B, C]
        let count = m.sum(&[1], false).maximum(&Tensor::scalar(1e-9, DType::F32).to_device(dev)); // [B, 1]
        let mean = summed.div(&count);
        let norm = mean.sqr().sum(&[1], true).sqrt().maximum(&Tensor::scalar(1e-12, DType::F32).to_device(dev));
        mean.div(&norm)
    }

    /// Embeds token-id sequences: pads each batch to its longest sequence with `pad_id`, masks the
    /// padding, returns [N, C] in input order.
    pub fn embed_ids(&self, seqs: &[Vec<u32>], pad_id: u32, batch: usize) -> Tensor {
        let _ng = fmlab_tensor::no_grad();
        let mut outs = Vec::new();
        let progress = fmlab_progress::bar(seqs.len() as u64, "embedding texts");
        for chunk in seqs.chunks(batch.max(1)) {
            let t = chunk.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
            let mut ids = Vec::with_capacity(chunk.len() * t);
            let mut mask = Vec::with_capacity(chunk.len() * t);
            for s in chunk {
                ids.extend(s.iter().map(|&x| x as i32));
                ids.extend(std::iter::repeat_n(pad_id as i32, t - s.len()));
                mask.extend(std::iter::repeat_n(1u8, s.len()));
                mask.extend(std::iter::repeat_n(0u8, t - s.len()));
            }
            let b = chunk.len();
            outs.push(self.embed(&Tensor::from_vec(ids, &[b, t]), &Tensor::from_vec(mask, &[b, t])));
            progress.inc(b as u64);
        }
        Tensor::cat(&outs, 0)
    }
}
