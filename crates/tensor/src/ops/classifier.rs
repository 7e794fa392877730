//! The fused classifier: mean cross-entropy of `x · wᵀ` (an LM head) computed in row chunks,
//! never holding the full [N, V] logits or their gradient.
//!
//! For GPT-2's 50257-way head at 32 × 1024 tokens the logits are 3.3 GB in bf16 and their
//! gradient as much again. Here each chunk of rows makes its logits (one GEMM), its loss and, when
//! a gradient is wanted, its logits' gradient right away (the loss is the graph's end, so the
//! upstream gradient is a scalar that only scales): dx rows = dlogits · w and dw += dlogitsᵀ · x
//! (two GEMMs; on Hopper dx rows come out of the gradient pass itself, `lmce_grad_dh`), after
//! which the chunk's logits are freed. Backward only scales dx and dw by the
//! upstream gradient. Peak extra memory: one chunk of logits and its gradient, plus dw in f32.
//!
//! Composed of tensor ops (matmul, the fused cross-entropy forward and backward, cat), so it runs
//! on every device; `linear_cross_entropy_slow` (below) is the unfused twin the tests hold it to.

use crate::cuda::Args;
use super::cross_entropy::{ce_forward, cross_entropy_backward};
use super::linear::{casts_f32_master, gemm_epi};
use super::sm90::{hopper_smem, sm90_smem, SM90_ROWS, SM90_TILE_N};
use crate::op::{Backward, CustomOp, Fwd};
use crate::settings::{CE_DH as DH_FUSED, CE_SM90 as SM90, CE_SMEM};
use crate::tensor::cuda_ptr;
use crate::tensor::Storage;
use crate::{grad_enabled, DType, Tensor};
use crate::cuda::kernel::{Arch, Kernel, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "classifier", sources: &[include_str!("classifier.cu")], arch: Arch::Device, entries: &["ce_fused", "ce_stream", "ce_targets"] };
/// Its Hopper kernels (sm_90a; hopper_gemm.cuh first).
pub(crate) static KERNELS_SM90: Module = Module { name: "classifier_sm90", sources: &[include_str!("hopper_gemm.cuh"), include_str!("classifier_sm90.cu")], arch: Arch::Sm90a, entries: &["lmce_target", "lmce_lse_k", "lmce_combine", "lmce_grad_k", "lmce_patch", "lmce_grad_dh_k", "lmce_dh_final"] };
const CE_FUSED: Kernel = KERNELS.kernel("ce_fused");
const CE_STREAM: Kernel = KERNELS.kernel("ce_stream");
const CE_TARGETS: Kernel = KERNELS.kernel("ce_targets");
const LMCE_COMBINE: Kernel = KERNELS_SM90.kernel("lmce_combine");
const LMCE_DH_FINAL: Kernel = KERNELS_SM90.kernel("lmce_dh_final");
const LMCE_GRAD_DH_K: Kernel = KERNELS_SM90.kernel("lmce_grad_dh_k");
const LMCE_GRAD_K: Kernel = KERNELS_SM90.kernel("lmce_grad_k");
const LMCE_LSE_K: Kernel = KERNELS_SM90.kernel("lmce_lse_k");
const LMCE_PATCH: Kernel = KERNELS_SM90.kernel("lmce_patch");
const LMCE_TARGET: Kernel = KERNELS_SM90.kernel("lmce_target");

/// Logit elements per chunk: 4096 rows at V = 50257, large enough that the three GEMMs per chunk
/// run at full speed (0.8 GB of f32 logits on the CPU).
const CHUNK_ELEMS: usize = 4096 * 50257;
/// On a GPU twice that (0.8 GB of bf16 logits): each chunk reads and writes the f32 dW
/// accumulator (51 MB at GPT-2's head) once, so fewer chunks move less. Measured on the H100
/// (gpt2-mini step, binaries interleaved in one call): 2048 rows 22.7 / 22.7 ms, 4096 21.9 /
/// 22.0, 8192 21.6 / 21.7 (peak memory 4.60, 4.79, 5.19 GiB). Also measured (session 10, one
/// call): 32768 rows (one chunk) 21.4 / 21.4 ms at 7.47 GiB — not taken for 0.2 ms; and each
/// chunk's logits GEMM + loss kernel run in sub-chunks of 128-1024 rows, small enough that the
/// logits stay in L2 between the two: slower, 22.1-23.0 ms (the small GEMMs run below the large
/// one's rate, and the dW GEMM still reads the whole chunk's gradient from memory).
const CUDA_CHUNK_ELEMS: usize = 2 * CHUNK_ELEMS;

