//! Scaled dot-product attention: flash attention where its kernels take the inputs, else the
//! composite `attention_slow` (its twin, and the path for everything flash does not take).

use super::mask::AttnMask;
use crate::Tensor;

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
/// padding) this is flash attention (ops/flash.rs); otherwise the composite `attention_slow`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Tensor {
    if super::flash::supported(q, k, v, mask) {
        return super::flash::flash_attention(q, k, v, mask);
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
