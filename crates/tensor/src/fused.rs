//! Fused ops. Each has its forward and backward here and a `_slow` twin composed of primitives
//! (in ops.rs) that the tests hold it to.
//!
//! `softmax_scaled`: softmax(scale · x) over the last dim with an optional causal limit, in one
//! pass (attention's scale, mask, max, exp, sum and divide: six full-size temporaries and their
//! backward passes fewer per layer). Backward: dx = scale · p · (g − Σ g·p).
//!
//! `cross_entropy`: log-softmax + NLL in one pass per row, never materializing the [N, V]
//! log-probabilities (for GPT-2's 50257-way head that is ~10 full-size temporaries less per step).
//! Forward keeps the per-row log-sum-exp; backward recomputes softmax from it:
//! dlogits[i, j] = (exp(x[i, j] - lse[i]) - [j == t[i]]) · g / n_kept, and 0 on ignored rows.

use rayon::prelude::*;

use crate::cpu::CpuStorage;
use crate::cuda::storage::sfx;
use crate::cuda::{grid_for, Args, CudaStorage};
use crate::op::Op;
use crate::tensor::Storage;
use crate::{no_grad, DType, Tensor};

/// Rows below this many elements in total are done on one thread.
const PAR_MIN: usize = 1 << 16;

fn rows<T: Copy + Send + Sync>(x: &[T], v: usize) -> impl IndexedParallelIterator<Item = &[T]> {
    x.par_chunks(v)
}

impl Tensor {
    /// Mean cross-entropy of `logits` [N, V] against integer `targets` [N]; targets equal to
    /// `ignore_index` are skipped (not counted in the mean). Fused; see the module docs.
    /// The loss is f32 for 16-bit logits (f64 for f64): losses accumulate in fp32 under mixed
    /// precision, and the gradient comes back in the logits' dtype.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<i64>) -> Tensor {
        assert_eq!(self.rank(), 2, "cross_entropy: logits must be [N, V], got {:?}", self.shape());
        assert_eq!(targets.shape(), &[self.dim(0)], "cross_entropy: targets {:?} for logits {:?}", targets.shape(), self.shape());
        let on_gpu = self.device().is_cuda();
        // The CPU kernel is f32/f64; on the GPU 16-bit logits are read directly (f32 math), so
        // the [N, V] logits are never widened to f32 in memory.
        if !matches!(self.dtype(), DType::F32 | DType::F64) && !on_gpu {
            return self.to_dtype(DType::F32).cross_entropy(targets, ignore_index);
        }
        let (n, v) = (self.dim(0), self.dim(1));
        let t = targets.to_dtype(DType::I32).to_vec::<i32>();
        for (i, &ti) in t.iter().enumerate() {
            assert!(Some(ti as i64) == ignore_index || (ti >= 0 && (ti as usize) < v), "cross_entropy: target {ti} at row {i} is outside 0..{v}");
        }
        let kept = t.iter().filter(|&&ti| Some(ti as i64) != ignore_index).count();
        // Ignored rows are stored as -1 so backward needs no ignore_index (which may be a valid id).
        let stored: Vec<i32> = t.iter().map(|&ti| if Some(ti as i64) == ignore_index { -1 } else { ti }).collect();
        let x = self.contiguous();
        let tt = Tensor::from_vec(stored, &[n]).to_device(x.device());
        let (lse, loss_sum) = ce_forward(&x, &tt);
        // NaN when every target is ignored, as in PyTorch.
        let mean = {
            let _g = no_grad();
            loss_sum.scale(1.0 / kept as f64)
        };
        let s = mean.with_storage(|s| match s {
            Storage::Cuda(c) => Storage::Cuda(c.copy_strided(mean.layout())),
            Storage::Cpu(c) => Storage::Cpu(c.clone()),
        });
        Tensor::from_any(s, &[], Some(Op::CrossEntropy(x, tt, lse, kept)))
    }

    /// Backward of the fused cross-entropy: dlogits for an upstream gradient `g` (a scalar).
    pub(crate) fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, lse: &Tensor, kept: usize, g: f64) -> Tensor {
        let (n, v) = (logits.dim(0), logits.dim(1));
        let scale = g / kept as f64;
        if logits.device().is_cuda() {
            let s = logits.with_storage(|xs| {
                let Storage::Cuda(xs) = xs else { unreachable!() };
                let d = CudaStorage::alloc(&xs.dev, xs.dtype(), n * v);
                Args::new().push(xs.at(logits.layout().offset)).push(cuda_ptr(targets)).push(cuda_ptr(lse)).push(d.ptr).push(v as u32).push(scale).launch(&xs.dev, &format!("ce_bwd_{}", sfx(xs.dtype())), n as u32, 512, 0);
                Storage::Cuda(d)
            });
            return Tensor::from_any(s, &[n, v], None);
        }
        let t = targets.to_vec::<i32>();
        let lse = lse.to_vec::<f64>();
        let o = logits.layout().offset;
        let out = logits.with_storage(|s| {
            let Storage::Cpu(s) = s else { unreachable!() };
            fn go<T: crate::dtype::Float>(x: &[T], v: usize, t: &[i32], lse: &[f64], scale: f64) -> Vec<T> {
                let mut d = vec![T::zero(); x.len()];
                let body = |(i, (drow, row)): (usize, (&mut [T], &[T]))| {
                    let ti = t[i];
                    if ti < 0 || ti as usize >= v {
                        return; // ignored row: zero gradient
                    }
                    let (l, sc) = (T::lit(lse[i]), T::lit(scale));
                    for (o, &a) in drow.iter_mut().zip(row) {
                        *o = (a - l).exp() * sc;
                    }
                    drow[ti as usize] = drow[ti as usize] - sc;
                };
                if x.len() >= PAR_MIN {
                    d.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(body);
                } else {
                    d.chunks_mut(v).zip(x.chunks(v)).enumerate().for_each(body);
                }
                d
            }
            match s {
                CpuStorage::F32(a) => CpuStorage::F32(go(&a[o..o + n * v], v, &t, &lse, scale)),
                CpuStorage::F64(a) => CpuStorage::F64(go(&a[o..o + n * v], v, &t, &lse, scale)),
                _ => unreachable!(),
            }
        });
        Tensor::from_storage(out, &[n, v])
    }
}

