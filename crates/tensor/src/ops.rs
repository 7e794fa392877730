//! Composite ops, written once from primitives: their gradients come from the primitives'.

use crate::{DType, Rng, Tensor};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

impl Tensor {
    /// GELU, tanh approximation (GPT-2's `gelu_new`): the composite twin of the fused `gelu_tanh`.
    pub fn gelu_tanh_slow(&self) -> Tensor {
        // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        let inner = self.add(&self.powf(3.0).scale(0.044715)).scale(SQRT_2_OVER_PI);
        self.mul(&inner.tanh().add_scalar(1.0)).scale(0.5)
    }

    /// GELU, exact: 0.5 x (1 + erf(x / sqrt 2)): the composite twin of the fused `gelu_erf`.
    pub fn gelu_erf_slow(&self) -> Tensor {
        self.mul(&self.scale(std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0)).scale(0.5)
    }

    /// sigmoid via tanh: no overflow at large |x| in forward or backward.
    pub fn sigmoid(&self) -> Tensor {
        self.scale(0.5).tanh().affine(0.5, 0.5)
    }

    pub fn silu(&self) -> Tensor {
        self.mul(&self.sigmoid())
    }

    /// Softmax along `dim`. The max is subtracted for range and detached: softmax is invariant to
    /// the shift, so no gradient flows through it.
    pub fn softmax(&self, dim: usize) -> Tensor {
        let m = self.max(&[dim], true).detach();
        let e = self.sub(&m).exp();
        e.div(&e.sum(&[dim], true))
    }

    pub fn log_softmax(&self, dim: usize) -> Tensor {
        let m = self.max(&[dim], true).detach();
        let shifted = self.sub(&m);
        shifted.sub(&shifted.exp().sum(&[dim], true).log())
    }

