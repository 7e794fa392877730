//! A training step captured as a CUDA graph (fmlab_nn::GraphStep) trains like the eager step:
//! same losses, gradient norms and parameters, step after step, with the batch, the learning rate
//! and the clip coefficient changing between replays. GPU only (#[ignore]: CI has no GPU);
//! scripts/gpu-check.sh runs them with --ignored on the lent H100.
//!
//! Tolerances: the graph runs the same kernels as the eager step, except that the clip
//! coefficient multiplies the gradient inside the AdamW kernel (in f32) instead of in a separate
//! scale kernel, and the classifier's 1/kept comes from the device. Those round differently in
//! the last bit, which Adam's normalization amplifies a little: 1e-5 on losses, norms and
//! parameters over 6 steps (f32); 2e-3 in bf16 mixed precision (bf16 rounding of activations
//! turns last-bit differences into 2^-9 relative ones).

use std::collections::HashMap;

use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::optim::default_decay;
use fmlab_nn::{clip_grad_norm, AdamW, AdamWConfig, GraphStep, IdRange};
use fmlab_tensor::{DType, Device, Rng, Tensor};

fn cfg() -> Gpt2Config {
    Gpt2Config { vocab_size: 96, n_ctx: 16, n_embd: 32, n_layer: 2, n_head: 4, dropout: 0.0, layer_norm_eps: 1e-5 }
}

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpt2_tiny.safetensors");
    let p = if std::path::Path::new(p).exists() { p } else { "crates/models/tests/fixtures/gpt2_tiny.safetensors" };
    fmlab_nn::safetensors_io::load(p.as_ref()).unwrap()
}

fn cuda() -> Device {
    let d = Device::Cuda(0);
    d.init().unwrap_or_else(|e| panic!("these tests need a GPU: {e}"));
    d
}

/// A fresh copy of the fixture's model on the GPU and its optimizer.
fn build(fx: &HashMap<String, Tensor>, dtype: DType) -> (Gpt2, AdamW, Vec<Tensor>) {
    let params: HashMap<String, Tensor> = fx.iter().filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone()))).collect();
    let (mut model, vb) = Gpt2::load_hf(params, &cfg(), DType::F32).unwrap();
    vb.to_device(cuda());
    model.compute_dtype = dtype;
    let vars = vb.vars();
    let vt = vars.iter().map(|(_, v)| v.clone()).collect();
    (model, AdamW::new(vars, AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay), vt)
}

/// Batch `i`: ids [2, 16] in 0..96, targets with a few ignored (-100) positions.
fn batch(i: u64) -> (Tensor, Tensor) {
    let mut r = Rng::new(100 + i);
    let x: Vec<i32> = (0..32).map(|_| r.below(96) as i32).collect();
    let y: Vec<i32> = (0..32).map(|j| if (j + i as usize).is_multiple_of(7) { -100 } else { r.below(96) as i32 }).collect();
    (Tensor::from_vec(x, &[2, 16]), Tensor::from_vec(y, &[2, 16]))
}

const RANGES: [IdRange; 2] = [IdRange { name: "input ids", bound: 96, ignore: None }, IdRange { name: "targets", bound: 96, ignore: Some(-100) }];
/// Small enough that clipping is active on every step.
const MAX_NORM: f64 = 0.5;

fn eager_step(model: &Gpt2, opt: &mut AdamW, vt: &[Tensor], x: &Tensor, y: &Tensor) -> (f64, f64) {
    opt.zero_grad();
    let loss = model.loss(x, y, None);
    loss.backward();
    let norm = clip_grad_norm(vt, MAX_NORM);
    opt.step();
    opt.zero_grad();
    (loss.item(), norm)
}

