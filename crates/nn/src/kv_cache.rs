//! The KV cache: each layer's keys and values for the tokens a sequence has seen, so that a
//! decode step attends over them without recomputing them. One trait for every cache (this
//! contiguous one; the paged one of the engine builds on it), and attention over a cache with
//! grouped-query heads that never copies K or V.

use fmlab_tensor::{attention, AttnMask, Tensor};

/// Per-layer keys and values [B, Hkv, S, D] of the tokens seen so far.
pub trait KvCache {
    /// Tokens cached (in every layer, between forwards).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The most tokens it can hold without growing (None: no limit of its own).
    fn capacity(&self) -> Option<usize>;
    /// Appends layer `layer`'s keys and values of the new tokens, k, v [B, Hkv, T, D], and
    /// returns that layer's keys and values of all tokens [B, Hkv, S, D] (views where it can).
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor);
    /// Forgets every token (the buffers stay).
    fn clear(&mut self);
}

/// One preallocated buffer per layer for keys and one for values, [B, Hkv, capacity, D]: a step
/// writes its new rows in place and attends over a view of the filled rows — no concatenation,
/// no copy of the past. Made with a capacity (`with_capacity`: the model's context), it never
/// reallocates; `default()` starts empty and doubles when full (tests and one-off forwards).
#[derive(Default)]
pub struct ContiguousKvCache {
    /// (keys, values, rows filled) per layer.
    layers: Vec<Option<(Tensor, Tensor, usize)>>,
    capacity: Option<usize>,
}

impl ContiguousKvCache {
    /// A cache that holds up to `capacity` tokens (buffers are made at the first append, in the
    /// keys' dtype and on their device).
    pub fn with_capacity(capacity: usize) -> ContiguousKvCache {
        ContiguousKvCache { layers: Vec::new(), capacity: Some(capacity) }
    }
}

impl KvCache for ContiguousKvCache {
    fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |l| l.2)
    }

    fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        assert!(k.rank() == 4 && k.shape() == v.shape(), "KV cache: keys {:?} and values {:?} must be [B, Hkv, T, D] alike", k.shape(), v.shape());
        let (b, hkv, t, d) = (k.dim(0), k.dim(1), k.dim(2), k.dim(3));
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let filled = self.layers[layer].as_ref().map_or(0, |l| l.2);
        let need = filled + t;
        if let Some(cap) = self.capacity {
            assert!(need <= cap, "KV cache of {cap} tokens: {filled} cached + {t} new");
        }
        let room = self.layers[layer].as_ref().map_or(0, |l| l.0.dim(2));
        if need > room {
            // Preallocated: the whole capacity at once. Growing: doubling, the filled rows copied.
            let rows = self.capacity.unwrap_or_else(|| need.max(2 * room).max(16));
            let new = || Tensor::zeros_on(&[b, hkv, rows, d], k.dtype(), k.device()); // [B, Hkv, rows, D]
            let (nk, nv) = (new(), new());
            if let Some((pk, pv, n)) = &self.layers[layer] {
                if *n > 0 {
                    nk.write_slice(&pk.narrow(2, 0, *n), 2, 0);
                    nv.write_slice(&pv.narrow(2, 0, *n), 2, 0);
                }
            }
            self.layers[layer] = Some((nk, nv, filled));
        }
        let (kb, vb, n) = self.layers[layer].as_mut().expect("made above");
        assert!(kb.shape()[..2] == [b, hkv] && kb.dim(3) == d && kb.dtype() == k.dtype(), "KV cache layer {layer}: [{b}, {hkv}, _, {d}] {} keys into a cache of {:?} {}", k.dtype(), kb.shape(), kb.dtype());
        kb.write_slice(k, 2, filled);
        vb.write_slice(v, 2, filled);
        *n = need;
        (kb.narrow(2, 0, need), vb.narrow(2, 0, need)) // [B, Hkv, S, D] views
    }

    fn clear(&mut self) {
        for l in self.layers.iter_mut().flatten() {
            l.2 = 0;
        }
    }
}

/// Causal attention of the new queries q [B, H, T, D] over a cache's keys and values
/// k, v [B, Hkv, S, D] (S ≥ T; query i sees keys up to S − T + i), with H a multiple of Hkv
/// (grouped-query attention: query head i reads key/value head i / (H / Hkv)) → [B, H, T, D].
/// K and V are read where they are: the rep = H / Hkv query heads of a group are stacked as rows
/// of one [rep·T, D] block against that group's keys, instead of K and V being repeated.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (b, h, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (hkv, s) = (k.dim(1), k.dim(2));
    assert!(h % hkv == 0 && k.shape() == [b, hkv, s, d] && v.shape() == k.shape() && s >= t, "cached_attention: q {:?} over k {:?}, v {:?}", q.shape(), k.shape(), v.shape());
    if h == hkv {
        return attention(q, k, v, &AttnMask::Causal);
    }
    let rep = h / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    let qg = q.contiguous().reshape(&[b, hkv, rep * t, d]); // rows (head in group, query)
    let p = qg.matmul(&k.t()).reshape(&[b, hkv, rep, t, s]).softmax_scaled(scale, true); // [B, Hkv, rep, T, S]
    p.reshape(&[b, hkv, rep * t, s]).matmul(v).reshape(&[b, h, t, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use fmlab_tensor::{DType, Rng};

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        Tensor::rand_uniform(shape, -1.0, 1.0, DType::F32, &mut Rng::new(seed))
    }

    #[test]
    fn appends_land_in_one_buffer_and_growing_keeps_the_rows() {
        for mut cache in [ContiguousKvCache::with_capacity(40), ContiguousKvCache::default()] {
            let (k1, v1) = (rnd(&[2, 3, 20, 4], 1), rnd(&[2, 3, 20, 4], 2));
            let (k2, v2) = (rnd(&[2, 3, 1, 4], 3), rnd(&[2, 3, 1, 4], 4));
            cache.append(0, &k1, &v1);
            let (k, v) = cache.append(0, &k2, &v2);
            assert_eq!(cache.len(), 21);
            assert_eq!(k.to_vec::<f32>(), Tensor::cat(&[k1.clone(), k2.clone()], 2).to_vec::<f32>());
            assert_eq!(v.to_vec::<f32>(), Tensor::cat(&[v1.clone(), v2.clone()], 2).to_vec::<f32>());
            cache.clear();
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn grouped_query_attention_equals_repeated_heads() {
        // 6 query heads over 2 key/value heads, a 3-token block after 5 cached tokens.
        let (q, k, v) = (rnd(&[2, 6, 3, 8], 5), rnd(&[2, 2, 8, 8], 6), rnd(&[2, 2, 8, 8], 7));
        let got = cached_attention(&q, &k, &v);
        let rep = |x: &Tensor| x.unsqueeze(2).expand(&[2, 2, 3, 8, 8]).reshape(&[2, 6, 8, 8]);
        let want = attention(&q, &rep(&k), &rep(&v), &AttnMask::Causal);
        let (g, w) = (got.to_vec::<f32>(), want.to_vec::<f32>());
        let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "max difference {worst}");
    }
}
