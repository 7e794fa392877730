//! `mlp_gelu`: a GELU MLP block, gelu_tanh(x·w1 + b1)·w2 + b2, as one op, so the GELU also rides
//! on epilogues: forward, the first GEMM writes gelu(pre) and keeps pre (`GELU_AUX_BIAS`);
//! backward, the GEMM that makes dh = g·w2ᵀ multiplies by gelu'(pre) as it writes (`DGELU`). On
//! Hopper one wgmma kernel (mlp_sm90.cu, `dgelu_sm90`) makes dh and also sums b1's gradient from
//! its registers, where a column-sum kernel would read dh again; where x is as wide as the
//! output (a transformer's MLP), the forward keeps no pre at all (`GELU_BIAS`) and that kernel
//! makes pre again from x beside dh (`dgelu_rc`, FMLAB_MLP_RECOMPUTE=0 to keep pre). The
//! composite runs a GELU kernel each way, reading and writing the [rows, hidden] activations
//! once more each. Twin: `mlp_gelu_slow`, below.

use super::linear::{casts_f32_master, colsum_final, cuda_buffer, fusable, gemm_epi};
use super::sm90::{sm90_smem, SM90_ROWS};
use crate::cuda::gemm::Epilogue;
use crate::op::{Backward, CustomOp, Fwd};
use crate::settings::{MLP_RECOMPUTE, MLP_SM90};
use crate::tensor::{cuda_ptr, Storage};
use crate::Tensor;
use crate::cuda::kernel::{Arch, Kernel, KernelId, Module};

/// Its Hopper kernels (sm_90a; hopper_gemm.cuh first).
pub(crate) static KERNELS_SM90: Module = Module { name: "mlp_sm90", sources: &[include_str!("hopper_gemm.cuh"), include_str!("mlp_sm90.cu")], arch: Arch::Sm90a, entries: &["mlp_dgelu_k", "mlp_dgelu_rc_k"] };
const MLP_DGELU_RC_K: Kernel = KERNELS_SM90.kernel("mlp_dgelu_rc_k");
const MLP_DGELU_K: Kernel = KERNELS_SM90.kernel("mlp_dgelu_k");

/// gelu_tanh(x·w1 + b1)·w2 + b2 over x [rows, K]; inputs [x, w1, b1, w2, b2]; saved [h] (pre made
/// again in backward) or [h, pre], h = gelu(pre).
pub struct MlpGelu;

impl CustomOp for MlpGelu {
    fn name(&self) -> String {
        "mlp_gelu".into()
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let [x2, w1, b1, w2, b2] = inputs else { unreachable!("mlp_gelu: inputs x, w1, b1, w2, b2") };
        let rows = x2.dim(0);
        // Keep pre for the backward, or (Hopper) write h only and let the backward make pre again.
        let (h, pre) = if recompute_applies(x2, w1, b1, w2) {
            (gemm_epi(x2, w1, Epilogue::GeluBias, Some(b1), None)?, None)
        } else {
            let pre = cuda_buffer(x2, &[rows, w1.dim(1)]); // [rows, H], written by the epilogue
            (gemm_epi(x2, w1, Epilogue::GeluAuxBias, Some(b1), Some(&pre))?, Some(pre))
        };
        let y = h.linear(w2, Some(b2)); // [rows, N]
        Some(Fwd::new(y, std::iter::once(h).chain(pre).collect()))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let sums = cx.take_column_sums(cx.g);
        let [x, w1, b1, w2, b2] = cx.inputs() else { unreachable!() };
        let (h, pre) = (&cx.saved()[0], cx.saved().get(1));
        mlp_gelu_backward(x, w1, b1, w2, b2, h, pre, cx.g, sums).map(Some).into()
    }
}

impl Tensor {
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
        match Tensor::apply_op(MlpGelu, &[x2, w1.clone(), b1.clone(), w2.clone(), b2.clone()]) {
            Some(y) => y.reshape(&out_shape),
            None => self.mlp_gelu_slow(w1, b1, w2, b2),
        }
    }

    /// The unfused twin of `mlp_gelu`: two `linear`s around a `gelu_tanh`.
    pub fn mlp_gelu_slow(&self, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Tensor {
        self.linear(w1, Some(b1)).gelu_tanh().linear(w2, Some(b2))
    }
}

