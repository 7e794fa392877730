//! `layer_norm`: y = (x − mean) · rstd · w + b over the last dim, rstd = 1/sqrt(var + eps)
//! (biased variance). The composite costs ~10 full-size passes forward and ~20 backward; this is
//! one forward pass that also keeps the per-row mean and rstd, and backward recomputes x̂ from them:
//! dx = rstd · (d̂ − mean(d̂) − x̂ · mean(d̂ · x̂)) with d̂ = g · w, dw = Σ_rows g · x̂, db = Σ_rows g.
//! Mixed precision: x (and y, dx) in the activation dtype, w/b may be fp32 masters (kept as such:
//! no cast pass, and their gradients come back in fp32); statistics in fp32 (f64 for f64).
//! `add_layer_norm` also fuses the pre-norm residual add into the forward kernel, and on a GPU the
//! backward sums the residual stream's gradient into dx inside its kernel and keeps dx's column
//! sums for the Linear whose output it is (op.rs, `ColumnSums`). Twins: `layer_norm_slow`,
//! `add_layer_norm_slow`, below.

use std::sync::Arc;

use rayon::prelude::*;

use crate::cpu::CpuStorage;
use crate::cuda::{Args, CudaStorage};
use crate::op::{Backward, CustomOp, Fwd};
use crate::dtype::Float;
use crate::op::{BinaryOp, Op};
use crate::settings::LN_FUSED;
use crate::tensor::{cuda_dev_of as cuda_dev, cuda_ptr, Storage};
use crate::{DType, Tensor};
use crate::cuda::kernel::{Arch, Kernel, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "layer_norm", sources: &[include_str!("layer_norm.cu")], arch: Arch::Device, entries: &["ln_fwd", "ln_bwd", "ln_dwdb", "ln_dwdb_final", "ln_bwd_dwdb"] };
const LN_BWD: Kernel = KERNELS.kernel("ln_bwd");
const LN_BWD_DWDB: Kernel = KERNELS.kernel("ln_bwd_dwdb");
const LN_DWDB: Kernel = KERNELS.kernel("ln_dwdb");
const LN_DWDB_FINAL: Kernel = KERNELS.kernel("ln_dwdb_final");
const LN_FWD: Kernel = KERNELS.kernel("ln_fwd");

/// LayerNorm over the last dim of a contiguous x; inputs [x, w] or [x, w, b], w and b
/// contiguous in the dtype the kernels take (`ln_weight_dtype`); saved [mean, rstd].
struct LayerNorm {
    eps: f64,
}

impl LayerNorm {
    fn fwd(&self, inputs: &[Tensor]) -> Fwd {
        let (y, mean, rstd, _) = ln_forward(&inputs[0], None, &inputs[1], inputs.get(2), self.eps);
        Fwd::new(y, vec![mean, rstd])
    }
}

impl CustomOp for LayerNorm {
    fn name(&self) -> String {
        "layer_norm".into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let xd = inputs[0].dtype();
        let ok = matches!(xd, DType::F32 | DType::F64) && inputs[1..].iter().all(|t| t.dtype() == xd);
        ok.then(|| self.fwd(inputs))
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        Some(self.fwd(inputs))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let (x, w) = (cx.inputs()[0].clone(), cx.inputs()[1].clone());
        let (mean, rstd) = (cx.saved()[0].clone(), cx.saved()[1].clone());
        // On a GPU a gradient of x already here (the residual stream's) is summed inside the
        // backward kernel rather than by a separate add over the whole tensor.
        let prev = if cx.g.device().is_cuda() { cx.take_grad(&x) } else { None };
        let (dx, dw, db, colsum) = layer_norm_backward(&x, &w, &mean, &rstd, cx.g, prev.as_ref());
        if let Some(cs) = colsum {
            cx.keep_column_sums(&dx, cs);
        }
        let mut out = vec![Some(dx), Some(dw)];
        if cx.inputs().len() == 3 {
            out.push(Some(db));
        }
        out
    }
}

/// Row counts below this many elements in total run on one thread.
const PAR_MIN: usize = 1 << 16;

/// The dtype LayerNorm's weight/bias are used in with activations of dtype `x` on the GPU: their
/// own when it is `x`'s or fp32 (16-bit activations with fp32 masters), else `x`'s.
fn ln_weight_dtype(x: DType, w: DType) -> DType {
    if x == DType::F64 {
        DType::F64
    } else if w == x || w == DType::F32 {
        w
    } else {
        x
    }
}

