//! Fused ops. Each has its forward and backward here and a `_slow` twin composed of primitives
//! (in ops.rs) that the tests hold it to.
//!
//! `cross_entropy`: log-softmax + NLL in one pass per row, never materializing the [N, V]
//! log-probabilities (for GPT-2's 50257-way head that is ~10 full-size temporaries less per step).
//! Forward keeps the per-row log-sum-exp; backward recomputes softmax from it:
//! dlogits[i, j] = (exp(x[i, j] - lse[i]) - [j == t[i]]) · g / n_kept, and 0 on ignored rows.

use rayon::prelude::*;

use crate::cpu::CpuStorage;
use crate::op::Op;
use crate::{DType, Tensor};

/// Rows below this many elements in total are done on one thread.
const PAR_MIN: usize = 1 << 16;

fn rows<T: Copy + Send + Sync>(x: &[T], v: usize) -> impl IndexedParallelIterator<Item = &[T]> {
    x.par_chunks(v)
}

impl Tensor {
    /// Mean cross-entropy of `logits` [N, V] against integer `targets` [N]; targets equal to
    /// `ignore_index` are skipped (not counted in the mean). Fused; see the module docs.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<i64>) -> Tensor {
        assert_eq!(self.rank(), 2, "cross_entropy: logits must be [N, V], got {:?}", self.shape());
        assert_eq!(targets.shape(), &[self.dim(0)], "cross_entropy: targets {:?} for logits {:?}", targets.shape(), self.shape());
        if !matches!(self.dtype(), DType::F32 | DType::F64) {
            return self.to_dtype(DType::F32).cross_entropy(targets, ignore_index).to_dtype(self.dtype());
        }
        let (n, v) = (self.dim(0), self.dim(1));
        let t = targets.to_dtype(DType::I32).to_vec::<i32>();
        for (i, &ti) in t.iter().enumerate() {
            assert!(Some(ti as i64) == ignore_index || (ti >= 0 && (ti as usize) < v), "cross_entropy: target {ti} at row {i} is outside 0..{v}");
        }
        let x = self.contiguous();
        let (lse, loss): (Vec<f64>, f64) = x.with_cpu_storage(|s| {
            fn go<T: crate::dtype::Float>(x: &[T], v: usize, t: &[i32], ig: Option<i64>) -> (Vec<f64>, f64) {
                let per_row = |(i, row): (usize, &[T])| -> (f64, f64) {
                    let m = row.iter().fold(T::neg_infinity(), |m, &a| if a > m { a } else { m });
                    let s: f64 = row.iter().map(|&a| (a - m).exp().to_f64()).sum();
                    let lse = m.to_f64() + s.ln();
                    let l = if Some(t[i] as i64) == ig { 0.0 } else { lse - row[t[i] as usize].to_f64() };
                    (lse, l)
                };
                let out: Vec<(f64, f64)> = if x.len() >= PAR_MIN { rows(x, v).enumerate().map(per_row).collect() } else { x.chunks(v).enumerate().map(per_row).collect() };
                (out.iter().map(|o| o.0).collect(), out.iter().map(|o| o.1).sum())
            }
            match s {
                CpuStorage::F32(a) => go(&a[..n * v], v, &t, ignore_index),
                CpuStorage::F64(a) => go(&a[..n * v], v, &t, ignore_index),
                _ => unreachable!(),
            }
        });
        let kept = t.iter().filter(|&&ti| Some(ti as i64) != ignore_index).count();
        let mean = loss / kept as f64; // NaN when every target is ignored, as in PyTorch
        let lse = Tensor::from_f64(&lse, &[n], DType::F64);
        // Ignored rows are stored as -1 so backward needs no ignore_index (which may be a valid id).
        let stored: Vec<i32> = t.iter().map(|&ti| if Some(ti as i64) == ignore_index { -1 } else { ti }).collect();
        let tt = Tensor::from_vec(stored, &[n]);
        Tensor::from_op_scalar(mean, self.dtype(), Op::CrossEntropy(x, tt, lse, kept))
    }

    /// Backward of the fused cross-entropy: dlogits for an upstream gradient `g` (a scalar).
    pub(crate) fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, lse: &Tensor, kept: usize, g: f64) -> Tensor {
        let (n, v) = (logits.dim(0), logits.dim(1));
        let t = targets.to_vec::<i32>();
        let lse = lse.to_vec::<f64>();
        let scale = g / kept as f64;
        let out = logits.with_cpu_storage(|s| {
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
                CpuStorage::F32(a) => CpuStorage::F32(go(&a[..n * v], v, &t, &lse, scale)),
                CpuStorage::F64(a) => CpuStorage::F64(go(&a[..n * v], v, &t, &lse, scale)),
                _ => unreachable!(),
            }
        });
        Tensor::from_storage(out, &[n, v])
    }
}