    /// LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias (biased var):
    /// the composite twin of the fused `layer_norm`.
    pub fn layer_norm_slow(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Tensor {
        let d = self.rank() - 1;
        let xc = self.sub(&self.mean(&[d], true));
        let var = xc.sqr().mean(&[d], true);
        let y = xc.div(&var.add_scalar(eps).sqrt()).mul(weight);
        match bias {
            Some(b) => y.add(b),
            None => y,
        }
    }

    /// The composite twin of `add_layer_norm`: (self + residual, layer_norm_slow of that).
    pub fn add_layer_norm_slow(&self, residual: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> (Tensor, Tensor) {
        let s = self.add(residual);
        let y = s.layer_norm_slow(weight, bias, eps);
        (s, y)
    }

    /// RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight.
    pub fn rms_norm(&self, weight: &Tensor, eps: f64) -> Tensor {
        let d = self.rank() - 1;
        let ms = self.sqr().mean(&[d], true);
        self.div(&ms.add_scalar(eps).sqrt()).mul(weight)
    }

    /// x · w (+ bias): the composite twin of `linear` (linear.rs), which fuses the bias into the
    /// GEMM on the GPU.
    pub fn linear_slow(&self, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let y = self.matmul(w);
        match bias {
            Some(b) => y.add(b),
            None => y,
        }
    }

    /// The unfused twin of `mlp_gelu`: two `linear`s around a `gelu_tanh`.
    pub fn mlp_gelu_slow(&self, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Tensor {
        self.linear(w1, Some(b1)).gelu_tanh().linear(w2, Some(b2))
    }

    /// The unfused twin of `linear_cross_entropy`: full logits, then the fused cross-entropy.
    pub fn linear_cross_entropy_slow(&self, w: &Tensor, targets: &Tensor, ignore_index: Option<i64>) -> Tensor {
        self.matmul(&w.t()).cross_entropy(targets, ignore_index)
    }

    /// The composite twin of the fused `cross_entropy` (log_softmax + gather), for tests.
    pub fn cross_entropy_slow(&self, targets: &Tensor, ignore_index: Option<i64>) -> Tensor {
        assert_eq!(self.rank(), 2, "cross_entropy: logits must be [N, V], got {:?}", self.shape());
        assert_eq!(targets.shape(), &[self.dim(0)], "cross_entropy: targets {:?} for logits {:?}", targets.shape(), self.shape());
        let t = targets.to_dtype(DType::I32);
        let lsm = self.log_softmax(1);
        match ignore_index {
            None => lsm.gather(&t.unsqueeze(1), 1).mean_all().neg(),
            Some(ig) => {
                let keep = t.ne(&t.scalar_like(ig as f64));
                let safe = keep.where_cond(&t, &t.scalar_like(0.0));
                let picked = lsm.gather(&safe.unsqueeze(1), 1).squeeze(1);
                let keepf = keep.to_dtype(self.dtype());
                let n = keepf.sum_all().item();
                picked.mul(&keepf).sum_all().scale(-1.0 / n)
            }
        }
    }

    /// Inverted dropout: zeroes with probability `p` and scales the rest by 1/(1-p).
    pub fn dropout(&self, p: f64, rng: &mut Rng) -> Tensor {
        if p == 0.0 {
            return self.clone();
        }
        let keep = Tensor::rand_uniform(self.shape(), 0.0, 1.0, self.dtype(), rng).to_device(self.device()).ge(&self.scalar_like(p));
        self.mul(&keep.to_dtype(self.dtype()).scale(1.0 / (1.0 - p)))
    }

    /// Rotary position embedding, "rotate half" convention (Llama/HF): x [.., T, D],
    /// cos/sin [T, D/2]. Pairs are (i, i + D/2).
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Tensor {
        let r = self.rank();
        let d = self.dim(r - 1);
        let h = d / 2;
        let x1 = self.narrow(r - 1, 0, h);
        let x2 = self.narrow(r - 1, h, h);
        // (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
        let o1 = x1.mul(cos).sub(&x2.mul(sin));
        let o2 = x2.mul(cos).add(&x1.mul(sin));
        Tensor::cat(&[o1, o2], r - 1)
    }
}

/// The cos/sin tables for RoPE: [T, D/2] each, angle t * base^(-2i/D).
pub fn rope_tables(t: usize, d: usize, base: f64, offset: usize, dtype: DType) -> (Tensor, Tensor) {
    let h = d / 2;
    let mut c = Vec::with_capacity(t * h);
    let mut s = Vec::with_capacity(t * h);
    for p in offset..offset + t {
        for i in 0..h {
            let inv = base.powf(-((2 * i) as f64) / d as f64);
            let a = p as f64 * inv;
            c.push(a.cos());
            s.push(a.sin());
        }
    }
    (Tensor::from_f64(&c, &[t, h], dtype), Tensor::from_f64(&s, &[t, h], dtype))
}

/// Which keys each query may attend to.
#[derive(Clone, Debug)]
pub enum AttnMask {
    None,
    /// Query i (of T) sees keys j <= i + (S - T): the usual causal mask, also right for a query
    /// block appended after S - T cached keys.
    Causal,
    /// u8 [B, S]: 1 = a real key, 0 = padding.
    KeyPadding(Tensor),
    /// u8 broadcastable to [B, H, T, S]: 1 = may attend.
    Custom(Tensor),
}

/// The u8 [T, S] causal mask on `device`, built once per shape and device (each layer of every
/// step asks for the same one; on a GPU that saves an upload per layer).
fn causal_mask(t: usize, s: usize, device: crate::Device) -> Tensor {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<(usize, usize, crate::Device), Tensor>> = Default::default();
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 32 {
            c.clear(); // generation asks for a new key length every token: keep this small
        }
        c.entry((t, s, device))
            .or_insert_with(|| {
                let off = s - t;
                let m: Vec<u8> = (0..t).flat_map(|i| (0..s).map(move |j| (j <= i + off) as u8)).collect();
                Tensor::from_vec(m, &[t, s]).to_device(device)
            })
            .clone()
    })
}

/// Scaled dot-product attention. q [B, H, T, D], k/v [B, H, S, D] (cross-attention when S != T)
/// → [B, H, T, D]. On a GPU with bf16 inputs and head_dim 32/64/128 (no mask, causal or key
/// padding) this is flash attention (flash.rs); otherwise the composite `attention_slow`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Tensor {
    if crate::flash::supported(q, k, v, mask) {
        return crate::flash::flash_attention(q, k, v, mask);
    }
    attention_slow(q, k, v, mask)
}

/// The composite attention (scores materialized; the fused scaled softmax for no mask or the
/// causal one): flash attention's twin, and the path for everything flash does not take.
pub fn attention_slow(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Tensor {
    assert_eq!(q.rank(), 4, "attention: q must be [B, H, T, D], got {:?}", q.shape());
    let (t, d) = (q.dim(2), q.dim(3));
    let s = k.dim(2);
    let scale = 1.0 / (d as f64).sqrt();
    // No mask or the causal one: the fused scaled softmax (one pass, no mask tensor).
    if matches!(mask, AttnMask::None | AttnMask::Causal) {
        assert!(s >= t || matches!(mask, AttnMask::None), "causal attention with {t} queries and only {s} keys");
        return q.matmul(&k.t()).softmax_scaled(scale, matches!(mask, AttnMask::Causal)).matmul(v);
    }
    let scores = q.matmul(&k.t()).scale(scale); // [B, H, T, S]
    let allowed = match mask {
        AttnMask::None => None,
        AttnMask::Causal => {
            assert!(s >= t, "causal attention with {t} queries and only {s} keys");
            Some(causal_mask(t, s, q.device()))
        }
        AttnMask::KeyPadding(p) => {
            let b = p.dim(0);
            Some(p.reshape(&[b, 1, 1, s]))
        }
        AttnMask::Custom(m) => Some(m.clone()),
    };
    let scores = match allowed {
        Some(m) => m.where_cond(&scores, &scores.scalar_like(f64::NEG_INFINITY)),
        None => scores,
    };
    scores.softmax(3).matmul(v)
}
