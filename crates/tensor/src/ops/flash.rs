//! Flash attention on CUDA (flash.cu beside this file): bf16 q/k/v with head_dim 32, 64 or 128, no mask,
//! causal, or key padding; tensor-core tiles, f32 softmax statistics, never materializing the
//! [B, H, T, S] scores. On Hopper, head_dim 32 (gpt2-mini's) runs flash_sm90.cu instead:
//! the same three kernels on wgmma, their tiles copied by the TMA unit (`flash_sm90` switches).
//! `attention` (ops/attention.rs) uses it when `supported` says so and falls back to the composite (its
//! twin, `attention_slow`) otherwise.
//!
//! The output is stored [B, T, H, D] and returned as its [B, H, T, D] view, so the usual
//! `transpose(1, 2).reshape([B, T, C])` after attention is free; gradients come back the same way.
//! Backward: delta = rowsum(dO ∘ O), then dK/dV (parallel over key tiles) and dQ (over query
//! tiles) recompute P = exp2(scale·log2e · QKᵀ − lse), the forward's LSE being kept in log2
//! units (one FMA and an exp2 per score): no atomics, so results are deterministic.

use crate::cuda::{Args, CudaStorage};
use super::mask::AttnMask;
use crate::op::{Backward, CustomOp, Fwd};
use crate::settings::FLASH_SM90 as SM90;
use crate::tensor::{cuda_ptr, Storage};
use crate::{DType, Tensor};
use crate::cuda::kernel::{Arch, Kernel, KernelId, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "flash", sources: &[include_str!("flash.cu")], arch: Arch::Device, entries: &["fa_fwd_d", "fa_bwd_q_d", "fa_bwd_kv_d"] };
/// Its Hopper kernels (sm_90a; hopper_gemm.cuh first). flash_sm90 compiles flash.cu's helpers without its kernels.
pub(crate) static KERNELS_SM90: Module = Module { name: "flash_sm90", sources: &[include_str!("hopper_gemm.cuh"), "#define FA_HELPERS_ONLY\n", include_str!("flash.cu"), include_str!("flash_sm90.cu")], arch: Arch::Sm90a, entries: &["fa_fwd_sm90_d32", "fa_bwd_q_sm90_d32", "fa_bwd_kv_sm90_d32"] };
/// Each kernel and its wgmma twin (head_dim 32 on Hopper): `fa_fwd_d64`, `fa_fwd_sm90_d32`.
const FWD: (Kernel, Kernel) = (KERNELS.kernel("fa_fwd_d"), KERNELS_SM90.kernel("fa_fwd_sm90_d32"));
const BWD_Q: (Kernel, Kernel) = (KERNELS.kernel("fa_bwd_q_d"), KERNELS_SM90.kernel("fa_bwd_q_sm90_d32"));
const BWD_KV: (Kernel, Kernel) = (KERNELS.kernel("fa_bwd_kv_d"), KERNELS_SM90.kernel("fa_bwd_kv_sm90_d32"));

/// Mirrors `struct FaDims` in flash.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct FaDims {
    b: u32,
    h: u32,
    t: u32,
    s: u32,
    qs: [u32; 3],
    ks: [u32; 3],
    vs: [u32; 3],
    gq: [u32; 3],
    gkv: [u32; 3],
    scale: f32,
    causal: i32,
}

/// Warps a flash block runs (flash.cu's FA_WARPS: 4 unless FMLAB_CUDA_DEFINES sets FA_WARPS=n,
/// read once); each warp takes 16 rows of the block's tile.
fn fa_warps() -> usize {
    static W: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *W.get_or_init(|| {
        let defs = crate::settings::string("FMLAB_CUDA_DEFINES").unwrap_or_default();
        defs.split(',').find_map(|d| d.trim().strip_prefix("FA_WARPS=").and_then(|n| n.trim().parse().ok())).unwrap_or(4)
    })
}