impl Tensor {
    /// Mean cross-entropy of the logits `self · wᵀ` (self [N, C], w [V, C]) against `targets` [N]
    /// (rows equal to `ignore_index` skipped), without materializing the logits. The loss is f32
    /// for 16-bit inputs; gradients flow to `self` and `w` in their dtypes.
    pub fn linear_cross_entropy(&self, w: &Tensor, targets: &Tensor, ignore_index: Option<i64>) -> Tensor {
        let elems = if self.device().is_cuda() { CUDA_CHUNK_ELEMS } else { CHUNK_ELEMS };
        self.linear_cross_entropy_chunked(w, targets, ignore_index, (elems / w.dim(0).max(1)).max(1))
    }

    /// `linear_cross_entropy` with `rows` rows per chunk (tests use small chunks).
    pub fn linear_cross_entropy_chunked(&self, w: &Tensor, targets: &Tensor, ignore_index: Option<i64>, rows: usize) -> Tensor {
        assert!(rows > 0, "linear_cross_entropy: chunk of 0 rows");
        assert!(self.rank() == 2 && w.rank() == 2 && self.dim(1) == w.dim(1), "linear_cross_entropy: x {:?} and w {:?} must be [N, C] and [V, C]", self.shape(), w.shape());
        assert_eq!(targets.shape(), &[self.dim(0)], "linear_cross_entropy: targets {:?} for x {:?}", targets.shape(), self.shape());
        assert_eq!(self.dtype(), w.dtype(), "linear_cross_entropy: x is {} but w is {}", self.dtype(), w.dtype());
        let want_grad = grad_enabled() && (self.track_grad() || w.track_grad());
        let op = LinearCrossEntropy { targets: targets.clone(), ignore_index, rows, want_grad };
        Tensor::apply_op(op, &[self.clone(), w.clone()]).expect("linear_cross_entropy runs on every device")
    }

    /// The unfused twin of `linear_cross_entropy`: full logits, then the fused cross-entropy.
    pub fn linear_cross_entropy_slow(&self, w: &Tensor, targets: &Tensor, ignore_index: Option<i64>) -> Tensor {
        self.matmul(&w.t()).cross_entropy(targets, ignore_index)
    }
}

/// The fused classifier over inputs [x [N, C], w [V, C]]; its forward also makes both
/// gradients for an upstream 1 when `want_grad` (saved [dx, dw]).
struct LinearCrossEntropy {
    targets: Tensor,
    ignore_index: Option<i64>,
    /// Rows a chunk.
    rows: usize,
    want_grad: bool,
}

impl CustomOp for LinearCrossEntropy {
    fn name(&self) -> String {
        "linear_cross_entropy".into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        Some(lmce_forward(&inputs[0], &inputs[1], &self.targets, self.ignore_index, self.rows, self.want_grad))
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        Some(lmce_forward(&inputs[0], &inputs[1], &self.targets, self.ignore_index, self.rows, self.want_grad))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let [dx, dw] = cx.saved() else { unreachable!("linear_cross_entropy: gradients made in the forward") };
        // dx, dw were made for an upstream gradient of 1: as they are when the loss is the seed
        // of 1 itself (no multiplies over 25 + 51 MB: ~60 µs a gpt2-mini step on the H100), else
        // scaled on the device (dw may be f32 for a 16-bit w). Gradients are never written in
        // place once made, so sharing dx and dw with this node is safe.
        if cx.seed_is_one {
            return vec![Some(dx.clone()), Some(dw.clone())];
        }
        vec![Some(dx.mul(&cx.g.to_dtype(dx.dtype()))), Some(dw.mul(&cx.g.to_dtype(dw.dtype())))]
    }
}

