//! `cross_entropy`: log-softmax + NLL in one pass per row, never materializing the [N, V]
//! log-probabilities (for GPT-2's 50257-way head that is ~10 full-size temporaries less per step).
//! Forward keeps the per-row log-sum-exp; backward recomputes softmax from it:
//! dlogits[i, j] = (exp(x[i, j] - lse[i]) - [j == t[i]]) · g / n_kept, and 0 on ignored rows.
//! Twin: `cross_entropy_slow` (log_softmax + gather), below.

use rayon::prelude::*;

use crate::cpu::CpuStorage;
use crate::cuda::{Args, CudaStorage};
use crate::op::{Backward, CustomOp, Fwd};
use crate::tensor::{cuda_ptr, Storage};
use crate::{no_grad, DType, Tensor};
use crate::cuda::kernel::{Arch, Kernel, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "cross_entropy", sources: &[include_str!("cross_entropy.cu")], arch: Arch::Device, entries: &["ce_fwd", "ce_bwd"] };
const CE_BWD: Kernel = KERNELS.kernel("ce_bwd");
const CE_FWD: Kernel = KERNELS.kernel("ce_fwd");

/// Rows below this many elements in total are done on one thread.
const PAR_MIN: usize = 1 << 16;

/// The fused cross-entropy over contiguous logits [N, V] (the one input).
struct CrossEntropy {
    /// i32 [N] on the logits' device, ignored rows stored as -1 (so backward needs no
    /// ignore_index, which may be a valid id).
    targets: Tensor,
    /// Rows not ignored: the mean's divisor.
    kept: usize,
}

impl CrossEntropy {
    /// (mean loss, [per-row log-sum-exp]): the same on both devices (`ce_forward` launches or loops).
    fn fwd(&self, x: &Tensor) -> Fwd {
        let (lse, loss_sum) = ce_forward(x, &self.targets);
        // NaN when every target is ignored, as in PyTorch.
        Fwd::new(loss_sum.scale(1.0 / self.kept as f64), vec![lse])
    }
}

impl CustomOp for CrossEntropy {
    fn name(&self) -> String {
        "cross_entropy".into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        Some(self.fwd(&inputs[0]))
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        Some(self.fwd(&inputs[0]))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let g = cx.g.item();
        vec![Some(cross_entropy_backward(&cx.inputs()[0], &self.targets, &cx.saved()[0], self.kept, g))]
    }
}

impl Tensor {
    /// Mean cross-entropy of `logits` [N, V] against integer `targets` [N]; targets equal to
    /// `ignore_index` are skipped (not counted in the mean). Fused (ops/cross_entropy.rs).
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
        Tensor::apply_op(CrossEntropy { targets: tt, kept }, &[x]).expect("cross_entropy runs on every device")
    }

    /// The composite twin of the fused `cross_entropy` (log_softmax + gather), for tests.
    pub fn cross_entropy_slow(&self, targets: &Tensor, ignore_index: Option<i64>) -> Tensor {
        assert_eq!(self.rank(), 2, "cross_entropy: logits must be [N, V], got {:?}", self.shape());
        assert_eq!(targets.shape(), &[self.dim(0)], "cross_entropy: targets {:?} for logits {:?}", targets.shape(), self.shape());
        let t = targets.to_dtype(DType::I32);
        let lsm = self.log_softmax(1);
        match ignore_index {
            None => lsm.gather(&t.unsqueeze(1), 1).mean_all().neg(),
            Some(ig) => {
                let keep = t.ne(&t.scalar_like(ig as f64));
                let safe = keep.where_cond(&t, &t.scalar_like(0.0));
                let picked = lsm.gather(&safe.unsqueeze(1), 1).squeeze(1);
                let keepf = keep.to_dtype(self.dtype());
                let n = keepf.sum_all().item();
                picked.mul(&keepf).sum_all().scale(-1.0 / n)
            }
        }
    }
}

/// Backward of the fused cross-entropy: dlogits for an upstream gradient `g` (a scalar).
pub(crate) fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, lse: &Tensor, kept: usize, g: f64) -> Tensor {
    let (n, v) = (logits.dim(0), logits.dim(1));
    let scale = g / kept as f64;
    if logits.device().is_cuda() {
        let s = logits.with_storage(|xs| {
            let Storage::Cuda(xs) = xs else { unreachable!() };
            let d = CudaStorage::alloc(&xs.dev, xs.dtype(), n * v);
            Args::new().push(xs.at(logits.layout().offset)).push(cuda_ptr(targets)).push(cuda_ptr(lse)).push(d.ptr).push(v as u32).push(scale).launch(&xs.dev, CE_BWD.of(xs.dtype()), n as u32, 512, 0);
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
            Args::new().push(xs.at(x.layout().offset)).push(pt).push(pl).push(pp).push(v as u32).launch(&xs.dev, CE_FWD.of(x.dtype()), n as u32, 512, 0);
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

fn rows<T: Copy + Send + Sync>(x: &[T], v: usize) -> impl IndexedParallelIterator<Item = &[T]> {
    x.par_chunks(v)
}
