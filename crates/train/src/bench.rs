//! `fmlab bench train`'s timing: full training steps (forward, backward, clip, AdamW — the
//! `Trainer`'s step) on random tokens, each timed on the host and, on a GPU, between events.

use std::time::Instant;

use fmlab_models::Gpt2;
use fmlab_nn::optim::default_decay;
use fmlab_nn::{AdamW, AdamWConfig, IdRange};
use fmlab_tensor::cuda::{CudaError, Event, Stream};
use fmlab_tensor::{Device, Rng, Tensor};

use crate::{StepHooks, StepOptions, Trainer, TrainError};

/// The timed steps (after the warm-up), each in seconds.
pub struct StepTimes {
    /// Whole steps, the loss read back.
    pub times: Vec<f64>,
    /// The host's time to queue forward + backward (a graph: its launch).
    pub host: Vec<f64>,
    /// The steps' spans on the GPU (empty on the CPU).
    pub gpu: Vec<f64>,
    pub last_loss: f64,
}

/// Times `steps` training steps of `model` (its parameters `vars`) at `batch` × `seq` random
/// tokens of `vocab` after `warmup` untimed ones (with a graph at least 2: the first runs
/// eagerly, the second captures). The peak-memory counter and the kernel profile restart at
/// the first timed step.
#[allow(clippy::too_many_arguments)]
pub fn time_gpt2_steps(model: &Gpt2, vars: Vec<(String, Tensor)>, vocab: usize, batch: usize, seq: usize, steps: usize, warmup: usize, use_graph: bool, device: Device) -> Result<StepTimes, TrainError> {
    let cuda = |e: CudaError| TrainError::Other(e.to_string());
    let opt = AdamW::new(vars.clone(), AdamWConfig { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
    let mut rng = Rng::new(1);
    let mut ids = || -> Tensor {
        let v: Vec<i32> = (0..batch * seq).map(|_| rng.below(vocab) as i32).collect();
        Tensor::from_vec(v, &[batch, seq])
    };
    // With a graph: step 0 runs eagerly (kernels loaded, allocator warm), step 1 captures.
    let warmup = if use_graph { warmup.max(2) } else { warmup };
    let ranges = vec![IdRange { name: "input ids", bound: vocab, ignore: None }, IdRange { name: "targets", bound: vocab, ignore: Some(-100) }];
    // The training step itself is train gpt's (fmlab_train::Trainer); the loss is read after
    // the step, so nothing inside it waits for the GPU.
    let mut trainer = Trainer::new(opt, vars, StepOptions { grad_accum: 1, grad_clip: 1.0, graph: use_graph, ranges, check_loss_first: false });
    let loss_fn = |inp: &[Tensor], _: Option<&mut Rng>| model.loss(&inp[0], &inp[1], None);
    let mut no_dropout = Rng::new(0);
    let (mut times, mut host, mut gpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_loss = 0.0;
    // The step's span on the GPU: an event before its work and one after it, recorded before the
    // loss is read back (cuda/stream.rs). It starts when the host starts the step (the stream is
    // idle then), so it includes the GPU's wait for the first launches, not the read-back.
    let stream = match device {
        Device::Cuda(d) => Some(fmlab_tensor::cuda::device(d).map_err(cuda)?.current_stream()),
        _ => None,
    };
    for i in 0..warmup + steps {
        let mut inputs = Some(vec![ids(), ids()]);
        let t = Instant::now();
        let ev0 = stream.as_ref().map(|s| s.record()).transpose().map_err(cuda)?;
        if i == warmup {
            if let Device::Cuda(d) = device {
                fmlab_tensor::cuda::device(d).map_err(cuda)?.reset_peak();
            }
            fmlab_tensor::cuda::profile::reset();
        }
        let mut timing = Timing { t, stream: stream.as_ref(), enqueue: 0.0, ev1: None };
        let out = trainer.step(1e-4, &mut || inputs.take().expect("one batch a step"), &loss_fn, &mut no_dropout, &mut timing)?;
        last_loss = out.loss;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
            host.push(timing.enqueue);
            if let (Some(e0), Some(e1)) = (&ev0, timing.ev1.transpose().map_err(cuda)?) {
                gpu.push(e0.elapsed_ms(&e1).map_err(cuda)? as f64 * 1e-3);
            }
        }
    }
    Ok(StepTimes { times, host, gpu, last_loss })
}

/// The step's host enqueue time (forward + backward queued; a graph: launched) and the GPU event
/// once the optimizer step is queued.
struct Timing<'a> {
    t: Instant,
    stream: Option<&'a Stream>,
    enqueue: f64,
    ev1: Option<Result<Event, CudaError>>,
}

impl StepHooks for Timing<'_> {
    fn enqueued(&mut self) {
        self.enqueue = self.t.elapsed().as_secs_f64();
    }
    fn applied(&mut self) {
        self.ev1 = self.stream.map(|s| s.record());
    }
}