/// The classifier's forward (both devices): the mean loss and, with `want_grad`, [dx, dw].
fn lmce_forward(xin: &Tensor, w: &Tensor, targets: &Tensor, ignore_index: Option<i64>, rows: usize, want_grad: bool) -> Fwd {
    assert!(rows > 0, "linear_cross_entropy: chunk of 0 rows");
    assert!(xin.rank() == 2 && w.rank() == 2 && xin.dim(1) == w.dim(1), "linear_cross_entropy: x {:?} and w {:?} must be [N, C] and [V, C]", xin.shape(), w.shape());
    assert_eq!(targets.shape(), &[xin.dim(0)], "linear_cross_entropy: targets {:?} for x {:?}", targets.shape(), xin.shape());
    assert_eq!(xin.dtype(), w.dtype(), "linear_cross_entropy: x is {} but w is {}", xin.dtype(), w.dtype());
    let (n, v) = (xin.dim(0), w.dim(0));
    let x = xin.contiguous();
    let dev = x.device();
    // The targets as the kernels take them (ignored rows -1) and 1 / (rows kept): from the
    // host, range-checked; inside a CUDA-graph capture, made on the device from targets that
    // are already there (checked when they were written).
    let (tt, kept, inv_kept) = match targets.captured_indices(xin) {
        Some(td) => {
            let (tt, inv) = ce_targets_cuda(&td, v, ignore_index);
            (tt, None, Some(inv))
        }
        None => {
            let t = targets.to_dtype(DType::I32).to_vec::<i32>();
            for (i, &ti) in t.iter().enumerate() {
                assert!(Some(ti as i64) == ignore_index || (ti >= 0 && (ti as usize) < v), "linear_cross_entropy: target {ti} at row {i} is outside 0..{v}");
            }
            let kept = t.iter().filter(|&&ti| Some(ti as i64) != ignore_index).count();
            let stored: Vec<i32> = t.iter().map(|&ti| if Some(ti as i64) == ignore_index { -1 } else { ti }).collect();
            let inv = dev.is_cuda().then(|| Tensor::scalar(1.0 / kept as f64, DType::F64).to_device(dev));
            (Tensor::from_vec(stored, &[n]).to_device(dev), Some(kept), inv)
        }
    };
    // The CPU cross-entropy is f32/f64: 16-bit logits are widened per chunk there.
    let widen = !dev.is_cuda() && !matches!(x.dtype(), DType::F32 | DType::F64);
    let acc = if x.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    // On the GPU the head is padded with zero rows to a multiple of 64 (also the Hopper
    // kernels' vocabulary tile, so none of their tiles is all padding): an odd V (50257)
    // makes every logits row misaligned for cuBLASLt, which then runs these GEMMs at a
    // fraction of its speed. The padded logit columns are excluded from the softmax by the
    // kernels.
    let vp = if dev.is_cuda() { v.div_ceil(64) * 64 } else { v };
    // Hopper, opted in: the logits never leave registers (classifier_sm90.cu); the loss of every
    // row in one pass, then per chunk the logits' gradient from a second. Those kernels read
    // the head through TMA maps, whose rows past v arrive as zeros: no padded copy of it
    // (25 MB a step for GPT-2's) unless a cuBLASLt GEMM takes it too (FMLAB_CE_DH=0).
    let sm90 = sm90_applies(&x);
    let wc = w.contiguous();
    let padded = vp > v && !(sm90 && DH_FUSED.on() && cuda_ptr(&wc) % 16 == 0);
    let wp = if padded { Tensor::cat(&[wc, Tensor::zeros_on(&[vp - v, w.dim(1)], w.dtype(), dev)], 0) } else { wc }; // [Vp or V, C]
    let mut loss: Option<Tensor> = None;
    let mut dx_parts = Vec::new();
    let mut dw: Option<Tensor> = None;
    let stats = sm90.then(|| {
        let (ls, lse2, tl) = lmce_sm90_loss(&x, &wp, vp, &tt, v);
        loss = Some(ls);
        (lse2, tl)
    });
    for r0 in (0..n).step_by(rows) {
        if let Some((lse2, tl)) = &stats {
            if !want_grad {
                break;
            }
            let len = rows.min(n - r0);
            let xc = x.narrow(0, r0, len); // [len, C], contiguous rows
            let (tc, lc, tlc) = (tt.narrow(0, r0, len), lse2.narrow(0, r0, len), tl.narrow(0, r0, len));
            let inv = inv_kept.as_ref().expect("1/kept on the GPU");
            let d = if DH_FUSED.on() {
                let (d, dxc) = lmce_sm90_grad_dh(&xc, &wp, vp, &tc, v, &lc, &tlc, inv); // [len, Vp], [len, C]
                dx_parts.push(dxc);
                d
            } else {
                let d = lmce_sm90_grad(&xc, &wp, vp, &tc, v, &lc, &tlc, inv); // [len, Vp]
                dx_parts.push(d.matmul(&wp)); // [len, C]
                d
            };
            match &mut dw {
                // The first chunk's product is written as the sum (no 51 MB of zeros to add to).
                None => dw = Some(gemm_epi(&d.t(), &xc, crate::cuda::gemm::Epilogue::OutF32, None, None).unwrap_or_else(|| d.t().matmul(&xc).to_dtype(acc))), // [Vp, C]
                Some(sum) => {
                    if !gemm_acc_f32(&d.t(), &xc, sum) {
                        *sum = sum.add(&d.t().matmul(&xc).to_dtype(acc));
                    }
                }
            }
            continue;
        }
        let len = rows.min(n - r0);
        let xc = x.narrow(0, r0, len); // [len, C], contiguous rows
        let tc = tt.narrow(0, r0, len);
        let mut logits = xc.matmul(&wp.t()); // [len, Vp]
        let (ls, d) = if dev.is_cuda() {
            // Loss and, in place, the logits' gradient in one kernel.
            let ls = ce_fused_cuda(&logits, &tc, v, inv_kept.as_ref().expect("1/kept on the GPU"), want_grad);
            (ls, want_grad.then_some(logits))
        } else {
            if widen {
                logits = logits.to_dtype(DType::F32);
            }
            let (lse, ls) = ce_forward(&logits, &tc);
            let kept = kept.expect("targets read on the host");
            let d = want_grad.then(|| cross_entropy_backward(&logits, &tc, &lse, kept, 1.0).to_dtype(x.dtype()));
            (ls, d)
        };
        loss = Some(match loss {
            Some(l) => l.add(&ls),
            None => ls,
        });
        if let Some(d) = d {
            // d: [len, Vp], zero in the padded columns.
            dx_parts.push(d.matmul(&wp)); // [len, C]
            // dw accumulates over chunks in f32 (f64 for f64), not as a bf16 running sum. On
            // the GPU a 16-bit GEMM adds its f32 product straight into the f32 sum (beta = 1);
            // elsewhere each chunk's product is cast and added.
            let sum = dw.get_or_insert_with(|| Tensor::zeros_on(&[vp, x.dim(1)], acc, dev));
            if !(dev.is_cuda() && acc == DType::F32 && x.dtype() != acc && gemm_acc_f32(&d.t(), &xc, sum)) {
                *sum = sum.add(&d.t().matmul(&xc).to_dtype(acc)); // [Vp, C]
            }
        }
    }
    let Some(loss) = loss else { panic!("linear_cross_entropy: no rows") };
    // NaN when every target is ignored, as in PyTorch.
    let mean = match (&inv_kept, kept) {
        (Some(inv), _) => loss.mul(&inv.to_dtype(loss.dtype()).reshape(&[])),
        (None, Some(kept)) => loss.scale(1.0 / kept as f64),
        (None, None) => unreachable!(),
    };
    let grads = want_grad.then(|| {
        let dx = if dx_parts.len() == 1 { dx_parts.pop().unwrap() } else { Tensor::cat(&dx_parts, 0) };
        let dw = dw.expect("a gradient").narrow(0, 0, v); // drop the padding rows
        // A 16-bit head cast from f32 masters (mixed precision) keeps its f32 sum as its
        // gradient, as linear layers do (`linear_param_grads`): no round trip through bf16.
        let dw = if casts_f32_master(w) { dw } else { dw.to_dtype(w.dtype()) };
        vec![dx, dw.contiguous()]
    });
    Fwd::new(mean, grads.unwrap_or_default())
}

