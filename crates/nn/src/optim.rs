//! Optimizers and gradient clipping.
//!
//! AdamW's `step` is one fused kernel per parameter (`fmlab_tensor::adamw_update`: a CPU loop or a CUDA kernel, one pass, no temporaries); `step_slow`
//! is its twin composed of tensor ops, which the tests hold it to. Both follow PyTorch's
//! single-tensor AdamW exactly: decoupled decay first, `m.lerp_(g, 1-β1)`,
//! `v = β2 v + (1-β2) g²`, `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)`.

use fmlab_tensor::{adamw_update_all, adamw_update_all_dev, no_grad, AdamItem, DType, Tensor};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// The default decay rule: matrices decay; biases, norm gains (rank < 2) and embedding tables
/// (names with `wte`, `wpe` or `emb`) do not.
pub fn default_decay(name: &str, t: &Tensor) -> bool {
    t.rank() >= 2 && !name.contains("wte") && !name.contains("wpe") && !name.contains("emb")
}

pub struct Param {
    pub name: String,
    pub var: Tensor,
    pub decay: bool,
    /// First and second moments (f32 variables, saved in checkpoints).
    pub m: Tensor,
    pub v: Tensor,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: Vec<Param>,
    /// Steps taken (bias corrections use t = step after increment).
    pub step: u64,
    /// f32 [3] on the parameters' device: this step's [lr / (1 − β1^t), √(1 − β2^t), 1 − lr·wd],
    /// read by `update_on_device` (made by `device_scalars`).
    hyper: Option<Tensor>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Tensor)>, cfg: AdamWConfig, decay: impl Fn(&str, &Tensor) -> bool) -> AdamW {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let decay = decay(&name, &var);
                let m = Tensor::new_var(&Tensor::zeros_on(var.shape(), DType::F32, var.device()));
                let v = Tensor::new_var(&Tensor::zeros_on(var.shape(), DType::F32, var.device()));
                Param { name, var, decay, m, v }
            })
            .collect();
        AdamW { cfg, params, step: 0, hyper: None }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    pub fn zero_grad(&self) {
        for p in &self.params {
            p.var.zero_grad();
        }
    }

    fn scalars(&self) -> (f64, f64, f64) {
        let t = self.step as i32;
        let bc1 = 1.0 - self.cfg.beta1.powi(t);
        let bc2 = 1.0 - self.cfg.beta2.powi(t);
        (self.cfg.lr / bc1, bc2.sqrt(), self.cfg.lr * self.cfg.weight_decay)
    }

    /// The update's fixed f32 constants (1 − β1, β2, 1 − β2, eps), formed in f64 and rounded once
    /// to f32, as PyTorch does with Python floats.
    fn constants(&self) -> (f32, f32, f32, f32) {
        ((1.0 - self.cfg.beta1) as f32, self.cfg.beta2 as f32, (1.0 - self.cfg.beta2) as f32, self.cfg.eps as f32)
    }

    /// One update of every parameter that has a gradient (one fused kernel per f32 parameter, on
    /// its device: `fmlab_tensor::adamw_update`).
    pub fn step(&mut self) {
        self.step += 1;
        let (step_size, bc2_sqrt, lr_wd) = self.scalars();
        // Scalars are formed in f64 and rounded once to f32, as PyTorch does with Python floats.
        let (one_m_b1, b2, one_m_b2, eps) = self.constants();
        let (step_size, bc2_sqrt) = (step_size as f32, bc2_sqrt as f32);
        let mut fused: Vec<(&Param, Tensor)> = Vec::new();
        for p in &self.params {
            let Some(g) = p.var.grad() else { continue };
            if p.var.dtype() != DType::F32 {
                step_slow_one(p, &g, &self.cfg, self.step);
                continue;
            }
            fused.push((p, g));
        }
        // One multi-tensor update (a few launches on the GPU, not one per parameter).
        let items: Vec<AdamItem> = fused.iter().map(|(p, g)| (&p.var, g, &p.m, &p.v, if p.decay { (1.0 - lr_wd) as f32 } else { 1.0 })).collect();
        adamw_update_all(&items, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt);
    }

    /// The tensor `update_on_device` reads its per-step scalars from, made on first call on the
    /// parameters' device. Make it before capturing a CUDA graph that updates (a tensor made
    /// inside the capture would be re-zeroed by every replay).
    pub fn device_scalars(&mut self) -> Tensor {
        let dev = self.params.first().map_or(fmlab_tensor::Device::Cpu, |p| p.var.device());
        self.hyper.get_or_insert_with(|| Tensor::zeros_on(&[3], DType::F32, dev)).clone()
    }

    /// Advances the step and writes its scalars into `device_scalars` (an upload queued behind
    /// the work already on the GPU), for the `update_on_device` that follows.
    pub fn prepare_device_step(&mut self) {
        self.step += 1;
        let (step_size, bc2_sqrt, lr_wd) = self.scalars();
        let h = self.device_scalars();
        h.overwrite(&Tensor::from_vec(vec![step_size as f32, bc2_sqrt as f32, (1.0 - lr_wd) as f32], &[3]));
    }

    /// `step`'s update with nothing read on the host, so it can be captured in a CUDA graph: the
    /// scalars come from `device_scalars` (written by `prepare_device_step`, which also counts the
    /// step) and every gradient is first scaled by `coef` (an f32 scalar tensor: the clip
    /// coefficient from `fmlab_tensor::clip_coef`). f32 parameters only.
    pub fn update_on_device(&self, coef: &Tensor) {
        let hyper = self.hyper.as_ref().expect("AdamW::update_on_device: call device_scalars (or prepare_device_step) first");
        let (one_m_b1, b2, one_m_b2, eps) = self.constants();
        let grads: Vec<(&Param, Tensor)> = self.params.iter().filter_map(|p| p.var.grad().map(|g| (p, g))).collect();
        for (p, _) in &grads {
            assert_eq!(p.var.dtype(), DType::F32, "AdamW::update_on_device: parameter {} is {}, not f32", p.name, p.var.dtype());
        }
        // The decay field only marks which parameters decay (the factor is in `hyper`).
        let items: Vec<AdamItem> = grads.iter().map(|(p, g)| (&p.var, g, &p.m, &p.v, if p.decay { 0.0 } else { 1.0 })).collect();
        adamw_update_all_dev(&items, one_m_b1, b2, one_m_b2, eps, hyper, coef);
    }

    /// The same update written in tensor ops (the reference twin; also the path for non-f32).
    pub fn step_slow(&mut self) {
        self.step += 1;
        for p in &self.params {
            if let Some(g) = p.var.grad() {
                step_slow_one(p, &g, &self.cfg, self.step);
            }
        }
    }
}

