//! The Vision Transformer (Dosovitskiy et al.): an image cut into P × P patches, each patch's
//! pixels a vector projected to d_model (the patch embedding as one matmul over the unfolded
//! patches — the same as a stride-P convolution), learned position embeddings, a [CLS] token or
//! mean pooling, pre-LN blocks (bidirectional attention, GELU-erf MLP), a final LayerNorm.
//! CLIP's image tower, the VLM's frozen vision encoder.

use fmlab_nn::{with_casts, Init, LayerNorm, Linear, Mlp, MlpKind, MultiHeadAttention, NnError, VarBuilder, WeightLayout};
use fmlab_tensor::{AttnMask, DType, Tensor};

/// How the image's token vectors become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pool {
    /// A learned [CLS] token prepended to the patches; its output is the image's.
    Cls,
    /// The mean of the patch tokens' outputs.
    Mean,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    /// Image side in pixels (square images).
    pub image: usize,
    pub patch: usize,
    pub channels: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    pub pool: Pool,
    pub layer_norm_eps: f64,
}

impl VitConfig {
    pub const PRESETS: &'static [&'static str] = &["vit-tiny", "vit-cpu", "vit-fashion"];

    /// `vit-tiny`: d 192, 12 layers, 3 heads on 64 × 64 RGB (8 × 8 patches of 8); `vit-cpu`: the
    /// same images, d 64, 2 layers, 2 heads (CPU runs in CI); `vit-fashion`: 28 × 28 gray in
    /// patches of 4 (49 tokens), d 64, 4 layers, 4 heads.
    pub fn preset(name: &str) -> Option<VitConfig> {
        let c = |image, patch, channels, d: usize, layers, heads| VitConfig { image, patch, channels, d_model: d, layers, heads, mlp_hidden: 4 * d, pool: Pool::Cls, layer_norm_eps: 1e-6 };
        Some(match name {
            "vit-tiny" => c(64, 8, 3, 192, 12, 3),
            "vit-cpu" => c(64, 8, 3, 64, 2, 2),
            "vit-fashion" => c(28, 4, 1, 64, 4, 4),
            _ => return None,
        })
    }

    pub fn n_patches(&self) -> usize {
        (self.image / self.patch).pow(2)
    }

    /// Tokens the blocks see: the patches, and the [CLS] token with `Pool::Cls`.
    pub fn n_tokens(&self) -> usize {
        self.n_patches() + (self.pool == Pool::Cls) as usize
    }

    pub fn check(&self) -> Result<(), String> {
        if self.patch == 0 || self.image % self.patch != 0 {
            return Err(format!("image side {} is not a multiple of the patch {}", self.image, self.patch));
        }
        if self.heads == 0 || self.d_model % self.heads != 0 {
            return Err(format!("d_model {} is not a multiple of {} heads", self.d_model, self.heads));
        }
        if self.channels == 0 || self.layers == 0 {
            return Err("channels and layers must be positive".into());
        }
        Ok(())
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: MultiHeadAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

pub struct Vit {
    pub cfg: VitConfig,
    patch_embed: Linear,
    /// [1, 1, d] with `Pool::Cls`.
    cls: Option<Tensor>,
    /// [n_tokens, d]
    pos: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// Activation dtype (F32, or BF16 for mixed precision), as in Gpt2.
    pub compute_dtype: DType,
}

/// images [B, H, W, C] → patches [B, (H/P)·(W/P), P·P·C], each patch's pixels row by row,
/// channels innermost (the order a stride-P convolution's weight [d, C, P, P] flattens to after
/// moving C last).
pub fn patchify(images: &Tensor, p: usize) -> Tensor {
    let (b, h, w, c) = (images.dim(0), images.dim(1), images.dim(2), images.dim(3));
    assert!(h % p == 0 && w % p == 0, "patchify: {h} × {w} images in patches of {p}");
    images
        .reshape(&[b, h / p, p, w / p, p, c]) // [B, gy, py, gx, px, C]
        .permute(&[0, 1, 3, 2, 4, 5]) // [B, gy, gx, py, px, C]
        .reshape(&[b, (h / p) * (w / p), p * p * c])
}

impl Vit {
    /// Builds (initializing or loading): N(0, 0.02) weights and positions, zero biases, the
    /// residual projections N(0, 0.02/sqrt(2L)), unit LayerNorm gains.
    pub fn load(vb: &VarBuilder, cfg: &VitConfig) -> Result<Vit, NnError> {
        cfg.check().map_err(NnError::Other)?;
        let (d, std) = (cfg.d_model, 0.02);
        let proj_std = std / (2.0 * cfg.layers as f64).sqrt();
        let l = WeightLayout::InOut;
        let patch_embed = Linear::new(&vb.pp("patch_embed"), cfg.patch * cfg.patch * cfg.channels, d, true, l, std)?;
        let cls = match cfg.pool {
            Pool::Cls => Some(vb.get(&[1, 1, d], "cls_token", Init::Normal { std })?),
            Pool::Mean => None,
        };
        let pos = vb.get(&[cfg.n_tokens(), d], "pos_embed", Init::Normal { std })?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let b = vb.pp("blocks").pp(i);
            blocks.push(Block {
                ln_1: LayerNorm::new(&b.pp("ln_1"), d, true, cfg.layer_norm_eps)?,
                attn: MultiHeadAttention::new_fused(&b.pp("attn"), d, cfg.heads, true, l, std, proj_std)?,
                ln_2: LayerNorm::new(&b.pp("ln_2"), d, true, cfg.layer_norm_eps)?,
                mlp: Mlp::new(&b.pp("mlp"), d, cfg.mlp_hidden, MlpKind::GeluErf, true, l, std, proj_std)?,
            });
        }
        let ln_f = LayerNorm::new(&vb.pp("ln_f"), d, true, cfg.layer_norm_eps)?;
        Ok(Vit { cfg: cfg.clone(), patch_embed, cls, pos, blocks, ln_f, compute_dtype: DType::F32 })
    }

    fn matmul_params(&self) -> Vec<Tensor> {
        let mut v = self.patch_embed.params();
        for blk in &self.blocks {
            for l in blk.attn.linears().into_iter().chain(&blk.mlp.lins) {
                v.extend(l.params());
            }
        }
        v
    }

    /// images [B, H, W, C] (f32, normalized) → every token's output after the final LayerNorm,
    /// [B, n_tokens, d] (the [CLS] token first with `Pool::Cls`): what a VLM reads.
    pub fn tokens(&self, images: &Tensor) -> Tensor {
        let c = &self.cfg;
        assert!(
            images.rank() == 4 && images.dim(1) == c.image && images.dim(2) == c.image && images.dim(3) == c.channels,
            "ViT: images must be [B, {0}, {0}, {1}], got {2:?}",
            c.image,
            c.channels,
            images.shape()
        );
        let b = images.dim(0);
        with_casts(&self.matmul_params(), self.compute_dtype, || {
            let x = self.patch_embed.forward(&patchify(images, c.patch).to_dtype(self.compute_dtype)); // [B, N, d]
            let x = match &self.cls {
                Some(cls) => Tensor::cat(&[cls.expand(&[b, 1, c.d_model]).to_dtype(x.dtype()), x], 1), // [B, 1 + N, d]
                None => x,
            };
            let mut x = x.add(&self.pos.to_dtype(x.dtype()));
            for blk in &self.blocks {
                x = x.add(&blk.attn.forward(&blk.ln_1.forward(&x), None, &AttnMask::None));
                x = x.add(&blk.mlp.forward(&blk.ln_2.forward(&x)));
            }
            self.ln_f.forward(&x)
        })
    }

    /// images [B, H, W, C] → one vector per image [B, d] (the [CLS] output, or the patches' mean).
    pub fn forward(&self, images: &Tensor) -> Tensor {
        let t = self.tokens(images);
        match self.cfg.pool {
            Pool::Cls => t.narrow(1, 0, 1).squeeze(1),
            Pool::Mean => t.mean(&[1], false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fmlab_tensor::Rng;

    #[test]
    fn patchify_takes_each_patch_row_by_row_channels_innermost() {
        // [1, 4, 4, 2]: value = 100·y + 10·x + c.
        let v: Vec<f64> = (0..4).flat_map(|y| (0..4).flat_map(move |x| (0..2).map(move |c| (100 * y + 10 * x + c) as f64))).collect();
        let p = patchify(&Tensor::from_f64(&v, &[1, 4, 4, 2], DType::F64), 2).to_vec_f64();
        // 4 patches of 2·2·2 = 8 values; patch 1 is the top-right one (y 0..2, x 2..4).
        assert_eq!(p.len(), 32);
        assert_eq!(&p[8..16], &[20.0, 21.0, 30.0, 31.0, 120.0, 121.0, 130.0, 131.0]);
        assert_eq!(&p[24..32], &[220.0, 221.0, 230.0, 231.0, 320.0, 321.0, 330.0, 331.0]);
    }

    #[test]
    fn forward_shapes_and_gradients_reach_every_parameter() {
        for pool in [Pool::Cls, Pool::Mean] {
            let cfg = VitConfig { image: 8, patch: 4, channels: 3, d_model: 16, layers: 2, heads: 2, mlp_hidden: 32, pool, layer_norm_eps: 1e-6 };
            let vb = VarBuilder::new(DType::F32, 1);
            let vit = Vit::load(&vb, &cfg).unwrap();
            let imgs = Tensor::rand_uniform(&[3, 8, 8, 3], 0.0, 1.0, DType::F32, &mut Rng::new(2));
            assert_eq!(vit.tokens(&imgs).shape(), &[3, cfg.n_tokens(), 16]);
            let y = vit.forward(&imgs);
            assert_eq!(y.shape(), &[3, 16]);
            y.sqr().sum_all().backward();
            for (name, v) in vb.vars() {
                let g = v.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
                assert!(g.to_vec_f64().iter().any(|&x| x != 0.0), "{name}'s gradient is all zero");
            }
            // Images of another shape are refused by name.
            let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vit.forward(&Tensor::zeros(&[1, 9, 9, 3], DType::F32)))).unwrap_err();
            assert!(e.downcast_ref::<String>().is_some_and(|m| m.contains("[B, 8, 8, 3]")));
        }
    }

    /// A finite-difference check of the whole tower in f64 (a few parameters and pixels).
    #[test]
    fn gradients_match_finite_differences() {
        let cfg = VitConfig { image: 4, patch: 2, channels: 1, d_model: 8, layers: 1, heads: 2, mlp_hidden: 16, pool: Pool::Cls, layer_norm_eps: 1e-6 };
        let vb = VarBuilder::new(DType::F64, 3);
        let mut vit = Vit::load(&vb, &cfg).unwrap();
        vit.compute_dtype = DType::F64;
        let img = Tensor::new_var(&Tensor::rand_uniform(&[2, 4, 4, 1], 0.0, 1.0, DType::F64, &mut Rng::new(4)));
        let w = Tensor::rand_uniform(&[2, 8], -1.0, 1.0, DType::F64, &mut Rng::new(5));
        let f = |x: &Tensor| vit.forward(x).mul(&w).sum_all();
        f(&img).backward();
        let g = img.grad().unwrap().to_vec_f64();
        let x0 = img.to_vec_f64();
        let h = 1e-6;
        for i in [0, 5, 17, 31] {
            let at = |d: f64| {
                let mut v = x0.clone();
                v[i] += d;
                f(&Tensor::from_f64(&v, &[2, 4, 4, 1], DType::F64)).item()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((g[i] - fd).abs() < 1e-6 * (1.0 + fd.abs()), "pixel {i}: {} vs finite difference {fd}", g[i]);
        }
    }
}
