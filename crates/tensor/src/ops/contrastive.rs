//! Contrastive losses over a square matrix of pair logits L [N, N] (row i: image i against every
//! text; the matching pairs on the diagonal), each fused with its analytic gradient:
//!
//! - `info_nce`: CLIP's symmetric cross-entropy, ½ (CE over rows + CE over columns), targets the
//!   diagonal. With P = softmax of each row and Q = softmax of each column,
//!   ∂L/∂logits = (P − I) / 2N + (Q − I) / 2N (docs/concepts.md derives it). Forward keeps the
//!   rows' and the columns' log-sum-exp (2N values); backward rebuilds P and Q from them.
//! - `siglip_loss`: SigLIP's pairwise sigmoid loss, (1/N) Σ_ij softplus(−z_ij L_ij) with z = +1 on
//!   the diagonal and −1 off it; ∂L/∂logits = (σ(L) − I) / N.
//!
//! CPU forward and backward here (f64 arithmetic, the result in the logits' dtype); on a GPU the
//! op declines and the composite twins (`info_nce_slow`, `siglip_loss_slow`) run on the device's
//! primitives. The twins are what the tests hold the fused ops to.

use crate::op::{Backward, CustomOp, Fwd};
use crate::{DType, Tensor};

fn check_square(l: &Tensor, what: &str) -> usize {
    assert!(l.rank() == 2 && l.dim(0) == l.dim(1) && l.dim(0) > 0, "{what}: logits must be a non-empty square [N, N], got {:?}", l.shape());
    l.dim(0)
}

/// Log-sum-exp of each row (`by_rows`) or column of the row-major n × n `x`.
fn lse(x: &[f64], n: usize, by_rows: bool) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let at = |j: usize| if by_rows { x[i * n + j] } else { x[j * n + i] };
            let m = (0..n).map(at).fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                return m;
            }
            m + (0..n).map(|j| (at(j) - m).exp()).sum::<f64>().ln()
        })
        .collect()
}

struct InfoNce;

impl CustomOp for InfoNce {
    fn name(&self) -> String {
        "info_nce".into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let l = &inputs[0];
        let n = l.dim(0);
        let x = l.to_vec_f64();
        let (r, c) = (lse(&x, n, true), lse(&x, n, false));
        // −log P_ii = lse_row(i) − L_ii, and the same over columns.
        let loss: f64 = (0..n).map(|i| r[i] + c[i] - 2.0 * x[i * n + i]).sum::<f64>() / (2.0 * n as f64);
        let saved = Tensor::from_f64(&[r, c].concat(), &[2, n], DType::F64);
        Some(Fwd::new(Tensor::from_f64(&[loss], &[], l.dtype()), vec![saved]))
    }
    fn cuda_fwd(&self, _: &[Tensor]) -> Option<Fwd> {
        None
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let l = &cx.inputs()[0];
        let n = l.dim(0);
        let (x, s, g) = (l.to_vec_f64(), cx.saved()[0].to_vec_f64(), cx.g.item());
        let (r, c) = s.split_at(n);
        let k = g / (2.0 * n as f64);
        let d: Vec<f64> = (0..n * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                let eye = if i == j { 2.0 } else { 0.0 };
                ((x[idx] - r[i]).exp() + (x[idx] - c[j]).exp() - eye) * k
            })
            .collect();
        vec![Some(Tensor::from_f64(&d, &[n, n], l.dtype()))]
    }
}

struct Siglip;

/// softplus(v) = log(1 + e^v), without overflow.
fn softplus(v: f64) -> f64 {
    v.max(0.0) + (-v.abs()).exp().ln_1p()
}

fn sigmoid(v: f64) -> f64 {
    if v >= 0.0 { 1.0 / (1.0 + (-v).exp()) } else { v.exp() / (1.0 + v.exp()) }
}

impl CustomOp for Siglip {
    fn name(&self) -> String {
        "siglip_loss".into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let l = &inputs[0];
        let n = l.dim(0);
        let x = l.to_vec_f64();
        let loss: f64 = (0..n * n).map(|idx| softplus(if idx / n == idx % n { -x[idx] } else { x[idx] })).sum::<f64>() / n as f64;
        Some(Fwd::new(Tensor::from_f64(&[loss], &[], l.dtype()), vec![]))
    }
    fn cuda_fwd(&self, _: &[Tensor]) -> Option<Fwd> {
        None
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let l = &cx.inputs()[0];
        let n = l.dim(0);
        let (x, g) = (l.to_vec_f64(), cx.g.item());
        let d: Vec<f64> = (0..n * n).map(|idx| (sigmoid(x[idx]) - if idx / n == idx % n { 1.0 } else { 0.0 }) * g / n as f64).collect();
        vec![Some(Tensor::from_f64(&d, &[n, n], l.dtype()))]
    }
}

/// The CPU kernels work in f64 from f32/f64 inputs; 16-bit logits are widened first.
fn widened(l: &Tensor) -> Tensor {
    if matches!(l.dtype(), DType::F32 | DType::F64) || l.device().is_cuda() { l.contiguous() } else { l.to_dtype(DType::F32) }
}

impl Tensor {
    /// CLIP's symmetric InfoNCE loss of pair logits [N, N] (the matching pairs on the diagonal):
    /// ½ (cross-entropy of each row against its diagonal + of each column). Fused on the CPU
    /// (ops/contrastive.rs); a scalar in the logits' dtype (f32 for 16-bit logits on the CPU).
    pub fn info_nce(&self) -> Tensor {
        check_square(self, "info_nce");
        let l = widened(self);
        Tensor::apply_op(InfoNce, std::slice::from_ref(&l)).unwrap_or_else(|| l.info_nce_slow())
    }

    /// `info_nce` from primitives: the two cross-entropies of the rows and of the transpose.
    pub fn info_nce_slow(&self) -> Tensor {
        let n = check_square(self, "info_nce");
        let diag = Tensor::from_vec((0..n as i32).collect::<Vec<_>>(), &[n]).to_device(self.device());
        self.cross_entropy_slow(&diag, None).add(&self.t().contiguous().cross_entropy_slow(&diag, None)).scale(0.5)
    }

    /// SigLIP's pairwise sigmoid loss of pair logits [N, N] (t·cos + b; matches on the diagonal):
    /// (1/N) Σ_ij softplus(−z_ij L_ij), z = +1 on the diagonal, −1 elsewhere. Fused on the CPU.
    pub fn siglip_loss(&self) -> Tensor {
        check_square(self, "siglip_loss");
        let l = widened(self);
        Tensor::apply_op(Siglip, std::slice::from_ref(&l)).unwrap_or_else(|| l.siglip_loss_slow())
    }

    /// `siglip_loss` from primitives: softplus(v) = relu(v) + log(1 + exp(−|v|)).
    pub fn siglip_loss_slow(&self) -> Tensor {
        let n = check_square(self, "siglip_loss");
        let z: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { -1.0 } else { 1.0 }).collect();
        let v = self.mul(&Tensor::from_f64(&z, &[n, n], self.dtype()).to_device(self.device()));
        let sp = v.relu().add(&v.abs().neg().exp().add_scalar(1.0).log());
        sp.sum_all().scale(1.0 / n as f64)
    }
}
