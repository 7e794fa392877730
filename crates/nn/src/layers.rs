//! Layers: plain structs with `forward`, built from a `VarBuilder`.

use fmlab_tensor::{attention, AttnMask, DType, Tensor};

/// Mixed precision without a global mode: parameters (fp32 masters) are cast to the dtype of the
/// activations that reach them, so a model run on bf16 activations does its GEMMs in bf16 and
/// the Cast's backward returns fp32 gradients to the masters. A no-op when the dtypes agree.
/// A parameter in x's dtype (a batched copy inside `with_casts`; see casts.rs).
fn like(p: &Tensor, x: &Tensor) -> Tensor {
    crate::casts::cast_like(p, x)
}

use crate::{Init, NnError, VarBuilder};

/// How a weight matrix is stored. PyTorch's `nn.Linear` keeps [out, in]; GPT-2's `Conv1D` keeps
/// [in, out] — supporting both lets HF checkpoints load without transposing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    OutIn,
    InOut,
}

#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: WeightLayout,
}

impl Linear {
    pub fn new(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool, layout: WeightLayout, std: f64) -> Result<Linear, NnError> {
        let shape = match layout {
            WeightLayout::OutIn => [d_out, d_in],
            WeightLayout::InOut => [d_in, d_out],
        };
        let weight = vb.get(&shape, "weight", Init::Normal { std })?;
        let bias = if bias { Some(vb.get(&[d_out], "bias", Init::Zeros)?) } else { None };
        Ok(Linear { weight, bias, layout })
    }

    /// x [.., in] -> [.., out]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (w, b) = self.params_like(x);
        x.linear(&w, b.as_ref())
    }

    /// The weight as [in, out] and the bias, in x's dtype (16-bit copies of f32 masters: cast
    /// as stored, then viewed transposed, so a batched copy of the stored weight serves).
    fn params_like(&self, x: &Tensor) -> (Tensor, Option<Tensor>) {
        let w = like(&self.weight, x);
        let w = match self.layout {
            WeightLayout::OutIn => w.t(),
            WeightLayout::InOut => w,
        };
        (w, self.bias.as_ref().map(|b| like(b, x)))
    }

    /// The weight and the bias (what `with_casts` should batch).
    pub fn params(&self) -> Vec<Tensor> {
        std::iter::once(self.weight.clone()).chain(self.bias.clone()).collect()
    }
}

#[derive(Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(vb: &VarBuilder, n: usize, d: usize, std: f64) -> Result<Embedding, NnError> {
        Ok(Embedding { weight: vb.get(&[n, d], "weight", Init::Normal { std })? })
    }
    /// ids [..] (i32/u32) -> [.., d]
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let mut shape = ids.shape().to_vec();
        shape.push(self.weight.dim(1));
        self.weight.index_select(&ids.flatten_all(), 0).reshape(&shape)
    }
}

#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: &VarBuilder, d: usize, bias: bool, eps: f64) -> Result<LayerNorm, NnError> {
        let weight = vb.get(&[d], "weight", Init::Ones)?;
        let bias = if bias { Some(vb.get(&[d], "bias", Init::Zeros)?) } else { None };
        Ok(LayerNorm { weight, bias, eps })
    }
    /// Statistics in fp32 for 16-bit inputs; the output has the input's dtype. The fused op
    /// takes fp32 masters with 16-bit activations directly (no cast pass; fp32 gradients).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(&self.weight, self.bias.as_ref(), self.eps)
    }
    /// The pre-norm residual step: (x + r, this LayerNorm of it), fused on the GPU.
    pub fn forward_add(&self, x: &Tensor, r: &Tensor) -> (Tensor, Tensor) {
        x.add_layer_norm(r, &self.weight, self.bias.as_ref(), self.eps)
    }
}

