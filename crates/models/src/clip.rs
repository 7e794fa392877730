//! CLIP: an image tower (ViT) and a text tower (BERT), each pooled and projected into one shared
//! space and L2-normalized, trained so that a batch's matching (image, caption) pairs score
//! highest: symmetric InfoNCE over the scaled cosine matrix, or SigLIP's pairwise sigmoid loss
//! (tensor/src/ops/contrastive.rs; docs/concepts.md derives both gradients).
//!
//! The scale s = e^θ is learned through its logarithm θ (initialised at log(1/0.07), CLIP's
//! τ = 0.07, or log 10 for SigLIP) and clamped at 100; SigLIP adds a learned bias b (init −10).
//! A fixed temperature (the ablation's arms) keeps θ out of the optimizer.

use fmlab_nn::{Init, Linear, NnError, VarBuilder, WeightLayout};
use fmlab_tensor::{DType, Tensor};

use crate::bert::{Bert, BertConfig};
use crate::vit::{Vit, VitConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContrastiveLoss {
    InfoNce,
    Siglip,
}

/// The temperature: learned (from an initial τ) or fixed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Temperature {
    Learnable,
    Fixed(f64),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipConfig {
    pub vision: VitConfig,
    pub text: BertConfig,
    /// The shared embedding width.
    pub embed: usize,
    pub loss: ContrastiveLoss,
    pub temperature: Temperature,
}

/// The largest logit scale (τ ≥ 0.01), as in CLIP.
pub const MAX_SCALE: f64 = 100.0;

pub struct Clip {
    pub cfg: ClipConfig,
    pub vision: Vit,
    pub text: Bert,
    vproj: Linear,
    tproj: Linear,
    /// θ, with s = e^θ: a variable when learnable, a constant otherwise.
    log_scale: Tensor,
    /// SigLIP's bias.
    bias: Option<Tensor>,
}

/// The text tower's input for `caps`: ids [B, max_tokens] (i32; each caption cut at
/// max_tokens, padded with 0) and mask [B, max_tokens] (u8, 1 = a real token).
pub fn encode_captions(tok: &fmlab_tokenizer::Tokenizer, caps: &[&str], max_tokens: usize) -> (Tensor, Tensor) {
    let (mut ids, mut mask) = (Vec::with_capacity(caps.len() * max_tokens), Vec::with_capacity(caps.len() * max_tokens));
    for c in caps {
        let mut v: Vec<i32> = tok.encode(c, &fmlab_tokenizer::AllowedSpecial::None).into_iter().map(|x| x as i32).take(max_tokens).collect();
        let n = v.len();
        v.resize(max_tokens, 0);
        ids.extend(v);
        mask.extend((0..max_tokens).map(|i| (i < n) as u8));
    }
    (Tensor::from_vec(ids, &[caps.len(), max_tokens]), Tensor::from_vec(mask, &[caps.len(), max_tokens]))
}

/// x / ‖x‖ along the last dim.
fn l2_normalize(x: &Tensor) -> Tensor {
    x.div(&x.sqr().sum(&[1], true).add_scalar(1e-12).sqrt())
}

impl Clip {
    pub fn load(vb: &VarBuilder, cfg: &ClipConfig) -> Result<Clip, NnError> {
        if cfg.embed == 0 {
            return Err(NnError::Other("CLIP: embed width 0".into()));
        }
        let vision = Vit::load(&vb.pp("vision"), &cfg.vision)?;
        let text = Bert::load(&vb.pp("text"), &cfg.text)?;
        let vproj = Linear::new(&vb.pp("vision_proj"), cfg.vision.d_model, cfg.embed, false, WeightLayout::InOut, (cfg.vision.d_model as f64).powf(-0.5))?;
        let tproj = Linear::new(&vb.pp("text_proj"), cfg.text.hidden_size, cfg.embed, false, WeightLayout::InOut, (cfg.text.hidden_size as f64).powf(-0.5))?;
        let siglip = cfg.loss == ContrastiveLoss::Siglip;
        let init_tau: f64 = if siglip { 0.1 } else { 0.07 };
        let log_scale = match cfg.temperature {
            Temperature::Learnable => vb.get(&[], "log_scale", Init::Constant((1.0 / init_tau).ln()))?,
            Temperature::Fixed(tau) => {
                if !(tau > 0.0 && tau.is_finite()) {
                    return Err(NnError::Other(format!("CLIP: temperature {tau} must be positive")));
                }
                Tensor::from_f64(&[(1.0 / tau).ln().min(MAX_SCALE.ln())], &[], DType::F32)
            }
        };
        let bias = if siglip { Some(vb.get(&[], "logit_bias", Init::Constant(-10.0))?) } else { None };
        Ok(Clip { cfg: cfg.clone(), vision, text, vproj, tproj, log_scale, bias })
    }

    /// Where the weights are.
    pub fn device(&self) -> fmlab_tensor::Device {
        self.vproj.weight.device()
    }

    /// images [B, H, W, C] → unit vectors [B, embed].
    pub fn image_embeddings(&self, images: &Tensor) -> Tensor {
        l2_normalize(&self.vproj.forward(&self.vision.forward(images)))
    }

    /// ids [B, T] (i32), mask [B, T] (u8, 1 = real token) → unit vectors [B, embed] (the mean
    /// of the real tokens' states, projected).
    pub fn text_embeddings(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let h = self.text.forward(ids, mask); // [B, T, C]
        let m = mask.to_dtype(h.dtype()).unsqueeze(2).to_device(h.device()); // [B, T, 1]
        let pooled = h.mul(&m).sum(&[1], false).div(&m.sum(&[1], false).add_scalar(1e-9)); // [B, C]
        l2_normalize(&self.tproj.forward(&pooled))
    }

    /// The logit scale s = min(e^θ, 100).
    pub fn scale(&self) -> Tensor {
        self.log_scale.exp().minimum(&Tensor::scalar(MAX_SCALE, self.log_scale.dtype()).to_device(self.log_scale.device()))
    }

    /// Pair logits [B, B] of image and text embeddings: s · I Tᵀ (+ b for SigLIP).
    pub fn logits(&self, img: &Tensor, txt: &Tensor) -> Tensor {
        let l = img.matmul(&txt.t()).mul(&self.scale().to_dtype(img.dtype()));
        match &self.bias {
            Some(b) => l.add(&b.to_dtype(l.dtype())),
            None => l,
        }
    }

    /// The batch's contrastive loss (image i's caption is text i).
    pub fn loss(&self, images: &Tensor, ids: &Tensor, mask: &Tensor) -> Tensor {
        let l = self.logits(&self.image_embeddings(images), &self.text_embeddings(ids, mask));
        match self.cfg.loss {
            ContrastiveLoss::InfoNce => l.info_nce(),
            ContrastiveLoss::Siglip => l.siglip_loss(),
        }
    }
}

impl ClipConfig {
    pub const PRESETS: &'static [&'static str] = &["clip-cpu", "clip-tiny", "clip-fashion"];

    /// `clip-cpu`: vit-cpu (d 64, 2 layers, 64 × 64 RGB in patches of 8) and a 2-layer d-64 BERT,
    /// embedding 64 (CPU runs and CI); `clip-tiny`: vit-tiny (d 192, 12 layers) and a 4-layer
    /// d-192 BERT, embedding 128; `clip-fashion`: vit-fashion (28 × 28 gray) and clip-cpu's text
    /// tower. `vocab` is the text tokenizer's, `max_tokens` the longest caption.
    pub fn preset(name: &str, vocab: usize, max_tokens: usize, loss: ContrastiveLoss, temperature: Temperature) -> Option<ClipConfig> {
        let text = |d: usize, layers: usize, heads: usize| BertConfig { vocab_size: vocab, hidden_size: d, num_hidden_layers: layers, num_attention_heads: heads, intermediate_size: 4 * d, max_position_embeddings: max_tokens, type_vocab_size: 1, layer_norm_eps: 1e-12, hidden_act: "gelu".into() };
        let (vision, text, embed) = match name {
            "clip-cpu" => (VitConfig::preset("vit-cpu")?, text(64, 2, 2), 64),
            "clip-tiny" => (VitConfig::preset("vit-tiny")?, text(192, 4, 3), 128),
            "clip-fashion" => (VitConfig::preset("vit-fashion")?, text(64, 2, 2), 64),
            _ => return None,
        };
        Some(ClipConfig { vision, text, embed, loss, temperature })
    }
}
