//! GPT-2: learned positions, pre-LayerNorm blocks, GELU (tanh) MLP, tied input/output embeddings.
//!
//! B = batch, T = sequence length, C = n_embd, V = vocabulary, H = heads.
//! Keys follow HF's `GPT2LMHeadModel` without the `transformer.` prefix (`wte.weight`,
//! `h.0.attn.c_attn.weight` [C, 3C] in Conv1D layout, ...); `load_hf` strips the prefix if present.

use fmlab_nn::{cast_like, with_casts, Embedding, LayerNorm, Mlp, MlpKind, MultiHeadAttention, NnError, VarBuilder, WeightLayout};
use fmlab_tensor::{AttnMask, DType, Rng, Tensor};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    /// Maximum sequence length (learned position table size).
    pub n_ctx: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_eps() -> f64 {
    1e-5
}

impl Gpt2Config {
    /// Named presets. `gpt2-mini`: d256 L12 H8 ctx1024, GPT-2 vocabulary (≈22.6M parameters).
    /// `cpu-small`: d128 L4 H4 ctx128 for minutes-long CPU runs (vocabulary from the tokenizer).
    pub fn preset(name: &str) -> Option<Gpt2Config> {
        let c = |n_embd, n_layer, n_head, n_ctx, vocab_size| Gpt2Config { vocab_size, n_ctx, n_embd, n_layer, n_head, dropout: 0.0, layer_norm_eps: 1e-5 };
        Some(match name {
            "gpt2-mini" => c(256, 12, 8, 1024, 50257),
            "cpu-small" => c(128, 4, 4, 128, 50257),
            "cpu-tiny" => c(64, 2, 4, 64, 50257),
            "gpt2" => c(768, 12, 12, 1024, 50257),
            _ => return None,
        })
    }
    pub const PRESETS: &'static [&'static str] = &["gpt2-mini", "cpu-small", "cpu-tiny", "gpt2"];

    /// Parameters with tied embeddings (counted once).
    pub fn num_params(&self) -> usize {
        let (c, l) = (self.n_embd, self.n_layer);
        let block = 2 * 2 * c /* ln_1, ln_2 */ + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c);
        self.vocab_size * c + self.n_ctx * c + l * block + 2 * c
    }

    /// Training FLOPs per token: 6 per parameter-multiply (forward + backward) for the matmul
    /// weights incl. the LM head, plus attention scores and values at context T:
    /// 6·N_matmul + 12·L·C·T (the PaLM appendix B formula).
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let (c, l) = (self.n_embd as f64, self.n_layer as f64);
        let n_matmul = l * 12.0 * c * c + self.vocab_size as f64 * c;
        6.0 * n_matmul + 12.0 * l * c * t as f64
    }

    pub fn check(&self) -> Result<(), String> {
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head));
        }
        if self.vocab_size == 0 || self.n_ctx == 0 || self.n_layer == 0 {
            return Err("vocab_size, n_ctx and n_layer must be positive".into());
        }
        Ok(())
    }
}