fn step_slow_one(p: &Param, g: &Tensor, cfg: &AdamWConfig, step: u64) {
    let _ng = no_grad();
    let t = step as i32;
    let bc1 = 1.0 - cfg.beta1.powi(t);
    let bc2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt();
    let g = g.to_dtype(DType::F32);
    let w = p.var.to_dtype(DType::F32);
    let w = if p.decay { w.scale(1.0 - cfg.lr * cfg.weight_decay) } else { w };
    let m = p.m.add(&g.sub(&p.m).scale(1.0 - cfg.beta1));
    let v = p.v.scale(cfg.beta2).add(&g.mul(&g).scale(1.0 - cfg.beta2));
    let denom = v.sqrt().div(&v.scalar_like(bc2_sqrt)).add_scalar(cfg.eps);
    let w = w.sub(&m.div(&denom).scale(cfg.lr / bc1));
    p.m.set_data(&m);
    p.v.set_data(&v);
    p.var.set_data(&w);
}

/// SGD with optional momentum (PyTorch semantics: buf = μ buf + g; p -= lr buf).
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub vars: Vec<Tensor>,
    bufs: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(vars: Vec<Tensor>, lr: f64, momentum: f64) -> Sgd {
        let n = vars.len();
        Sgd { lr, momentum, vars, bufs: vec![None; n] }
    }
    pub fn step(&mut self) {
        let _ng = no_grad();
        for (v, buf) in self.vars.iter().zip(self.bufs.iter_mut()) {
            let Some(g) = v.grad() else { continue };
            let d = if self.momentum != 0.0 {
                let b = match buf.take() {
                    Some(b) => b.scale(self.momentum).add(&g),
                    None => g.clone(),
                };
                *buf = Some(b.clone());
                b
            } else {
                g
            };
            v.set_data(&v.sub(&d.scale(self.lr)));
        }
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: coefficient max_norm / (norm + 1e-6), clamped to 1). Returns the norm
/// before clipping; non-finite if any gradient is.
pub fn clip_grad_norm(vars: &[Tensor], max_norm: f64) -> f64 {
    let _ng = no_grad();
    // Sum of squares in f64 on the gradients' device (one multi-tensor reduction on a GPU); one
    // host read for the whole model.
    let grads: Vec<Tensor> = vars.iter().filter_map(|v| v.grad()).collect();
    let norm = if grads.is_empty() { 0.0 } else { fmlab_tensor::sum_squares_all(&grads).item().sqrt() };
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = v.grad() {
                v.set_grad(Some(g.scale(coef)));
            }
        }
    }
    norm
}
