//! Standalone benchmarks of the kernels a gpt2-mini training step is made of, at that step's
//! shapes (B·T = 32768 rows by default), each first validated against the CPU engine on a smaller
//! input: milliseconds per call and the achieved GB/s (bytes read + written once, the minimum any
//! implementation moves) or TFLOP/s. `fmlab bench ops` prints them as a table.

use std::time::Instant;

use crate::{DType, Device, Rng, Tensor};

/// What to measure.
pub struct OpsBench {
    /// Rows (B·T) of the activation-shaped inputs.
    pub rows: usize,
    /// Model width C (LayerNorm width; the MLP is 4C).
    pub width: usize,
    /// Timed calls per op (after 2 untimed).
    pub iters: usize,
    /// A GPU (the CPU engine is the reference).
    pub device: Device,
    /// Only ops whose name contains this.
    pub only: Option<String>,
}

/// One measured op.
pub struct OpRow {
    pub name: String,
    pub shape: String,
    pub ms: f64,
    pub rate: String,
    /// max |got − want| / max |want| against the CPU engine; NaN where the cuda_ops tests check.
    pub err: f64,
}

/// max |a − b| / max |b|
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.to_vec_f64(), b.to_vec_f64());
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    x.iter().zip(&y).map(|(p, q)| (p - q).abs() / scale).fold(0.0, f64::max)
}

fn rnd(shape: &[usize], seed: u64, dt: DType) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut Rng::new(seed)).to_dtype(dt)
}