pub struct Block {
    ln_1: LayerNorm,
    attn: MultiHeadAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

pub struct Gpt2 {
    pub cfg: Gpt2Config,
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    /// Activation dtype: F32, or BF16 for mixed precision (fp32 master weights, bf16 GEMMs and
    /// activations, fp32 norms and loss). Not part of the architecture: set per run.
    pub compute_dtype: DType,
}

impl Gpt2 {
    /// Builds (initializing or loading, depending on `vb`). GPT-2 init: N(0, 0.02) weights, the
    /// residual projections (`c_proj`) N(0, 0.02/sqrt(2L)), zero biases, unit LayerNorm gains.
    pub fn load(vb: &VarBuilder, cfg: &Gpt2Config) -> Result<Gpt2, NnError> {
        cfg.check().map_err(NnError::Other)?;
        let (c, std) = (cfg.n_embd, 0.02);
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let l = WeightLayout::InOut;
        let wte = Embedding::new(&vb.pp("wte"), cfg.vocab_size, c, std)?;
        let wpe = Embedding::new(&vb.pp("wpe"), cfg.n_ctx, c, std)?;
        let mut h = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let b = vb.pp("h").pp(i);
            h.push(Block {
                ln_1: LayerNorm::new(&b.pp("ln_1"), c, true, cfg.layer_norm_eps)?,
                attn: MultiHeadAttention::new_fused(&b.pp("attn"), c, cfg.n_head, true, l, std, proj_std)?,
                ln_2: LayerNorm::new(&b.pp("ln_2"), c, true, cfg.layer_norm_eps)?,
                mlp: Mlp::new(&b.pp("mlp"), c, 4 * c, MlpKind::GeluTanh, true, l, std, proj_std)?,
            });
        }
        let ln_f = LayerNorm::new(&vb.pp("ln_f"), c, true, cfg.layer_norm_eps)?;
        Ok(Gpt2 { cfg: cfg.clone(), wte, wpe, h, ln_f, compute_dtype: DType::F32 })
    }

    /// Loads HF GPT-2 tensors (with or without the `transformer.` prefix; `lm_head.weight`, if
    /// present, must equal `wte.weight` since the embeddings are tied).
    pub fn load_hf(tensors: std::collections::HashMap<String, Tensor>, cfg: &Gpt2Config, dtype: DType) -> Result<(Gpt2, VarBuilder), NnError> {
        let mut t = crate::hf_strip(tensors, "transformer.");
        // HF stores causal-mask buffers as `h.N.attn.bias`/`masked_bias` in old checkpoints.
        t.retain(|k, _| !k.ends_with(".attn.masked_bias") && !(k.ends_with(".attn.bias") && !k.contains("c_")));
        let lm_head = t.remove("lm_head.weight");
        let vb = VarBuilder::from_tensors(t, dtype);
        let model = Gpt2::load(&vb, cfg)?;
        if let Some(lm) = lm_head {
            if lm.to_vec_f64() != model.wte.weight.to_vec_f64() {
                return Err(NnError::Other("lm_head.weight differs from wte.weight; fmlab's GPT-2 ties them".into()));
            }
        }
        let unused = vb.unused_keys();
        if !unused.is_empty() {
            return Err(NnError::Other(format!("checkpoint has tensors the model does not use: {}", unused.join(", "))));
        }
        Ok((model, vb))
    }

    /// Where the weights are.
    pub fn device(&self) -> fmlab_tensor::Device {
        self.wte.weight.device()
    }

    /// ids [B, T] → logits [B, T, V]. `rng` enables dropout (training); None = eval.
    pub fn forward(&self, ids: &Tensor, rng: Option<&mut Rng>) -> Tensor {
        let (b, t) = (ids.dim(0), ids.dim(1));
        with_casts(&self.matmul_params(), self.compute_dtype, || {
            let x = self.hidden(ids, rng); // [B·T, C]
            // Tied LM head: logits = x · wteᵀ.
            x.matmul(&cast_like(&self.wte.weight, &x).t()).reshape(&[b, t, self.cfg.vocab_size])
        })
    }

    /// The weights and biases the matmuls read (cast to the compute dtype in one batch per step
    /// under mixed precision: fmlab_nn::with_casts): every Linear's, and the tied head's.
    fn matmul_params(&self) -> Vec<Tensor> {
        let mut v = Vec::new();
        for blk in &self.h {
            for l in blk.attn.linears().into_iter().chain(&blk.mlp.lins) {
                v.extend(l.params());
            }
        }
        v.push(self.wte.weight.clone());
        v
    }

