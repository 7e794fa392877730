//! `softmax_scaled`: softmax(scale · x) over the last dim with an optional causal limit, in one
//! pass (attention's scale, mask, max, exp, sum and divide: six full-size temporaries and their
//! backward passes fewer per layer). Backward: dx = scale · p · (g − Σ g·p). Twin:
//! `softmax_scaled_slow`, below.

use rayon::prelude::*;

use crate::cpu::CpuStorage;
use crate::cuda::{Args, CudaStorage};
use crate::op::{Backward, CustomOp, Fwd};
use crate::tensor::{cuda_ptr, Storage};
use crate::{DType, Tensor};
use crate::cuda::kernel::{Arch, Kernel, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "softmax", sources: &[include_str!("softmax.cu")], arch: Arch::Device, entries: &["softmax_fwd", "softmax_bwd"] };
const SOFTMAX_BWD: Kernel = KERNELS.kernel("softmax_bwd");
const SOFTMAX_FWD: Kernel = KERNELS.kernel("softmax_fwd");

/// Rows below this many elements in total are done on one thread.
const PAR_MIN: usize = 1 << 16;

/// softmax(scale · x) over the last dim (s keys) of a contiguous x whose last-but-one dim has t
/// queries; with `causal`, query i sees keys j ≤ i + (s − t).
struct SoftmaxScaled {
    scale: f64,
    causal: bool,
    s: usize,
    t: usize,
}

impl CustomOp for SoftmaxScaled {
    fn name(&self) -> String {
        "softmax_scaled".into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let x = &inputs[0];
        if !matches!(x.dtype(), DType::F32 | DType::F64) {
            return None;
        }
        let &SoftmaxScaled { scale, causal, s, t } = self;
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
        Some(Fwd::new(Tensor::from_storage(st, x.shape()), vec![]))
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let x = &inputs[0];
        let &SoftmaxScaled { scale, causal, s, t } = self;
        let rows = x.numel() / s.max(1);
        let st = x.with_storage(|xs| {
            let Storage::Cuda(xs) = xs else { unreachable!() };
            let y = CudaStorage::alloc(&xs.dev, xs.dtype(), x.numel());
            if rows > 0 {
                let block = if s >= 1024 { 256 } else if s >= 256 { 128 } else { 32 };
                Args::new().push(xs.ptr).push(y.ptr).push(s as u32).push(t as u32).push(scale).push(causal as i32).launch(&xs.dev, SOFTMAX_FWD.of(xs.dtype()), rows as u32, block, 0);
            }
            Storage::Cuda(y)
        });
        Some(Fwd::new(Tensor::from_any(st, x.shape(), None), vec![]))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        vec![Some(softmax_scaled_backward(cx.out(), cx.g, self.scale))]
    }
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
        if !self.device().is_cuda() && !matches!(self.dtype(), DType::F32 | DType::F64) {
            // 16-bit on the CPU: compute in f32, round once.
            let p = self.to_dtype(DType::F32).detach().softmax_scaled(scale, causal).to_dtype(self.dtype());
            return p.detach();
        }
        let x = self.contiguous();
        Tensor::apply_op(SoftmaxScaled { scale, causal, s, t }, &[x]).expect("softmax_scaled runs on every device in f32/f64 and on the GPU in 16 bits")
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
}

/// dx = scale · p · (g − Σ_j g_j p_j) over the last dim.
fn softmax_scaled_backward(p: &Tensor, g: &Tensor, scale: f64) -> Tensor {
    let s = p.dim(p.rank() - 1);
    if p.device().is_cuda() {
        let g = if g.is_contiguous() && g.dtype() == p.dtype() { g.clone() } else { g.to_dtype(p.dtype()).contiguous() };
        let rows = p.numel() / s.max(1);
        let st = p.with_storage(|ps| {
            let Storage::Cuda(ps) = ps else { unreachable!() };
            let d = CudaStorage::alloc(&ps.dev, ps.dtype(), p.numel());
            if rows > 0 {
                let block = if s >= 1024 { 256 } else if s >= 256 { 128 } else { 32 };
                Args::new().push(cuda_ptr(p)).push(cuda_ptr(&g)).push(d.ptr).push(s as u32).push(scale).launch(&ps.dev, SOFTMAX_BWD.of(ps.dtype()), rows as u32, block, 0);
            }
            Storage::Cuda(d)
        });
        return Tensor::from_any(st, p.shape(), None);
    }
    let r = p.rank() - 1;
    let dot = g.mul(p).sum(&[r], true);
    p.mul(&g.sub(&dot)).scale(scale)
}