#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(vb: &VarBuilder, d: usize, eps: f64) -> Result<RmsNorm, NnError> {
        Ok(RmsNorm { weight: vb.get(&[d], "weight", Init::Ones)?, eps })
    }
    /// Statistics in fp32 for 16-bit inputs; the output has the input's dtype.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dt = x.dtype();
        if matches!(dt, DType::BF16 | DType::F16) {
            return x.to_dtype(DType::F32).rms_norm(&self.weight.to_dtype(DType::F32), self.eps).to_dtype(dt);
        }
        x.rms_norm(&like(&self.weight, x), self.eps)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// fc → GELU (tanh approximation) → proj: GPT-2.
    GeluTanh,
    /// fc → GELU (erf) → proj: BERT/ViT.
    GeluErf,
    /// (silu(gate) * up) → down: Llama.
    SwiGlu,
}

#[derive(Clone)]
pub struct Mlp {
    pub kind: MlpKind,
    /// GELU: [fc, proj]; SwiGLU: [gate, up, down].
    pub lins: Vec<Linear>,
}

impl Mlp {
    /// Key names: GELU `c_fc`/`c_proj` (GPT-2), SwiGLU `gate_proj`/`up_proj`/`down_proj` (Llama).
    pub fn new(vb: &VarBuilder, d: usize, hidden: usize, kind: MlpKind, bias: bool, layout: WeightLayout, std: f64, proj_std: f64) -> Result<Mlp, NnError> {
        let lins = match kind {
            MlpKind::GeluTanh | MlpKind::GeluErf => vec![
                Linear::new(&vb.pp("c_fc"), d, hidden, bias, layout, std)?,
                Linear::new(&vb.pp("c_proj"), hidden, d, bias, layout, proj_std)?,
            ],
            MlpKind::SwiGlu => vec![
                Linear::new(&vb.pp("gate_proj"), d, hidden, bias, layout, std)?,
                Linear::new(&vb.pp("up_proj"), d, hidden, bias, layout, std)?,
                Linear::new(&vb.pp("down_proj"), hidden, d, bias, layout, proj_std)?,
            ],
        };
        Ok(Mlp { kind, lins })
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.kind {
            MlpKind::GeluTanh => match (self.lins[0].params_like(x), self.lins[1].params_like(x)) {
                // One op: on the GPU the GELU rides on the GEMMs' epilogues (tensor/src/ops/mlp.rs).
                ((w1, Some(b1)), (w2, Some(b2))) => x.mlp_gelu(&w1, &b1, &w2, &b2),
                _ => self.lins[1].forward(&self.lins[0].forward(x).gelu_tanh()),
            },
            MlpKind::GeluErf => self.lins[1].forward(&self.lins[0].forward(x).gelu_erf()),
            MlpKind::SwiGlu => self.lins[2].forward(&self.lins[0].forward(x).silu().mul(&self.lins[1].forward(x))),
        }
    }
}

/// Multi-head attention. Self-attention with a fused QKV projection (GPT-2's `c_attn`), or with
/// separate `q`/`k`/`v` projections, which also serve cross-attention (keys/values from a context).
#[derive(Clone)]
pub struct MultiHeadAttention {
    pub qkv: Option<Linear>,
    pub q: Option<Linear>,
    pub k: Option<Linear>,
    pub v: Option<Linear>,
    pub out: Linear,
    pub n_head: usize,
}

impl MultiHeadAttention {
    /// Its projections (fused or separate, then the output's).
    pub fn linears(&self) -> Vec<&Linear> {
        [&self.qkv, &self.q, &self.k, &self.v].into_iter().flatten().chain(std::iter::once(&self.out)).collect()
    }

    /// GPT-2 layout: `c_attn` [C, 3C] and `c_proj`.
    pub fn new_fused(vb: &VarBuilder, d: usize, n_head: usize, bias: bool, layout: WeightLayout, std: f64, proj_std: f64) -> Result<Self, NnError> {
        assert_eq!(d % n_head, 0, "d_model {d} is not divisible by n_head {n_head}");
        Ok(MultiHeadAttention {
            qkv: Some(Linear::new(&vb.pp("c_attn"), d, 3 * d, bias, layout, std)?),
            q: None,
            k: None,
            v: None,
            out: Linear::new(&vb.pp("c_proj"), d, d, bias, layout, proj_std)?,
            n_head,
        })
    }

