//! Fused layer ops: LayerNorm and GELU, each one kernel forward and one (LayerNorm: two) backward,
//! with composite `_slow` twins in ops.rs that the tests hold them to.
//!
//! `layer_norm`: y = (x − mean) · rstd · w + b over the last dim, rstd = 1/sqrt(var + eps)
//! (biased variance). The composite costs ~10 full-size passes forward and ~20 backward; this is
//! one forward pass that also keeps the per-row mean and rstd, and backward recomputes x̂ from them:
//! dx = rstd · (d̂ − mean(d̂) − x̂ · mean(d̂ · x̂)) with d̂ = g · w, dw = Σ_rows g · x̂, db = Σ_rows g.
//! Mixed precision: x (and y, dx) in the activation dtype, w/b may be fp32 masters (kept as such:
//! no cast pass, and their gradients come back in fp32); statistics in fp32 (f64 for f64).
//!
//! `gelu`: GELU (tanh or erf form) in one pass; backward dx = g · gelu'(x) in one pass, from x.

use rayon::prelude::*;

use crate::cpu::CpuStorage;
use crate::cuda::storage::sfx;
use crate::cuda::{grid_for, Args, CudaStorage};
use crate::dtype::Float;
use crate::fused::cuda_ptr;
use crate::op::{BinaryOp, Op};
use crate::tensor::Storage;
use crate::{DType, Tensor};