fn sync(dev: Device) {
    if let Device::Cuda(d) = dev {
        crate::cuda::device(d).and_then(|d| d.synchronize()).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Median seconds per call of `f` on `dev` (each timed call synchronized).
fn time(dev: Device, iters: usize, mut f: impl FnMut() -> Tensor) -> f64 {
    for _ in 0..2 {
        let _ = f();
    }
    sync(dev);
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let y = f();
        sync(dev);
        ts.push(t.elapsed().as_secs_f64());
        drop(y);
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ts[ts.len() / 2]
}

/// The gradient of every input of `f` for a fixed upstream gradient, as one tensor list.
fn grads(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, seed_of: &dyn Fn(&Tensor) -> Tensor) -> Vec<Tensor> {
    let vars: Vec<Tensor> = inputs.iter().map(Tensor::new_var).collect();
    let y = f(&vars);
    let g = y.grads_wrt_graph(&seed_of(&y));
    vars.iter().map(|v| g.iter().find(|(t, _)| t.id() == v.id()).map(|(_, g)| g.clone()).unwrap_or_else(|| v.zeros_like())).collect()
}

/// Runs the benchmarks `a` selects on `a.device`, in a fixed order.
pub fn ops(a: &OpsBench) -> Vec<OpRow> {
    let dev = a.device;
    assert!(dev.is_cuda(), "bench::ops measures a GPU (the CPU engine is its reference), not {dev}");
    let (n, c) = (a.rows, a.width);
    let want = |name: &str| a.only.as_deref().is_none_or(|o| name.contains(o));
    let mut rows: Vec<OpRow> = Vec::new();
    let gbs = |bytes: f64, s: f64| format!("{:.0} GB/s", bytes / s / 1e9);
    let bf = DType::BF16;

    // Checks against the CPU on a small input: the same function on both devices.
    let check = |inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor| -> f64 {
        let want = f(inputs);
        let got = f(&inputs.iter().map(|t| t.to_device(dev)).collect::<Vec<_>>());
        rel(&got, &want)
    };
    let check_grads = |inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor| -> f64 {
        let seed = |y: &Tensor| rnd(y.shape(), 9, y.dtype()).to_device(y.device());
        let want = grads(inputs, f, &seed);
        let got = grads(&inputs.iter().map(|t| t.to_device(dev)).collect::<Vec<_>>(), f, &seed);
        got.iter().zip(&want).map(|(g, w)| rel(g, &w.to_dtype(g.dtype()))).fold(0.0, f64::max)
    };

    // Elementwise primitives on [rows, 4C] bf16: what GELU's and the residual's composites cost.
    let h = 4 * c;
    let small = [97, h];
    if want("unary") {
        let x = rnd(&[n, h], 1, bf).to_device(dev);
        let s = time(dev, a.iters, || x.tanh());
        rows.push(OpRow { name: "unary tanh".into(), shape: format!("[{n}, {h}] bf16"), ms: s * 1e3, rate: gbs((4 * n * h) as f64, s), err: check(&[rnd(&small, 1, bf)], &|v| v[0].tanh()) });
    }
    if want("binary") {
        let (x, y) = (rnd(&[n, h], 1, bf).to_device(dev), rnd(&[n, h], 2, bf).to_device(dev));
        let s = time(dev, a.iters, || x.add(&y));
        rows.push(OpRow { name: "binary add".into(), shape: format!("[{n}, {h}] bf16"), ms: s * 1e3, rate: gbs((6 * n * h) as f64, s), err: check(&[rnd(&small, 1, bf), rnd(&small, 2, bf)], &|v| v[0].add(&v[1])) });
        let b = rnd(&[h], 3, bf).to_device(dev);
        let s = time(dev, a.iters, || x.add(&b));
        rows.push(OpRow { name: "binary add bias (broadcast)".into(), shape: format!("[{n}, {h}] + [{h}] bf16"), ms: s * 1e3, rate: gbs((4 * n * h) as f64, s), err: check(&[rnd(&small, 1, bf), rnd(&[h], 3, bf)], &|v| v[0].add(&v[1])) });
    }
    if want("copy") {
        // The attention heads' transpose: [B, T, H, D] -> [B, H, T, D].
        let (bb, t, hh) = (n / 1024.min(n), 1024.min(n), 8);
        let x = rnd(&[bb, t, hh, c / hh], 4, bf).to_device(dev);
        let s = time(dev, a.iters, || x.transpose(1, 2).contiguous());
        rows.push(OpRow { name: "copy transpose(1, 2)".into(), shape: format!("[{bb}, {t}, {hh}, {}] bf16", c / hh), ms: s * 1e3, rate: gbs((4 * n * c) as f64, s), err: check(&[rnd(&[2, 33, hh, c / hh], 4, bf)], &|v| v[0].transpose(1, 2).contiguous()) });
    }
    if want("cast") {
        let x = rnd(&[50257, c], 5, DType::F32).to_device(dev);
        let s = time(dev, a.iters, || x.to_dtype(bf));
        rows.push(OpRow { name: "cast f32→bf16".into(), shape: format!("[50257, {c}]"), ms: s * 1e3, rate: gbs((6 * 50257 * c) as f64, s), err: check(&[rnd(&[501, c], 5, DType::F32)], &|v| v[0].to_dtype(bf)) });
    }
    if want("reduce") {
        let x = rnd(&[n, h], 6, bf).to_device(dev);
        let s = time(dev, a.iters, || x.sum(&[0], false));
        rows.push(OpRow { name: "reduce sum rows (bias grad)".into(), shape: format!("[{n}, {h}] bf16"), ms: s * 1e3, rate: gbs((2 * n * h) as f64, s), err: check(&[rnd(&[3001, h], 6, bf)], &|v| v[0].sum(&[0], false)) });
        let x = rnd(&[n, c], 7, DType::F32).to_device(dev);
        let s = time(dev, a.iters, || x.sum(&[1], true));
        rows.push(OpRow { name: "reduce sum last dim".into(), shape: format!("[{n}, {c}] f32"), ms: s * 1e3, rate: gbs((4 * n * c) as f64, s), err: check(&[rnd(&[97, c], 7, DType::F32)], &|v| v[0].sum(&[1], true)) });
    }
    if want("layer_norm") {
        let (x, w, b) = (rnd(&[n, c], 8, bf).to_device(dev), rnd(&[c], 9, DType::F32).to_device(dev), rnd(&[c], 10, DType::F32).to_device(dev));
        let f = |v: &[Tensor]| v[0].layer_norm(&v[1], Some(&v[2]), 1e-5);
        let s = time(dev, a.iters, || f(&[x.clone(), w.clone(), b.clone()]));
        let sm = [97, c];
        let ins = [rnd(&sm, 8, bf), rnd(&[c], 9, DType::F32), rnd(&[c], 10, DType::F32)];
        rows.push(OpRow { name: "layer_norm fwd (fused)".into(), shape: format!("[{n}, {c}] bf16, f32 w"), ms: s * 1e3, rate: gbs((4 * n * c) as f64, s), err: check(&ins, &f) });
        let (vx, vw, vb) = (Tensor::new_var(&x), Tensor::new_var(&w), Tensor::new_var(&b));
        let up = rnd(&[n, c], 11, bf).to_device(dev);
        let sb = time(dev, a.iters, || {
            let y = f(&[vx.clone(), vw.clone(), vb.clone()]);
            let g = y.grads_wrt_graph(&up);
            g[0].1.clone()
        }) - s;
        rows.push(OpRow { name: "layer_norm bwd (fused)".into(), shape: format!("[{n}, {c}] bf16, f32 w"), ms: sb * 1e3, rate: gbs((6 * n * c) as f64, sb), err: check_grads(&ins, &f) });
        let slow = |v: &[Tensor]| v[0].to_dtype(DType::F32).layer_norm_slow(&v[1], Some(&v[2]), 1e-5).to_dtype(bf);
        let s = time(dev, a.iters, || slow(&[x.clone(), w.clone(), b.clone()]));
        rows.push(OpRow { name: "layer_norm fwd (composite twin)".into(), shape: format!("[{n}, {c}] bf16, f32 w"), ms: s * 1e3, rate: gbs((4 * n * c) as f64, s), err: check(&ins, &slow) });
        // The pre-norm residual step: s = x + r and LayerNorm(s) in one pass (reads x, r; writes
        // s, y) against the add and LayerNorm as separate kernels; checked on the normalized rows.
        let r = rnd(&[n, c], 13, bf).to_device(dev);
        let rins = [ins[0].clone(), rnd(&sm, 14, bf), ins[1].clone(), ins[2].clone()];
        let fa = |v: &[Tensor]| v[0].add_layer_norm(&v[1], &v[2], Some(&v[3]), 1e-5).1;
        let s = time(dev, a.iters, || fa(&[x.clone(), r.clone(), w.clone(), b.clone()]));
        rows.push(OpRow { name: "add + layer_norm fwd (fused)".into(), shape: format!("[{n}, {c}] bf16, f32 w"), ms: s * 1e3, rate: gbs((8 * n * c) as f64, s), err: check(&rins, &fa) });
        let s = time(dev, a.iters, || x.add(&r).layer_norm(&w, Some(&b), 1e-5));
        rows.push(OpRow { name: "add, then layer_norm (two kernels)".into(), shape: format!("[{n}, {c}] bf16, f32 w"), ms: s * 1e3, rate: gbs((8 * n * c) as f64, s), err: check(&rins, &|v| v[0].add(&v[1]).layer_norm(&v[2], Some(&v[3]), 1e-5)) });
    }
    if want("gelu") {
        let x = rnd(&[n, h], 12, bf).to_device(dev);
        let s = time(dev, a.iters, || x.gelu_tanh());
        rows.push(OpRow { name: "gelu_tanh fwd (fused)".into(), shape: format!("[{n}, {h}] bf16"), ms: s * 1e3, rate: gbs((4 * n * h) as f64, s), err: check(&[rnd(&small, 12, bf)], &|v| v[0].gelu_tanh()) });
        let vx = Tensor::new_var(&x);
        let up = rnd(&[n, h], 13, bf).to_device(dev);
        let sb = time(dev, a.iters, || vx.gelu_tanh().grads_wrt_graph(&up)[0].1.clone()) - s;
        rows.push(OpRow { name: "gelu_tanh bwd (fused)".into(), shape: format!("[{n}, {h}] bf16"), ms: sb * 1e3, rate: gbs((6 * n * h) as f64, sb), err: check_grads(&[rnd(&small, 12, bf)], &|v| v[0].gelu_tanh()) });
        let s = time(dev, a.iters, || x.gelu_tanh_slow());
        rows.push(OpRow { name: "gelu_tanh fwd (composite twin)".into(), shape: format!("[{n}, {h}] bf16"), ms: s * 1e3, rate: gbs((4 * n * h) as f64, s), err: check(&[rnd(&small, 12, bf)], &|v| v[0].gelu_tanh_slow()) });
    }
    if want("softmax") {
        let (bh, t) = ((n / 1024.max(1)) * 8, 1024.min(n));
        let x = rnd(&[bh, t, t], 14, bf).to_device(dev);
        let s = time(dev, a.iters, || x.softmax_scaled(0.17, true));
        rows.push(OpRow { name: "softmax_scaled causal fwd".into(), shape: format!("[{bh}, {t}, {t}] bf16"), ms: s * 1e3, rate: gbs((4 * bh * t * t) as f64, s), err: check(&[rnd(&[3, 67, 67], 14, bf)], &|v| v[0].softmax_scaled(0.17, true)) });
    }
    if want("attention") {
        // gpt2-mini's causal attention: [B, H, T, D] = [rows/1024, 8, 1024, C/8], as model views.
        let (bb, t, hh) = ((n / 1024).max(1), 1024.min(n), 8);
        let dd = c / hh;
        let qkv = rnd(&[bb, t, 3 * c], 20, bf).to_device(dev);
        let heads = |y: &Tensor, i: usize| y.narrow(2, i * c, c).reshape(&[bb, t, hh, dd]).transpose(1, 2);
        let flops = 4.0 * (bb * hh * t * t * dd) as f64 / 2.0; // QKᵀ and PV, causal half
        let up = rnd(&[bb, hh, t, dd], 21, bf).to_device(dev);
        for (name, slow, sm90) in [("attention causal (flash, Hopper wgmma)", false, true), ("attention causal (flash, mma.sync)", false, false), ("attention causal (composite twin)", true, false)] {
            crate::settings::flash_sm90(Some(sm90));
            let f = |x: &Tensor| {
                let (q, k, v) = (heads(x, 0), heads(x, 1), heads(x, 2));
                if slow { crate::attention_slow(&q, &k, &v, &crate::AttnMask::Causal) } else { crate::attention(&q, &k, &v, &crate::AttnMask::Causal) }
            };
            let s = time(dev, a.iters, || f(&qkv));
            let small = rnd(&[2, 100, 3 * c], 22, bf);
            let hs = |y: &Tensor, i: usize| y.narrow(2, i * c, c).reshape(&[2, 100, hh, dd]).transpose(1, 2);
            let fs = |v: &[Tensor]| {
                let (q, k, vv) = (hs(&v[0], 0), hs(&v[0], 1), hs(&v[0], 2));
                if slow { crate::attention_slow(&q, &k, &vv, &crate::AttnMask::Causal) } else { crate::attention(&q, &k, &vv, &crate::AttnMask::Causal) }
            };
            rows.push(OpRow { name: format!("{name} fwd"), shape: format!("[{bb}, {hh}, {t}, {dd}] bf16"), ms: s * 1e3, rate: format!("{:.0} TFLOP/s", flops / s / 1e12), err: check(&[small.clone()], &fs) });
            let vx = Tensor::new_var(&qkv);
            let sb = time(dev, a.iters, || f(&vx).grads_wrt_graph(&up)[0].1.clone()) - s;
            rows.push(OpRow { name: format!("{name} bwd"), shape: format!("[{bb}, {hh}, {t}, {dd}] bf16"), ms: sb * 1e3, rate: format!("{:.0} TFLOP/s", 2.5 * flops / sb / 1e12), err: check_grads(&[small], &fs) });
        }
        crate::settings::flash_sm90(None);
    }
    if want("cross_entropy") {
        let v = 50257;
        let x = rnd(&[n, v], 15, bf).to_device(dev);
        let tg: Vec<i32> = (0..n).map(|i| ((i * 7919) % v) as i32).collect();
        let t = Tensor::from_vec(tg.clone(), &[n]);
        let s = time(dev, a.iters.min(5), || x.cross_entropy(&t, None));
        let ts = Tensor::from_vec(tg[..61].to_vec(), &[61]);
        rows.push(OpRow { name: "cross_entropy fwd".into(), shape: format!("[{n}, {v}] bf16"), ms: s * 1e3, rate: gbs((2 * n * v) as f64, s), err: check(&[rnd(&[61, v], 15, bf)], &|w| w[0].cross_entropy(&ts, None)) });
    }
    if want("classifier") {
        // The LM head + cross-entropy, forward and backward: fused (chunked, no full logits) vs
        // the unfused matmul → [rows, V] logits → cross-entropy → backward.
        let v = 50257;
        let (x, w) = (rnd(&[n, c], 23, bf).to_device(dev), rnd(&[v, c], 24, bf).scale(0.05).to_device(dev));
        let tg: Vec<i32> = (0..n).map(|i| ((i * 7919) % v) as i32).collect();
        let t = Tensor::from_vec(tg, &[n]);
        let (sv, vs) = (5003usize, 61usize);
        let ts = Tensor::from_vec((0..vs).map(|i| ((i * 7919) % sv) as i32).collect::<Vec<_>>(), &[vs]);
        let small = [rnd(&[vs, c], 23, bf), rnd(&[sv, c], 24, bf).scale(0.05)];
        for (name, fused, smem, sm90) in [
            ("classifier fwd+bwd (fused, Hopper wgmma + TMA: logits in registers)", true, false, true),
            ("classifier fwd+bwd (fused, chunked, two-pass rows)", true, false, false),
            ("classifier fwd+bwd (fused, chunked, rows streamed through shared memory)", true, true, false),
            ("classifier fwd+bwd (matmul + cross_entropy)", false, false, false),
        ] {
            crate::settings::classifier_rows_in_shared_memory(Some(smem));
            crate::settings::classifier_sm90(Some(sm90));
            let f = |v: &[Tensor], t: &Tensor| if fused { v[0].linear_cross_entropy(&v[1], t, None) } else { v[0].linear_cross_entropy_slow(&v[1], t, None) };
            let (vx, vw) = (Tensor::new_var(&x), Tensor::new_var(&w));
            let one = Tensor::full_on(1.0, &[], DType::F32, dev);
            let s = time(dev, a.iters.min(5), || f(&[vx.clone(), vw.clone()], &t).grads_wrt_graph(&one)[0].1.clone());
            let err = check_grads(&small, &|v| f(v, &ts)).max(check(&small, &|v| f(v, &ts)));
            rows.push(OpRow { name: name.into(), shape: format!("[{n}, {c}] x [{v}, {c}]ᵀ bf16"), ms: s * 1e3, rate: format!("{:.0} TFLOP/s", 6.0 * (n * c * v) as f64 / s / 1e12), err });
        }
        crate::settings::classifier_rows_in_shared_memory(None);
        crate::settings::classifier_sm90(None);
    }
    if want("mlp") {
        // The GELU MLP block (x·w1 + b1 → gelu → ·w2 + b2, hidden 4C) forward and backward in
        // mixed precision (bf16 casts of f32 masters, w2 as nn::Linear's transposed view): the
        // backward's hidden gradient and b1's gradient by the Hopper kernel (one pass; pre made
        // again there, the default, or kept by the forward and read) vs cuBLASLt's DGELU
        // epilogue and a column sum.
        let p = |shape: &[usize], seed: u64, scale: f64| rnd(shape, seed, DType::F32).scale(scale);
        let params = [p(&[c, h], 41, 0.06), p(&[h], 42, 0.1), p(&[c, h], 43, 0.03), p(&[c], 44, 0.1)];
        let f = |v: &[Tensor]| v[0].mlp_gelu(&v[1].to_dtype(bf), &v[2].to_dtype(bf), &v[3].to_dtype(bf).t(), &v[4].to_dtype(bf));
        let all: Vec<Tensor> = std::iter::once(rnd(&[n, c], 40, bf)).chain(params.iter().cloned()).map(|t| Tensor::new_var(&t.to_device(dev))).collect();
        let small: Vec<Tensor> = std::iter::once(rnd(&[301, c], 40, bf)).chain(params.iter().cloned()).collect();
        let up = rnd(&[n, c], 45, bf).to_device(dev);
        let kinds = [
            ("mlp_gelu fwd+bwd (Hopper: pre made again in the dgelu + bias grad pass)", true, true),
            ("mlp_gelu fwd+bwd (Hopper: dgelu + bias grad in one pass, pre kept)", true, false),
            ("mlp_gelu fwd+bwd (cuBLASLt DGELU epilogue + column sum)", false, false),
        ];
        for (name, sm90, recompute) in kinds {
            crate::settings::mlp_sm90(Some(sm90));
            crate::settings::mlp_recompute(Some(recompute));
            let s = time(dev, a.iters, || f(&all).grads_wrt_graph(&up)[0].1.clone());
            let err = check_grads(&small, &f).max(check(&small, &f));
            rows.push(OpRow { name: name.into(), shape: format!("[{n}, {c}] → {h} → {c}"), ms: s * 1e3, rate: format!("{:.0} TFLOP/s", 12.0 * (n * c * h) as f64 / s / 1e12), err });
        }
        crate::settings::mlp_sm90(None);
        crate::settings::mlp_recompute(None);
    }
    if want("matmul") {
        let (x, w) = (rnd(&[n, c], 16, bf).to_device(dev), rnd(&[c, h], 17, bf).to_device(dev));
        let s = time(dev, a.iters, || x.matmul(&w));
        rows.push(OpRow { name: "matmul (cuBLASLt)".into(), shape: format!("[{n}, {c}] x [{c}, {h}] bf16"), ms: s * 1e3, rate: format!("{:.0} TFLOP/s", 2.0 * (n * c * h) as f64 / s / 1e12), err: check(&[rnd(&[97, c], 16, bf), rnd(&[c, h], 17, bf)], &|v| v[0].matmul(&v[1])) });
    }
    if want("adamw") {
        let np = 22_600_000usize.min(n * 700);
        let mk = |s| Tensor::new_var(&rnd(&[np], s, DType::F32).to_device(dev));
        let (w, m, v2) = (mk(18), Tensor::new_var(&Tensor::zeros_on(&[np], DType::F32, dev)), Tensor::new_var(&Tensor::zeros_on(&[np], DType::F32, dev)));
        let g = rnd(&[np], 19, DType::F32).to_device(dev);
        let s = time(dev, a.iters, || {
            crate::adamw_update(&w, &g, &m, &v2, 0.9999, 0.1, 0.95, 0.05, 1e-8, 1e-3, 0.5);
            w.clone()
        });
        rows.push(OpRow { name: "adamw (per tensor kernel)".into(), shape: format!("[{np}] f32"), ms: s * 1e3, rate: gbs((28 * np) as f64, s), err: f64::NAN });
        // gpt2-mini's 148 parameter tensors (C = width): one launch each vs the multi-tensor kernel.
        let mut shapes: Vec<usize> = vec![50257 * c, 1024 * c, c, c];
        for _ in 0..12 {
            shapes.extend([c, c, 3 * c * c, 3 * c, c * c, c, c, c, 4 * c * c, 4 * c, 4 * c * c, c]);
        }
        let total: usize = shapes.iter().sum();
        let state: Vec<[Tensor; 4]> = shapes
            .iter()
            .enumerate()
            .map(|(i, &k)| [Tensor::new_var(&rnd(&[k], 30 + i as u64, DType::F32).to_device(dev)), Tensor::new_var(&Tensor::zeros_on(&[k], DType::F32, dev)), Tensor::new_var(&Tensor::zeros_on(&[k], DType::F32, dev)), rnd(&[k], 400 + i as u64, DType::F32).to_device(dev)])
            .collect();
        for (name, multi) in [("adamw, 148 gpt2-mini tensors (per tensor)", false), ("adamw, 148 gpt2-mini tensors (multi-tensor)", true)] {
            let s = time(dev, a.iters, || {
                if multi {
                    let items: Vec<crate::AdamItem> = state.iter().map(|t| (&t[0], &t[3], &t[1], &t[2], 0.9999f32)).collect();
                    crate::adamw_update_all(&items, 0.1, 0.95, 0.05, 1e-8, 1e-3, 0.5);
                } else {
                    for t in &state {
                        crate::adamw_update(&t[0], &t[3], &t[1], &t[2], 0.9999, 0.1, 0.95, 0.05, 1e-8, 1e-3, 0.5);
                    }
                }
                state[0][0].clone()
            });
            rows.push(OpRow { name: name.into(), shape: format!("{total} f32 in {} tensors", shapes.len()), ms: s * 1e3, rate: gbs((28 * total) as f64, s), err: f64::NAN });
        }
    }

    rows
}