fn ln_fwd_cpu<T: Float>(x: &[T], w: &[T], b: Option<&[T]>, c: usize, eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / c;
    let mut y = vec![T::lit(0.0); x.len()];
    let mut stats = vec![(T::lit(0.0), T::lit(0.0)); rows];
    let body = |(yr, (xr, st)): (&mut [T], (&[T], &mut (T, T)))| {
        let mean = xr.iter().map(|v| v.to_f64()).sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            let mut o = (xr[j].to_f64() - mean) * rstd * w[j].to_f64();
            if let Some(b) = b {
                o += b[j].to_f64();
            }
            yr[j] = T::lit(o);
        }
        *st = (T::lit(mean), T::lit(rstd));
    };
    if x.len() >= PAR_MIN {
        y.par_chunks_mut(c).zip(x.par_chunks(c).zip(stats.par_iter_mut())).for_each(body);
    } else {
        y.chunks_mut(c).zip(x.chunks(c).zip(stats.iter_mut())).for_each(body);
    }
    (y, stats.iter().map(|s| s.0).collect(), stats.iter().map(|s| s.1).collect())
}

/// (dx, dw, db) on the CPU, f64 accumulation.
fn ln_bwd_cpu<T: Float>(x: &[T], w: &[T], g: &[T], mean: &[T], rstd: &[T], c: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / c;
    let mut dx = vec![T::lit(0.0); x.len()];
    let row = |i: usize, dr: &mut [T], acc: &mut (Vec<f64>, Vec<f64>)| {
        let (xr, gr) = (&x[i * c..(i + 1) * c], &g[i * c..(i + 1) * c]);
        let (m, r) = (mean[i].to_f64(), rstd[i].to_f64());
        let (mut sa, mut sb) = (0.0, 0.0);
        for j in 0..c {
            let (xh, dh) = ((xr[j].to_f64() - m) * r, gr[j].to_f64() * w[j].to_f64());
            sa += dh;
            sb += dh * xh;
            acc.0[j] += gr[j].to_f64() * xh;
            acc.1[j] += gr[j].to_f64();
        }
        let (a, bb) = (sa / c as f64, sb / c as f64);
        for j in 0..c {
            let (xh, dh) = ((xr[j].to_f64() - m) * r, gr[j].to_f64() * w[j].to_f64());
            dr[j] = T::lit(r * (dh - a - xh * bb));
        }
    };
    let zero = || (vec![0.0f64; c], vec![0.0f64; c]);
    let (dw, db) = if x.len() >= PAR_MIN {
        dx.par_chunks_mut(c)
            .enumerate()
            .fold(zero, |mut acc, (i, dr)| {
                row(i, dr, &mut acc);
                acc
            })
            .reduce(zero, |mut a, b| {
                a.0.iter_mut().zip(&b.0).for_each(|(p, q)| *p += q);
                a.1.iter_mut().zip(&b.1).for_each(|(p, q)| *p += q);
                a
            })
    } else {
        let mut acc = zero();
        for (i, dr) in dx.chunks_mut(c).enumerate().take(rows) {
            row(i, dr, &mut acc);
        }
        acc
    };
    (dx, dw.into_iter().map(T::lit).collect(), db.into_iter().map(T::lit).collect())
}