/// The fused cross-entropy's forward over contiguous logits [N, V] and stored targets [N] (i32 on
/// the logits' device, -1 = ignored): per-row log-sum-exp (f32 on the GPU, f64 on the CPU) and
/// the scalar sum of the kept rows' losses (f32 for 16-bit logits), left on the device.
pub(crate) fn ce_forward(x: &Tensor, tt: &Tensor) -> (Tensor, Tensor) {
    let (n, v) = (x.dim(0), x.dim(1));
    let _g = no_grad();
    if x.device().is_cuda() {
        let dev = x.device();
        let acc = if x.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        let (lse, loss) = (Tensor::zeros_on(&[n], acc, dev), Tensor::zeros_on(&[n], acc, dev));
        x.with_storage(|xs| {
            let Storage::Cuda(xs) = xs else { unreachable!() };
            let (pt, pl, pp) = (cuda_ptr(tt), cuda_ptr(&lse), cuda_ptr(&loss));
            Args::new().push(xs.at(x.layout().offset)).push(pt).push(pl).push(pp).push(v as u32).launch(&xs.dev, &format!("ce_fwd_{}", sfx(x.dtype())), n as u32, 512, 0);
        });
        return (lse, loss.sum_all());
    }
    let t = tt.to_vec::<i32>();
    let (lse, loss): (Vec<f64>, f64) = x.with_storage(|s| {
        let Storage::Cpu(s) = s else { unreachable!() };
        fn go<T: crate::dtype::Float>(x: &[T], v: usize, t: &[i32]) -> (Vec<f64>, f64) {
            let per_row = |(i, row): (usize, &[T])| -> (f64, f64) {
                let m = row.iter().fold(T::neg_infinity(), |m, &a| if a > m { a } else { m });
                let s: f64 = row.iter().map(|&a| (a - m).exp().to_f64()).sum();
                let lse = m.to_f64() + s.ln();
                let l = if t[i] < 0 { 0.0 } else { lse - row[t[i] as usize].to_f64() };
                (lse, l)
            };
            let out: Vec<(f64, f64)> = if x.len() >= PAR_MIN { rows(x, v).enumerate().map(per_row).collect() } else { x.chunks(v).enumerate().map(per_row).collect() };
            (out.iter().map(|o| o.0).collect(), out.iter().map(|o| o.1).sum())
        }
        let o = x.layout().offset;
        match s {
            CpuStorage::F32(a) => go(&a[o..o + n * v], v, &t),
            CpuStorage::F64(a) => go(&a[o..o + n * v], v, &t),
            s => panic!("cross_entropy on the CPU: {} logits (f32 or f64)", s.dtype()),
        }
    });
    (Tensor::from_f64(&lse, &[n], DType::F64), Tensor::from_f64(&[loss], &[], x.dtype()))
}