/// (batch, head, row) strides of a [B, H, rows, D] view whose last dim is contiguous and whose
/// strides and offset are multiples of 8 (the kernels copy rows in 16-byte pieces; storage
/// blocks are 512-byte aligned); None otherwise.
fn bhr_strides(x: &Tensor) -> Option<[u32; 3]> {
    let l = x.layout();
    let st = &l.strides;
    if st[3] != 1 || l.offset % 8 != 0 {
        return None;
    }
    let s = [st[0], st[1], st[2]];
    if s.iter().any(|&v| v % 8 != 0 || u32::try_from(v).is_err()) {
        return None;
    }
    Some([s[0] as u32, s[1] as u32, s[2] as u32])
}

/// Whether the flash kernels take these inputs (else `attention` uses the composite).
pub(crate) fn supported(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> bool {
    if !crate::settings::FLASH.on() {
        return false;
    }
    if !(q.device().is_cuda() && [q, k, v].iter().all(|t| t.dtype() == DType::BF16 && t.rank() == 4)) {
        return false;
    }
    let d = q.dim(3);
    let (b, h, t, s) = (q.dim(0), q.dim(1), q.dim(2), k.dim(2));
    let shapes = k.shape() == [b, h, s, d] && v.shape() == [b, h, s, d] && matches!(d, 32 | 64 | 128) && t > 0 && s > 0;
    let mask_ok = match mask {
        AttnMask::None => true,
        AttnMask::Causal => s >= t,
        AttnMask::KeyPadding(p) => p.shape() == [b, s] && p.dtype() == DType::U8,
        AttnMask::Custom(_) => false,
    };
    let fits = (b * h * t.max(s) * d) < u32::MAX as usize / 2;
    shapes && mask_ok && fits
}

/// `x` itself when the kernels can read it in place, else a packed copy (contiguous with D a
/// multiple of 8 qualifies; gradients flow back through the copy).
fn aligned(x: &Tensor) -> Tensor {
    if bhr_strides(x).is_some() { x.clone() } else { x.contiguous() }
}

fn dims(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: f64) -> FaDims {
    FaDims {
        b: q.dim(0) as u32,
        h: q.dim(1) as u32,
        t: q.dim(2) as u32,
        s: k.dim(2) as u32,
        qs: bhr_strides(q).unwrap(),
        ks: bhr_strides(k).unwrap(),
        vs: bhr_strides(v).unwrap(),
        // Gradients [B, rows, H, D] contiguous unless `fused_qkv` lays them out otherwise.
        gq: [(q.dim(2) * q.dim(1) * q.dim(3)) as u32, q.dim(3) as u32, (q.dim(1) * q.dim(3)) as u32],
        gkv: [(k.dim(2) * k.dim(1) * k.dim(3)) as u32, k.dim(3) as u32, (k.dim(1) * k.dim(3)) as u32],
        scale: scale as f32,
        causal: causal as i32,
    }
}

/// Whether head_dim d on `dev` runs the wgmma twins: d = 32, an sm_90 device, and the default
/// 4-warp blocks whose 64-row tiles they share.
fn sm90(dev: &crate::cuda::CudaDevice, d: usize) -> bool {
    d == 32 && fa_warps() == 4 && SM90.on() && dev.has_module(&KERNELS_SM90)
}

/// Launches flash kernel `base` (fa_fwd, fa_bwd_q, fa_bwd_kv) for head_dim d over `rows` rows per
/// (batch, head), one block of FA_WARPS warps per 16·FA_WARPS rows, with arguments `a`. The wgmma
/// twin (`sm90`) also takes TMA maps (64-row boxes) of the two [B, H, rows, 32] operands whose
/// tiles it walks, `tiles` (each with its (batch, head, row) element strides).
fn launch(dev: &crate::cuda::CudaDevice, (base, base_sm90): (Kernel, Kernel), d: usize, mut a: Args, tiles: [(&Tensor, [u32; 3]); 2], bh: usize, rows: usize) {
    let id = if sm90(dev, d) {
        for (x, st) in tiles {
            a.push(crate::cuda::tma_map_bf16_bhr(at(x), [x.dim(0), x.dim(1), x.dim(2), 32], st, 64));
        }
        KernelId::from(base_sm90)
    } else {
        base.n(d as u32)
    };
    a.launch3(dev, id, (rows.div_ceil(16 * fa_warps()) as u32, bh as u32, 1), (32 * fa_warps() as u32, 1, 1), 0);
}

fn at(t: &Tensor) -> u64 {
    t.with_storage(|s| match s {
        Storage::Cuda(c) => c.at(t.layout().offset),
        s => panic!("flash attention: a tensor on {}", s.device()),
    })
}

/// Flash attention over inputs [q, k, v] ([B, H, rows, D] views the kernels read in place);
/// the output [B, T, H, D]; saved [lse].
struct FlashAttention {
    /// u8 [B, S] key padding (1 = a real key), contiguous on the inputs' device.
    pad: Option<Tensor>,
    causal: bool,
    scale: f64,
}

impl CustomOp for FlashAttention {
    fn name(&self) -> String {
        "flash_attention".into()
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let [q, k, v] = inputs else { unreachable!("flash attention: inputs q, k, v") };
        Some(flash_forward(q, k, v, self.pad.as_ref(), self.causal, self.scale))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let [q, k, v] = cx.inputs() else { unreachable!() };
        let (dq, dk, dv) = flash_attention_backward(q, k, v, cx.out(), &cx.saved()[0], self.pad.as_ref(), self.causal, self.scale, cx.g);
        vec![Some(dq), Some(dk), Some(dv)]
    }
}

/// softmax(scale · q kᵀ + mask) v for supported inputs (see `supported`).
pub(crate) fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Tensor {
    let (q, k, v) = (aligned(q), aligned(k), aligned(v));
    let scale = 1.0 / (q.dim(3) as f64).sqrt();
    let causal = matches!(mask, AttnMask::Causal);
    let pad = match mask {
        AttnMask::KeyPadding(p) => Some(p.to_device(q.device()).contiguous()),
        _ => None,
    };
    let o = Tensor::apply_op(FlashAttention { pad, causal, scale }, &[q, k, v]).expect("flash attention on supported inputs");
    o.transpose(1, 2) // [B, H, T, D] view of [B, T, H, D]
}

/// The forward kernel: (o [B, T, H, D], [lse f32 [B·H·T]]).
fn flash_forward(q: &Tensor, k: &Tensor, v: &Tensor, pad: Option<&Tensor>, causal: bool, scale: f64) -> Fwd {
    let (b, h, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let fd = dims(q, k, v, causal, scale);
    let dev = q.with_storage(|s| match s {
        Storage::Cuda(c) => c.dev.clone(),
        _ => unreachable!(),
    });
    let o = CudaStorage::alloc(&dev, DType::BF16, b * t * h * d);
    let lse = Tensor::uninit_on(&[b * h * t], DType::F32, q.device()); // every query row's, by the kernel
    let mut a = Args::new();
    a.push(at(q)).push(at(k)).push(at(v)).push(pad.map_or(0, cuda_ptr)).push(o.ptr).push(cuda_ptr(&lse)).push(fd);
    launch(&dev, FWD, d, a, [(k, fd.ks), (v, fd.vs)], b * h, t);
    let o = Tensor::from_any(Storage::Cuda(o), &[b, t, h, d], None);
    Fwd::new(o, vec![lse])
}

/// (dq, dk, dv) for the upstream gradient `g` of the [B, T, H, D] output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_attention_backward(q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, pad: Option<&Tensor>, causal: bool, scale: f64, g: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (b, h, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let s = k.dim(2);
    // g is [B, T, H, D]; the kernels index it as [B, H, T, D] with strides.
    let g = if g.dtype() == DType::BF16 { g.clone() } else { g.to_dtype(DType::BF16) };
    let g = if bhr_strides(&g.transpose(1, 2)).is_some() { g } else { g.contiguous() };
    let gs = bhr_strides(&g.transpose(1, 2)).unwrap();
    let fd = dims(q, k, v, causal, scale);
    let dev = q.with_storage(|st| match st {
        Storage::Cuda(c) => c.dev.clone(),
        _ => unreachable!(),
    });
    let mut fd = fd;
    let fused = fused_qkv(q, k, v);
    if fused {
        // Gradients written in the layout of q, k, v themselves (one [B, T, 3, H, D] buffer).
        (fd.gq, fd.gkv) = (fd.qs, fd.ks);
    }
    // Σ_d dO·O per query row: written by the dQ kernel, read by the dK/dV kernel after it.
    let delta = Tensor::from_any(Storage::Cuda(CudaStorage::alloc(&dev, DType::F32, b * h * t)), &[b * h * t], None);
    let (dq, dk, dv) = if fused {
        // Every element of the buffer is written (dq, dk, dv tile it): no zero fill.
        let buf = Tensor::from_any(Storage::Cuda(CudaStorage::alloc(&dev, DType::BF16, 3 * b * t * h * d)), &[3 * b * t * h * d], None);
        (buf.strided_view(q.layout().clone()), buf.strided_view(k.layout().clone()), buf.strided_view(v.layout().clone()))
    } else {
        // [B, rows, H, D] buffers, returned as their [B, H, rows, D] views.
        let new = |rows: usize| Tensor::from_any(Storage::Cuda(CudaStorage::alloc(&dev, DType::BF16, b * rows * h * d)), &[b, rows, h, d], None).transpose(1, 2);
        (new(t), new(s), new(s))
    };
    let pp = pad.map_or(0, cuda_ptr);
    // Both backward kernels take (q, k, v, pad, dO, lse, delta, then their own pointers, dims, dO
    // strides). dQ runs first: it writes delta (and reads O for it). The wgmma twins walk tiles of
    // k and v (dQ), of q and dO (dK/dV).
    let args = |ptrs: [u64; 2]| {
        let mut a = Args::new();
        a.push(at(q)).push(at(k)).push(at(v)).push(pp).push(at(&g)).push(cuda_ptr(lse)).push(cuda_ptr(&delta));
        a.push(ptrs[0]).push(ptrs[1]).push(fd).push(gs[0]).push(gs[1]).push(gs[2]);
        a
    };
    launch(&dev, BWD_Q, d, args([at(&dq), cuda_ptr(o)]), [(k, fd.ks), (v, fd.vs)], b * h, t);
    launch(&dev, BWD_KV, d, args([at(&dk), at(&dv)]), [(q, fd.qs), (&g.transpose(1, 2), gs)], b * h, s);
    (dq, dk, dv)
}

/// Whether q, k, v are the three thirds of one fused projection's output, as `narrow` of a
/// contiguous [B, T, 3·H·D] tensor gives them: one buffer, the same strides (row 3·H·D, head D),
/// offsets 0, H·D, 2·H·D, and nothing else in the buffer. Their gradients are then written in
/// that same layout into one buffer, where the narrow backward finds each already in place (no
/// per-slice copies, no zero fill).
fn fused_qkv(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let (b, h, t, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (lq, lk, lv) = (q.layout(), k.layout(), v.layout());
    let c = h * d;
    k.dim(2) == t
        && q.shares_storage(k)
        && q.shares_storage(v)
        && q.storage_len() == 3 * b * t * c
        && lq.strides == [t * 3 * c, d, 3 * c, 1]
        && lk.strides == lq.strides
        && lv.strides == lq.strides
        && (lq.offset, lk.offset, lv.offset) == (0, c, 2 * c)
}