/// `ce_fused_*` over a chunk of logits [rows, ld] on the GPU (the first `v` columns real): the
/// sum of the kept rows' losses (f32; f64 for f64), and with `grad` the logits' gradient
/// (scaled by `inv_kept`, an f64 scalar on the device) written over `logits`.
fn ce_fused_cuda(logits: &Tensor, tt: &Tensor, v: usize, inv_kept: &Tensor, grad: bool) -> Tensor {
    let (rows, ld) = (logits.dim(0), logits.dim(1));
    assert!(logits.is_contiguous() && logits.layout().offset == 0, "ce_fused: logits must be a fresh contiguous tensor");
    let acc = if logits.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let loss = Tensor::zeros_on(&[rows], acc, logits.device());
    logits.with_storage(|s| {
        let Storage::Cuda(xs) = s else { unreachable!() };
        // Rows streamed through shared memory where it runs (`ce_stream`, sm_90 and later: bulk
        // copies into two row buffers of a persistent block per SM, each logit read from global
        // memory once), else the two-pass kernel. Measured on the H100 (gpt2-mini, one call,
        // interleaved): the step 21.0 / 21.0 → 20.9 / 20.8 ms; eager profile 2.80 → 2.58 ms per
        // step. FMLAB_CE_SMEM=0 keeps the two-pass kernel.
        let bytes = ld * logits.dtype().size_in_bytes();
        let stream = xs.dev.cc_major() >= 9 && bytes.is_multiple_of(16) && xs.ptr.is_multiple_of(16) && 2 * bytes + 16 <= xs.dev.smem_optin && CE_SMEM.on();
        let dt = logits.dtype();
        let mut args = Args::new();
        args.push(xs.ptr).push(cuda_ptr(tt)).push(cuda_ptr(&loss));
        if stream {
            args.push(rows as u32);
        }
        args.push(v as u32).push(ld as u32).push(cuda_ptr(inv_kept)).push(grad as i32);
        if stream {
            args.launch(&xs.dev, CE_STREAM.of(dt), rows.min(xs.dev.sm_count) as u32, 1024, (2 * bytes + 16) as u32);
            return;
        }
        args
            // 1024 threads a row: two rows per SM (2048 threads an SM, 32 registers each), 26
            // MB of rows in flight over 132 SMs, under the 50 MB L2, so the second pass reads
            // its row from L2 rather than memory. Measured on the H100 (bench ops --only
            // classifier, interleaved A/B/A/B in one call): 512 threads (four rows per SM, 53 MB)
            // 8.24 / 8.32 ms, 1024: 7.80 / 7.74; the step 22.4 / 22.5 → 21.7 / 21.8 ms.
            .launch(&xs.dev, CE_FUSED.of(dt), rows as u32, 1024, 0);
    });
    loss.sum_all()
}