/// Device address of a contiguous CUDA tensor's first element.
pub(crate) fn cuda_ptr(t: &Tensor) -> u64 {
    assert!(t.is_contiguous(), "cuda_ptr: tensor {:?} is not contiguous", t.shape());
    t.with_storage(|s| match s {
        Storage::Cuda(c) => c.at(t.layout().offset),
        s => panic!("cuda_ptr: tensor on {}", s.device()),
    })
}

/// One AdamW update of an f32 variable `w` from its gradient `g` (f32 or bf16) and f32 moments
/// `m`, `v`, in place, on the variable's device: the fused kernel behind `nn::AdamW::step`.
/// Scalars as in nn/optim.rs: `decay` = 1 - lr·wd (or 1), `step_size` = lr / (1 - β1^t),
/// `bc2_sqrt` = sqrt(1 - β2^t).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, decay: f32, one_m_b1: f32, b2: f32, one_m_b2: f32, eps: f32, step_size: f32, bc2_sqrt: f32) {
    assert!(w.dtype() == DType::F32 && m.dtype() == DType::F32 && v.dtype() == DType::F32, "adamw_update: parameters and moments must be f32");
    assert!(w.is_var() && m.is_var() && v.is_var(), "adamw_update: updates variables in place");
    if w.device().is_cuda() {
        let g = if g.is_contiguous() { g.clone() } else { g.contiguous() };
        let kernel = match g.dtype() {
            DType::F32 => "adamw_f32",
            DType::BF16 => "adamw_bf16g",
            d => panic!("adamw_update: gradient dtype {d}"),
        };
        let n = w.numel();
        let dev = w.with_storage(|s| match s {
            Storage::Cuda(c) => c.dev.clone(),
            _ => unreachable!(),
        });
        Args::new()
            .push(cuda_ptr(w))
            .push(cuda_ptr(&g))
            .push(cuda_ptr(m))
            .push(cuda_ptr(v))
            .push(n as u32)
            .push(decay)
            .push(one_m_b1)
            .push(b2)
            .push(one_m_b2)
            .push(eps)
            .push(step_size)
            .push(bc2_sqrt)
            .launch(&dev, kernel, grid_for(n, 256), 256, 0);
        return;
    }
    g.with_f32(|g| {
        m.with_f32_mut(|m| {
            v.with_f32_mut(|v| {
                w.with_f32_mut(|w| {
                    for i in 0..w.len() {
                        let gi = g[i];
                        w[i] *= decay;
                        m[i] += one_m_b1 * (gi - m[i]);
                        v[i] = v[i] * b2 + (gi * gi) * one_m_b2;
                        let denom = v[i].sqrt() / bc2_sqrt + eps;
                        w[i] -= step_size * (m[i] / denom);
                    }
                })
            })
        })
    });
}

