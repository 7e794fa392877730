//! Composite ops, written once from primitives: their gradients come from the primitives'.
//! (The fused ops' own `_slow` twins live beside them under ops/.)

use crate::{DType, Rng, Tensor};

impl Tensor {
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

    /// RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight.
    pub fn rms_norm(&self, weight: &Tensor, eps: f64) -> Tensor {
        let d = self.rank() - 1;
        let ms = self.sqr().mean(&[d], true);
        self.div(&ms.add_scalar(eps).sqrt()).mul(weight)
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

