//! `gelu_tanh` / `gelu_erf`: GELU (tanh or erf form) in one pass; backward dx = g · gelu'(x) in
//! one pass, from x. Twins: `gelu_tanh_slow`, `gelu_erf_slow`, below.

use rayon::prelude::*;

use crate::cpu::CpuStorage;
use crate::cuda::{grid_for, Args, CudaStorage};
use crate::op::{Backward, CustomOp, Fwd};
use crate::tensor::{cuda_dev_of as cuda_dev, cuda_ptr, Storage};
use crate::{DType, Tensor};
use crate::cuda::kernel::{Arch, Kernel, Module};

/// Its CUDA kernels.
pub(crate) static KERNELS: Module = Module { name: "gelu", sources: &[include_str!("gelu.cu")], arch: Arch::Device, entries: &["gelu_fwd", "gelu_bwd"] };
const GELU_BWD: Kernel = KERNELS.kernel("gelu_bwd");
const GELU_FWD: Kernel = KERNELS.kernel("gelu_fwd");

/// Row counts below this many elements in total run on one thread.
const PAR_MIN: usize = 1 << 16;

/// GELU of a contiguous x; `approx`: the tanh form (else erf).
struct Gelu {
    approx: bool,
}

impl CustomOp for Gelu {
    fn name(&self) -> String {
        if self.approx { "gelu_tanh" } else { "gelu_erf" }.into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let (x, approx) = (&inputs[0], self.approx);
        let (xd, n) = (x.dtype(), x.numel());
        if !matches!(xd, DType::F32 | DType::F64) {
            return None;
        }
        macro_rules! go {
            ($v:ident, $t:ty) => {{
                let xs = x.to_vec::<$t>();
                let f = |v: $t| -> $t { gelu_cpu(v as f64, approx) as $t };
                let y: Vec<$t> = if n >= PAR_MIN { xs.par_iter().map(|&v| f(v)).collect() } else { xs.iter().map(|&v| f(v)).collect() };
                Tensor::from_storage(CpuStorage::$v(y), x.shape())
            }};
        }
        let y = match xd {
            DType::F32 => go!(F32, f32),
            _ => go!(F64, f64),
        };
        Some(Fwd::new(y, vec![]))
    }
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let (x, approx) = (&inputs[0], self.approx);
        let (xd, n) = (x.dtype(), x.numel());
        let dev = cuda_dev(&x);
        let y = CudaStorage::alloc(&dev, xd, n);
        if n > 0 {
            let px = cuda_ptr(&x);
            let vec = px % 16 == 0;
            Args::new().push(px).push(y.ptr).push(n as u32).push(approx as i32).push(vec as i32).launch(&dev, GELU_FWD.of(xd), grid_for(n.div_ceil(16 / xd.size_in_bytes()), 256), 256, 0);
        }
        Some(Fwd::new(Tensor::from_any(Storage::Cuda(y), x.shape(), None), vec![]))
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        vec![Some(gelu_backward(&cx.inputs()[0], cx.g, self.approx))]
    }
}

impl Tensor {
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
        if !self.device().is_cuda() && !matches!(xd, DType::F32 | DType::F64) {
            return self.to_dtype(DType::F32).gelu(approx).to_dtype(xd);
        }
        Tensor::apply_op(Gelu { approx }, &[self.contiguous()]).expect("gelu runs on every device")
    }

    /// GELU, tanh approximation (GPT-2's `gelu_new`): the composite twin of the fused `gelu_tanh`.
    pub fn gelu_tanh_slow(&self) -> Tensor {
        // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        let inner = self.add(&self.powf(3.0).scale(0.044715)).scale(SQRT_2_OVER_PI);
        self.mul(&inner.tanh().add_scalar(1.0)).scale(0.5)
    }

    /// GELU, exact: 0.5 x (1 + erf(x / sqrt 2)): the composite twin of the fused `gelu_erf`.
    pub fn gelu_erf_slow(&self) -> Tensor {
        self.mul(&self.scale(std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0)).scale(0.5)
    }
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
            Args::new().push(px).push(pg).push(dx.ptr).push(n as u32).push(approx as i32).push(vec as i32).launch(&dev, GELU_BWD.of(xd), grid_for(n.div_ceil(16 / xd.size_in_bytes()), 256), 256, 0);
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

pub(crate) const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

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
