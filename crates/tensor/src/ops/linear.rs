//! `linear`: y = x·w + b as one op, so that on the GPU the bias rides on cuBLASLt epilogues: the
//! forward GEMM adds it (`CUBLASLT_EPILOGUE_BIAS`) and the weight-gradient GEMM also writes the
//! bias gradient, the column sums of the output gradient (`CUBLASLT_EPILOGUE_BGRADA`; in mixed
//! precision a column-sum kernel instead, faster there: see `linear_param_grads`). The
//! composite (matmul, then a broadcast add; backward a column reduction) costs a full extra pass
//! over the [rows, N] output each way. Twin: `linear_slow`, below. Where cuBLASLt has no
//! kernel for an epilogue (or off the GPU) the same work is done by separate ops.

use crate::cuda::gemm::Epilogue;
use crate::op::{Backward, CustomOp, Fwd};
use crate::op::Op;
use crate::tensor::{cuda_ptr, Storage};
use crate::Tensor;
use crate::cuda::kernel::{Arch, Kernel, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "linear", sources: &[include_str!("linear.cu")], arch: Arch::Device, entries: &["colsum16", "colsum16_final"] };
const COLSUM16: Kernel = KERNELS.kernel("colsum16");
const COLSUM16_FINAL: Kernel = KERNELS.kernel("colsum16_final");

/// x [rows, K] · w [K, N] + b [N] with the bias in the GEMM's epilogues; inputs [x, w, b].
struct Linear;

impl CustomOp for Linear {
    fn name(&self) -> String {
        "linear".into()
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let [x, w, b] = inputs else { unreachable!("linear: inputs x, w, b") };
        gemm_epi(x, w, Epilogue::Bias, Some(b), None).map(|y| Fwd::new(y, vec![]))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let sums = cx.take_column_sums(cx.g);
        let [x, w, b] = cx.inputs() else { unreachable!() };
        let (dx, dw, db) = Tensor::linear_backward(x, w, b, cx.g, sums);
        vec![Some(dx), Some(dw), Some(db)]
    }
}

/// C = a·b (2-D) with an epilogue on CUDA storage; `vec` is the bias (read) or the bias gradient
/// (written), `aux` the GELU epilogues' [M, N] matrix (contiguous). None when cuBLASLt cannot
/// fuse it here.
pub(crate) fn gemm_epi(a: &Tensor, b: &Tensor, epi: Epilogue, vec: Option<&Tensor>, aux: Option<&Tensor>) -> Option<Tensor> {
    let (m, n) = (a.dim(0), b.dim(1));
    let pa = aux.map_or(0, |t| {
        assert_eq!(t.shape(), &[m, n], "GELU epilogue: aux {:?} for a [{m}, {n}] product", t.shape());
        cuda_ptr(t)
    });
    let s = a.with_storage(|sa| {
        b.with_storage(|sb| {
            let (Storage::Cuda(ca), Storage::Cuda(cb)) = (sa, sb) else { return None };
            let pv = vec.map_or(0, cuda_ptr);
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
/// again.
pub(crate) fn dw_split() -> bool {
    crate::settings::DW_SPLIT.on()
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
pub(crate) fn bias_grad_f32(g: &Tensor) -> Tensor {
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
        Args::new().push(p).push(part.ptr).push(rows as u32).push(k as u32).push(rps as u32).launch3(dev, COLSUM16.of(g.dtype()), (strips as u32, splits as u32, 1), (32, 8, 1), 0);
        colsum_final(dev, part.ptr, out.ptr, k, splits);
        Tensor::from_any(Storage::Cuda(out), &[k], None)
    })
}

/// out[c] = Σ_s part[s, c] (f32 [splits, k] partial column sums) in a fixed order, by `colsum16_final`.
pub(crate) fn colsum_final(dev: &std::sync::Arc<crate::cuda::CudaDevice>, part: u64, out: u64, k: usize, splits: usize) {
    crate::cuda::Args::new().push(part).push(out).push(k as u32).push(splits as u32).launch3(dev, COLSUM16_FINAL, (k.div_ceil(8) as u32, 1, 1), (8, 128, 1), 0);
}

/// FMLAB_EPILOGUE=0 turns the fused paths off.
fn epilogues_on() -> bool {
    crate::settings::EPILOGUE.on()
}

pub(crate) fn fusable(x: &Tensor, w: &Tensor, b: &Tensor) -> bool {
    let same = x.dtype() == w.dtype() && x.dtype() == b.dtype() && x.dtype().is_float();
    let dev = x.device().is_cuda() && w.device() == x.device() && b.device() == x.device();
    same && dev && b.rank() == 1 && b.is_contiguous() && epilogues_on()
}

/// An uninitialized contiguous tensor on x's (CUDA) device: a buffer a GEMM epilogue fills.
pub(crate) fn cuda_buffer(like: &Tensor, shape: &[usize]) -> Tensor {
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
        match Tensor::apply_op(Linear, &[x2, w.clone(), b.clone()]) {
            Some(y) => y.reshape(&out_shape),
            None => self.linear_slow(w, bias),
        }
    }

    /// (dx, dw, db) of `linear` for the upstream gradient g [rows, N]: db from the dW GEMM's
    /// epilogue when cuBLASLt has one for these operands, else a column sum.
    /// `g_sums`: g's column sums (f32) where already made (op.rs `ColumnSums`).
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
    pub(crate) fn linear_param_grads(x: &Tensor, w: &Tensor, b: &Tensor, g: &Tensor, g_sums: Option<Tensor>) -> (Tensor, Tensor) {
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
    pub(crate) fn weight_grad_f32(x: &Tensor, w: &Tensor, b: &Tensor, g: &Tensor) -> Option<Tensor> {
        if !(casts_f32_master(w) && casts_f32_master(b) && dw_split() && bias_grad_applies(g)) {
            return None;
        }
        gemm_epi(&x.t(), g, Epilogue::OutF32, None, None)
    }

    /// x · w (+ bias): the composite twin of `linear`, which fuses the bias into the
    /// GEMM on the GPU.
    pub fn linear_slow(&self, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let y = self.matmul(w);
        match bias {
            Some(b) => y.add(b),
            None => y,
        }
    }
}
