//! Whole-model parity with PyTorch/transformers (fixture from tools/make_gpt2_fixture.py):
//! logits, loss, every gradient, then 10 AdamW steps — llm.c's test_gpt2.
//!
//! Tolerances (f32 on both sides; the differences are summation order in matmuls/reductions):
//! - logits: 1e-4 absolute (values are O(1); f32 ulp ~1e-7, K ≤ 128-term dot products).
//! - loss: 1e-5 absolute.
//! - gradients: 1e-4 · max(1, max|grad|) per tensor (backward accumulates over B·T positions).
//! - AdamW losses: 1e-3 absolute after 10 steps (Adam normalizes by sqrt(v), which amplifies tiny
//!   gradient differences where v is small; observed differences are far smaller).
//!
//! The same tests run on a GPU with FMLAB_TEST_DEVICE=cuda (scripts/gpu-check.sh). The bf16
//! mixed-precision test holds fmlab's bf16 run to PyTorch's fp32 numbers with bf16 tolerances:
//! activations and GEMM inputs are rounded to 8 mantissa bits (relative 2^-9 per rounding, a few
//! roundings deep), so logits/loss within 3e-2, gradients within 5e-2 of their scale.

use std::collections::HashMap;

use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::optim::default_decay;
use fmlab_nn::{AdamW, AdamWConfig};
use fmlab_tensor::{DType, Device, Tensor};

/// FMLAB_TEST_DEVICE (cpu, cuda, cuda:N), default cpu.
fn test_device() -> Device {
    let d = std::env::var("FMLAB_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let dev = Device::parse(&d).unwrap_or_else(|| panic!("FMLAB_TEST_DEVICE={d}"));
    dev.init().unwrap_or_else(|e| panic!("FMLAB_TEST_DEVICE={d}: {e}"));
    dev
}

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpt2_tiny.safetensors");
    // A carried test binary (scripts/gpu-check.sh) runs from the repository root elsewhere.
    let p = if std::path::Path::new(p).exists() { p } else { "crates/models/tests/fixtures/gpt2_tiny.safetensors" };
    fmlab_nn::safetensors_io::load(p.as_ref()).unwrap()
}

fn cfg() -> Gpt2Config {
    Gpt2Config { vocab_size: 96, n_ctx: 16, n_embd: 32, n_layer: 2, n_head: 4, dropout: 0.0, layer_norm_eps: 1e-5 }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.to_vec_f64().iter().zip(b.to_vec_f64()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn build(fx: &HashMap<String, Tensor>) -> (Gpt2, Vec<(String, Tensor)>) {
    let params: HashMap<String, Tensor> =
        fx.iter().filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone()))).collect();
    let (model, vb) = Gpt2::load_hf(params, &cfg(), DType::F32).unwrap();
    vb.to_device(test_device());
    (model, vb.vars())
}

#[test]
fn logits_loss_and_every_gradient_match_pytorch() {
    let fx = fixture();
    let (model, vars) = build(&fx);
    let (ids, targets) = (&fx["ids"], &fx["targets"]);
    let logits = model.forward(ids, None);
    let d = max_diff(&logits, &fx["logits"]);
    assert!(d < 1e-4, "logits differ by {d}");
    let loss = model.loss(ids, targets, None);
    let (got, want) = (loss.item(), fx["loss"].item());
    assert!((got - want).abs() < 1e-5, "loss {got} vs {want}");
    loss.backward();
    assert_eq!(vars.len(), 4 + 2 * 12, "every parameter is a variable");
    for (name, v) in &vars {
        let g = v.grad().unwrap_or_else(|| panic!("no gradient for {name}"));
        let want = &fx[&format!("grad.{name}")];
        let scale = want.to_vec_f64().iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let d = max_diff(&g, want);
        assert!(d < 1e-4 * scale, "grad of {name} differs by {d} (scale {scale})");
    }
    eprintln!("gpt2 parity: logits max diff {:.2e}, loss {got:.6} vs {want:.6}", max_diff(&logits, &fx["logits"]));
}