/// The Hopper kernels take x (contiguous, 16-byte aligned rows) when it is bf16 on an sm_90 GPU
/// with C a multiple of 64 up to 256 (H's 256-row block stays in shared memory, 128 KB at 256).
fn sm90_applies(x: &Tensor) -> bool {
    let c = x.dim(1);
    SM90.on()
        && x.dtype() == DType::BF16
        && c.is_multiple_of(64)
        && (64..=256).contains(&c)
        && x.is_contiguous()
        && x.with_storage(|s| matches!(s, Storage::Cuda(xs) if xs.device().has_module(&KERNELS_SM90) && xs.at(x.layout().offset) % 16 == 0))
}

/// Thread blocks a Hopper classifier launch aims for: eight waves of an H100's 132 SMs at one
/// block per SM (each block holds 225 KB of shared memory at C = 256), so the last wave's tail
/// is short.
const SM90_TARGET_BLOCKS: usize = 8 * 132;

/// (vocabulary tiles per split, splits) for `row_tiles` blocks of rows over `vtiles` tiles.
fn sm90_splits(row_tiles: usize, vtiles: usize) -> (usize, usize) {
    let want = SM90_TARGET_BLOCKS.div_ceil(row_tiles).clamp(1, vtiles);
    let tps = vtiles.div_ceil(want);
    (tps, vtiles.div_ceil(tps))
}

/// Σ of the kept rows' losses (f32 scalar), each row's log-sum-exp in log2 units and its target's
/// logit ([n] f32 each) of x·wpᵀ (x [n, C] bf16, wp [V or Vp, C] bf16, read as Vp rows with
/// zeros past v: vp a multiple of 64), by
/// `lmce_target`, `lmce_lse_k*` and `lmce_combine`.
fn lmce_sm90_loss(x: &Tensor, wp: &Tensor, vp: usize, tt: &Tensor, v: usize) -> (Tensor, Tensor, Tensor) {
    let (n, c) = (x.dim(0), x.dim(1));
    let dev = x.device();
    let (tps, splits) = sm90_splits(n.div_ceil(SM90_ROWS), vp / SM90_TILE_N);
    // Every element of these is written by the kernels below (each split of each row, even one
    // without tiles: max −∞, sum 0).
    let pm = Tensor::uninit_on(&[n, splits], DType::F32, dev);
    let pl = Tensor::uninit_on(&[n, splits], DType::F32, dev);
    let tl = Tensor::uninit_on(&[n], DType::F32, dev);
    let lse2 = Tensor::uninit_on(&[n], DType::F32, dev);
    let lrows = Tensor::uninit_on(&[n], DType::F32, dev);
    x.with_storage(|s| {
        let Storage::Cuda(xs) = s else { unreachable!() };
        Args::new()
            .push(cuda_ptr(x))
            .push(c as u32)
            .push(cuda_ptr(wp))
            .push(c as u32)
            .push(cuda_ptr(tt))
            .push(n as u32)
            .push(c as u32)
            .push(cuda_ptr(&tl))
            .launch(&xs.dev, LMCE_TARGET, n.div_ceil(8) as u32, 256, 0);
        sm90_operands(x, wp, SM90_ROWS)
            .push(n as u32)
            .push(v as u32)
            .push(vp as u32)
            .push(tps as u32)
            .push(cuda_ptr(&pm))
            .push(cuda_ptr(&pl))
            .launch3(&xs.dev, LMCE_LSE_K.n((c / 64) as u32), (splits as u32, n.div_ceil(SM90_ROWS) as u32, 1), (384, 1, 1), sm90_smem(c));
        Args::new()
            .push(cuda_ptr(&pm))
            .push(cuda_ptr(&pl))
            .push(cuda_ptr(&tl))
            .push(cuda_ptr(tt))
            .push(n as u32)
            .push(splits as u32)
            .push(cuda_ptr(&lse2))
            .push(cuda_ptr(&lrows))
            .launch(&xs.dev, LMCE_COMBINE, n.div_ceil(256) as u32, 256, 0);
    });
    (lrows.sum_all(), lse2, tl)
}