impl Tensor {
    /// softmax(scale · x) over the last dim; with `causal`, row i of the last-but-one dim (T
    /// queries) sees keys j ≤ i + (S − T) only (the rest get probability 0). Fused; the twin is
    /// `softmax_scaled_slow`.
    pub fn softmax_scaled(&self, scale: f64, causal: bool) -> Tensor {
        let r = self.rank();
        assert!(r >= 2 || !causal, "softmax_scaled: causal needs [.., T, S], got {:?}", self.shape());
        let s = self.dim(r - 1);
        let t = if r >= 2 { self.dim(r - 2) } else { 1 };
        assert!(!causal || s >= t, "softmax_scaled: causal with {t} queries and {s} keys");
        let x = self.contiguous();
        let rows = x.numel() / s.max(1);
        let probs = if self.device().is_cuda() {
            let st = x.with_storage(|xs| {
                let Storage::Cuda(xs) = xs else { unreachable!() };
                let y = CudaStorage::alloc(&xs.dev, xs.dtype(), x.numel());
                if rows > 0 {
                    let block = if s >= 1024 { 256 } else if s >= 256 { 128 } else { 32 };
                    Args::new().push(xs.ptr).push(y.ptr).push(s as u32).push(t as u32).push(scale).push(causal as i32).launch(&xs.dev, &format!("softmax_fwd_{}", sfx(xs.dtype())), rows as u32, block, 0);
                }
                Storage::Cuda(y)
            });
            Tensor::from_any(st, self.shape(), None)
        } else if matches!(self.dtype(), DType::F32 | DType::F64) {
            let st = x.with_storage(|xs| {
                fn go<T: crate::dtype::Float>(x: &[T], s: usize, t: usize, scale: f64, causal: bool) -> Vec<T> {
                    let mut y = vec![T::zero(); x.len()];
                    let body = |(r, (yr, xr)): (usize, (&mut [T], &[T]))| {
                        let lim = if causal { r % t + (s - t) + 1 } else { s };
                        let sc = T::lit(scale);
                        let m = xr[..lim].iter().fold(T::neg_infinity(), |m, &a| if a * sc > m { a * sc } else { m });
                        // Summed in f64 and divided (not multiplied by a reciprocal), as the
                        // composite softmax does: the same rounding as PyTorch's softmax.
                        let mut sum = 0.0f64;
                        for (o, &a) in yr[..lim].iter_mut().zip(&xr[..lim]) {
                            *o = (a * sc - m).exp();
                            sum += o.to_f64();
                        }
                        let sum = T::lit(sum);
                        for o in &mut yr[..lim] {
                            *o = *o / sum;
                        }
                    };
                    if x.len() >= PAR_MIN {
                        y.par_chunks_mut(s).zip(x.par_chunks(s)).enumerate().for_each(body);
                    } else {
                        y.chunks_mut(s).zip(x.chunks(s)).enumerate().for_each(body);
                    }
                    y
                }
                let n = x.numel();
                match xs {
                    Storage::Cpu(CpuStorage::F32(a)) => CpuStorage::F32(go(&a[..n], s, t, scale, causal)),
                    Storage::Cpu(CpuStorage::F64(a)) => CpuStorage::F64(go(&a[..n], s, t, scale, causal)),
                    _ => unreachable!(),
                }
            });
            Tensor::from_storage(st, self.shape())
        } else {
            // 16-bit on the CPU: compute in f32, round once.
            let p = self.to_dtype(DType::F32).detach().softmax_scaled(scale, causal).to_dtype(self.dtype());
            p.detach()
        };
        if !(crate::grad_enabled() && self.track_grad()) {
            return probs;
        }
        probs.with_op(Op::SoftmaxScaled(x, probs.clone(), scale, causal))
    }

