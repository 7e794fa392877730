//! `linear`: y = x·w + b as one op, so that on the GPU the bias rides on cuBLASLt epilogues: the
//! forward GEMM adds it (`CUBLASLT_EPILOGUE_BIAS`) and the weight-gradient GEMM also writes the
//! bias gradient, the column sums of the output gradient (`CUBLASLT_EPILOGUE_BGRADA`). The
//! composite (matmul, then a broadcast add; backward a column reduction) costs a full extra pass
//! over the [rows, N] output each way. Twin: `linear_slow` (ops.rs). Where cuBLASLt has no
//! kernel for an epilogue (or off the GPU) the same work is done by separate ops.

use crate::cuda::gemm::Epilogue;
use crate::op::Op;
use crate::tensor::Storage;
use crate::Tensor;

/// C = a·b (2-D) with an epilogue on CUDA storage; `vec` is the bias (read) or the bias gradient
/// (written). None when cuBLASLt cannot fuse it here.
fn gemm_epi(a: &Tensor, b: &Tensor, epi: Epilogue, vec: &Tensor) -> Option<Tensor> {
    let (m, n) = (a.dim(0), b.dim(1));
    let s = a.with_storage(|sa| {
        b.with_storage(|sb| {
            vec.with_storage(|sv| {
                let (Storage::Cuda(ca), Storage::Cuda(cb), Storage::Cuda(cv)) = (sa, sb, sv) else { return None };
                ca.matmul_epi(a.layout(), cb, b.layout(), epi, cv.at(vec.layout().offset))
            })
        })
    })?;
    Some(Tensor::from_any(Storage::Cuda(s), &[m, n], None))
}

fn fusable(x: &Tensor, w: &Tensor, b: &Tensor) -> bool {
    let same = x.dtype() == w.dtype() && x.dtype() == b.dtype() && x.dtype().is_float();
    let dev = x.device().is_cuda() && w.device() == x.device() && b.device() == x.device();
    // FMLAB_EPILOGUE=0 turns the fused path off (read once: this runs for every Linear).
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var_os("FMLAB_EPILOGUE").is_none_or(|v| v != "0"));
    same && dev && b.rank() == 1 && b.is_contiguous() && on
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
            gemm_epi(&x2, w, Epilogue::Bias, b)
        };
        let Some(y) = y else { return self.linear_slow(w, bias) };
        let tracked = crate::grad_enabled() && [&x2, w, b].iter().any(|t| t.track_grad());
        let y = if tracked { y.with_op(Op::Linear(x2, w.clone(), b.clone())) } else { y };
        y.reshape(&out_shape)
    }

    /// (dx, dw, db) of `linear` for the upstream gradient g [rows, N]: db from the dW GEMM's
    /// epilogue when cuBLASLt has one for these operands, else a column sum.
    pub(crate) fn linear_backward(x: &Tensor, w: &Tensor, b: &Tensor, g: &Tensor) -> (Tensor, Tensor, Tensor) {
        let dx = g.matmul(&w.t());
        let db = Tensor::zeros_on(&[w.dim(1)], b.dtype(), b.device());
        let (dw, db) = match gemm_epi(&x.t(), g, Epilogue::BiasGrad, &db) {
            Some(dw) => (dw, db),
            None => (x.t().matmul(g), g.sum(&[0], false)),
        };
        (dx, dw, db)
    }
}