#[test]
fn ten_adamw_steps_match_pytorch() {
    let fx = fixture();
    let (model, vars) = build(&fx);
    let (ids, targets) = (&fx["ids"], &fx["targets"]);
    let mut opt = AdamW::new(vars.clone(), AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
    let want = fx["losses_adamw"].to_vec_f64();
    let mut got = Vec::new();
    for _ in 0..10 {
        opt.zero_grad();
        let loss = model.loss(ids, targets, None);
        loss.backward();
        opt.step();
        got.push(loss.item());
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-3, "step {i}: loss {g} vs PyTorch {w}\nall: {got:?}\nwant: {want:?}");
    }
    // And the parameters after 10 steps.
    for (name, v) in &vars {
        let d = max_diff(v, &fx[&format!("after.{name}")]);
        assert!(d < 1e-3, "{name} after 10 steps differs by {d}");
    }
    eprintln!("adamw losses: {got:?}");
}

#[test]
fn bf16_mixed_precision_matches_pytorch_within_bf16_tolerance() {
    let fx = fixture();
    let (mut model, vars) = build(&fx);
    model.compute_dtype = DType::BF16;
    let (ids, targets) = (&fx["ids"], &fx["targets"]);
    let logits = model.forward(ids, None);
    assert_eq!(logits.dtype(), DType::BF16);
    let want_logits = &fx["logits"];
    let scale = want_logits.to_vec_f64().iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let d = max_diff(&logits, want_logits);
    assert!(d < 3e-2 * scale, "bf16 logits differ by {d} (scale {scale})");
    let loss = model.loss(ids, targets, None);
    let (got, want) = (loss.item(), fx["loss"].item());
    assert!((got - want).abs() < 3e-2, "bf16 loss {got} vs {want}");
    loss.backward();
    for (name, v) in &vars {
        let g = v.grad().unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dtype(), DType::F32, "{name}: master gradients are fp32");
        let want = &fx[&format!("grad.{name}")];
        let scale = want.to_vec_f64().iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let d = max_diff(&g, want);
        assert!(d < 5e-2 * scale, "bf16 grad of {name} differs by {d} (scale {scale})");
    }
    for v in &vars {
        v.1.zero_grad();
    }
    let mut opt = AdamW::new(vars.clone(), AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
    let want = fx["losses_adamw"].to_vec_f64();
    let mut losses = Vec::new();
    for _ in 0..10 {
        opt.zero_grad();
        let loss = model.loss(ids, targets, None);
        loss.backward();
        opt.step();
        losses.push(loss.item());
    }
    // Against PyTorch's fp32 trajectory: the first steps agree to bf16 rounding; later, at this
    // fixture's high learning rate (1e-2, one batch), the bf16 run drifts (it descended slightly
    // faster when measured: 2.14 vs 2.24 at step 10), so later steps are held to 6% and to
    // falling monotonically.
    for (i, (g, w)) in losses.iter().zip(&want).enumerate() {
        let tol = if i < 3 { 1e-2 } else { 6e-2 * w };
        assert!((g - w).abs() < tol, "bf16 step {i}: loss {g} vs PyTorch fp32 {w}\nall: {losses:?}\nwant: {want:?}");
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "bf16 losses must fall: {losses:?}");
    eprintln!("bf16 on {}: logits max diff {d:.2e}, adamw losses {losses:?}", test_device());
}