    /// Separate projections `q_proj`, `k_proj`, `v_proj`, `o_proj` (keys/values from `d_ctx`).
    pub fn new_separate(vb: &VarBuilder, d: usize, d_ctx: usize, n_head: usize, bias: bool, std: f64) -> Result<Self, NnError> {
        Self::new_named(vb, ["q_proj", "k_proj", "v_proj", "o_proj"], d, d_ctx, n_head, bias, std)
    }

    /// Separate projections under the given key paths (q, k, v, out), e.g. BERT's
    /// `self.query`, `self.key`, `self.value`, `output.dense`.
    pub fn new_named(vb: &VarBuilder, names: [&str; 4], d: usize, d_ctx: usize, n_head: usize, bias: bool, std: f64) -> Result<Self, NnError> {
        assert_eq!(d % n_head, 0, "d_model {d} is not divisible by n_head {n_head}");
        let l = WeightLayout::OutIn;
        Ok(MultiHeadAttention {
            qkv: None,
            q: Some(Linear::new(&vb.pp(names[0]), d, d, bias, l, std)?),
            k: Some(Linear::new(&vb.pp(names[1]), d_ctx, d, bias, l, std)?),
            v: Some(Linear::new(&vb.pp(names[2]), d_ctx, d, bias, l, std)?),
            out: Linear::new(&vb.pp(names[3]), d, d, bias, l, std)?,
            n_head,
        })
    }

    /// Causal self-attention of x [B, T, C] (the tokens after the cache's) over the cache's keys
    /// and values and their own, appended to `cache` as layer `layer`'s.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut dyn crate::KvCache, layer: usize) -> Tensor {
        let (b, t, c) = (x.dim(0), x.dim(1), x.dim(2));
        let (q, k, v) = match &self.qkv {
            Some(qkv) => {
                let y = qkv.forward(x); // [B, T, 3C]
                (y.narrow(2, 0, c), y.narrow(2, c, c), y.narrow(2, 2 * c, c))
            }
            None => (self.q.as_ref().unwrap().forward(x), self.k.as_ref().unwrap().forward(x), self.v.as_ref().unwrap().forward(x)),
        };
        let (k, v) = cache.append(layer, &self.heads(&k), &self.heads(&v)); // [B, H, S, D]
        let y = crate::cached_attention(&self.heads(&q), &k, &v); // [B, H, T, D]
        let y = y.transpose(1, 2).reshape(&[b, t, c]); // [B, T, C]
        self.out.forward(&y)
    }

    /// [B, T, C] -> [B, H, T, C/H]
    fn heads(&self, x: &Tensor) -> Tensor {
        let (b, t, c) = (x.dim(0), x.dim(1), x.dim(2));
        x.reshape(&[b, t, self.n_head, c / self.n_head]).transpose(1, 2)
    }

    /// x [B, T, C]; `context` [B, S, C_ctx] for cross-attention (separate projections only).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, mask: &AttnMask) -> Tensor {
        let (b, t, c) = (x.dim(0), x.dim(1), x.dim(2));
        let (q, k, v) = match (&self.qkv, context) {
            (Some(qkv), None) => {
                let y = qkv.forward(x); // [B, T, 3C]
                (y.narrow(2, 0, c), y.narrow(2, c, c), y.narrow(2, 2 * c, c))
            }
            (Some(_), Some(_)) => panic!("cross-attention needs separate q/k/v projections"),
            (None, ctx) => {
                let kv = ctx.unwrap_or(x);
                (self.q.as_ref().unwrap().forward(x), self.k.as_ref().unwrap().forward(kv), self.v.as_ref().unwrap().forward(kv))
            }
        };
        let y = attention(&self.heads(&q), &self.heads(&k), &self.heads(&v), mask); // [B, H, T, D]
        let y = y.transpose(1, 2).reshape(&[b, t, c]); // [B, T, C]
        self.out.forward(&y)
    }
}