impl Tensor {
    /// LayerNorm over the last dim: (x − mean) / sqrt(var + eps) · weight + bias (biased variance),
    /// fused (see the module docs); the twin is `layer_norm_slow`. The output has x's dtype.
    pub fn layer_norm(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Tensor {
        ln_check(self, weight, bias);
        if let Some(y) = self.layer_norm_cpu_widened(weight, bias, eps) {
            return y;
        }
        let (x, w, b) = ln_operands(self, weight, bias);
        let inputs: Vec<Tensor> = [x, w].into_iter().chain(b).collect();
        Tensor::apply_op(LayerNorm { eps }, &inputs).expect("layer_norm runs on every device")
    }

    /// The pre-norm residual step: s = self + residual, then (s, layer_norm(s)). On the GPU one
    /// kernel reads both inputs once and writes s and the normalized rows (the separate add
    /// writes s and LayerNorm reads it back); the values equal the separate ops' exactly (s is
    /// rounded to the dtype before the statistics). The twin is `add_layer_norm_slow`.
    pub fn add_layer_norm(&self, residual: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> (Tensor, Tensor) {
        let fusable = self.device().is_cuda() && self.shape() == residual.shape() && self.dtype() == residual.dtype() && residual.device() == self.device();
        if !fusable {
            let s = self.add(residual);
            let y = s.layer_norm(weight, bias, eps);
            return (s, y);
        }
        ln_check(self, weight, bias);
        let (x, w, b) = ln_operands(self, weight, bias);
        let r = residual.contiguous();
        let (y, mean, rstd, s) = {
            let _ng = crate::no_grad();
            ln_forward(&x, Some(&r), &w, b.as_ref(), eps)
        };
        // The sum's history is the plain add: its gradient passes to both inputs. It is the
        // LayerNorm's input.
        let sum = Tensor::from_any(Storage::Cuda(s.expect("the sum")), self.shape(), Some(Op::Binary(x, r, BinaryOp::Add)));
        let inputs: Vec<Tensor> = [sum.clone(), w].into_iter().chain(b).collect();
        (sum, Tensor::from_op(y, Arc::new(LayerNorm { eps }), inputs, vec![mean, rstd]))
    }

    /// On the CPU with 16-bit or mixed dtypes: LayerNorm in the widest float involved (f32 at
    /// least), rounded back to x's dtype; None where the kernels take the dtypes as they are.
    /// (Shapes checked by the caller: `ln_check`.)
    fn layer_norm_cpu_widened(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Option<Tensor> {
        let xd = self.dtype();
        let same = weight.dtype() == xd && bias.is_none_or(|b| b.dtype() == xd);
        if self.device().is_cuda() || (matches!(xd, DType::F32 | DType::F64) && same) {
            return None;
        }
        let acc = if [Some(xd), Some(weight.dtype()), bias.map(|b| b.dtype())].contains(&Some(DType::F64)) { DType::F64 } else { DType::F32 };
        let b = bias.map(|b| b.to_dtype(acc));
        Some(self.to_dtype(acc).layer_norm(&weight.to_dtype(acc), b.as_ref(), eps).to_dtype(xd))
    }

    /// LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias (biased var):
    /// the composite twin of the fused `layer_norm`.
    pub fn layer_norm_slow(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Tensor {
        let d = self.rank() - 1;
        let xc = self.sub(&self.mean(&[d], true));
        let var = xc.sqr().mean(&[d], true);
        let y = xc.div(&var.add_scalar(eps).sqrt()).mul(weight);
        match bias {
            Some(b) => y.add(b),
            None => y,
        }
    }

    /// The composite twin of `add_layer_norm`: (self + residual, layer_norm_slow of that).
    pub fn add_layer_norm_slow(&self, residual: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> (Tensor, Tensor) {
        let s = self.add(residual);
        let y = s.layer_norm_slow(weight, bias, eps);
        (s, y)
    }
}

/// LayerNorm's operands: a float x, weight and bias of x's last dim.
fn ln_check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) {
    let c = x.dim(x.rank() - 1);
    assert_eq!(weight.shape(), &[c], "layer_norm: weight {:?} for input {:?}", weight.shape(), x.shape());
    if let Some(b) = bias {
        assert_eq!(b.shape(), &[c], "layer_norm: bias {:?} for input {:?}", b.shape(), x.shape());
    }
    assert!(x.dtype().is_float(), "layer_norm of a {} tensor", x.dtype());
}

/// (x, w, b) as the kernels take them (after `ln_check`): contiguous, w and b in `ln_weight_dtype`.
fn ln_operands(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> (Tensor, Tensor, Option<Tensor>) {
    let wd = if x.device().is_cuda() { ln_weight_dtype(x.dtype(), weight.dtype()) } else { x.dtype() };
    (x.contiguous(), weight.to_dtype(wd).contiguous(), bias.map(|b| b.to_dtype(wd).contiguous()))
}

/// LayerNorm's forward over contiguous x (+ residual r, on the GPU: then also the sum's storage)
/// with w, b as `ln_operands` makes them: (y, mean, rstd, sum), no history.
fn ln_forward(x: &Tensor, r: Option<&Tensor>, w: &Tensor, b: Option<&Tensor>, eps: f64) -> (Tensor, Tensor, Tensor, Option<CudaStorage>) {
    let c = x.dim(x.rank() - 1);
    let (xd, wd) = (x.dtype(), w.dtype());
    let rows = x.numel() / c.max(1);
    let mut sum = None;
    let (y, mean, rstd) = if x.device().is_cuda() {
        let dev = cuda_dev(&x);
        let acc = if xd == DType::F64 { DType::F64 } else { DType::F32 };
        let y = CudaStorage::alloc(&dev, xd, x.numel());
        let s = r.map(|_| CudaStorage::alloc(&dev, xd, x.numel()));
        // The kernel writes every row's statistics (when there are columns to take them of).
        let stats = || if c > 0 { Tensor::uninit_on(&[rows], acc, x.device()) } else { Tensor::zeros_on(&[rows], acc, x.device()) };
        let (mean, rstd) = (stats(), stats());
        if rows > 0 && c > 0 {
            Args::new()
                .push(cuda_ptr(&x))
                .push(r.map_or(0, cuda_ptr))
                .push(cuda_ptr(&w))
                .push(b.map_or(0, cuda_ptr))
                .push(y.ptr)
                .push(s.as_ref().map_or(0, |s| s.ptr))
                .push(cuda_ptr(&mean))
                .push(cuda_ptr(&rstd))
                .push(rows as u32)
                .push(c as u32)
                .push(eps)
                .launch(&dev, LN_FWD.of2(xd, wd), rows.div_ceil(8) as u32, 256, 0);
        }
        sum = s;
        (Storage::Cuda(y), mean, rstd)
    } else {
        let n = x.numel();
        macro_rules! go {
            ($v:ident, $t:ty) => {{
                let xs = x.to_vec::<$t>();
                let ws = w.to_vec::<$t>();
                let bs = b.map(|b| b.to_vec::<$t>());
                let (y, m, r) = ln_fwd_cpu(&xs[..n], &ws, bs.as_deref(), c, eps);
                (Storage::Cpu(CpuStorage::$v(y)), Tensor::from_vec(m, &[rows]), Tensor::from_vec(r, &[rows]))
            }};
        }
        match xd {
            DType::F32 => go!(F32, f32),
            _ => go!(F64, f64),
        }
    };
    (Tensor::from_any(y, x.shape(), None), mean, rstd, sum)
}

/// (dx, dw, db) of the fused LayerNorm for the upstream gradient `g`.
/// `add`: another gradient of x to sum into dx (on the GPU inside the kernel, instead of a
/// separate add over the whole tensor).
/// (dx, dw, db) of LayerNorm; on the GPU one fused pass where it applies (`ln_bwd_dwdb`,
/// `layer_norm_backward_fused`), else the row kernel then the column reduction. The fused
/// pass also gives dx's column sums (f32 [c]; None elsewhere): see `ColumnSums`.
fn layer_norm_backward(x: &Tensor, w: &Tensor, mean: &Tensor, rstd: &Tensor, g: &Tensor, add: Option<&Tensor>) -> (Tensor, Tensor, Tensor, Option<Tensor>) {
    let add = add.map(|a| if a.dtype() == x.dtype() && a.is_contiguous() { a.clone() } else { a.to_dtype(x.dtype()).contiguous() });
    let add = add.as_ref();
    let c = x.dim(x.rank() - 1);
    let rows = x.numel() / c.max(1);
    let (xd, wd) = (x.dtype(), w.dtype());
    let g = if g.dtype() == xd && g.is_contiguous() { g.clone() } else { g.to_dtype(xd).contiguous() };
    if x.device().is_cuda() {
        let dev = cuda_dev(x);
        let dx = CudaStorage::alloc(&dev, xd, x.numel());
        let (dw, db) = (CudaStorage::alloc(&dev, wd, c), CudaStorage::alloc(&dev, wd, c));
        let mut colsum = None;
        if rows > 0 && c > 0 {
            // One pass for dx, dW and dB where the fused kernel applies (16-bit activations on
            // the 16-byte path, c ≤ 2 chunks of 32 lanes × 16 bytes); else dx, then dW/dB.
            let v = 16 / xd.size_in_bytes();
            let ch = c / (32 * v);
            let aligned = [x, w, &g].into_iter().chain(add).all(|t| cuda_ptr(t) % 16 == 0);
            // Both row kernels' leading arguments: x, w, g, add (or null), mean, rstd, dx.
            let row_args = || {
                let mut a = Args::new();
                a.push(cuda_ptr(x)).push(cuda_ptr(w)).push(cuda_ptr(&g)).push(add.map_or(0, cuda_ptr)).push(cuda_ptr(mean)).push(cuda_ptr(rstd)).push(dx.ptr);
                a
            };
            if LN_FUSED.load(std::sync::atomic::Ordering::Relaxed) && matches!(xd, DType::BF16 | DType::F16) && c % (32 * v) == 0 && (1..=2).contains(&ch) && aligned {
                // Blocks of 8 warps, ≥ 8 rows per warp, at most 512 blocks: a grid fixed by
                // `rows`, so the dW/dB sums' order (and bits) are too.
                let blocks = rows.div_ceil(64).clamp(1, 512);
                let part = CudaStorage::alloc(&dev, DType::F64, blocks * 3 * c);
                let cs = CudaStorage::alloc(&dev, DType::F32, c);
                row_args()
                    .push(part.ptr)
                    .push(rows as u32)
                    .push(c as u32)
                    .launch(&dev, LN_BWD_DWDB.n(ch as u32).of2(xd, wd), blocks as u32, 256, 0);
                Args::new().push(part.ptr).push(dw.ptr).push(db.ptr).push(cs.ptr).push(c as u32).push(blocks as u32).push(3u32).launch3(&dev, LN_DWDB_FINAL.of(wd), (c.div_ceil(8) as u32, 1, 1), (8, 128, 1), 0);
                colsum = Some(Tensor::from_any(Storage::Cuda(cs), &[c], None));
            } else {
                row_args()
                    .push(rows as u32)
                    .push(c as u32)
                    .launch(&dev, LN_BWD.of2(xd, wd), rows.div_ceil(8) as u32, 256, 0);
                // dw, db: column sums over the rows.
                let col_blocks = c.div_ceil(32);
                let (splits, rps) = crate::cuda::col_splits(rows, c);
                let part = (splits > 1).then(|| CudaStorage::alloc(&dev, DType::F64, splits * 2 * c));
                let pp = part.as_ref().map_or(0, |p| p.ptr);
                Args::new()
                    .push(cuda_ptr(x))
                    .push(cuda_ptr(&g))
                    .push(cuda_ptr(mean))
                    .push(cuda_ptr(rstd))
                    .push(pp)
                    .push(dw.ptr)
                    .push(db.ptr)
                    .push(rows as u32)
                    .push(c as u32)
                    .push(rps as u32)
                    .launch3(&dev, LN_DWDB.of2(xd, wd), (col_blocks as u32, splits as u32, 1), (32, 8, 1), 0);
                if splits > 1 {
                    Args::new().push(pp).push(dw.ptr).push(db.ptr).push(0u64).push(c as u32).push(splits as u32).push(2u32).launch3(&dev, LN_DWDB_FINAL.of(wd), (c.div_ceil(8) as u32, 1, 1), (8, 128, 1), 0);
                }
            }
        } else {
            return (add.cloned().unwrap_or_else(|| x.zeros_like()), Tensor::zeros_on(&[c], wd, x.device()), Tensor::zeros_on(&[c], wd, x.device()), None);
        }
        return (Tensor::from_any(Storage::Cuda(dx), x.shape(), None), Tensor::from_any(Storage::Cuda(dw), &[c], None), Tensor::from_any(Storage::Cuda(db), &[c], None), colsum);
    }
    macro_rules! go {
        ($t:ty) => {{
            let n = x.numel();
            let (dx, dw, db) = ln_bwd_cpu(&x.to_vec::<$t>()[..n], &w.to_vec::<$t>(), &g.to_vec::<$t>(), &mean.to_vec::<$t>(), &rstd.to_vec::<$t>(), c);
            (Tensor::from_vec(dx, x.shape()), Tensor::from_vec(dw, &[c]), Tensor::from_vec(db, &[c]))
        }};
    }
    let (dx, dw, db) = match xd {
        DType::F32 => go!(f32),
        _ => go!(f64),
    };
    (add.map_or(dx.clone(), |a| a.add(&dx)), dw, db, None)
}