    /// The composite twin of `softmax_scaled`, for tests.
    pub fn softmax_scaled_slow(&self, scale: f64, causal: bool) -> Tensor {
        let r = self.rank();
        let x = self.scale(scale);
        if !causal {
            return x.softmax(r - 1);
        }
        let (t, s) = (self.dim(r - 2), self.dim(r - 1));
        let m: Vec<u8> = (0..t).flat_map(|i| (0..s).map(move |j| (j <= i + (s - t)) as u8)).collect();
        let mask = Tensor::from_vec(m, &[t, s]).to_device(self.device());
        mask.where_cond(&x, &x.scalar_like(f64::NEG_INFINITY)).softmax(r - 1)
    }

    /// dx = scale · p · (g − Σ_j g_j p_j) over the last dim.
    pub(crate) fn softmax_scaled_backward(p: &Tensor, g: &Tensor, scale: f64) -> Tensor {
        let s = p.dim(p.rank() - 1);
        if p.device().is_cuda() {
            let g = if g.is_contiguous() && g.dtype() == p.dtype() { g.clone() } else { g.to_dtype(p.dtype()).contiguous() };
            let rows = p.numel() / s.max(1);
            let st = p.with_storage(|ps| {
                let Storage::Cuda(ps) = ps else { unreachable!() };
                let d = CudaStorage::alloc(&ps.dev, ps.dtype(), p.numel());
                if rows > 0 {
                    let block = if s >= 1024 { 256 } else if s >= 256 { 128 } else { 32 };
                    Args::new().push(cuda_ptr(p)).push(cuda_ptr(&g)).push(d.ptr).push(s as u32).push(scale).launch(&ps.dev, &format!("softmax_bwd_{}", sfx(ps.dtype())), rows as u32, block, 0);
                }
                Storage::Cuda(d)
            });
            return Tensor::from_any(st, p.shape(), None);
        }
        let r = p.rank() - 1;
        let dot = g.mul(p).sum(&[r], true);
        p.mul(&g.sub(&dot)).scale(scale)
    }
}

/// Mirrors `struct AdamTab` in kernels/fused.cu.
const ADAM_MT: usize = 64;
const ADAM_CHUNK: usize = 16384;
#[repr(C)]
#[derive(Clone, Copy)]
struct AdamTab {
    w: [u64; ADAM_MT],
    g: [u64; ADAM_MT],
    m: [u64; ADAM_MT],
    v: [u64; ADAM_MT],
    n: [u32; ADAM_MT],
    start: [u32; ADAM_MT + 1],
    decay: [f32; ADAM_MT],
    count: u32,
}

/// One AdamW parameter for `adamw_update_all`: (f32 variable, gradient, f32 moments m and v,
/// decay factor 1 − lr·wd, or 1 for parameters that are not decayed).
pub type AdamItem<'a> = (&'a Tensor, &'a Tensor, &'a Tensor, &'a Tensor, f32);

/// `adamw_update` for many parameters at once: on the GPU one launch per 64 tensors (per gradient
/// dtype) instead of one per tensor; the same arithmetic, element for element.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_all(items: &[AdamItem], one_m_b1: f32, b2: f32, one_m_b2: f32, eps: f32, step_size: f32, bc2_sqrt: f32) {
    let Some(first) = items.first() else { return };
    if !first.0.device().is_cuda() {
        for &(w, g, m, v, decay) in items {
            adamw_update(w, g, m, v, decay, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt);
        }
        return;
    }
    adamw_mt_launch(items, ["adamw_mt_f32", "adamw_mt_bf16g"], |a| {
        a.push(one_m_b1).push(b2).push(one_m_b2).push(eps).push(step_size).push(bc2_sqrt);
    });
}

