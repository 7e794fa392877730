//! `linear`: y = x·w + b as one op, so that on the GPU the bias rides on cuBLASLt epilogues: the
//! forward GEMM adds it (`CUBLASLT_EPILOGUE_BIAS`) and the weight-gradient GEMM also writes the
//! bias gradient, the column sums of the output gradient (`CUBLASLT_EPILOGUE_BGRADA`; in mixed
//! precision a column-sum kernel instead, faster there: see `linear_param_grads`). The
//! composite (matmul, then a broadcast add; backward a column reduction) costs a full extra pass
//! over the [rows, N] output each way. Twin: `linear_slow` (ops.rs). Where cuBLASLt has no
//! kernel for an epilogue (or off the GPU) the same work is done by separate ops.
//!
//! `mlp_gelu`: a GELU MLP block, gelu_tanh(x·w1 + b1)·w2 + b2, as one op, so the GELU also rides
//! on epilogues: forward, the first GEMM writes gelu(pre) and keeps pre (`GELU_AUX_BIAS`);
//! backward, the GEMM that makes dh = g·w2ᵀ multiplies by gelu'(pre) as it writes (`DGELU`). On
//! Hopper one wgmma kernel (mlp_sm90.cu, `dgelu_sm90`) makes dh and also sums b1's gradient from
//! its registers, where a column-sum kernel would read dh again; where x is as wide as the
//! output (a transformer's MLP), the forward keeps no pre at all (`GELU_BIAS`) and that kernel
//! makes pre again from x beside dh (`dgelu_rc`, FMLAB_MLP_RECOMPUTE=0 to keep pre). The
//! composite runs a GELU kernel each way, reading and writing the [rows, hidden] activations
//! once more each. Twin: `mlp_gelu_slow` (ops.rs).

use crate::cuda::gemm::Epilogue;
use crate::op::Op;
use crate::tensor::Storage;
use crate::Tensor;

/// C = a·b (2-D) with an epilogue on CUDA storage; `vec` is the bias (read) or the bias gradient
/// (written), `aux` the GELU epilogues' [M, N] matrix (contiguous). None when cuBLASLt cannot
/// fuse it here.
pub(crate) fn gemm_epi(a: &Tensor, b: &Tensor, epi: Epilogue, vec: Option<&Tensor>, aux: Option<&Tensor>) -> Option<Tensor> {
    let (m, n) = (a.dim(0), b.dim(1));
    let pa = aux.map_or(0, |t| {
        assert_eq!(t.shape(), &[m, n], "GELU epilogue: aux {:?} for a [{m}, {n}] product", t.shape());
        crate::fused::cuda_ptr(t)
    });
    let s = a.with_storage(|sa| {
        b.with_storage(|sb| {
            let (Storage::Cuda(ca), Storage::Cuda(cb)) = (sa, sb) else { return None };
            let pv = vec.map_or(0, crate::fused::cuda_ptr);
            ca.matmul_epi(a.layout(), cb, b.layout(), epi, pv, pa)
        })
    })?;
    Some(Tensor::from_any(Storage::Cuda(s), &[m, n], None))
}

/// Whether `t` is a 16-bit cast of an f32 tensor, directly or through reshapes and permutes (a
/// Linear's weight is `cast(w).t()`): its gradient is bound for an f32 master.
pub(crate) fn casts_f32_master(t: &Tensor) -> bool {
    if !matches!(t.dtype(), crate::DType::BF16 | crate::DType::F16) {
        return false;
    }
    let mut t = t.clone();
    loop {
        let next = match t.op() {
            Some(Op::Cast(src)) => return src.dtype() == crate::DType::F32,
            Some(Op::Permute(src, _)) | Some(Op::Reshape(src)) => src.clone(),
            _ => return false,
        };
        t = next;
    }
}

/// FMLAB_DW_SPLIT=0: mixed-precision bias gradients from the weight-gradient GEMM's epilogue
/// again (read once).
fn dw_split() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FMLAB_DW_SPLIT").is_none_or(|v| v != "0"))
}

/// Whether `bias_grad_f32` takes g: a contiguous 16-bit [rows, N] on a GPU, N a multiple of 8,
/// rows 16-byte aligned.
fn bias_grad_applies(g: &Tensor) -> bool {
    if !(g.rank() == 2 && g.is_contiguous() && matches!(g.dtype(), crate::DType::BF16 | crate::DType::F16)) {
        return false;
    }
    let (rows, k) = (g.dim(0), g.dim(1));
    g.with_storage(|s| match s {
        Storage::Cuda(gs) => k % 8 == 0 && gs.at(g.layout().offset) % 16 == 0 && rows > 0 && rows <= u32::MAX as usize && k <= u32::MAX as usize,
        _ => false,
    })
}