static LN_FUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether the GPU LayerNorm backward computes dx, dW and dB in one pass (`ln_bwd_dwdb`, the
/// default) or runs the row kernel and then the column reduction over x and g again (its twin);
/// for tests and benchmarks that compare the two. Process-wide.
pub fn layer_norm_backward_fused(on: bool) {
    LN_FUSED.store(on, std::sync::atomic::Ordering::Relaxed);
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

fn cuda_dev(t: &Tensor) -> std::sync::Arc<crate::cuda::CudaDevice> {
    t.with_storage(|s| match s {
        Storage::Cuda(c) => c.dev.clone(),
        s => panic!("expected a CUDA tensor, got one on {}", s.device()),
    })
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
        self.layer_norm_impl(None, weight, bias, eps).1
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
        let (s, y) = self.layer_norm_impl(Some(residual), weight, bias, eps);
        (s.expect("the sum"), y)
    }

    /// `layer_norm` of self (+ residual: then also the sum, the LayerNorm's input).
    fn layer_norm_impl(&self, residual: Option<&Tensor>, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> (Option<Tensor>, Tensor) {
        let c = self.dim(self.rank() - 1);
        assert_eq!(weight.shape(), &[c], "layer_norm: weight {:?} for input {:?}", weight.shape(), self.shape());
        if let Some(b) = bias {
            assert_eq!(b.shape(), &[c], "layer_norm: bias {:?} for input {:?}", b.shape(), self.shape());
        }
        let xd = self.dtype();
        assert!(xd.is_float(), "layer_norm of a {xd} tensor");
        let on_gpu = self.device().is_cuda();
        let wd = if on_gpu { ln_weight_dtype(xd, weight.dtype()) } else { xd };
        let same = weight.dtype() == wd && bias.is_none_or(|b| b.dtype() == wd);
        if !on_gpu && (!matches!(xd, DType::F32 | DType::F64) || !same) {
            // CPU with 16-bit or mixed dtypes: in the widest float involved (f32 at least).
            let acc = if [Some(xd), Some(weight.dtype()), bias.map(|b| b.dtype())].contains(&Some(DType::F64)) { DType::F64 } else { DType::F32 };
            let b = bias.map(|b| b.to_dtype(acc));
            assert!(residual.is_none(), "add_layer_norm fuses on the GPU only");
            return (None, self.to_dtype(acc).layer_norm(&weight.to_dtype(acc), b.as_ref(), eps).to_dtype(xd));
        }
        let w = weight.to_dtype(wd).contiguous();
        let b = bias.map(|b| b.to_dtype(wd).contiguous());
        let x = self.contiguous();
        let r = residual.map(|r| r.contiguous());
        let rows = x.numel() / c.max(1);
        let mut sum = None;
        let (y, mean, rstd) = if on_gpu {
            let dev = cuda_dev(&x);
            let acc = if xd == DType::F64 { DType::F64 } else { DType::F32 };
            let y = CudaStorage::alloc(&dev, xd, x.numel());
            let s = r.as_ref().map(|_| CudaStorage::alloc(&dev, xd, x.numel()));
            // The kernel writes every row's statistics (when there are columns to take them of).
            let stats = || if c > 0 { Tensor::uninit_on(&[rows], acc, x.device()) } else { Tensor::zeros_on(&[rows], acc, x.device()) };
            let (mean, rstd) = (stats(), stats());
            if rows > 0 && c > 0 {
                Args::new()
                    .push(cuda_ptr(&x))
                    .push(r.as_ref().map_or(0, cuda_ptr))
                    .push(cuda_ptr(&w))
                    .push(b.as_ref().map_or(0, cuda_ptr))
                    .push(y.ptr)
                    .push(s.as_ref().map_or(0, |s| s.ptr))
                    .push(cuda_ptr(&mean))
                    .push(cuda_ptr(&rstd))
                    .push(rows as u32)
                    .push(c as u32)
                    .push(eps)
                    .launch(&dev, &format!("ln_fwd_{}_{}", sfx(xd), sfx(wd)), rows.div_ceil(8) as u32, 256, 0);
            }
            if let (Some(s), Some(r)) = (s, &r) {
                // The sum's history is the plain add: its gradient passes to both inputs.
                sum = Some(Tensor::from_any(Storage::Cuda(s), self.shape(), Some(Op::Binary(x.clone(), r.clone(), BinaryOp::Add))));
            }
            (Storage::Cuda(y), mean, rstd)
        } else {
            let n = x.numel();
            macro_rules! go {
                ($v:ident, $t:ty) => {{
                    let xs = x.to_vec::<$t>();
                    let ws = w.to_vec::<$t>();
                    let bs = b.as_ref().map(|b| b.to_vec::<$t>());
                    let (y, m, r) = ln_fwd_cpu(&xs[..n], &ws, bs.as_deref(), c, eps);
                    (Storage::Cpu(CpuStorage::$v(y)), Tensor::from_vec(m, &[rows]), Tensor::from_vec(r, &[rows]))
                }};
            }
            match xd {
                DType::F32 => go!(F32, f32),
                _ => go!(F64, f64),
            }
        };
        // LayerNorm's input: the sum (fused residual) or x.
        let input = sum.clone().unwrap_or(x);
        (sum, Tensor::from_any(y, self.shape(), Some(Op::LayerNorm(input, w, b, mean, rstd))))
    }

    /// (dx, dw, db) of the fused LayerNorm for the upstream gradient `g`.
    /// `add`: another gradient of x to sum into dx (on the GPU inside the kernel, instead of a
    /// separate add over the whole tensor).
    /// (dx, dw, db) of LayerNorm; on the GPU one fused pass where it applies (`ln_bwd_dwdb`,
    /// `layer_norm_backward_fused`), else the row kernel then the column reduction. The fused
    /// pass also gives dx's column sums (f32 [c]; None elsewhere): see `ColumnSums`.
    pub(crate) fn layer_norm_backward(x: &Tensor, w: &Tensor, mean: &Tensor, rstd: &Tensor, g: &Tensor, add: Option<&Tensor>) -> (Tensor, Tensor, Tensor, Option<Tensor>) {
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
                        .launch(&dev, &format!("ln_bwd_dwdb{ch}_{}_{}", sfx(xd), sfx(wd)), blocks as u32, 256, 0);
                    Args::new().push(part.ptr).push(dw.ptr).push(db.ptr).push(cs.ptr).push(c as u32).push(blocks as u32).push(3u32).launch3(&dev, &format!("ln_dwdb_final_{}", sfx(wd)), (c.div_ceil(8) as u32, 1, 1), (8, 128, 1), 0);
                    colsum = Some(Tensor::from_any(Storage::Cuda(cs), &[c], None));
                } else {
                    row_args()
                        .push(rows as u32)
                        .push(c as u32)
                        .launch(&dev, &format!("ln_bwd_{}_{}", sfx(xd), sfx(wd)), rows.div_ceil(8) as u32, 256, 0);
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
                        .launch3(&dev, &format!("ln_dwdb_{}_{}", sfx(xd), sfx(wd)), (col_blocks as u32, splits as u32, 1), (32, 8, 1), 0);
                    if splits > 1 {
                        Args::new().push(pp).push(dw.ptr).push(db.ptr).push(0u64).push(c as u32).push(splits as u32).push(2u32).launch3(&dev, &format!("ln_dwdb_final_{}", sfx(wd)), (c.div_ceil(8) as u32, 1, 1), (8, 128, 1), 0);
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

    /// GELU, tanh approximation (GPT-2's `gelu_new`), fused; the twin is `gelu_tanh_slow`.
    pub fn gelu_tanh(&self) -> Tensor {
        self.gelu(true)
    }

    /// GELU, exact (erf) form, fused; the twin is `gelu_erf_slow`.
    pub fn gelu_erf(&self) -> Tensor {
        self.gelu(false)
    }

    fn gelu(&self, approx: bool) -> Tensor {
        let xd = self.dtype();
        assert!(xd.is_float(), "gelu of a {xd} tensor");
        let on_gpu = self.device().is_cuda();
        if !on_gpu && !matches!(xd, DType::F32 | DType::F64) {
            return self.to_dtype(DType::F32).gelu(approx).to_dtype(xd);
        }
        let x = self.contiguous();
        let n = x.numel();
        let y = if on_gpu {
            let dev = cuda_dev(&x);
            let y = CudaStorage::alloc(&dev, xd, n);
            if n > 0 {
                let px = cuda_ptr(&x);
                let vec = px % 16 == 0;
                Args::new().push(px).push(y.ptr).push(n as u32).push(approx as i32).push(vec as i32).launch(&dev, &format!("gelu_fwd_{}", sfx(xd)), grid_for(n.div_ceil(16 / xd.size_in_bytes()), 256), 256, 0);
            }
            Storage::Cuda(y)
        } else {
            macro_rules! go {
                ($v:ident, $t:ty) => {{
                    let xs = x.to_vec::<$t>();
                    let f = |v: $t| -> $t { gelu_cpu(v as f64, approx) as $t };
                    let y: Vec<$t> = if n >= PAR_MIN { xs.par_iter().map(|&v| f(v)).collect() } else { xs.iter().map(|&v| f(v)).collect() };
                    Storage::Cpu(CpuStorage::$v(y))
                }};
            }
            match xd {
                DType::F32 => go!(F32, f32),
                _ => go!(F64, f64),
            }
        };
        Tensor::from_any(y, self.shape(), Some(Op::Gelu(x, approx)))
    }

    /// dx = g · gelu'(x).
    pub(crate) fn gelu_backward(x: &Tensor, g: &Tensor, approx: bool) -> Tensor {
        let xd = x.dtype();
        let g = if g.dtype() == xd && g.is_contiguous() { g.clone() } else { g.to_dtype(xd).contiguous() };
        let n = x.numel();
        if x.device().is_cuda() {
            let dev = cuda_dev(x);
            let dx = CudaStorage::alloc(&dev, xd, n);
            if n > 0 {
                let (px, pg) = (cuda_ptr(x), cuda_ptr(&g));
                let vec = px % 16 == 0 && pg % 16 == 0;
                Args::new().push(px).push(pg).push(dx.ptr).push(n as u32).push(approx as i32).push(vec as i32).launch(&dev, &format!("gelu_bwd_{}", sfx(xd)), grid_for(n.div_ceil(16 / xd.size_in_bytes()), 256), 256, 0);
            }
            return Tensor::from_any(Storage::Cuda(dx), x.shape(), None);
        }
        macro_rules! go {
            ($t:ty) => {{
                let (xs, gs) = (x.to_vec::<$t>(), g.to_vec::<$t>());
                let f = |(&v, &gv): (&$t, &$t)| -> $t { (gv as f64 * gelu_grad_cpu(v as f64, approx)) as $t };
                let d: Vec<$t> = if n >= PAR_MIN { xs.par_iter().zip(gs.par_iter()).map(f).collect() } else { xs.iter().zip(gs.iter()).map(f).collect() };
                Tensor::from_vec(d, x.shape())
            }};
        }
        match xd {
            DType::F32 => go!(f32),
            _ => go!(f64),
        }
    }
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

fn gelu_cpu(x: f64, approx: bool) -> f64 {
    if approx {
        0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
    } else {
        0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))
    }
}

fn gelu_grad_cpu(x: f64, approx: bool) -> f64 {
    if approx {
        let t = (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
    } else {
        0.5 * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2)) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    }
}

fn erf(x: f64) -> f64 {
    <f64 as crate::dtype::num_like::NumLike>::erf(x)
}