/// `adamw_update_all` with the step's changing scalars read from device memory, so that the
/// launch can be captured in a CUDA graph and replayed step after step: `hyper` = f32 [3]
/// [step_size, bc2_sqrt, decay factor 1 − lr·wd] and `coef` = f32 [1], a scale applied to every
/// gradient (the clip coefficient, `clip_coef`). An item's last field is 1 for parameters that
/// are not decayed and anything else for those that are.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_all_dev(items: &[AdamItem], one_m_b1: f32, b2: f32, one_m_b2: f32, eps: f32, hyper: &Tensor, coef: &Tensor) {
    let Some(first) = items.first() else { return };
    assert!(hyper.dtype() == DType::F32 && hyper.shape() == [3] && coef.dtype() == DType::F32 && coef.numel() == 1, "adamw_update_all_dev: hyper must be f32 [3] and coef an f32 scalar");
    if !first.0.device().is_cuda() {
        let h = hyper.to_vec::<f32>();
        let c = coef.reshape(&[]);
        for &(w, g, m, v, decay) in items {
            let _ng = no_grad();
            let gs = g.to_dtype(DType::F32).mul(&c);
            adamw_update(w, &gs, m, v, if decay != 1.0 { h[2] } else { 1.0 }, one_m_b1, b2, one_m_b2, eps, h[0], h[1]);
        }
        return;
    }
    let (ph, pc) = (cuda_ptr(hyper), cuda_ptr(coef));
    adamw_mt_launch(items, ["adamw_mtd_f32", "adamw_mtd_bf16g"], |a| {
        a.push(one_m_b1).push(b2).push(one_m_b2).push(eps).push(ph).push(pc);
    });
}

/// The multi-tensor AdamW launches (one per 64 tensors per gradient dtype): the block table, then
/// the kernel's scalar arguments from `tail`.
fn adamw_mt_launch(items: &[AdamItem], kernels: [&str; 2], tail: impl Fn(&mut Args)) {
    let dev = items[0].0.with_storage(|s| match s {
        Storage::Cuda(c) => c.dev.clone(),
        _ => unreachable!(),
    });
    for (gdt, kernel) in [(DType::F32, kernels[0]), (DType::BF16, kernels[1])] {
        // Contiguous gradients kept alive until their launch is queued.
        let group: Vec<(&Tensor, Tensor, &Tensor, &Tensor, f32)> =
            items.iter().filter(|it| it.1.dtype() == gdt && it.0.numel() > 0).map(|&(w, g, m, v, d)| (w, if g.is_contiguous() { g.clone() } else { g.contiguous() }, m, v, d)).collect();
        for chunk in group.chunks(ADAM_MT) {
            let mut tab = AdamTab { w: [0; ADAM_MT], g: [0; ADAM_MT], m: [0; ADAM_MT], v: [0; ADAM_MT], n: [0; ADAM_MT], start: [0; ADAM_MT + 1], decay: [1.0; ADAM_MT], count: chunk.len() as u32 };
            let blocks = block_starts(chunk.iter().map(|it| it.0.numel()), ADAM_CHUNK, &mut tab.start);
            for (i, (w, g, m, v, decay)) in chunk.iter().enumerate() {
                assert!(w.dtype() == DType::F32 && m.dtype() == DType::F32 && v.dtype() == DType::F32, "adamw_update_all: parameters and moments must be f32");
                assert!(w.is_var() && m.is_var() && v.is_var(), "adamw_update_all: updates variables in place");
                assert!(g.numel() == w.numel() && m.numel() == w.numel() && v.numel() == w.numel(), "adamw_update_all: gradient or moments of another size than the parameter");
                (tab.w[i], tab.g[i], tab.m[i], tab.v[i]) = (cuda_ptr(w), cuda_ptr(g), cuda_ptr(m), cuda_ptr(v));
                tab.n[i] = u32::try_from(w.numel()).expect("adamw_update_all: a tensor of over 2^32 elements");
                tab.decay[i] = *decay;
            }
            let mut a = Args::new();
            a.push(tab);
            tail(&mut a);
            a.launch(&dev, kernel, blocks as u32, 256, 0);
        }
    }
    for it in items {
        assert!(matches!(it.1.dtype(), DType::F32 | DType::BF16), "adamw_update_all: gradient dtype {}", it.1.dtype());
    }
}