/// Σ over rows of g (see `bias_grad_applies`) in f32, by `colsum16_*`.
fn bias_grad_f32(g: &Tensor) -> Tensor {
    use crate::cuda::Args;
    let (rows, k) = (g.dim(0), g.dim(1));
    g.with_storage(|s| {
        let Storage::Cuda(gs) = s else { unreachable!("bias_grad_f32 off the GPU") };
        let p = gs.at(g.layout().offset);
        let dev = gs.device();
        // About four 256-thread blocks per SM of an H100 over all strips. Measured (gpt2-mini
        // step, one call): 264 blocks 21.1 / 21.0 ms, 528 21.0 / 21.0, 1056 21.8 / 21.8 (the
        // final kernel's partials grow with the blocks).
        let strips = k.div_ceil(256);
        let splits = (528 / strips).clamp(1, rows.div_ceil(32));
        let rps = rows.div_ceil(splits);
        let splits = rows.div_ceil(rps);
        let part = crate::cuda::CudaStorage::alloc(dev, crate::DType::F32, splits * k);
        let out = crate::cuda::CudaStorage::alloc(dev, crate::DType::F32, k);
        let sfx = crate::cuda::storage::sfx(g.dtype());
        Args::new().push(p).push(part.ptr).push(rows as u32).push(k as u32).push(rps as u32).launch3(dev, &format!("colsum16_{sfx}"), (strips as u32, splits as u32, 1), (32, 8, 1), 0);
        colsum_final(dev, part.ptr, out.ptr, k, splits);
        Tensor::from_any(Storage::Cuda(out), &[k], None)
    })
}

/// out[c] = Σ_s part[s, c] (f32 [splits, k] partial column sums) in a fixed order, by `colsum16_final`.
fn colsum_final(dev: &std::sync::Arc<crate::cuda::CudaDevice>, part: u64, out: u64, k: usize, splits: usize) {
    crate::cuda::Args::new().push(part).push(out).push(k as u32).push(splits as u32).launch3(dev, "colsum16_final", (k.div_ceil(8) as u32, 1, 1), (8, 128, 1), 0);
}

/// FMLAB_EPILOGUE=0 turns the fused paths off (read once: this runs for every Linear).
fn epilogues_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FMLAB_EPILOGUE").is_none_or(|v| v != "0"))
}

fn fusable(x: &Tensor, w: &Tensor, b: &Tensor) -> bool {
    let same = x.dtype() == w.dtype() && x.dtype() == b.dtype() && x.dtype().is_float();
    let dev = x.device().is_cuda() && w.device() == x.device() && b.device() == x.device();
    same && dev && b.rank() == 1 && b.is_contiguous() && epilogues_on()
}

/// An uninitialized contiguous tensor on x's (CUDA) device: a buffer a GEMM epilogue fills.
fn cuda_buffer(like: &Tensor, shape: &[usize]) -> Tensor {
    let s = like.with_storage(|s| match s {
        Storage::Cuda(c) => crate::cuda::CudaStorage::alloc(c.device(), like.dtype(), shape.iter().product()),
        s => unreachable!("cuda_buffer of a tensor on {}", s.device()),
    });
    Tensor::from_any(Storage::Cuda(s), shape, None)
}

impl Tensor {
    /// x [.., K] · w [K, N] (any strides; `weight.t()` of an [N, K] weight is free) + bias [N].
    /// x, w and the bias share a dtype (cast masters first, as `nn::Linear` does).
    pub fn linear(&self, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let Some(b) = bias.filter(|b| fusable(self, w, b)) else { return self.linear_slow(w, bias) };
        assert!(w.rank() == 2 && b.shape() == [w.dim(1)], "linear: weight {:?} and bias {:?}", w.shape(), b.shape());
        let k = self.dim(self.rank() - 1);
        let rows = self.numel() / k.max(1);
        let mut out_shape = self.shape().to_vec();
        *out_shape.last_mut().unwrap() = w.dim(1);
        let x2 = self.reshape(&[rows, k]); // [rows, K]
        let y = {
            let _ng = crate::no_grad();
            gemm_epi(&x2, w, Epilogue::Bias, Some(b), None)
        };
        let Some(y) = y else { return self.linear_slow(w, bias) };
        let tracked = crate::grad_enabled() && [&x2, w, b].iter().any(|t| t.track_grad());
        let y = if tracked { y.with_op(Op::Linear(x2, w.clone(), b.clone())) } else { y };
        y.reshape(&out_shape)
    }

