//! Multi-tensor kernels for the optimizer step (fused kernels with no backward: they update
//! variables in place or reduce many tensors at once): AdamW, the gradient norm's sum of squares,
//! the clip coefficient, and the f32 → 16-bit weight casts.

use crate::cuda::{grid_for, Args, CudaStorage};
use crate::op::Op;
use crate::tensor::{cuda_ptr, Storage};
use crate::{no_grad, DType, Tensor};
use crate::cuda::kernel::{Arch, Kernel, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "multi_tensor", sources: &[include_str!("multi_tensor.cu")], arch: Arch::Device, entries: &["adamw_f32", "adamw_bf16g", "adamw_mt_f32", "adamw_mt_bf16g", "adamw_mtd_f32", "adamw_mtd_bf16g", "cast_mt_f32", "sumsq_mt", "clip_coef"] };
const ADAMW_BF16G: Kernel = KERNELS.kernel("adamw_bf16g");
const ADAMW_F32: Kernel = KERNELS.kernel("adamw_f32");
const ADAMW_MT_BF16G: Kernel = KERNELS.kernel("adamw_mt_bf16g");
const ADAMW_MT_F32: Kernel = KERNELS.kernel("adamw_mt_f32");
const ADAMW_MTD_BF16G: Kernel = KERNELS.kernel("adamw_mtd_bf16g");
const ADAMW_MTD_F32: Kernel = KERNELS.kernel("adamw_mtd_f32");
const CAST_MT_F32: Kernel = KERNELS.kernel("cast_mt_f32");
const CLIP_COEF: Kernel = KERNELS.kernel("clip_coef");
const SUMSQ_MT: Kernel = KERNELS.kernel("sumsq_mt");

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
            DType::F32 => ADAMW_F32,
            DType::BF16 => ADAMW_BF16G,
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

/// Mirrors `struct AdamTab` in multi_tensor.cu.
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
    adamw_mt_launch(items, [ADAMW_MT_F32, ADAMW_MT_BF16G], |a| {
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
    adamw_mt_launch(items, [ADAMW_MTD_F32, ADAMW_MTD_BF16G], |a| {
        a.push(one_m_b1).push(b2).push(one_m_b2).push(eps).push(ph).push(pc);
    });
}

/// The multi-tensor AdamW launches (one per 64 tensors per gradient dtype): the block table, then
/// the kernel's scalar arguments from `tail`.
fn adamw_mt_launch(items: &[AdamItem], kernels: [Kernel; 2], tail: impl Fn(&mut Args)) {
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
    Args::new().push(cuda_ptr(&s)).push(cuda_ptr(&norm)).push(cuda_ptr(&coef)).push(max_norm).launch(&dev, CLIP_COEF, 1, 32, 0);
    (norm, coef)
}

const CAST_MT: usize = 64;
const CAST_CHUNK: usize = 8192;

/// Mirrors `struct CastTab` in multi_tensor.cu.
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
            Args::new().push(tab).launch(&dev, CAST_MT_F32.of(dtype), blocks as u32, 256, 0);
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

/// Mirrors `struct MtTab` in multi_tensor.cu.
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
            Args::new().push(tab).push(cuda_ptr(&part)).launch(&cdev, SUMSQ_MT.of(dt), blocks as u32, 256, 0);
            parts.push(part);
        }
    }
    if parts.is_empty() {
        return Tensor::zeros_on(&[], DType::F64, dev);
    }
    Tensor::cat(&parts, 0).sum_all()
}