/// Gradient clipping's scalars on the device from a sum of squares (f64 scalar, e.g.
/// `sum_squares_all`): (norm f64, coef f32) with coef = min(max_norm / (norm + 1e-6), 1) as in
/// PyTorch's `clip_grad_norm_` — no host read, so it can run inside a CUDA-graph capture.
pub fn clip_coef(sumsq: &Tensor, max_norm: f64) -> (Tensor, Tensor) {
    let _ng = no_grad();
    let s = sumsq.to_dtype(DType::F64).reshape(&[]).contiguous();
    if !s.device().is_cuda() {
        let norm = s.sqrt();
        let n = norm.item();
        let c = max_norm / (n + 1e-6);
        let c = if c < 1.0 || c.is_nan() { c } else { 1.0 };
        return (norm, Tensor::scalar(c, DType::F32));
    }
    let dev = s.with_storage(|st| match st {
        Storage::Cuda(c) => c.dev.clone(),
        _ => unreachable!(),
    });
    let norm = Tensor::uninit_on(&[], DType::F64, s.device()); // both written by clip_coef
    let coef = Tensor::uninit_on(&[], DType::F32, s.device());
    Args::new().push(cuda_ptr(&s)).push(cuda_ptr(&norm)).push(cuda_ptr(&coef)).push(max_norm).launch(&dev, "clip_coef", 1, 32, 0);
    (norm, coef)
}

const CAST_MT: usize = 64;
const CAST_CHUNK: usize = 8192;

/// Mirrors `struct CastTab` in kernels/fused.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct CastTab {
    src: [u64; CAST_MT],
    dst: [u64; CAST_MT],
    n: [u32; CAST_MT],
    start: [u32; CAST_MT + 1],
    count: u32,
}

/// `t.to_dtype(dtype)` for every tensor of `ts`, each output with its own history (a `Cast` of
/// its input, as `to_dtype` gives). On the GPU the contiguous f32 → bf16/f16 casts run as one
/// multi-tensor kernel per 64 tensors instead of a launch each; every other case is `to_dtype`.
pub fn cast_all(ts: &[Tensor], dtype: DType) -> Vec<Tensor> {
    let fused = |t: &Tensor| t.device().is_cuda() && t.dtype() == DType::F32 && matches!(dtype, DType::BF16 | DType::F16) && t.is_contiguous() && t.numel() > 0 && u32::try_from(t.numel()).is_ok();
    let mut out: Vec<Option<Tensor>> = ts.iter().map(|t| (!fused(t)).then(|| t.to_dtype(dtype))).collect();
    // The rest, grouped by device, 64 tensors per launch.
    let mut groups: Vec<(crate::Device, Vec<usize>)> = Vec::new();
    for i in (0..ts.len()).filter(|&i| out[i].is_none()) {
        match groups.iter_mut().find(|(d, _)| *d == ts[i].device()) {
            Some((_, v)) => v.push(i),
            None => groups.push((ts[i].device(), vec![i])),
        }
    }
    for (_, idx) in groups {
        let dev = ts[idx[0]].with_storage(|s| match s {
            Storage::Cuda(c) => c.dev.clone(),
            _ => unreachable!(),
        });
        for chunk in idx.chunks(CAST_MT) {
            let mut tab = CastTab { src: [0; CAST_MT], dst: [0; CAST_MT], n: [0; CAST_MT], start: [0; CAST_MT + 1], count: chunk.len() as u32 };
            let blocks = block_starts(chunk.iter().map(|&i| ts[i].numel()), CAST_CHUNK, &mut tab.start);
            for (k, &i) in chunk.iter().enumerate() {
                let t = &ts[i];
                let y = CudaStorage::alloc(&dev, dtype, t.numel());
                (tab.src[k], tab.dst[k], tab.n[k]) = (cuda_ptr(t), y.ptr, t.numel() as u32);
                out[i] = Some(Tensor::from_any(Storage::Cuda(y), t.shape(), Some(Op::Cast(t.clone()))));
            }
            Args::new().push(tab).launch(&dev, &format!("cast_mt_f32_{}", dtype.name()), blocks as u32, 256, 0);
        }
    }
    out.into_iter().map(|t| t.expect("every tensor cast")).collect()
}