    /// (dx, dw, db) of `linear` for the upstream gradient g [rows, N]: db from the dW GEMM's
    /// epilogue when cuBLASLt has one for these operands, else a column sum.
    /// `g_sums`: g's column sums (f32) where already made (backward.rs `ColumnSums`).
    pub(crate) fn linear_backward(x: &Tensor, w: &Tensor, b: &Tensor, g: &Tensor, g_sums: Option<Tensor>) -> (Tensor, Tensor, Tensor) {
        let dx = g.matmul(&w.t());
        let (dw, db) = Tensor::linear_param_grads(x, w, b, g, g_sums);
        (dx, dw, db)
    }

    /// (dw, db) of `linear`: dw = xᵀ·g with db from the same GEMM's epilogue where cuBLASLt has
    /// one, else a column sum. When w and b are 16-bit casts of f32 masters (mixed precision),
    /// both are made in f32: the casts' backward then has nothing to do, and the gradients skip a
    /// rounding to bf16 (they are f32 tensors in the 16-bit w's and b's slots). There dw comes
    /// from a plain GEMM with an f32 output and db from `colsum16`, a second read of g: cuBLASLt's
    /// bias-gradient epilogue picks slower kernels for these long-K, small-output GEMMs (H100,
    /// gpt2-mini: the 48 weight-gradient GEMMs 2.95 ms a step with the epilogue, 1.72 without;
    /// the step 21.7 / 21.7 → 21.0 / 21.0 ms with the column sums, interleaved in one call).
    /// FMLAB_DW_SPLIT=0 goes back to the epilogue.
    /// `g_sums`, g's column sums in f32 where already made, are the f32 bias gradient as is.
    fn linear_param_grads(x: &Tensor, w: &Tensor, b: &Tensor, g: &Tensor, g_sums: Option<Tensor>) -> (Tensor, Tensor) {
        if let Some(dw) = Tensor::weight_grad_f32(x, w, b, g) {
            return (dw, g_sums.unwrap_or_else(|| bias_grad_f32(g)));
        }
        if casts_f32_master(w) && casts_f32_master(b) {
            let db = Tensor::zeros_on(&[g.dim(1)], crate::DType::F32, b.device());
            if let Some(dw) = gemm_epi(&x.t(), g, Epilogue::BiasGradF32, Some(&db), None) {
                return (dw, db);
            }
        }
        let db = Tensor::zeros_on(&[g.dim(1)], b.dtype(), b.device());
        match gemm_epi(&x.t(), g, Epilogue::BiasGrad, Some(&db), None) {
            Some(dw) => (dw, db),
            None => (x.t().matmul(g), g.sum(&[0], false)),
        }
    }

    /// Mixed precision's dw = xᵀ·g as an f32 GEMM output (`OutF32`), where the bias gradient is a
    /// column sum of g (`bias_grad_f32`, or one made with g): None where that is not the path.
    fn weight_grad_f32(x: &Tensor, w: &Tensor, b: &Tensor, g: &Tensor) -> Option<Tensor> {
        if !(casts_f32_master(w) && casts_f32_master(b) && dw_split() && bias_grad_applies(g)) {
            return None;
        }
        gemm_epi(&x.t(), g, Epilogue::OutF32, None, None)
    }