/// The first arguments of the Hopper classifier GEMM kernels: TMA tensor maps of H (x [n, C],
/// boxes of `rows` rows: the kernel's block) and W (wp [V or Vp, C], boxes of SM90_TILE_N rows;
/// the TMA unit fills rows past its last with zeros), 64 columns a box.
fn sm90_operands(x: &Tensor, wp: &Tensor, rows: usize) -> Args {
    let mut a = Args::new();
    a.push(crate::cuda::tma_map_bf16(cuda_ptr(x), x.dim(0), x.dim(1), x.dim(1), 64, rows as u32));
    a.push(crate::cuda::tma_map_bf16(cuda_ptr(wp), wp.dim(0), wp.dim(1), wp.dim(1), 64, SM90_TILE_N as u32));
    a
}

/// The leading arguments of both gradient passes (`lmce_grad_k*`, `lmce_grad_dh_k*`): the operands'
/// tensor maps (H in boxes of `rows`), targets, n, v, Vp, vocabulary tiles a split, the rows'
/// log-sum-exp, 1 / rows kept, and g (at `g`, row stride Vp).
#[allow(clippy::too_many_arguments)]
fn sm90_grad_args(x: &Tensor, wp: &Tensor, vp: usize, rows: usize, tt: &Tensor, v: usize, tps: usize, lse2: &Tensor, inv_kept: &Tensor, g: u64) -> Args {
    let n = x.dim(0);
    let mut a = sm90_operands(x, wp, rows);
    a.push(cuda_ptr(tt)).push(n as u32).push(v as u32).push(vp as u32).push(tps as u32).push(cuda_ptr(lse2)).push(cuda_ptr(inv_kept)).push(g).push(vp as u32);
    a
}

/// The logits' gradient [n, Vp] bf16 of x·wpᵀ for rows x (given their log-sum-exp `lse2` and
/// target logits `tl` from `lmce_sm90_loss`), scaled by `inv_kept` (f64 scalar on the device),
/// zero past v and on ignored rows, by `lmce_grad_k*` (softmax·scale) and `lmce_patch` (the
/// targets' columns).
fn lmce_sm90_grad(x: &Tensor, wp: &Tensor, vp: usize, tt: &Tensor, v: usize, lse2: &Tensor, tl: &Tensor, inv_kept: &Tensor) -> Tensor {
    let (n, c) = (x.dim(0), x.dim(1));
    let (tps, splits) = sm90_splits(n.div_ceil(SM90_ROWS), vp / SM90_TILE_N);
    x.with_storage(|s| {
        let Storage::Cuda(xs) = s else { unreachable!() };
        // Rows up to the kernel's block of rows, so that its stores need no row test.
        let np = n.div_ceil(SM90_ROWS) * SM90_ROWS;
        let g = crate::cuda::CudaStorage::alloc(&xs.dev, DType::BF16, np * vp);
        sm90_grad_args(x, wp, vp, SM90_ROWS, tt, v, tps, lse2, inv_kept, g.ptr).launch3(&xs.dev, LMCE_GRAD_K.n((c / 64) as u32), (splits as u32, n.div_ceil(SM90_ROWS) as u32, 1), (384, 1, 1), sm90_smem(c));
        lmce_patch(&xs.dev, tt, lse2, tl, inv_kept, g.ptr, vp);
        Tensor::from_any(Storage::Cuda(g), &[np, vp], None).narrow(0, 0, n)
    })
}