    /// ids [B, T] → the final LayerNorm's output [B·T, C], the LM head's input.
    fn hidden(&self, ids: &Tensor, mut rng: Option<&mut Rng>) -> Tensor {
        let (b, t) = (ids.dim(0), ids.dim(1));
        assert!(t <= self.cfg.n_ctx, "sequence of {t} tokens exceeds n_ctx {}", self.cfg.n_ctx);
        // Positions 0..T are wpe's first T rows: a view, not a gather (no ids to upload each step;
        // in the backward, wpe's gradient is the column sum itself, not a scatter of it).
        let pos = self.wpe.weight.narrow(0, 0, t); // [T, C]
        let mut x = self.wte.forward(ids).add(&pos).to_dtype(self.compute_dtype); // [B, T, C]
        let p = self.cfg.dropout;
        let mut drop = |x: Tensor| match rng.as_deref_mut() {
            Some(r) if p > 0.0 => x.dropout(p, r),
            _ => x,
        };
        x = drop(x);
        // Pre-norm blocks: each residual add is fused with the LayerNorm that reads its result
        // (ln_2 of the block, then ln_1 of the next block or ln_f): `h` is the normalized input
        // of the next sublayer, `x` the residual stream.
        let mut h = match self.h.first() {
            Some(blk) => blk.ln_1.forward(&x),
            None => self.ln_f.forward(&x),
        };
        for (i, blk) in self.h.iter().enumerate() {
            let a = drop(blk.attn.forward(&h, None, &AttnMask::Causal));
            let (x1, h2) = blk.ln_2.forward_add(&x, &a);
            let m = drop(blk.mlp.forward(&h2));
            let next = self.h.get(i + 1).map_or(&self.ln_f, |nb| &nb.ln_1);
            (x, h) = next.forward_add(&x1, &m);
        }
        h.reshape(&[b * t, self.cfg.n_embd])
    }

    /// ids [B, T] continuing the tokens in `cache` → logits [B, T, V] (f32), this block's keys
    /// and values appended to `cache` (inference: no dropout). Positions continue from the cache.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut dyn fmlab_nn::KvCache) -> Tensor {
        let (b, t) = (ids.dim(0), ids.dim(1));
        let past = cache.len();
        assert!(past + t <= self.cfg.n_ctx, "{past} cached + {t} new tokens exceed n_ctx {}", self.cfg.n_ctx);
        with_casts(&self.matmul_params(), self.compute_dtype, || {
            let pos = self.wpe.weight.narrow(0, past, t); // [T, C]
            let mut x = self.wte.forward(ids).add(&pos).to_dtype(self.compute_dtype); // [B, T, C]
            let mut h = match self.h.first() {
                Some(blk) => blk.ln_1.forward(&x),
                None => self.ln_f.forward(&x),
            };
            for (i, blk) in self.h.iter().enumerate() {
                let a = blk.attn.forward_cached(&h, cache, i);
                let (x1, h2) = blk.ln_2.forward_add(&x, &a);
                let m = blk.mlp.forward(&h2);
                let next = self.h.get(i + 1).map_or(&self.ln_f, |nb| &nb.ln_1);
                (x, h) = next.forward_add(&x1, &m);
            }
            let h = h.reshape(&[b * t, self.cfg.n_embd]); // [B·T, C]
            h.matmul(&cast_like(&self.wte.weight, &h).t()).reshape(&[b, t, self.cfg.vocab_size]).to_dtype(DType::F32)
        })
    }

    /// Mean next-token cross-entropy of ids [B, T] against targets [B, T] (-100 = ignored), through
    /// the fused classifier (the [B·T, V] logits are never held whole; see tensor/src/ops/classifier.rs).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, rng: Option<&mut Rng>) -> Tensor {
        with_casts(&self.matmul_params(), self.compute_dtype, || {
            let x = self.hidden(ids, rng); // [B·T, C]
            let w = cast_like(&self.wte.weight, &x); // [V, C]
            x.linear_cross_entropy(&w, &targets.reshape(&[targets.numel()]), Some(-100))
        })
    }
}