    /// gelu_tanh(x·w1 + b1)·w2 + b2 for x [.., K], w1 [K, H], w2 [H, N] (any strides), biases [H]
    /// and [N], all one dtype: a GELU MLP block as one op (see the module doc).
    pub fn mlp_gelu(&self, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Tensor {
        if !(fusable(self, w1, b1) && fusable(self, w2, b2)) {
            return self.mlp_gelu_slow(w1, b1, w2, b2);
        }
        assert!(w1.rank() == 2 && w2.rank() == 2 && b1.shape() == [w1.dim(1)] && w2.dim(0) == w1.dim(1) && b2.shape() == [w2.dim(1)], "mlp_gelu: w1 {:?}, b1 {:?}, w2 {:?}, b2 {:?}", w1.shape(), b1.shape(), w2.shape(), b2.shape());
        let k = self.dim(self.rank() - 1);
        let rows = self.numel() / k.max(1);
        let mut out_shape = self.shape().to_vec();
        *out_shape.last_mut().unwrap() = w2.dim(1);
        let x2 = self.reshape(&[rows, k]); // [rows, K]
        let (h, pre, y) = {
            let _ng = crate::no_grad();
            // Keep pre for the backward, or (Hopper) write h only and let the backward make pre again.
            let (h, pre) = if recompute_applies(&x2, w1, b1, w2) {
                let Some(h) = gemm_epi(&x2, w1, Epilogue::GeluBias, Some(b1), None) else { return self.mlp_gelu_slow(w1, b1, w2, b2) };
                (h, None)
            } else {
                let pre = cuda_buffer(&x2, &[rows, w1.dim(1)]); // [rows, H], written by the epilogue
                let Some(h) = gemm_epi(&x2, w1, Epilogue::GeluAuxBias, Some(b1), Some(&pre)) else { return self.mlp_gelu_slow(w1, b1, w2, b2) };
                (h, Some(pre))
            };
            let y = h.linear(w2, Some(b2)); // [rows, N]
            (h, pre, y)
        };
        let tracked = crate::grad_enabled() && [&x2, w1, b1, w2, b2].iter().any(|t| t.track_grad());
        let y = if tracked { y.with_op(Op::MlpGelu(x2, w1.clone(), b1.clone(), w2.clone(), b2.clone(), h, pre)) } else { y };
        y.reshape(&out_shape)
    }

    /// (dx, dw1, db1, dw2, db2) of `mlp_gelu` for the upstream gradient g [rows, N], from the
    /// held h = gelu(pre) and pre (None: made again here).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mlp_gelu_backward(x: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor, h: &Tensor, pre: Option<&Tensor>, g: &Tensor, g_sums: Option<Tensor>) -> [Tensor; 5] {
        // Second layer's weight and bias gradients (dw2 = hᵀ·g, db2 from its epilogue).
        let (dw2, db2) = Tensor::linear_param_grads(h, w2, b2, g, g_sums);
        // On Hopper, dpre and b1's gradient in one pass (mlp_sm90.cu), pre read or made again.
        let hopper = match pre {
            Some(pre) => dgelu_sm90(g, w2, pre),
            None => dgelu_rc(g, w2, x, w1, b1),
        };
        if let Some((dpre, db1)) = hopper {
            let dx = dpre.matmul(&w1.t());
            let dw1 = Tensor::weight_grad_f32(x, w1, b1, &dpre).unwrap_or_else(|| x.t().matmul(&dpre));
            let db1 = if casts_f32_master(b1) { db1 } else { db1.to_dtype(b1.dtype()) };
            return [dx, dw1, db1, dw2, db2];
        }
        let made;
        let pre = match pre {
            Some(pre) => pre,
            None => {
                made = {
                    let _ng = crate::no_grad();
                    x.linear(w1, Some(b1))
                };
                &made
            }
        };
        // dpre = (g·w2ᵀ) ⊙ gelu'(pre) in one GEMM.
        let dpre = gemm_epi(g, &w2.t(), Epilogue::DGelu, None, Some(pre)).unwrap_or_else(|| Tensor::gelu_backward(pre, &g.matmul(&w2.t()), true));
        let (dx, dw1, db1) = Tensor::linear_backward(x, w1, b1, &dpre, None);
        [dx, dw1, db1, dw2, db2]
    }
}

/// The Hopper MLP backward where it applies (FMLAB_MLP_SM90).
static MLP_SM90: crate::switch::Switch = crate::switch::Switch::new("FMLAB_MLP_SM90");

/// Whether `mlp_gelu`'s backward makes the hidden gradient and the first bias's gradient in one
/// Hopper kernel (mlp_sm90.cu) where it applies (Some(true)), or by cuBLASLt's DGELU epilogue and
/// a column sum (Some(false)); None restores the default: on, unless FMLAB_MLP_SM90=0. For
/// benchmarks and tests that compare the two. Process-wide.
pub fn mlp_sm90(on: Option<bool>) {
    MLP_SM90.set(on);
}

/// Whether `mlp_gelu`'s Hopper backward makes pre again (mlp_sm90.cu `mlp_dgelu_rc_k*`) instead
/// of reading the forward's (FMLAB_MLP_RECOMPUTE).
static MLP_RECOMPUTE: crate::switch::Switch = crate::switch::Switch::new("FMLAB_MLP_RECOMPUTE");

/// Whether `mlp_gelu` on Hopper keeps no pre-activation and its backward makes it again from x
/// (Some(true)), or keeps it (Some(false)); None restores the default: on, unless
/// FMLAB_MLP_RECOMPUTE=0. Applies to `mlp_gelu` calls made after it. Process-wide.
pub fn mlp_recompute(on: Option<bool>) {
    MLP_RECOMPUTE.set(on);
}

