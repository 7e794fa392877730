//! A whole training step — forward, backward, gradient clipping, AdamW — captured once as a CUDA
//! graph and then replayed with one launch per step (fmlab_tensor::cuda::graph).
//!
//! What changes from step to step is kept where a replay finds it: the batch in device tensors
//! made before capture and overwritten before each replay (their values range-checked here, on
//! the host, since nothing inside the graph can stop on a bad id), AdamW's learning rate and bias
//! corrections in a device tensor (`AdamW::prepare_device_step`), and the clip coefficient
//! computed on the device from the gradients' norm and applied inside the AdamW kernel. The loss
//! and the norm are device scalars read after the replay. Same arithmetic as the eager step
//! (`clip_grad_norm` + `AdamW::step`), so the two train alike (tests/graph_step.rs in
//! fmlab-models holds them to it on the GPU).

use fmlab_tensor::cuda::graph::Graph;
use fmlab_tensor::{clip_coef, sum_squares_all, DType, Device, Tensor};

use crate::{AdamW, NnError};

/// How a per-step input is checked before it is written: integer ids in 0..bound, or equal to
/// `ignore` (a target that is skipped, e.g. -100).
#[derive(Clone, Copy, Debug)]
pub struct IdRange {
    pub name: &'static str,
    pub bound: usize,
    pub ignore: Option<i64>,
}

pub struct GraphStep {
    graph: Graph,
    inputs: Vec<Tensor>,
    ranges: Vec<IdRange>,
    loss: Tensor,
    norm: Tensor,
}

impl GraphStep {
    /// Captures one training step of `loss_fn` on device copies of `example` (the per-step
    /// inputs: their shapes are fixed from now on; i32 ids, checked against
    /// `ranges`), clipping the gradients' global norm to `max_norm` and updating with `opt`.
    /// Nothing is trained until `step`. The parameters must be f32 on a CUDA device, and one
    /// eager step should have run first (kernels loaded, the allocator's cache warm).
    pub fn capture(opt: &mut AdamW, example: &[Tensor], ranges: &[IdRange], max_norm: f64, loss_fn: impl FnOnce(&[Tensor]) -> Tensor) -> Result<GraphStep, NnError> {
        assert_eq!(example.len(), ranges.len(), "GraphStep::capture: one IdRange per input");
        let device = opt.params.first().map_or(Device::Cpu, |p| p.var.device());
        let Device::Cuda(ordinal) = device else {
            return Err(NnError::Other(format!("CUDA-graph training needs the parameters on a GPU; they are on {device}")));
        };
        let cdev = fmlab_tensor::cuda::device(ordinal).map_err(|e| NnError::Other(e.to_string()))?;
        for (t, r) in example.iter().zip(ranges) {
            check_ids(t, r)?;
        }
        let inputs: Vec<Tensor> = example.iter().map(|t| t.to_device(device).contiguous()).collect();
        opt.zero_grad();
        opt.device_scalars();
        let (graph, (loss, norm)) = cdev
            .capture(|| {
                let loss = loss_fn(&inputs);
                loss.backward();
                let grads: Vec<Tensor> = opt.params.iter().filter_map(|p| p.var.grad()).collect();
                let (norm, coef) = clip_coef(&sum_squares_all(&grads), max_norm);
                opt.update_on_device(&coef);
                // The gradients' and activations' blocks stay the graph's (freed into its pool).
                opt.zero_grad();
                (loss.detach(), norm)
            })
            .map_err(|e| NnError::Other(e.to_string()))?;
        Ok(GraphStep { graph, inputs, ranges: ranges.to_vec(), loss, norm })
    }

    /// One training step on `inputs` (same shapes as at capture; host tensors): checked, written
    /// into the graph's input buffers, AdamW's step counted and its scalars written, the graph
    /// launched. Returns without waiting; `loss` and `norm` wait for it.
    pub fn step(&mut self, opt: &mut AdamW, inputs: &[Tensor]) -> Result<(), NnError> {
        assert_eq!(inputs.len(), self.inputs.len(), "GraphStep::step: {} inputs for a graph captured with {}", inputs.len(), self.inputs.len());
        // Every input checked before any is uploaded: a bad batch leaves the last one in place.
        for ((t, dst), r) in inputs.iter().zip(&self.inputs).zip(&self.ranges) {
            if t.shape() != dst.shape() {
                return Err(NnError::Other(format!("{}: shape {:?}, but the CUDA graph was captured for {:?} (shapes are fixed; capture again for another)", r.name, t.shape(), dst.shape())));
            }
            check_ids(t, r)?;
        }
        for (t, dst) in inputs.iter().zip(&self.inputs) {
            dst.overwrite(t);
        }
        opt.prepare_device_step();
        self.graph.replay().map_err(|e| NnError::Other(e.to_string()))
    }

    /// The last replayed step's mean loss (waits for it).
    pub fn loss(&self) -> f64 {
        self.loss.item()
    }
    /// The last replayed step's gradient norm before clipping (waits for it).
    pub fn norm(&self) -> f64 {
        self.norm.item()
    }
}

fn check_ids(t: &Tensor, r: &IdRange) -> Result<(), NnError> {
    if t.dtype() != DType::I32 {
        return Err(NnError::Other(format!("{}: ids must be i32, got {}", r.name, t.dtype())));
    }
    let ids = t.to_vec::<i32>();
    // The common case in one branch-free pass (the GPU waits for this: it is between two steps;
    // no ids pass too); the position of a bad id only when there is one.
    let (lo, hi) = ids.iter().fold((i32::MAX, i32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if lo >= 0 && (hi as i64) < r.bound as i64 {
        return Ok(());
    }
    for (i, &v) in ids.iter().enumerate() {
        let v = v as i64;
        if Some(v) != r.ignore && !(0..r.bound as i64).contains(&v) {
            return Err(NnError::Other(format!("{}: id {v} at position {i} is outside 0..{}", r.name, r.bound)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdamWConfig, AdamW};

    #[test]
    fn capture_on_the_cpu_is_a_clear_error() {
        let w = Tensor::new_var(&Tensor::from_vec(vec![1.0f32, 2.0], &[2]));
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default(), |_, _| false);
        let x = Tensor::from_vec(vec![0i32, 1], &[2]);
        let r = GraphStep::capture(&mut opt, &[x], &[IdRange { name: "ids", bound: 2, ignore: None }], 1.0, |_| w.sum_all());
        let e = r.err().expect("no GPU: an error").to_string();
        assert!(e.contains("needs the parameters on a GPU") && e.contains("cpu"), "{e}");
    }

    #[test]
    fn ids_are_checked_against_their_range_and_dtype() {
        let r = IdRange { name: "targets", bound: 10, ignore: Some(-100) };
        assert!(check_ids(&Tensor::from_vec(vec![0i32, 9, -100], &[3]), &r).is_ok());
        let e = check_ids(&Tensor::from_vec(vec![0i32, 10], &[2]), &r).unwrap_err().to_string();
        assert!(e.contains("targets") && e.contains("id 10 at position 1") && e.contains("0..10"), "{e}");
        let e = check_ids(&Tensor::from_vec(vec![-1i32], &[1]), &r).unwrap_err().to_string();
        assert!(e.contains("id -1 at position 0"), "{e}");
        let e = check_ids(&Tensor::from_vec(vec![1.0f32], &[1]), &r).unwrap_err().to_string();
        assert!(e.contains("must be i32"), "{e}");
    }
}