/// g[row, target] = (softmax − 1)·scale for the kept rows of a gradient pass's g (at `g`, [n, vp]
/// bf16), by `lmce_patch`.
fn lmce_patch(dev: &std::sync::Arc<crate::cuda::CudaDevice>, tt: &Tensor, lse2: &Tensor, tl: &Tensor, inv_kept: &Tensor, g: u64, vp: usize) {
    let n = tt.dim(0);
    Args::new()
        .push(cuda_ptr(tt))
        .push(n as u32)
        .push(cuda_ptr(lse2))
        .push(cuda_ptr(tl))
        .push(cuda_ptr(inv_kept))
        .push(g)
        .push(vp as u32)
        .launch(dev, LMCE_PATCH, n.div_ceil(256) as u32, 256, 0);
}

/// The fused pass's rows a block (LMD_BM) and stages of W's tile (LMD_STAGES).
const DH_ROWS: usize = 128;
const DH_STAGES: usize = 4;

/// (vocabulary tiles per split, splits) of the fused gradient pass for `row_tiles` blocks of rows
/// over `vtiles` tiles on `sms` SMs. A block fills an SM (shared memory and registers), so the
/// pass takes as many block-times as it has waves, each as long as a split's tiles plus the
/// block's own start and end (H's tile in, dH's partial sums out: about `DH_BLOCK_TILES` tiles'
/// time). The split count that minimizes that, the fewest among equals. Each block walks its
/// split with its rows' dH in registers, so more splits only add partial sums to add.
///
/// gpt2-mini's 8192-row chunks (64 row tiles, 786 vocabulary tiles, 132 SMs): 2 splits, one wave
/// of 128 blocks of 393 tiles. Rounding the SMs a row tile gets up (3 splits) had made 192
/// blocks of 262 tiles: two waves, the second of 60 blocks, 524 tile-times against 393.
fn dh_splits(row_tiles: usize, vtiles: usize, sms: usize) -> (usize, usize) {
    let cost = |s: usize| dh_cost(row_tiles, sms, vtiles.div_ceil(s), s);
    let best = (1..=vtiles.min(DH_MAX_SPLITS)).min_by_key(|&s| (cost(s), s)).unwrap_or(1);
    let tps = vtiles.div_ceil(best);
    (tps, vtiles.div_ceil(tps))
}

/// A block's start and end in tiles' time (see `dh_splits`), and the most splits (each adds
/// [rows, C] f32 of partial sums).
const DH_BLOCK_TILES: usize = 2;
const DH_MAX_SPLITS: usize = 16;

/// The fused gradient pass's time in tile-times: waves × (tiles a split + a block's start and end).
fn dh_cost(row_tiles: usize, sms: usize, tps: usize, splits: usize) -> usize {
    (row_tiles * splits).div_ceil(sms.max(1)) * (tps + DH_BLOCK_TILES)
}

/// `lmce_sm90_grad`'s g, and dH = g·wp [n, C] bf16 with it: `lmce_grad_dh_k*` writes g (less the
/// one-hot part, which `lmce_patch` writes after it) and per vocabulary split f32 partial sums
/// of dH; `lmce_dh_final` adds those and the one-hot part.
fn lmce_sm90_grad_dh(x: &Tensor, wp: &Tensor, vp: usize, tt: &Tensor, v: usize, lse2: &Tensor, tl: &Tensor, inv_kept: &Tensor) -> (Tensor, Tensor) {
    let (n, c) = (x.dim(0), x.dim(1));
    let row_tiles = n.div_ceil(DH_ROWS);
    let vtiles = vp / SM90_TILE_N;
    x.with_storage(|s| {
        let Storage::Cuda(xs) = s else { unreachable!() };
        let (tps, splits) = dh_splits(row_tiles, vtiles, xs.dev.sm_count);
        // Rows up to the kernel's block of rows, so that the stores need no row test.
        let np = row_tiles * DH_ROWS;
        let g = crate::cuda::CudaStorage::alloc(&xs.dev, DType::BF16, np * vp);
        let part = crate::cuda::CudaStorage::alloc(&xs.dev, DType::F32, splits * np * c);
        let dx = crate::cuda::CudaStorage::alloc(&xs.dev, DType::BF16, n * c);
        let smem = hopper_smem(DH_ROWS, DH_STAGES, c);
        sm90_grad_args(x, wp, vp, DH_ROWS, tt, v, tps, lse2, inv_kept, g.ptr)
            .push(part.ptr)
            .push(np as u32)
            .launch3(&xs.dev, LMCE_GRAD_DH_K.n((c / 64) as u32), (splits as u32, row_tiles as u32, 1), (384, 1, 1), smem);
        Args::new()
            .push(part.ptr)
            .push(splits as u32)
            .push(np as u32)
            .push(cuda_ptr(tt))
            .push(n as u32)
            .push(c as u32)
            .push(cuda_ptr(wp))
            .push(cuda_ptr(inv_kept))
            .push(dx.ptr)
            .launch(&xs.dev, LMCE_DH_FINAL, (n * c / 8).div_ceil(256) as u32, 256, 0);
        lmce_patch(&xs.dev, tt, lse2, tl, inv_kept, g.ptr, vp);
        (Tensor::from_any(Storage::Cuda(g), &[np, vp], None).narrow(0, 0, n), Tensor::from_any(Storage::Cuda(dx), &[n, c], None))
    })
}