/// Must match mlp_sm90.cu: rows a block (MLR_BM), hidden columns a tile (LM_BN), stages of the
/// ring (MLR_STAGES, each a tile of w1 and one of w2), the widest hidden layer (MLR_MAX_HID: b1
/// is copied into shared memory). Dynamic shared memory: the ring, 1 KB for its alignment.
const MLR_BM: usize = 128;
const MLR_BN: usize = 64;
const MLR_STAGES: usize = 3;
const MLR_MAX_HID: usize = 4096;

/// Whether `dgelu_rc` takes this MLP (checked in the forward, which then keeps no pre): bf16 on
/// an sm_90 GPU, x [rows, K] contiguous and 16-byte aligned with K = 64..256 a multiple of 64
/// and equal to the output width, a hidden width H a multiple of 64 up to MLR_MAX_HID.
fn recompute_applies(x: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor) -> bool {
    use crate::DType::BF16;
    if !(MLP_SM90.on() && MLP_RECOMPUTE.on()) || x.rank() != 2 || w1.rank() != 2 || w2.rank() != 2 {
        return false;
    }
    let (rows, k, hid) = (x.dim(0), x.dim(1), w1.dim(1));
    let shapes = w1.dim(0) == k && w2.shape() == [hid, k] && b1.shape() == [hid] && rows > 0 && rows <= u32::MAX as usize;
    let widths = k.is_multiple_of(64) && (64..=256).contains(&k) && hid.is_multiple_of(64) && hid > 0 && hid <= MLR_MAX_HID;
    let kinds = [x, w1, b1, w2].iter().all(|t| t.dtype() == BF16) && x.is_contiguous() && b1.is_contiguous();
    shapes && widths && kinds && x.with_storage(|s| matches!(s, Storage::Cuda(xs) if xs.device().has_module("mlp_sm90") && xs.at(x.layout().offset) % 16 == 0))
}

/// (dpre [rows, H] bf16, db1 [H] f32) of `mlp_gelu` with pre made again, by `mlp_dgelu_rc_k*` and
/// `colsum16_final`: dpre = (g·w2ᵀ) ⊙ gelu'(x·w1 + b1), db1 = Σ_rows dpre. Where
/// `recompute_applies` (and g is [rows, K]; copied contiguous if it is not); None elsewhere.
fn dgelu_rc(g: &Tensor, w2: &Tensor, x: &Tensor, w1: &Tensor, b1: &Tensor) -> Option<(Tensor, Tensor)> {
    use crate::fused::cuda_ptr;
    use crate::DType::BF16;
    if !(recompute_applies(x, w1, b1, w2) && g.dtype() == BF16 && g.shape() == [x.dim(0), x.dim(1)]) {
        return None;
    }
    let (rows, k, hid) = (x.dim(0), x.dim(1), w1.dim(1));
    let g = g.contiguous();
    if !g.with_storage(|s| matches!(s, Storage::Cuda(gs) if gs.at(g.layout().offset) % 4 == 0)) {
        return None;
    }
    // Each weight as stored, [H, K] (read K-major) or [K, H] (read N-major, `mn`); a copy only
    // for other strides. Both N-major has no kernel: w2 is copied then.
    let stored = |w: &Tensor, mn_ok: bool| -> (Tensor, bool) {
        let aligned = |t: &Tensor| t.is_contiguous() && cuda_ptr(t) % 16 == 0;
        if mn_ok && aligned(&w.t()) {
            (w.t(), true)
        } else if aligned(w) {
            (w.clone(), false)
        } else {
            (w.contiguous(), false)
        }
    };
    let (w1s, mn1) = stored(&w1.t(), true); // w1ᵀ is [H, K]
    let (w2s, mn2) = stored(w2, !mn1);
    let map = |w: &Tensor| {
        let (r, c) = (w.dim(0), w.dim(1));
        crate::cuda::tma_map_bf16(cuda_ptr(w), r, c, c, 64, MLR_BN as u32)
    };
    let np = rows.div_ceil(MLR_BM) * MLR_BM;
    let out = cuda_buffer(x, &[np, hid]); // rows past `rows` are written as zeros
    let name = format!("mlp_dgelu_rc_k{}_{}{}", k / 64, mn1 as u8, mn2 as u8);
    let smem = (MLR_STAGES * 2 * MLR_BN * k * 2 + 1024) as u32;
    // part: a row per 16 rows of x.
    let db = dgelu_launch(x, &name, np / MLR_BM, smem, np / 16, hid, |a| {
        a.push(map(&w1s)).push(map(&w2s));
        a.push(cuda_ptr(x)).push(cuda_ptr(&g)).push(cuda_ptr(b1)).push(rows as u32).push(hid as u32).push(cuda_ptr(&out));
    });
    Some((out.narrow(0, 0, rows), db))
}

