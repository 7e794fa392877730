//! The training step, once for every trainer: micro-batches through a loss (gradient
//! accumulation), global-norm clipping and AdamW — launched eagerly, or captured once as a CUDA
//! graph and replayed (fmlab_nn::GraphStep) — with the checks that keep a diverging run from
//! applying a non-finite step.

use fmlab_nn::{clip_grad_norm, AdamW, GraphStep, IdRange};
use fmlab_tensor::{Rng, Tensor};

use crate::TrainError;

/// How the step runs.
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// Micro-batches per optimizer step (their gradients are averaged).
    pub grad_accum: usize,
    /// Global L2 norm the gradients are clipped to; 0 = no clipping (the norm is still measured).
    pub grad_clip: f64,
    /// Replay the step as one CUDA graph: the first step runs eagerly (kernels loaded, the
    /// allocator warm), the second is captured, every later one replays it. Needs one
    /// micro-batch and no dropout (its masks would be frozen into the graph).
    pub graph: bool,
    /// The valid ids of each input of the loss (checked before a graph's inputs are uploaded).
    pub ranges: Vec<IdRange>,
    /// Read each micro-batch's loss before its backward and stop at a non-finite one (training:
    /// no gradient from it is ever made). Off, the loss is read once, after the step (a
    /// benchmark: nothing inside the step waits for the GPU); a non-finite norm still stops it
    /// before the optimizer runs.
    pub check_loss_first: bool,
}

impl StepOptions {
    /// `grad_clip` as the clip's bound: 0 (off) is an infinite bound, whose coefficient is 1.
    fn max_norm(&self) -> f64 {
        if self.grad_clip > 0.0 { self.grad_clip } else { f64::INFINITY }
    }
}

/// Hooks into the step for timing (`fmlab bench train`): `enqueued` once the forward and
/// backward are queued (before clipping; a graph: after its launch), `applied` once the
/// optimizer step is queued — both before anything is read back from the device.
pub trait StepHooks {
    fn enqueued(&mut self) {}
    fn applied(&mut self) {}
}

/// No hooks.
pub struct NoHooks;
impl StepHooks for NoHooks {}

/// One step's loss (the micro-batches' mean) and gradient norm before clipping.
#[derive(Clone, Copy, Debug)]
pub struct StepOut {
    pub loss: f64,
    pub grad_norm: f64,
}

/// The optimizer, the parameters and (once captured) the step's CUDA graph.
pub struct Trainer {
    pub opt: AdamW,
    /// The parameters under their checkpoint names (for messages about non-finite values).
    vars: Vec<(String, Tensor)>,
    tensors: Vec<Tensor>,
    pub options: StepOptions,
    graph: Option<GraphStep>,
    steps_run: u64,
}

impl Trainer {
    pub fn new(opt: AdamW, vars: Vec<(String, Tensor)>, options: StepOptions) -> Trainer {
        assert!(options.grad_accum > 0, "Trainer: grad_accum 0");
        assert!(!options.graph || options.grad_accum == 1, "Trainer: a CUDA-graph step takes one micro-batch, not {}", options.grad_accum);
        let tensors = vars.iter().map(|(_, v)| v.clone()).collect();
        Trainer { opt, vars, tensors, options, graph: None, steps_run: 0 }
    }

    /// One optimizer step at learning rate `lr`: `grad_accum` micro-batches from `batch`, each
    /// through `loss(inputs, rng)` (`rng`: dropout's; None inside a graph), then clipping and
    /// AdamW. A non-finite loss or gradient norm is an error, with the first non-finite
    /// parameter or gradient named; with `check_loss_first` (and always for the norm) the
    /// optimizer has not run then.
    pub fn step(&mut self, lr: f64, batch: &mut dyn FnMut() -> Vec<Tensor>, loss: &dyn Fn(&[Tensor], Option<&mut Rng>) -> Tensor, rng: &mut Rng, hooks: &mut dyn StepHooks) -> Result<StepOut, TrainError> {
        self.opt.set_lr(lr);
        let eager = !self.options.graph || self.steps_run == 0;
        self.steps_run += 1;
        if !eager {
            let inputs = batch();
            if self.graph.is_none() {
                self.graph = Some(GraphStep::capture(&mut self.opt, &inputs, &self.options.ranges, self.options.max_norm(), |inp| loss(inp, None))?);
            }
            let g = self.graph.as_mut().expect("captured above");
            g.step(&mut self.opt, &inputs)?;
            hooks.enqueued();
            hooks.applied();
            // A non-finite loss is seen after the replay that applied it: the caller's last
            // checkpoint is from before it.
            let l = g.loss();
            if !l.is_finite() {
                return Err(TrainError::NonFiniteLoss { loss: l, first: first_non_finite(&self.vars) });
            }
            let norm = g.norm();
            if !norm.is_finite() {
                return Err(TrainError::NonFiniteNorm { first: first_non_finite(&self.vars) });
            }
            return Ok(StepOut { loss: l, grad_norm: norm });
        }
        let n = self.options.grad_accum;
        let mut sum = 0.0;
        let mut pending: Vec<Tensor> = Vec::new();
        for _ in 0..n {
            // Token ids stay on the host: the embedding lookup range-checks them there and
            // uploads them once (moving them first would cost a download to check them).
            let inputs = batch();
            let l = loss(&inputs, Some(rng));
            if self.options.check_loss_first {
                let v = l.item();
                if !v.is_finite() {
                    return Err(TrainError::NonFiniteLoss { loss: v, first: first_non_finite(&self.vars) });
                }
                sum += v;
            } else {
                pending.push(l.detach());
            }
            if n == 1 {
                l.backward();
            } else {
                l.scale(1.0 / n as f64).backward();
            }
        }
        hooks.enqueued();
        let norm = clip_grad_norm(&self.tensors, self.options.max_norm());
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteNorm { first: first_non_finite(&self.vars) });
        }
        self.opt.step();
        self.opt.zero_grad();
        hooks.applied();
        for l in pending {
            sum += l.item();
        }
        let mean = sum / n as f64;
        if !mean.is_finite() {
            return Err(TrainError::NonFiniteLoss { loss: mean, first: first_non_finite(&self.vars) });
        }
        Ok(StepOut { loss: mean, grad_norm: norm })
    }
}

/// The first variable (or its gradient) holding a NaN/inf; if all are finite, the activations
/// overflowed, and the largest parameter says where to look.
pub fn first_non_finite(vars: &[(String, Tensor)]) -> String {
    let mut largest = (0.0f64, "");
    for (n, v) in vars {
        let vals = v.to_vec_f64();
        if vals.iter().any(|x| !x.is_finite()) {
            return format!("parameter `{n}`");
        }
        if let Some(g) = v.grad() {
            if g.to_vec_f64().iter().any(|x| !x.is_finite()) {
                return format!("gradient of `{n}`");
            }
        }
        let m = vals.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if m > largest.0 {
            largest = (m, n);
        }
    }
    format!("none among parameters and gradients, so an activation overflowed; the largest parameter is `{}` with |value| {:.3e} (learning rate too high?)", largest.1, largest.0)
}