/// (dx, dw1, db1, dw2, db2) of `mlp_gelu` for the upstream gradient g [rows, N], from the
/// held h = gelu(pre) and pre (None: made again here).
#[allow(clippy::too_many_arguments)]
fn mlp_gelu_backward(x: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor, h: &Tensor, pre: Option<&Tensor>, g: &Tensor, g_sums: Option<Tensor>) -> [Tensor; 5] {
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
    let dpre = gemm_epi(g, &w2.t(), Epilogue::DGelu, None, Some(pre)).unwrap_or_else(|| super::gelu::gelu_backward(pre, &g.matmul(&w2.t()), true));
    let (dx, dw1, db1) = Tensor::linear_backward(x, w1, b1, &dpre, None);
    [dx, dw1, db1, dw2, db2]
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
    shapes && widths && kinds && x.with_storage(|s| matches!(s, Storage::Cuda(xs) if xs.device().has_module(&KERNELS_SM90) && xs.at(x.layout().offset) % 16 == 0))
}

/// (dpre [rows, H] bf16, db1 [H] f32) of `mlp_gelu` with pre made again, by `mlp_dgelu_rc_k*` and
/// `colsum16_final`: dpre = (g·w2ᵀ) ⊙ gelu'(x·w1 + b1), db1 = Σ_rows dpre. Where
/// `recompute_applies` (and g is [rows, K]; copied contiguous if it is not); None elsewhere.
fn dgelu_rc(g: &Tensor, w2: &Tensor, x: &Tensor, w1: &Tensor, b1: &Tensor) -> Option<(Tensor, Tensor)> {
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
    let id = MLP_DGELU_RC_K.n((k / 64) as u32).n(mn1 as u32).n(mn2 as u32);
    let smem = (MLR_STAGES * 2 * MLR_BN * k * 2 + 1024) as u32;
    // part: a row per 16 rows of x.
    let db = dgelu_launch(x, id, np / MLR_BM, smem, np / 16, hid, |a| {
        a.push(map(&w1s)).push(map(&w2s));
        a.push(cuda_ptr(x)).push(cuda_ptr(&g)).push(cuda_ptr(b1)).push(rows as u32).push(hid as u32).push(cuda_ptr(&out));
    });
    Some((out.narrow(0, 0, rows), db))
}

/// Launches one of mlp_sm90.cu's dgelu kernels (block 384, grid (1, blocks)) on `like`'s device
/// with the arguments `args` pushes and then `part`, [part_rows, hid] f32 partial column sums,
/// which `colsum16_final` adds into b1's gradient [hid] f32 (returned).
fn dgelu_launch(like: &Tensor, id: KernelId, blocks: usize, smem: u32, part_rows: usize, hid: usize, args: impl FnOnce(&mut crate::cuda::Args)) -> Tensor {
    like.with_storage(|s| {
        let Storage::Cuda(ls) = s else { unreachable!("dgelu_launch off the GPU") };
        let dev = ls.device();
        let part = crate::cuda::CudaStorage::alloc(dev, crate::DType::F32, part_rows * hid);
        let db = crate::cuda::CudaStorage::alloc(dev, crate::DType::F32, hid);
        let mut a = crate::cuda::Args::new();
        args(&mut a);
        a.push(part.ptr).launch3(dev, id, (1, blocks as u32, 1), (384, 1, 1), smem);
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
    use crate::DType::BF16;
    let (rows, k, hid) = (g.dim(0), g.dim(1), pre.dim(1));
    let shapes = g.rank() == 2 && pre.rank() == 2 && pre.dim(0) == rows && w2.shape() == [hid, k] && rows > 0 && rows <= u32::MAX as usize;
    let kinds = [g, w2, pre].iter().all(|t| t.dtype() == BF16) && g.is_contiguous() && pre.is_contiguous();
    if !(MLP_SM90.on() && shapes && kinds && k.is_multiple_of(64) && (64..=256).contains(&k) && hid.is_multiple_of(64) && hid > 0) {
        return None;
    }
    let ok = g.with_storage(|s| matches!(s, Storage::Cuda(gs) if gs.device().has_module(&KERNELS_SM90) && gs.at(g.layout().offset) % 16 == 0))
        && pre.with_storage(|s| matches!(s, Storage::Cuda(ps) if ps.at(pre.layout().offset) % 4 == 0));
    if !ok {
        return None;
    }
    let w2c = w2.contiguous(); // [H, K]
    let np = rows.div_ceil(SM90_ROWS) * SM90_ROWS;
    let out = cuda_buffer(g, &[np, hid]); // rows past `rows` are written as zeros
    // part: a row per 32 rows of g.
    let db = dgelu_launch(g, MLP_DGELU_K.n((k / 64) as u32), np / SM90_ROWS, sm90_smem(k), np / 32, hid, |a| {
        a.push(crate::cuda::tma_map_bf16(cuda_ptr(g), rows, k, k, 64, SM90_ROWS as u32));
        a.push(crate::cuda::tma_map_bf16(cuda_ptr(&w2c), hid, k, k, 64, 64));
        a.push(cuda_ptr(pre)).push(rows as u32).push(hid as u32).push(cuda_ptr(&out));
    });
    Some((out.narrow(0, 0, rows), db))
}