/// Launches one of mlp_sm90.cu's dgelu kernels (block 384, grid (1, blocks)) on `like`'s device
/// with the arguments `args` pushes and then `part`, [part_rows, hid] f32 partial column sums,
/// which `colsum16_final` adds into b1's gradient [hid] f32 (returned).
fn dgelu_launch(like: &Tensor, name: &str, blocks: usize, smem: u32, part_rows: usize, hid: usize, args: impl FnOnce(&mut crate::cuda::Args)) -> Tensor {
    like.with_storage(|s| {
        let Storage::Cuda(ls) = s else { unreachable!("dgelu_launch off the GPU") };
        let dev = ls.device();
        let part = crate::cuda::CudaStorage::alloc(dev, crate::DType::F32, part_rows * hid);
        let db = crate::cuda::CudaStorage::alloc(dev, crate::DType::F32, hid);
        let mut a = crate::cuda::Args::new();
        args(&mut a);
        a.push(part.ptr).launch3(dev, name, (1, blocks as u32, 1), (384, 1, 1), smem);
        colsum_final(dev, part.ptr, db.ptr, hid, part_rows);
        Tensor::from_any(Storage::Cuda(db), &[hid], None)
    })
}

/// (dpre [rows, H] bf16, db1 [H] f32) of `mlp_gelu` by `mlp_dgelu_k*` and `colsum16_final`: dpre =
/// (g·w2ᵀ) ⊙ gelu'(pre), db1 = Σ_rows dpre. Applies to bf16 on an sm_90 GPU with g [rows, K]
/// contiguous (16-byte aligned, K = 64..256 a multiple of 64: its block of rows stays in shared
/// memory), pre [rows, H] contiguous with H a multiple of 64; w2 [H, K] any strides (copied
/// contiguous, H·K·2 bytes: a Linear's weight is a transposed view). None elsewhere.
fn dgelu_sm90(g: &Tensor, w2: &Tensor, pre: &Tensor) -> Option<(Tensor, Tensor)> {
    use crate::classifier::{sm90_smem, SM90_ROWS};
    use crate::fused::cuda_ptr;
    use crate::DType::BF16;
    let (rows, k, hid) = (g.dim(0), g.dim(1), pre.dim(1));
    let shapes = g.rank() == 2 && pre.rank() == 2 && pre.dim(0) == rows && w2.shape() == [hid, k] && rows > 0 && rows <= u32::MAX as usize;
    let kinds = [g, w2, pre].iter().all(|t| t.dtype() == BF16) && g.is_contiguous() && pre.is_contiguous();
    if !(MLP_SM90.on() && shapes && kinds && k.is_multiple_of(64) && (64..=256).contains(&k) && hid.is_multiple_of(64) && hid > 0) {
        return None;
    }
    let ok = g.with_storage(|s| matches!(s, Storage::Cuda(gs) if gs.device().has_module("mlp_sm90") && gs.at(g.layout().offset) % 16 == 0))
        && pre.with_storage(|s| matches!(s, Storage::Cuda(ps) if ps.at(pre.layout().offset) % 4 == 0));
    if !ok {
        return None;
    }
    let w2c = w2.contiguous(); // [H, K]
    let np = rows.div_ceil(SM90_ROWS) * SM90_ROWS;
    let out = cuda_buffer(g, &[np, hid]); // rows past `rows` are written as zeros
    // part: a row per 32 rows of g.
    let db = dgelu_launch(g, &format!("mlp_dgelu_k{}", k / 64), np / SM90_ROWS, sm90_smem(k), np / 32, hid, |a| {
        a.push(crate::cuda::tma_map_bf16(cuda_ptr(g), rows, k, k, 64, SM90_ROWS as u32));
        a.push(crate::cuda::tma_map_bf16(cuda_ptr(&w2c), hid, k, k, 64, 64));
        a.push(cuda_ptr(pre)).push(rows as u32).push(hid as u32).push(cuda_ptr(&out));
    });
    Some((out.narrow(0, 0, rows), db))
}