/// The multi-tensor kernels' block table: tensor i gets blocks start[i]..start[i + 1], one per
/// `chunk` elements. Returns the total (the grid size).
fn block_starts(sizes: impl Iterator<Item = usize>, chunk: usize, start: &mut [u32]) -> usize {
    let mut blocks = 0usize;
    let mut i = 0;
    for n in sizes {
        start[i] = blocks as u32;
        blocks += n.div_ceil(chunk);
        i += 1;
    }
    start[i] = blocks as u32;
    blocks
}

/// Mirrors `struct MtTab` in kernels/reduce.cu.
const MT_MAX: usize = 96;
const MT_CHUNK: usize = 8192;
#[repr(C)]
#[derive(Clone, Copy)]
struct MtTab {
    ptr: [u64; MT_MAX],
    n: [u32; MT_MAX],
    start: [u32; MT_MAX + 1],
    count: u32,
}

/// Σ x² over every element of every tensor, as an f64 scalar on their device (no history): the
/// global gradient norm's reduction. On a GPU, one launch per 96 tensors of a dtype (addresses in
/// the kernel parameters) plus one final sum, instead of a cast, square and reduction per tensor.
pub fn sum_squares_all(ts: &[Tensor]) -> Tensor {
    let _g = no_grad();
    let Some(first) = ts.first() else { return Tensor::scalar(0.0, DType::F64) };
    let dev = first.device();
    if !dev.is_cuda() {
        return ts.iter().map(|t| t.to_dtype(DType::F64).sqr().sum_all()).reduce(|a, b| a.add(&b)).unwrap();
    }
    let cdev = first.with_storage(|s| match s {
        Storage::Cuda(c) => c.dev.clone(),
        _ => unreachable!(),
    });
    assert!(ts.iter().all(|t| matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F64)), "sum_squares_all on CUDA: f32, bf16 or f64 tensors");
    let mut parts: Vec<Tensor> = Vec::new();
    for dt in [DType::F32, DType::BF16, DType::F64] {
        let group: Vec<Tensor> = ts.iter().filter(|t| t.dtype() == dt && t.numel() > 0).map(|t| t.contiguous()).collect();
        for chunk in group.chunks(MT_MAX) {
            let mut tab = MtTab { ptr: [0; MT_MAX], n: [0; MT_MAX], start: [0; MT_MAX + 1], count: chunk.len() as u32 };
            let blocks = block_starts(chunk.iter().map(|t| t.numel()), MT_CHUNK, &mut tab.start);
            for (i, t) in chunk.iter().enumerate() {
                assert_eq!(t.device(), dev, "sum_squares_all: tensors on {} and {}", dev, t.device());
                tab.ptr[i] = cuda_ptr(t);
                tab.n[i] = u32::try_from(t.numel()).expect("sum_squares_all: a tensor of over 2^32 elements");
            }
            let part = Tensor::uninit_on(&[blocks], DType::F64, dev); // one partial a block
            Args::new().push(tab).push(cuda_ptr(&part)).launch(&cdev, &format!("sumsq_mt_{}", sfx(dt)), blocks as u32, 256, 0);
            parts.push(part);
        }
    }
    if parts.is_empty() {
        return Tensor::zeros_on(&[], DType::F64, dev);
    }
    Tensor::cat(&parts, 0).sum_all()
}