fn graph_matches_eager(dtype: DType, tol: f64) {
    let fx = fixture();
    let (m_e, mut o_e, v_e) = build(&fx, dtype);
    let (m_g, mut o_g, v_g) = build(&fx, dtype);
    // Step 0 eager on both (the graph's warm-up), then steps 1..6: eager vs replays.
    let (x, y) = batch(0);
    eager_step(&m_e, &mut o_e, &v_e, &x, &y);
    eager_step(&m_g, &mut o_g, &v_g, &x, &y);
    let (x, y) = batch(1);
    let mut g = GraphStep::capture(&mut o_g, &[x, y], &RANGES, MAX_NORM, |inp| m_g.loss(&inp[0], &inp[1], None)).unwrap();
    for i in 1..7u64 {
        let lr = 1e-2 * (1.0 - 0.1 * i as f64); // a schedule: the graph must read each step's lr
        o_e.set_lr(lr);
        o_g.set_lr(lr);
        let (x, y) = batch(i);
        let (le, ne) = eager_step(&m_e, &mut o_e, &v_e, &x, &y);
        g.step(&mut o_g, &[x, y]).unwrap();
        let (lg, ng) = (g.loss(), g.norm());
        eprintln!("step {i}: loss eager {le:.7} graph {lg:.7}; norm eager {ne:.6} graph {ng:.6}");
        assert!(ne > MAX_NORM, "clipping is active (norm {ne})");
        assert!((le - lg).abs() < tol, "step {i}: loss eager {le} vs graph {lg}");
        assert!((ne - ng).abs() < tol * ne.max(1.0), "step {i}: norm eager {ne} vs graph {ng}");
    }
    assert_eq!(o_e.step, o_g.step, "both optimizers counted the same steps");
    for (a, b) in v_e.iter().zip(&v_g) {
        let d = a.to_vec_f64().iter().zip(b.to_vec_f64()).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(d < tol, "parameter {:?} differs by {d} after 7 steps", a.shape());
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh run tests)"]
fn graph_steps_train_like_eager_steps_f32() {
    graph_matches_eager(DType::F32, 1e-5);
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh run tests)"]
fn graph_steps_train_like_eager_steps_bf16() {
    graph_matches_eager(DType::BF16, 2e-3);
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh run tests)"]
fn bad_ids_and_shapes_are_refused_before_a_replay() {
    let fx = fixture();
    let (m, mut o, vt) = build(&fx, DType::F32);
    let (x, y) = batch(0);
    eager_step(&m, &mut o, &vt, &x, &y);
    let mut g = GraphStep::capture(&mut o, &[x.clone(), y.clone()], &RANGES, MAX_NORM, |inp| m.loss(&inp[0], &inp[1], None)).unwrap();
    let mut bad: Vec<i32> = x.to_vec::<i32>();
    bad[5] = 96;
    let e = g.step(&mut o, &[Tensor::from_vec(bad, &[2, 16]), y.clone()]).unwrap_err().to_string();
    assert!(e.contains("input ids") && e.contains("96") && e.contains("position 5"), "{e}");
    let e = g.step(&mut o, &[Tensor::from_vec(vec![0i32; 16], &[1, 16]), y]).unwrap_err().to_string();
    assert!(e.contains("shape") && e.contains("captured"), "{e}");
    assert_eq!(o.step, 1, "a refused step is not counted");
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh run tests)"]
fn a_host_read_inside_capture_is_a_clear_error_and_the_device_stays_usable() {
    let dev = cuda();
    let Device::Cuda(o) = dev else { unreachable!() };
    let cdev = fmlab_tensor::cuda::device(o).unwrap();
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).to_device(dev);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cdev.capture(|| a.scale(2.0).sum_all().item())));
    let msg = r.err().and_then(|p| p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))).unwrap_or_default();
    assert!(msg.contains("CUDA-graph capture"), "panic message: {msg}");
    assert!(!cdev.is_capturing());
    // The stream works normally afterwards, and a capture of the same work replays right.
    assert_eq!(a.scale(2.0).sum_all().item(), 12.0);
    let (graph, out) = cdev.capture(|| a.scale(2.0).sum_all()).unwrap();
    graph.replay().unwrap();
    assert_eq!(out.item(), 12.0);
    a.overwrite(&Tensor::from_vec(vec![3.0f32, 3.0, 3.0], &[3]));
    graph.replay().unwrap();
    assert_eq!(out.item(), 18.0, "the replay read the overwritten input");
}