#[test]
fn fused_adamw_equals_its_tensor_op_twin() {
    let fx = fixture();
    let run = |slow: bool| {
        let (model, vars) = build(&fx);
        let mut opt = AdamW::new(vars.clone(), AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
        for _ in 0..3 {
            opt.zero_grad();
            model.loss(&fx["ids"], &fx["targets"], None).backward();
            if slow { opt.step_slow() } else { opt.step() }
        }
        vars.iter().map(|(_, v)| v.to_vec_f64()).collect::<Vec<_>>()
    };
    let (a, b) = (run(false), run(true));
    for (x, y) in a.iter().zip(&b) {
        let d = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        // Same formula, same operation order, same f32 constants: bit-identical.
        assert_eq!(d, 0.0, "fused vs slow AdamW differ by {d}");
    }
}

/// The update a CUDA graph captures (clip coefficient and AdamW scalars read from tensors,
/// `AdamW::update_on_device`) equals the eager `clip_grad_norm` + `AdamW::step`, with clipping
/// active and the learning rate changing. Bit-identical is not expected: the coefficient scales
/// the gradient inside the update in f32 rather than in a separate f64-scaled op.
#[test]
fn adamw_with_device_scalars_equals_eager_clip_and_step() {
    let fx = fixture();
    let run = |dev_scalars: bool| {
        let (model, vars) = build(&fx);
        let vt: Vec<Tensor> = vars.iter().map(|(_, v)| v.clone()).collect();
        let mut opt = AdamW::new(vars.clone(), AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
        let mut norms = Vec::new();
        for i in 0..4 {
            opt.set_lr(1e-2 / (1 + i) as f64);
            opt.zero_grad();
            model.loss(&fx["ids"], &fx["targets"], None).backward();
            if dev_scalars {
                let grads: Vec<Tensor> = vt.iter().filter_map(|v| v.grad()).collect();
                let (norm, coef) = fmlab_tensor::clip_coef(&fmlab_tensor::sum_squares_all(&grads), 0.5);
                opt.prepare_device_step();
                opt.update_on_device(&coef);
                norms.push(norm.item());
            } else {
                norms.push(fmlab_nn::clip_grad_norm(&vt, 0.5));
                opt.step();
            }
        }
        (norms, vars.iter().map(|(_, v)| v.to_vec_f64()).collect::<Vec<_>>())
    };
    let ((na, a), (nb, b)) = (run(false), run(true));
    assert!(na.iter().all(|&n| n > 0.5), "clipping active: norms {na:?}");
    for (x, y) in na.iter().zip(&nb) {
        assert!((x - y).abs() < 1e-9 * x, "norms {na:?} vs {nb:?}");
    }
    for (x, y) in a.iter().zip(&b) {
        let d = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(d < 1e-6, "device-scalar AdamW differs from the eager step by {d}");
    }
}

#[test]
fn preset_parameter_counts() {
    let mini = Gpt2Config::preset("gpt2-mini").unwrap();
    // wte 12,865,792 + wpe 262,144 + 12 blocks × 789,760 + ln_f 512
    assert_eq!(mini.num_params(), 22_605_568);
    // Counting the variables a built model actually has agrees with the formula.
    let vb = fmlab_nn::VarBuilder::new(DType::F32, 0);
    let tiny = Gpt2Config::preset("cpu-tiny").unwrap();
    Gpt2::load(&vb, &tiny).unwrap();
    assert_eq!(vb.vars().iter().map(|(_, v)| v.numel()).sum::<usize>(), tiny.num_params());
}

#[test]
fn checkpoint_with_a_wrong_shape_or_missing_key_is_a_clear_error() {
    let fx = fixture();
    let mut params: HashMap<String, Tensor> =
        fx.iter().filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone()))).collect();
    params.insert("h.1.mlp.c_fc.weight".into(), Tensor::zeros(&[32, 100], DType::F32));
    let e = Gpt2::load_hf(params.clone(), &cfg(), DType::F32).err().unwrap().to_string();
    assert!(e.contains("h.1.mlp.c_fc.weight") && e.contains("[32, 100]") && e.contains("[32, 128]"), "{e}");
    params.remove("h.1.mlp.c_fc.weight");
    let e = Gpt2::load_hf(params, &cfg(), DType::F32).err().unwrap().to_string();
    assert!(e.contains("h.1.mlp.c_fc.weight"), "{e}");
}

#[test]
fn gradient_accumulation_over_micro_batches_equals_the_full_batch() {
    // Two backward calls on halves (each loss scaled by 1/2) accumulate to the gradient of the
    // mean loss over the whole batch (no ignored targets, so the halves weigh equally).
    let fx = fixture();
    let (model, vars) = build(&fx);
    let ids = &fx["ids"];
    let targets = fx["targets"].to_vec::<i32>().into_iter().map(|t| if t < 0 { 0 } else { t }).collect::<Vec<_>>();
    let targets = Tensor::from_vec(targets, ids.shape());
    model.loss(ids, &targets, None).backward();
    let full: Vec<Vec<f64>> = vars.iter().map(|(_, v)| v.grad().unwrap().to_vec_f64()).collect();
    for (_, v) in &vars {
        v.zero_grad();
    }
    for half in 0..2 {
        let x = ids.narrow(0, half, 1);
        let y = targets.narrow(0, half, 1);
        model.loss(&x, &y, None).scale(0.5).backward();
    }
    for ((name, v), f) in vars.iter().zip(&full) {
        let g = v.grad().unwrap().to_vec_f64();
        let d = g.iter().zip(f).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(d < 1e-6, "{name}: accumulated gradient differs by {d}");
    }
}