/// Targets [n] (i32, on the GPU) → (stored targets with -1 for ignored rows, 1 / rows kept as an
/// f64 scalar), on the device (`ce_targets`).
fn ce_targets_cuda(t: &Tensor, v: usize, ignore_index: Option<i64>) -> (Tensor, Tensor) {
    let n = t.numel();
    let stored = Tensor::uninit_on(&[n], DType::I32, t.device()); // all written by ce_targets
    let inv = Tensor::uninit_on(&[], DType::F64, t.device());
    t.with_storage(|s| {
        let Storage::Cuda(ts) = s else { unreachable!() };
        Args::new()
            .push(cuda_ptr(t))
            .push(cuda_ptr(&stored))
            .push(cuda_ptr(&inv))
            .push(n as u32)
            .push(v as u32)
            .push(ignore_index.unwrap_or(0))
            .push(ignore_index.is_some() as i32)
            .launch(&ts.dev, CE_TARGETS, 1, 1024, 0);
    });
    (stored, inv)
}

/// acc += a·b (16-bit a, b; contiguous f32 acc, all on one GPU) in one cuBLASLt GEMM; false when
/// cuBLASLt has no kernel for it (acc untouched).
fn gemm_acc_f32(a: &Tensor, b: &Tensor, acc: &Tensor) -> bool {
    assert!(acc.is_contiguous() && acc.layout().offset == 0, "gemm_acc_f32: a fresh contiguous accumulator");
    a.with_storage(|sa| {
        b.with_storage(|sb| {
            acc.with_storage(|sc| {
                let (Storage::Cuda(ca), Storage::Cuda(cb), Storage::Cuda(cc)) = (sa, sb, sc) else { return false };
                ca.matmul_acc_f32(a.layout(), cb, b.layout(), cc)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{dh_cost, dh_splits, DH_MAX_SPLITS};

    #[test]
    fn gradient_pass_splits_fill_whole_waves() {
        // gpt2-mini's chunk on an H100: one wave of 2 splits (128 blocks), not two waves of 3.
        assert_eq!(dh_splits(64, 786, 132), (393, 2));
        assert!(dh_cost(64, 132, 393, 2) < dh_cost(64, 132, 262, 3));
        // The whole batch at once: 256 row tiles are already two waves of one split.
        assert_eq!(dh_splits(256, 786, 132), (786, 1));
        // A single row tile spreads over the GPU, up to the cap.
        assert_eq!(dh_splits(1, 786, 132).1, DH_MAX_SPLITS);
        // Every split count is covered without an empty split, and none would be faster.
        for &(rt, vt, sms) in &[(64, 786, 132), (1, 786, 132), (256, 786, 132), (100, 50, 132), (7, 3, 8), (33, 786, 108), (1, 1, 1)] {
            let (tps, splits) = dh_splits(rt, vt, sms);
            assert!(tps * splits >= vt && tps * (splits - 1) < vt, "{splits} splits of {tps} tiles for {vt} tiles");
            for s in 1..=vt.min(DH_MAX_SPLITS) {
                let t = vt.div_ceil(s);
                assert!(dh_cost(rt, sms, tps, splits) <= dh_cost(rt, sms, t, vt.div_ceil(t)), "{rt} row tiles, {vt} tiles, {sms} SMs: {s} splits would be faster");
            }
        }
    }
}
