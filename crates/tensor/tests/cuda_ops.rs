//! The CUDA backend against the CPU engine: every primitive in f32 (and bf16 where the model
//! uses it), on strided and broadcast layouts, plus the fused kernels (cross-entropy, AdamW).
//! Needs a GPU: `scripts/gpu-check.sh` runs these with `--ignored` on the GPU machine.
//! (The f64 finite-difference checks in grad_check.rs also run there, with FMLAB_TEST_DEVICE=cuda.)
//!
//! Tolerances, and why:
//! - f32 elementwise: 2e-6 relative — CUDA's expf/tanhf/erff are within 2 ulp of the CPU's.
//! - f32 sums: 1e-6 relative — both accumulate in f64, in different orders.
//! - f32 GEMM: 1e-5 relative to the output's scale — cuBLAS (no TF32) vs the gemm crate, both
//!   fp32 FMA, in different orders.
//! - bf16: both devices compute in f32 and round once to bf16 (8 bits of mantissa), so results
//!   agree within 1 bf16 ulp: 2^-7 = 0.0078 relative; GEMMs accumulate in f32 on both sides but
//!   round only at the end, 1e-2 relative to scale.

use fmlab_tensor::op::Op;
use fmlab_tensor::{adamw_update, adamw_update_all, attention, AttnMask, DType, Device, Rng, Tensor};

fn gpu() -> Device {
    let d = Device::Cuda(0);
    d.init().unwrap_or_else(|e| panic!("these tests need a GPU: {e}"));
    d
}

fn rnd(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut Rng::new(seed)).to_dtype(dtype)
}

/// max |a - b| / max(|b|_inf, floor)
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (x, y) = (a.to_vec_f64(), b.to_vec_f64());
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let mut worst = 0.0f64;
    for (p, q) in x.iter().zip(&y) {
        if p.is_nan() || q.is_nan() {
            assert!(p.is_nan() && q.is_nan(), "NaN mismatch: {p} vs {q}");
            continue;
        }
        if p.is_infinite() || q.is_infinite() {
            assert_eq!(p, q, "inf mismatch");
            continue;
        }
        worst = worst.max((p - q).abs() / scale);
    }
    worst
}

fn close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.device(), Device::Cuda(0), "{name}: result not on the GPU");
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    let e = rel(got, want);
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:.1e}");
}

/// Runs `f` on CPU inputs and on their GPU copies and compares.
fn same(name: &str, inputs: &[Tensor], tol: f64, f: impl Fn(&[Tensor]) -> Tensor) {
    let g = gpu();
    let want = f(inputs);
    let gi: Vec<Tensor> = inputs.iter().map(|t| t.to_device(g)).collect();
    let got = f(&gi);
    close(name, &got, &want, tol);
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn transfers_round_trip_every_dtype() {
    let g = gpu();
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::U32, DType::U8] {
        let x = Tensor::from_f64(&(0..1000).map(|i| (i % 200) as f64).collect::<Vec<_>>(), &[10, 100], dt);
        let y = x.to_device(g);
        assert_eq!(y.device(), g);
        assert_eq!(y.to_vec_f64(), x.to_vec_f64(), "{dt}");
        // A strided view crosses as its own elements.
        assert_eq!(y.t().to_vec_f64(), x.t().to_vec_f64(), "{dt} transposed");
        assert_eq!(y.narrow(1, 3, 7).to_device(Device::Cpu).to_vec_f64(), x.narrow(1, 3, 7).to_vec_f64());
    }
    let z = Tensor::zeros_on(&[3, 5], DType::BF16, g);
    assert_eq!(z.to_vec_f64(), vec![0.0; 15]);
    let f = Tensor::full_on(2.5, &[4], DType::F32, g);
    assert_eq!(f.to_vec_f64(), vec![2.5; 4]);
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn unary_ops_f32_bf16_strided() {
    let x = rnd(&[37, 53], 1, DType::F32);
    let pos = x.abs().add_scalar(0.1);
    for (dt, tol) in [(DType::F32, 2e-6), (DType::BF16, 8e-3), (DType::F64, 1e-14)] {
        let (x, pos) = (x.to_dtype(dt), pos.to_dtype(dt));
        same("neg", &[x.t()], tol, |v| v[0].neg());
        same("exp", &[x.t()], tol, |v| v[0].exp());
        same("log", &[pos.clone()], tol, |v| v[0].log());
        same("sqrt", &[pos.t()], tol, |v| v[0].sqrt());
        same("tanh", &[x.clone()], tol, |v| v[0].tanh());
        same("sin", &[x.clone()], tol, |v| v[0].sin());
        same("cos", &[x.clone()], tol, |v| v[0].cos());
        same("abs", &[x.clone()], tol, |v| v[0].abs());
        same("erf", &[x.clone()], tol.max(2e-6), |v| v[0].erf());
        same("recip", &[pos.clone()], tol, |v| v[0].recip());
        same("relu", &[x.t()], tol, |v| v[0].relu());
        same("affine", &[x.narrow(1, 5, 20)], tol, |v| v[0].affine(1.5, -0.25));
        same("powf 2", &[x.clone()], tol, |v| v[0].powf(2.0));
        same("powf 3", &[x.clone()], tol, |v| v[0].powf(3.0));
        same("powf 0.5", &[pos.clone()], tol, |v| v[0].powf(0.5));
        same("gelu_tanh", &[x.clone()], tol * 4.0, |v| v[0].gelu_tanh());
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn binary_compare_where_with_broadcast() {
    for (dt, tol) in [(DType::F32, 1e-7), (DType::BF16, 8e-3)] {
        let a = rnd(&[4, 1, 33], 2, dt);
        let b = rnd(&[5, 33], 3, dt);
        same("add", &[a.clone(), b.clone()], tol, |v| v[0].add(&v[1]));
        same("sub", &[a.clone(), b.t().t()], tol, |v| v[0].sub(&v[1]));
        same("mul", &[a.clone(), b.clone()], tol, |v| v[0].mul(&v[1]));
        same("div", &[a.clone(), b.abs().add_scalar(0.5)], tol, |v| v[0].div(&v[1]));
        same("maximum", &[a.clone(), b.clone()], 0.0, |v| v[0].maximum(&v[1]));
        same("minimum", &[a.clone(), b.clone()], 0.0, |v| v[0].minimum(&v[1]));
        same("add transposed", &[rnd(&[33, 5], 4, dt).t(), b.clone()], tol, |v| v[0].add(&v[1]));
        same("gt", &[a.clone(), b.clone()], 0.0, |v| v[0].gt(&v[1]));
        same("le scalar", &[a.clone()], 0.0, |v| v[0].le(&v[0].scalar_like(0.1)));
        same("eq", &[a.clone(), a.clone()], 0.0, |v| v[0].eq(&v[1]));
        let mask = a.gt(&b);
        same("where", &[mask, a.clone(), b.clone()], 0.0, |v| v[0].where_cond(&v[1], &v[2]));
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn casts_between_all_dtypes() {
    let x = Tensor::from_f64(&[-3.7, -1.0, -0.5, 0.0, 0.49, 1.5, 2.5, 255.9, 300.0, 1e6, 65504.0, 1e-3], &[12], DType::F64);
    let dts = [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::U32, DType::U8];
    for &from in &dts {
        for &to in &dts {
            same(&format!("cast {from} -> {to}"), &[x.to_dtype(from)], 0.0, |v| v[0].to_dtype(to));
        }
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn reductions_over_any_dims() {
    for (dt, tol) in [(DType::F32, 1e-6), (DType::BF16, 8e-3), (DType::F64, 1e-14)] {
        let x = rnd(&[6, 7, 300], 5, dt);
        same("sum last", &[x.clone()], tol, |v| v[0].sum(&[2], true));
        same("sum first", &[x.clone()], tol, |v| v[0].sum(&[0], false));
        same("sum 0,2", &[x.clone()], tol, |v| v[0].sum(&[0, 2], true));
        same("sum all", &[x.clone()], tol, |v| v[0].sum_all());
        same("max", &[x.clone()], 0.0, |v| v[0].max(&[1], true));
        same("min strided", &[x.permute(&[2, 0, 1])], 0.0, |v| v[0].min(&[0], true));
        same("mean", &[x.clone()], tol, |v| v[0].mean(&[2], true));
        same("softmax", &[x.clone()], tol * 4.0, |v| v[0].softmax(2));
        same("softmax_scaled causal", &[rnd(&[2, 3, 40, 300], 7, dt)], tol * 4.0, |v| v[0].softmax_scaled(0.3, true));
        same("softmax_scaled", &[rnd(&[2, 3, 40, 300], 8, dt)], tol * 4.0, |v| v[0].softmax_scaled(0.3, false));
        same("large reduce", &[rnd(&[2, 100_000], 6, dt)], tol * 4.0, |v| v[0].sum(&[1], true));
        // Whole-tensor reductions of ≥ 8192 contiguous elements run over blocks (also from an
        // offset, and max/min through the same path).
        same("sum all, large", &[rnd(&[2, 100_000], 9, dt)], tol * 4.0, |v| v[0].sum_all());
        same("sum all, offset view", &[x.narrow(0, 1, 5)], tol, |v| v[0].sum_all());
        same("max all", &[x.clone()], 0.0, |v| v[0].max(&[0, 1, 2], false));
        same("min all", &[x.narrow(0, 2, 4)], 0.0, |v| v[0].min(&[0, 1, 2], false));
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn matmul_layouts_and_dtypes() {
    for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F64, 1e-12)] {
        same("2d", &[rnd(&[65, 33], 7, dt), rnd(&[33, 17], 8, dt)], tol, |v| v[0].matmul(&v[1]));
        same("a transposed", &[rnd(&[33, 65], 9, dt).t(), rnd(&[33, 17], 10, dt)], tol, |v| v[0].matmul(&v[1]));
        same("b transposed", &[rnd(&[65, 33], 11, dt), rnd(&[17, 33], 12, dt).t()], tol, |v| v[0].matmul(&v[1]));
        same("batched", &[rnd(&[3, 4, 20, 16], 13, dt), rnd(&[3, 4, 16, 24], 14, dt)], tol, |v| v[0].matmul(&v[1]));
        same("batched qk^T", &[rnd(&[2, 3, 20, 16], 15, dt), rnd(&[2, 3, 24, 16], 16, dt)], tol, |v| v[0].matmul(&v[1].t()));
        same("broadcast batch", &[rnd(&[2, 1, 5, 8], 17, dt), rnd(&[3, 8, 4], 18, dt)], tol, |v| v[0].matmul(&v[1]));
        same("rows @ 2d", &[rnd(&[2, 7, 33], 19, dt), rnd(&[33, 9], 20, dt)], tol, |v| v[0].matmul(&v[1]));
        same("permuted heads", &[rnd(&[2, 9, 3, 8], 21, dt).transpose(1, 2), rnd(&[2, 9, 3, 8], 22, dt).transpose(1, 2).t()], tol, |v| v[0].matmul(&v[1]));
        same("narrowed operand", &[rnd(&[10, 48], 23, dt).narrow(1, 16, 16), rnd(&[16, 5], 24, dt)], tol, |v| v[0].matmul(&v[1]));
        same("k = 1", &[rnd(&[5, 1], 25, dt), rnd(&[1, 6], 26, dt)], tol, |v| v[0].matmul(&v[1]));
    }
    // A GPT-2 mini sized GEMM with the LM head's odd N.
    same("lm head", &[rnd(&[512, 256], 27, DType::BF16), rnd(&[50257, 256], 28, DType::BF16).t()], 1e-2, |v| v[0].matmul(&v[1]));
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn indexing_movement_and_cat() {
    let ids = Tensor::from_vec(vec![2i32, 0, 2, 1, 4], &[5]);
    for dt in [DType::F32, DType::BF16] {
        let x = rnd(&[5, 7], 30, dt);
        same("index_select", &[x.clone()], 0.0, |v| v[0].index_select(&ids, 0));
        same("index_select dim1 strided", &[x.t()], 0.0, |v| v[0].index_select(&ids, 1));
        same("contiguous", &[x.t()], 0.0, |v| v[0].contiguous());
        same("cat", &[x.clone(), rnd(&[5, 3], 31, dt)], 0.0, |v| Tensor::cat(&[v[0].clone(), v[1].t().t()], 1));
        same("cat dim0 views", &[x.clone()], 0.0, |v| Tensor::cat(&[v[0].narrow(0, 1, 2), v[0].t().contiguous().t()], 0));
    }
    // Accumulating ops: repeated ids add up (atomics: order-dependent rounding in f32).
    let base = rnd(&[5, 7], 32, DType::F32);
    let src = rnd(&[5, 7], 33, DType::F32);
    same("index_add", &[base.clone(), src.clone()], 1e-6, |v| v[0].index_add(&ids, &v[1], 0));
    let idx = Tensor::from_vec(vec![1i32, 0, 2, 2, 1, 0, 6, 6, 6, 3], &[2, 5]);
    same("gather", &[rnd(&[2, 7], 34, DType::F32)], 0.0, |v| v[0].gather(&idx, 1));
    same("scatter_add", &[rnd(&[2, 7], 35, DType::F32), rnd(&[2, 5], 36, DType::F32)], 1e-6, |v| v[0].scatter_add(&idx, &v[1], 1));
    same("index_add bf16", &[base.to_dtype(DType::BF16), src.to_dtype(DType::BF16)], 1.6e-2, |v| v[0].index_add(&ids, &v[1], 0));
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn fused_cross_entropy_forward_backward() {
    let g = gpu();
    let targets = Tensor::from_vec((0..64).map(|i| if i % 7 == 3 { -100 } else { (i * 37 % 1000) as i32 }).collect::<Vec<_>>(), &[64]);
    for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12), (DType::BF16, 1e-2)] {
        let logits = rnd(&[64, 1000], 40, DType::F32).scale(3.0).to_dtype(dt);
        let run = |x: &Tensor, slow: bool| {
            let v = Tensor::new_var(x);
            let l = if slow { v.cross_entropy_slow(&targets, Some(-100)) } else { v.cross_entropy(&targets, Some(-100)) };
            l.scale(2.0).backward();
            (l, v.grad().unwrap())
        };
        let (l_cpu, g_cpu) = run(&logits.to_dtype(if dt == DType::BF16 { DType::F32 } else { dt }), false);
        let (l_gpu, g_gpu) = run(&logits.to_device(g), false);
        assert_eq!(l_gpu.dtype(), if dt == DType::F64 { DType::F64 } else { DType::F32 });
        let lt = if dt == DType::BF16 { 8e-3 } else { tol };
        assert!((l_gpu.item() - l_cpu.item()).abs() <= lt * l_cpu.item().abs(), "{dt}: loss {} vs {}", l_gpu.item(), l_cpu.item());
        close(&format!("ce grad {dt}"), &g_gpu.to_dtype(g_cpu.dtype()), &g_cpu, tol);
        // The fused op against its composite twin, both on the GPU.
        if dt != DType::BF16 {
            let (l_slow, g_slow) = run(&logits.to_device(g), true);
            assert!((l_gpu.item() - l_slow.item()).abs() <= tol * l_slow.item().abs(), "{dt}: fused {} vs slow {}", l_gpu.item(), l_slow.item());
            close("ce vs slow", &g_gpu, &g_slow, tol);
        }
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn adamw_kernel_matches_cpu_loop() {
    let g = gpu();
    let mk = |seed| rnd(&[1000, 3], seed, DType::F32);
    let (w, m, v, grad) = (mk(50), mk(51).scale(0.1), mk(52).abs().scale(0.01), mk(53));
    let cpu = [Tensor::new_var(&w), Tensor::new_var(&m), Tensor::new_var(&v)];
    let gpu_ = [Tensor::new_var(&w.to_device(g)), Tensor::new_var(&m.to_device(g)), Tensor::new_var(&v.to_device(g))];
    for step in 1..=5 {
        let bc1 = 1.0 - 0.9f64.powi(step);
        let bc2 = (1.0 - 0.95f64.powi(step)).sqrt();
        let args = (0.999f32, 0.1f32, 0.95f32, 0.05f32, 1e-8f32, (1e-3 / bc1) as f32, bc2 as f32);
        adamw_update(&cpu[0], &grad, &cpu[1], &cpu[2], args.0, args.1, args.2, args.3, args.4, args.5, args.6);
        adamw_update(&gpu_[0], &grad.to_device(g), &gpu_[1], &gpu_[2], args.0, args.1, args.2, args.3, args.4, args.5, args.6);
    }
    for (a, b) in gpu_.iter().zip(&cpu) {
        close("adamw", a, b, 1e-6);
    }
}

/// The multi-tensor AdamW (one launch per 64 tensors) against the per-tensor CPU loop: 70
/// tensors (two launches), sizes from 1 to past a block's chunk, f32 and bf16 gradients, decayed
/// and not.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn multi_tensor_adamw_matches_cpu_loop() {
    let g = gpu();
    let sizes: Vec<usize> = (0..70).map(|i| [1, 7, 256, 16384, 40000][i % 5] + i).collect();
    let mk = |n: usize, seed: u64| rnd(&[n], seed, DType::F32);
    let state: Vec<[Tensor; 4]> = sizes.iter().enumerate().map(|(i, &n)| [mk(n, 100 + i as u64), mk(n, 300 + i as u64).scale(0.1), mk(n, 500 + i as u64).abs().scale(0.01), mk(n, 700 + i as u64)]).collect();
    let cpu: Vec<[Tensor; 3]> = state.iter().map(|s| [Tensor::new_var(&s[0]), Tensor::new_var(&s[1]), Tensor::new_var(&s[2])]).collect();
    let gpu_: Vec<[Tensor; 3]> = state.iter().map(|s| [Tensor::new_var(&s[0].to_device(g)), Tensor::new_var(&s[1].to_device(g)), Tensor::new_var(&s[2].to_device(g))]).collect();
    // Every third gradient is bf16 (the CPU loop gets the same rounded values in f32).
    let grads: Vec<Tensor> = state.iter().enumerate().map(|(i, s)| if i % 3 == 0 { s[3].to_dtype(DType::BF16) } else { s[3].clone() }).collect();
    let grads_gpu: Vec<Tensor> = grads.iter().map(|t| t.to_device(g)).collect();
    let decay = |i: usize| if i % 2 == 0 { 0.999f32 } else { 1.0 };
    for step in 1..=3 {
        let bc1 = 1.0 - 0.9f64.powi(step);
        let bc2 = (1.0 - 0.95f64.powi(step)).sqrt();
        let a = (0.1f32, 0.95f32, 0.05f32, 1e-8f32, (1e-3 / bc1) as f32, bc2 as f32);
        for (i, c) in cpu.iter().enumerate() {
            adamw_update(&c[0], &grads[i].to_dtype(DType::F32), &c[1], &c[2], decay(i), a.0, a.1, a.2, a.3, a.4, a.5);
        }
        let items: Vec<_> = gpu_.iter().enumerate().map(|(i, t)| (&t[0], &grads_gpu[i], &t[1], &t[2], decay(i))).collect();
        adamw_update_all(&items, a.0, a.1, a.2, a.3, a.4, a.5);
    }
    for (i, (a, b)) in gpu_.iter().zip(&cpu).enumerate() {
        for k in 0..3 {
            close(&format!("adamw_update_all tensor {i} part {k}"), &a[k], &b[k], 1e-6);
        }
    }
}

/// The classifier tests' run: the loss (targets -100 ignored) and the gradients of 2·loss for x
/// and w, by the fused op in `chunk`-row chunks, or (None) by its unfused twin.
fn classifier_run(x: &Tensor, w: &Tensor, targets: &Tensor, chunk: Option<usize>) -> (f64, Tensor, Tensor) {
    let (xv, wv) = (Tensor::new_var(x), Tensor::new_var(w));
    let l = match chunk {
        Some(rows) => xv.linear_cross_entropy_chunked(&wv, targets, Some(-100), rows),
        None => xv.linear_cross_entropy_slow(&wv, targets, Some(-100)),
    };
    l.scale(2.0).backward();
    (l.item(), xv.grad().unwrap(), wv.grad().unwrap())
}

/// The fused classifier in bf16 on the GPU against full f32 logits + cross-entropy on the CPU,
/// at a vocabulary that is not a multiple of anything and chunks that split the rows unevenly.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn fused_classifier_bf16_matches_cpu() {
    let g = gpu();
    // The chunked path (cuBLASLt logits + a cross-entropy kernel), not the Hopper kernels.
    fmlab_tensor::settings::classifier_sm90(Some(false));
    fmlab_tensor::settings::classifier_rows_in_shared_memory(Some(false));
    let (n, c, v) = (300, 64, 5003);
    let x = rnd(&[n, c], 80, DType::F32);
    let w = rnd(&[v, c], 81, DType::F32).scale(0.2);
    let targets = Tensor::from_vec((0..n).map(|i| if i % 11 == 5 { -100 } else { (i * 7919 % v) as i32 }).collect::<Vec<_>>(), &[n]);
    let run = |x: &Tensor, w: &Tensor, fused: bool| classifier_run(x, w, &targets, fused.then_some(128));
    let (l_cpu, dx_cpu, dw_cpu) = run(&x, &w, false);
    let (l_gpu, dx_gpu, dw_gpu) = run(&x.to_dtype(DType::BF16).to_device(g), &w.to_dtype(DType::BF16).to_device(g), true);
    // bf16 inputs (8 bits of mantissa) through a 64-long dot product: ~1e-2 relative.
    assert!((l_gpu - l_cpu).abs() <= 1e-2 * l_cpu.abs(), "loss {l_gpu} vs {l_cpu}");
    close("classifier dx", &dx_gpu.to_dtype(DType::F32), &dx_cpu, 2e-2);
    close("classifier dw", &dw_gpu.to_dtype(DType::F32), &dw_cpu, 2e-2);
    // f32 on the GPU: the same op as on the CPU up to summation order.
    let (l32, dx32, dw32) = run(&x.to_device(g), &w.to_device(g), true);
    assert!((l32 - l_cpu).abs() <= 1e-5 * l_cpu.abs(), "f32 loss {l32} vs {l_cpu}");
    close("classifier dx f32", &dx32, &dx_cpu, 1e-5);
    close("classifier dw f32", &dw32, &dw_cpu, 1e-5);
    // The rows streamed through shared memory (`ce_stream`, sm_90 and later; elsewhere this
    // reruns the two-pass kernel) against the two-pass kernel: the same arithmetic but
    // for which thread sums which logits, so the loss agrees to f32 rounding and the gradients to
    // a last-bit rounding here and there. Chunks of 128 rows give each of the H100's 132 blocks one
    // row; 300 give some three, so a buffer is refilled and its barrier waited on a second time.
    for rows in [128, 300] {
        for dtype in [DType::BF16, DType::F32] {
            let (xd, wd) = (x.to_dtype(dtype).to_device(g), w.to_dtype(dtype).to_device(g));
            let (l1, dx1, dw1) = classifier_run(&xd, &wd, &targets, Some(rows));
            fmlab_tensor::settings::classifier_rows_in_shared_memory(Some(true));
            let (l2, dx2, dw2) = classifier_run(&xd, &wd, &targets, Some(rows));
            fmlab_tensor::settings::classifier_rows_in_shared_memory(Some(false));
            let what = format!("{dtype:?}, {rows}-row chunks, rows streamed through shared memory");
            assert!((l2 - l1).abs() <= 1e-6 * l1.abs(), "{what}: loss {l2} vs {l1}");
            close(&format!("classifier dx, {what}"), &dx2.to_dtype(DType::F32), &dx1.to_dtype(DType::F32), 5e-3);
            close(&format!("classifier dw, {what}"), &dw2.to_dtype(DType::F32), &dw1.to_dtype(DType::F32), 5e-3);
        }
    }
    fmlab_tensor::settings::classifier_rows_in_shared_memory(None);
    fmlab_tensor::settings::classifier_sm90(None);
}

/// The Hopper classifier (classifier_sm90.cu: wgmma, the logits never written) at every width it
/// takes (C = 64, 128, 192, 256) against f32 logits + cross-entropy on the CPU, with a vocabulary
/// of 79 64-column tiles whose last is mostly padding, rows that are not a multiple of its
/// 256-row block,
/// ignored rows, chunks that split the rows unevenly, and an eval (no-gradient) call. Tolerance as
/// in `fused_classifier_bf16_matches_cpu` (bf16 inputs; its logits stay f32, so they are, if
/// anything, closer). On a GPU other than Hopper it checks the fallback the same way. The path is
/// the default where it applies; set here explicitly, restored at the end.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn hopper_classifier_matches_cpu() {
    let g = gpu();
    fmlab_tensor::settings::classifier_sm90(Some(true));
    let (n, v) = (333, 5003);
    for c in [64, 128, 192, 256] {
        let x = rnd(&[n, c], 90 + c as u64, DType::F32);
        let w = rnd(&[v, c], 91 + c as u64, DType::F32).scale(0.3);
        let targets = Tensor::from_vec((0..n).map(|i| if i % 13 == 7 { -100 } else { (i * 7919 % v) as i32 }).collect::<Vec<_>>(), &[n]);
        let run = |x: &Tensor, w: &Tensor, fused: bool| classifier_run(x, w, &targets, fused.then_some(200));
        let (l_cpu, dx_cpu, dw_cpu) = run(&x, &w, false);
        let (xb, wb) = (x.to_dtype(DType::BF16).to_device(g), w.to_dtype(DType::BF16).to_device(g));
        // dH made in the gradient pass (the default) and by a GEMM over g.
        let mut l_gpu = 0.0;
        for dh_fused in [true, false] {
            fmlab_tensor::settings::classifier_dh_fused(Some(dh_fused));
            let (l, dx_gpu, dw_gpu) = run(&xb, &wb, true);
            assert!((l - l_cpu).abs() <= 1e-2 * l_cpu.abs(), "C={c}: loss {l} vs {l_cpu}");
            eprintln!("hopper classifier C={c} dh_fused={dh_fused}: dx relative error {:.2e}", rel(&dx_gpu.to_dtype(DType::F32), &dx_cpu));
            close(&format!("hopper classifier dx C={c} dh_fused={dh_fused}"), &dx_gpu.to_dtype(DType::F32), &dx_cpu, 2e-2);
            close(&format!("hopper classifier dw C={c} dh_fused={dh_fused}"), &dw_gpu.to_dtype(DType::F32), &dw_cpu, 2e-2);
            l_gpu = l;
        }
        fmlab_tensor::settings::classifier_dh_fused(None);
        let l_eval = {
            let _ng = fmlab_tensor::no_grad();
            xb.linear_cross_entropy(&wb, &targets, Some(-100)).item()
        };
        assert!((l_eval - l_gpu).abs() <= 1e-6 * l_gpu.abs(), "C={c}: eval loss {l_eval} vs {l_gpu}");
    }
    fmlab_tensor::settings::classifier_sm90(None);
}

/// `linear` (bias in cuBLASLt epilogues on the GPU) against the CPU's matmul + add, forward and
/// all three gradients, with the weight as a transposed view (nn::Linear's [out, in] layout) and
/// plain, at an odd N (where cuBLASLt may decline the epilogue and the op falls back).
/// f32: 1e-5 (GEMM, see the top); bf16: 1e-2 (GEMMs and the bias-gradient column sums accumulate
/// in f32 on both sides and round once; the epilogue adds the bias before that rounding, the CPU
/// after the product's rounding: one more bf16 ulp). In bf16 the weight and bias are casts of
/// f32 masters, so on the GPU their gradients are made in f32 (the weight's by a GEMM with an f32
/// output, `OutF32`; the bias's by the `colsum16` kernel: no bf16 rounding, no cast after) and
/// reach the masters through the casts unchanged.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn linear_bias_epilogues_match_cpu() {
    let g = gpu();
    for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
        // The last case: enough rows for many row splits of the bias-gradient kernel, with a
        // partial 256-column strip.
        for (lead, n, transposed) in [(&[3usize, 37][..], 48usize, true), (&[3, 37], 48, false), (&[3, 37], 7, true), (&[4133], 1032, true)] {
            let x = rnd(&[lead, &[32]].concat(), 70, DType::F32);
            let w = rnd(&[n, 32], 71, DType::F32);
            let b = rnd(&[n], 72, DType::F32);
            let up = rnd(&[lead, &[n]].concat(), 73, DType::F32);
            let run = |dev: Device| {
                let vars: Vec<Tensor> = [&x, &w, &b].iter().map(|t| Tensor::new_var(&t.to_device(dev))).collect();
                let wt = if transposed { vars[1].t() } else { vars[1].t().contiguous() };
                let y = vars[0].to_dtype(dt).linear(&wt.to_dtype(dt), Some(&vars[2].to_dtype(dt)));
                y.to_dtype(DType::F32).mul(&up.to_device(dev)).sum_all().backward();
                let mut out = vec![y];
                out.extend(vars.iter().map(|v| v.grad().unwrap()));
                out
            };
            let (want, got) = (run(Device::Cpu), run(g));
            for (i, name) in ["y", "dx", "dw", "db"].iter().enumerate() {
                close(&format!("linear {dt} n={n} transposed={transposed} {name}"), &got[i], &want[i], tol);
            }
        }
    }
}

/// The GELU MLP block with its GELU on cuBLASLt epilogues (`mlp_gelu`: GELU_AUX_BIAS forward,
/// DGELU backward) against the CPU's composite (linear, gelu_tanh, linear), output and all
/// five gradients. Tolerances: f32 1e-4 — cuBLASLt's GELU and its derivative are its own
/// evaluation of the tanh form (not bit-equal to the CPU's tanh); bf16 2e-2 as for `linear`
/// (products rounded to bf16 once; the fused backward keeps dh in f32 where the composite rounds
/// it to bf16 before the GELU backward).
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn mlp_gelu_epilogues_match_cpu() {
    let g = gpu();
    for (dt, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2)] {
        let x = rnd(&[3, 37, 64], 90, DType::F32);
        let (w1, b1) = (rnd(&[64, 256], 91, DType::F32).affine(0.125, 0.0), rnd(&[256], 92, DType::F32));
        let (w2, b2) = (rnd(&[256, 48], 93, DType::F32).affine(0.0625, 0.0), rnd(&[48], 94, DType::F32));
        let up = rnd(&[3, 37, 48], 95, DType::F32);
        let run = |dev: Device| {
            let vars: Vec<Tensor> = [&x, &w1, &b1, &w2, &b2].iter().map(|t| Tensor::new_var(&t.to_device(dev))).collect();
            let c = |i: usize| vars[i].to_dtype(dt);
            let y = c(0).mlp_gelu(&c(1), &c(2), &c(3), &c(4));
            if dev.is_cuda() {
                assert_eq!(y.op().map(|o| o.name()), Some("reshape".to_string()), "the output is the fused op's reshape");
                assert_eq!(y.op().unwrap().inputs()[0].op().map(|o| o.name()), Some("mlp_gelu".to_string()), "{dt}: the fused GELU epilogues did not run (cuBLASLt had no kernel?)");
            }
            y.to_dtype(DType::F32).mul(&up.to_device(dev)).sum_all().backward();
            let mut out = vec![y];
            out.extend(vars.iter().map(|v| v.grad().unwrap()));
            out
        };
        let (want, got) = (run(Device::Cpu), run(g));
        for (i, name) in ["y", "dx", "dw1", "db1", "dw2", "db2"].iter().enumerate() {
            eprintln!("mlp_gelu {dt} {name}: relative error {:.2e}", rel(&got[i], &want[i]));
            close(&format!("mlp_gelu {dt} {name}"), &got[i], &want[i], tol);
        }
    }
}

/// The GELU MLP's backward on Hopper (mlp_sm90.cu: dpre = (g·w2ᵀ) ⊙ gelu'(pre) and b1's gradient
/// in one pass) at every output width it takes (K = 64, 128, 192, 256), in mixed precision (bf16
/// casts of f32 masters, as a model trains), against the CPU's f32 composite: output and all five
/// gradients, with the weights as nn::Linear holds them (transposed views of [out, in]) and
/// plain (GPT-2's Conv1D), 333 rows (not a multiple of its 128- or 256-row blocks) and a hidden
/// width of 5 column tiles. Both kernels: with an input width of 96 the forward keeps pre and
/// `mlp_dgelu_k*` reads it; with the input as wide as the output, pre is not kept (checked on
/// Hopper) and `mlp_dgelu_rc_k*` makes it again, reading each weight as stored in all three of
/// its layouts (w1 plain and w2 plain: `_10`; both transposed: `_01`; w1 transposed, w2 plain:
/// `_00`; w1 plain and w2 transposed copies w2). Tolerance 2e-2 as `mlp_gelu_epilogues_match_cpu` (bf16 products; its gelu'
/// takes tanh from the special-function unit, relative error ~2^-11, below bf16's rounding of
/// dpre). On a GPU other than Hopper it checks the cuBLASLt path the same way. Set explicitly,
/// restored at the end.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn hopper_mlp_backward_matches_cpu() {
    let g = gpu();
    let hopper = fmlab_tensor::cuda::device(0).unwrap().arch() == "sm_90";
    fmlab_tensor::settings::mlp_sm90(Some(true));
    let hid = 320;
    for k in [64, 128, 192, 256] {
        for (w1t, transposed, xw) in [(false, false, 96), (false, true, 96), (false, false, k), (false, true, k), (true, true, k), (true, false, k)] {
            let x = rnd(&[3, 111, xw], 500 + k as u64, DType::F32);
            let w1 = if w1t { rnd(&[hid, xw], 501, DType::F32) } else { rnd(&[xw, hid], 501, DType::F32) }.affine(0.125, 0.0);
            let b1 = rnd(&[hid], 502, DType::F32);
            let w2 = if transposed { rnd(&[k, hid], 503, DType::F32).affine(0.0625, 0.0) } else { rnd(&[hid, k], 503, DType::F32).affine(0.0625, 0.0) };
            let b2 = rnd(&[k], 504, DType::F32);
            let up = rnd(&[3, 111, k], 505, DType::F32);
            let run = |dev: Device, dt: DType| {
                let vars: Vec<Tensor> = [&x, &w1, &b1, &w2, &b2].iter().map(|t| Tensor::new_var(&t.to_device(dev))).collect();
                let c = |i: usize| vars[i].to_dtype(dt);
                let w1v = if w1t { c(1).t() } else { c(1) };
                let w2v = if transposed { c(3).t() } else { c(3) };
                let y = c(0).mlp_gelu(&w1v, &c(2), &w2v, &c(4));
                if dev != Device::Cpu && hopper {
                    let op = y.op().unwrap().inputs()[0].op().unwrap();
                    let Some(node) = (match op {
                        Op::Custom(n) if n.op_as::<fmlab_tensor::ops::MlpGelu>().is_some() => Some(n),
                        _ => None,
                    }) else {
                        panic!("K={k} x width {xw}: not the fused MLP ({})", op.name())
                    };
                    // saved: [h] when pre is made again in the backward, [h, pre] when it is kept.
                    let pre = node.saved.get(1);
                    assert_eq!(pre.is_none(), xw == k, "K={k} x width {xw}: pre kept {}", pre.is_some());
                }
                y.to_dtype(DType::F32).mul(&up.to_device(dev)).sum_all().backward();
                let mut out = vec![y.to_dtype(DType::F32)];
                out.extend(vars.iter().map(|v| v.grad().unwrap().to_dtype(DType::F32)));
                out
            };
            let (want, got) = (run(Device::Cpu, DType::F32), run(g, DType::BF16));
            for (i, name) in ["y", "dx", "dw1", "db1", "dw2", "db2"].iter().enumerate() {
                eprintln!("hopper mlp K={k} x width {xw} w1 transposed={w1t} w2 transposed={transposed} {name}: relative error {:.2e}", rel(&got[i], &want[i]));
                close(&format!("hopper mlp K={k} x width {xw} w1 transposed={w1t} w2 transposed={transposed} {name}"), &got[i], &want[i], 2e-2);
            }
        }
    }
    fmlab_tensor::settings::mlp_sm90(None);
}

/// GEMMs whose cuBLASLt kernel was picked by timing the heuristic's candidates
/// (`gemm_autotune`, FMLAB_GEMM_TUNE): the timing runs write scratch memory only, and whatever
/// kernel wins gives the CPU's results. Every epilogue is planned here at shapes no other test
/// uses (plans are cached per shape): bias and bias-gradient (`linear`, f32; f32 output plus
/// column sums in bf16), GELU with its aux matrix and the GELU backward (`mlp_gelu`), f32
/// accumulation (the classifier's dW over chunks). Tolerances as in the epilogue tests above.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn autotuned_gemms_match_cpu() {
    let g = gpu();
    fmlab_tensor::gemm_autotune(8);
    for (dt, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2)] {
        let x = rnd(&[301, 72], 400, DType::F32);
        let (w0, b0) = (rnd(&[72, 136], 401, DType::F32).affine(0.125, 0.0), rnd(&[136], 402, DType::F32));
        let (wa, ba) = (rnd(&[136, 96], 403, DType::F32).affine(0.0625, 0.0), rnd(&[96], 404, DType::F32));
        let (wb, bb) = (rnd(&[96, 40], 405, DType::F32).affine(0.125, 0.0), rnd(&[40], 406, DType::F32));
        let head = rnd(&[1003, 40], 407, DType::F32).affine(0.125, 0.0);
        let targets = Tensor::from_vec((0..301).map(|i| (i * 37 % 1003) as i32).collect::<Vec<_>>(), &[301]);
        let run = |dev: Device| {
            let vars: Vec<Tensor> = [&x, &w0, &b0, &wa, &ba, &wb, &bb, &head].iter().map(|t| Tensor::new_var(&t.to_device(dev))).collect();
            let c = |i: usize| vars[i].to_dtype(dt);
            let h = c(0).linear(&c(1), Some(&c(2))); // [301, 136]
            let y = h.mlp_gelu(&c(3), &c(4), &c(5), &c(6)); // [301, 40]
            let loss = y.linear_cross_entropy_chunked(&c(7), &targets.to_device(dev), None, 128);
            loss.backward();
            let mut out = vec![y.to_dtype(DType::F32), loss];
            out.extend(vars.iter().map(|v| v.grad().unwrap()));
            out
        };
        let (want, got) = (run(Device::Cpu), run(g));
        for (i, name) in ["y", "loss", "dx", "dw0", "db0", "dwa", "dba", "dwb", "dbb", "dhead"].iter().enumerate() {
            close(&format!("autotuned {dt} {name}"), &got[i], &want[i], tol);
        }
    }
    fmlab_tensor::gemm_autotune(0); // back to the environment's setting
}

/// The multi-tensor cast (`cast_all`: one launch for many f32 → bf16 casts) equals `to_dtype` bit
/// for bit, tensor by tensor (sizes across block boundaries, more tensors than one table holds,
/// a non-contiguous one that takes `to_dtype`), and each output's gradient reaches its own input.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn cast_all_equals_to_dtype_and_routes_gradients() {
    let g = gpu();
    let sizes: Vec<usize> = (0..70).map(|i| [1usize, 7, 8192, 8193, 20_000][i % 5] + i).collect();
    let vars: Vec<Tensor> = sizes.iter().enumerate().map(|(i, &n)| Tensor::new_var(&rnd(&[n], 200 + i as u64, DType::F32).to_device(g))).collect();
    let mut inputs: Vec<Tensor> = vars.clone();
    inputs.push(rnd(&[6, 5], 300, DType::F32).to_device(g).t()); // strided: the plain path
    let out = fmlab_tensor::cast_all(&inputs, DType::BF16);
    for (i, (o, x)) in out.iter().zip(&inputs).enumerate() {
        assert_eq!(o.dtype(), DType::BF16);
        assert_eq!(o.shape(), x.shape());
        assert_eq!(o.to_vec_f64(), x.to_dtype(DType::BF16).to_vec_f64(), "tensor {i} of {} elements", x.numel());
    }
    // d/dx_i Σ_i (i + 1)·Σ cast(x_i) = i + 1 everywhere.
    let loss = out[..vars.len()].iter().enumerate().map(|(i, o)| o.to_dtype(DType::F32).sum_all().affine(i as f64 + 1.0, 0.0)).reduce(|a, b| a.add(&b)).unwrap();
    loss.backward();
    for (i, v) in vars.iter().enumerate() {
        let gr = v.grad().unwrap().to_vec_f64();
        assert!(gr.iter().all(|&x| x == i as f64 + 1.0), "gradient of tensor {i}");
    }
}

/// The one-pass LayerNorm backward (`ln_bwd_dwdb`: dx, dW and dB from one read of x and g) against
/// its twin on the GPU (the row kernel, then the column reduction reading x and g again) and the
/// CPU: bf16 activations with f32 and bf16 weights, c = 256 and 512 (one and two 16-byte chunks
/// per lane), 111 rows (fewer than one block's share) and 40 000 (the grid capped, 10 rows per
/// warp), with and without the residual's gradient added in. dx is bit-equal to the twin's (the
/// same arithmetic in the same order); dW/dB are f32 sums per warp then f64, the twin's f64
/// throughout: 1e-5 relative. Against the CPU as `add_layer_norm_fused_matches_cpu`: 1e-2.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn layer_norm_backward_one_pass_matches_its_twin_and_cpu() {
    let g = gpu();
    for wdt in [DType::F32, DType::BF16] {
        for (rows, c) in [(111usize, 256usize), (111, 512), (40_000, 256)] {
            for residual in [false, true] {
                let (x, r) = (rnd(&[rows, c], 100, DType::F32), rnd(&[rows, c], 101, DType::F32));
                let (w, b) = (rnd(&[c], 102, DType::F32).affine(0.5, 1.0), rnd(&[c], 103, DType::F32));
                let (u1, u2) = (rnd(&[rows, c], 104, DType::F32), rnd(&[rows, c], 105, DType::F32));
                let run = |dev: Device, fused: bool| {
                    fmlab_tensor::settings::layer_norm_backward_fused(fused);
                    let vars: Vec<Tensor> = [&x, &r, &w, &b].iter().map(|t| Tensor::new_var(&t.to_device(dev).to_dtype(if t.rank() == 1 { wdt } else { DType::F32 }))).collect();
                    let xb = vars[0].to_dtype(DType::BF16);
                    let loss = if residual {
                        let (s, y) = xb.add_layer_norm(&vars[1].to_dtype(DType::BF16), &vars[2], Some(&vars[3]), 1e-5);
                        y.to_dtype(DType::F32).mul(&u1.to_device(dev)).sum_all().add(&s.to_dtype(DType::F32).mul(&u2.to_device(dev)).sum_all())
                    } else {
                        xb.layer_norm(&vars[2], Some(&vars[3]), 1e-5).to_dtype(DType::F32).mul(&u1.to_device(dev)).sum_all()
                    };
                    loss.backward();
                    let gs: Vec<Tensor> = [0, 2, 3].iter().map(|&i| vars[i].grad().unwrap()).collect();
                    fmlab_tensor::settings::layer_norm_backward_fused(true);
                    gs
                };
                let (one, two, cpu) = (run(g, true), run(g, false), run(Device::Cpu, true));
                let what = format!("LN backward w {wdt} rows={rows} c={c} residual={residual}");
                assert_eq!(one[0].to_vec_f64(), two[0].to_vec_f64(), "{what}: dx differs from the twin's");
                for (i, name) in ["dx", "dw", "db"].iter().enumerate() {
                    close(&format!("{what} {name} vs twin"), &one[i], &two[i], 1e-5);
                    close(&format!("{what} {name} vs cpu"), &one[i], &cpu[i], 1e-2);
                }
            }
        }
    }
}

/// The fused residual + LayerNorm (`add_layer_norm`: one kernel forward; backward sums the
/// residual stream's gradient inside the LayerNorm backward kernel) against the CPU's add and
/// LayerNorm, both outputs and every gradient. c = 256 takes the 16-byte path, c = 37 the scalar
/// one. Tolerances as for the fused LayerNorm: f32 1e-5; bf16 1e-2 (the sum and dx are rounded to
/// bf16 once on both sides; dw/db are f32 sums of the same bf16 gradients).
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn add_layer_norm_fused_matches_cpu() {
    let g = gpu();
    for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        for c in [256usize, 37] {
            let (x, r) = (rnd(&[3, 11, c], 80, DType::F32), rnd(&[3, 11, c], 81, DType::F32));
            let (w, b) = (rnd(&[c], 82, DType::F32), rnd(&[c], 83, DType::F32));
            let (u1, u2) = (rnd(&[3, 11, c], 84, DType::F32), rnd(&[3, 11, c], 85, DType::F32));
            let run = |dev: Device| {
                let vars: Vec<Tensor> = [&x, &r, &w, &b].iter().map(|t| Tensor::new_var(&t.to_device(dev))).collect();
                let (s, y) = vars[0].to_dtype(dt).add_layer_norm(&vars[1].to_dtype(dt), &vars[2], Some(&vars[3]), 1e-5);
                // Both outputs feed the loss: s's gradient meets the LayerNorm's dx (the fused sum).
                let loss = y.to_dtype(DType::F32).mul(&u1.to_device(dev)).sum_all().add(&s.to_dtype(DType::F32).mul(&u2.to_device(dev)).sum_all());
                loss.backward();
                let mut out = vec![s, y];
                out.extend(vars.iter().map(|v| v.grad().unwrap()));
                out
            };
            let (want, got) = (run(Device::Cpu), run(g));
            for (i, name) in ["sum", "y", "dx", "dr", "dw", "db"].iter().enumerate() {
                close(&format!("add_layer_norm {dt} c={c} {name}"), &got[i], &want[i], tol);
            }
        }
    }
}

/// Narrow's gradient on the GPU writes disjoint slices of one input into one buffer (q, k, v of a
/// fused projection) and pads-and-adds overlapping ones; both must equal the CPU's concatenation.
/// Exact: every element is one product of the same two numbers, or a sum of the same two.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn narrow_gradients_disjoint_and_overlapping() {
    let g = gpu();
    let x = rnd(&[4, 6, 24], 64, DType::F32);
    let w = rnd(&[4, 6, 8], 65, DType::F32);
    let run = |dev: Device, dt: DType| {
        let v = Tensor::new_var(&x.to_device(dev).to_dtype(dt));
        let w = w.to_device(dev).to_dtype(dt);
        // Three disjoint thirds (in a shuffled order), then one overlapping the first two, then a
        // narrow along another dim: each case of backward.rs's Narrow arm.
        let parts = [v.narrow(2, 16, 8), v.narrow(2, 0, 8), v.narrow(2, 8, 8), v.narrow(2, 4, 8)];
        let mut loss = parts.iter().map(|p| p.mul(&w).sum_all()).reduce(|a, b| a.add(&b)).unwrap();
        loss = loss.add(&v.narrow(1, 2, 3).sqr().sum_all());
        loss.to_dtype(DType::F32).backward();
        v.grad().unwrap().to_dtype(DType::F32)
    };
    let want = run(Device::Cpu, DType::F32);
    close("narrow grads f32", &run(g, DType::F32), &want, 1e-6);
    // Only disjoint thirds (the fused-QKV pattern) in bf16: the write path alone.
    let only = |dev: Device| {
        let v = Tensor::new_var(&x.to_device(dev).to_dtype(DType::BF16));
        let w = w.to_device(dev).to_dtype(DType::BF16);
        (0..3).map(|i| v.narrow(2, 8 * i, 8).mul(&w.scale(i as f64 + 1.0)).sum_all()).reduce(|a, b| a.add(&b)).unwrap().to_dtype(DType::F32).backward();
        v.grad().unwrap()
    };
    close("narrow grads bf16 thirds", &only(g), &only(Device::Cpu), 0.0);
    // Copies whose rows are whole 16-byte words take the word path (copy_w16); odd ones don't.
    for dt in [DType::F32, DType::BF16] {
        let y = rnd(&[6, 4, 32], 66, dt);
        same("copy rows of a transpose", &[y.clone()], 0.0, |v| v[0].transpose(0, 1).contiguous());
        same("copy a column slice", &[y.clone()], 0.0, |v| v[0].narrow(2, 8, 16).contiguous());
        same("copy an odd slice", &[y.clone()], 0.0, |v| v[0].narrow(2, 3, 13).contiguous());
    }
}

/// Attention on the three thirds of a fused QKV projection (the GPT-2 block's pattern): the
/// flash backward writes dq, dk, dv straight into one buffer laid out like the projection, and
/// the narrow backward finds them in place. Its gradient must equal the same model with q, k, v
/// made contiguous first (the copying path) and, within bf16 tolerance, the CPU's f32 composite.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn fused_qkv_flash_gradients_in_place_match_the_copying_path_and_cpu() {
    let g = gpu();
    let (b, t, h, d) = (2, 100, 2, 32);
    let c = h * d;
    let x = rnd(&[b, t, 3 * c], 70, DType::F32);
    let w = rnd(&[b, t, c], 71, DType::F32);
    let run = |dev: Device, dt: DType, copy: bool, extra: bool| {
        let v = Tensor::new_var(&x.to_device(dev).to_dtype(dt));
        let heads = |i: usize| {
            let p = v.narrow(2, i * c, c);
            let p = if copy { p.contiguous() } else { p };
            p.reshape(&[b, t, h, d]).transpose(1, 2) // [B, H, T, D]
        };
        let y = attention(&heads(0), &heads(1), &heads(2), &AttnMask::Causal).transpose(1, 2).reshape(&[b, t, c]);
        let mut loss = y.mul(&w.to_device(dev).to_dtype(dt)).sum_all().to_dtype(DType::F32);
        if extra {
            // k also used elsewhere: its gradient arrives as a sum, not in place.
            loss = loss.add(&v.narrow(2, c, c).sqr().sum_all().to_dtype(DType::F32).scale(0.01));
        }
        loss.backward();
        v.grad().unwrap().to_dtype(DType::F32)
    };
    for extra in [false, true] {
        let fast = run(g, DType::BF16, false, extra);
        close(&format!("fused qkv in place vs copies (extra use of k: {extra})"), &fast, &run(g, DType::BF16, true, extra), 0.0);
        close(&format!("fused qkv bf16 GPU vs f32 CPU (extra use of k: {extra})"), &fast, &run(Device::Cpu, DType::F32, false, extra), 2e-2);
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn attention_and_layernorm_gradients_match_cpu() {
    let g = gpu();
    let (b, h, t, d) = (2, 3, 17, 16);
    let inputs = [rnd(&[b, h, t, d], 60, DType::F32), rnd(&[b, h, t, d], 61, DType::F32), rnd(&[b, h, t, d], 62, DType::F32), rnd(&[d], 63, DType::F32)];
    let run = |dev: Device| {
        let vars: Vec<Tensor> = inputs.iter().map(|x| Tensor::new_var(&x.to_device(dev))).collect();
        let y = attention(&vars[0], &vars[1], &vars[2], &AttnMask::Causal).layer_norm(&vars[3], None, 1e-5);
        y.sqr().sum_all().backward();
        (y, vars.iter().map(|v| v.grad().unwrap()).collect::<Vec<_>>())
    };
    let (y_cpu, g_cpu) = run(Device::Cpu);
    let (y_gpu, g_gpu) = run(g);
    close("attention+ln forward", &y_gpu, &y_cpu, 1e-5);
    for (i, (a, c)) in g_gpu.iter().zip(&g_cpu).enumerate() {
        close(&format!("grad {i}"), a, c, 1e-4);
    }
}

/// Mixed precision as the model runs it: bf16 activations, fp32 LayerNorm weights (gradients
/// back in fp32), against the CPU computing the same in f32 through casts. bf16 tolerance 1e-2:
/// both round the f32 result to bf16 once; dw/db are f32 sums of the same bf16 gradients.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn fused_layer_norm_and_gelu_mixed_precision() {
    let g = gpu();
    for (rows, c) in [(300, 256), (33, 70), (5, 1000)] {
        let inputs = [rnd(&[rows, c], 70, DType::F32).affine(2.0, 0.5).to_dtype(DType::BF16), rnd(&[c], 71, DType::F32), rnd(&[c], 72, DType::F32)];
        let up = rnd(&[rows, c], 73, DType::BF16);
        let run = |dev: Device| {
            let vars: Vec<Tensor> = inputs.iter().map(|x| Tensor::new_var(&x.to_device(dev))).collect();
            let y = vars[0].layer_norm(&vars[1], Some(&vars[2]), 1e-5);
            assert_eq!(y.dtype(), DType::BF16);
            y.mul(&up.to_device(dev)).to_dtype(DType::F32).sum_all().backward();
            (y, vars.iter().map(|v| v.grad().unwrap()).collect::<Vec<_>>())
        };
        let (yc, gc) = run(Device::Cpu);
        let (yg, gg) = run(g);
        close(&format!("layer_norm bf16 [{rows}, {c}]"), &yg, &yc, 1e-2);
        for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
            assert_eq!(a.dtype(), inputs[i].dtype(), "gradient {i} dtype");
            close(&format!("layer_norm bf16 [{rows}, {c}] grad {i}"), a, b, 1e-2);
        }
    }
    // GELU: vectorized body plus a scalar tail (67067 elements), and an unaligned view.
    for approx in [true, false] {
        let x = rnd(&[1001, 67], 74, DType::F32).scale(3.0);
        for (dt, tol) in [(DType::F32, 4e-6), (DType::BF16, 8e-3)] {
            let f = |v: &[Tensor]| if approx { v[0].gelu_tanh() } else { v[0].gelu_erf() };
            same("gelu", &[x.to_dtype(dt)], tol, f);
            same("gelu offset view", &[x.to_dtype(dt).narrow(0, 1, 1000)], tol, f);
            let run = |dev: Device| {
                let v = Tensor::new_var(&x.to_dtype(dt).to_device(dev));
                f(&[v.clone()]).mul(&x.to_dtype(dt).to_device(dev)).to_dtype(DType::F32).sum_all().backward();
                v.grad().unwrap()
            };
            close("gelu grad", &run(g), &run(Device::Cpu), tol);
        }
    }
}

/// The multi-tensor sum of squares (global grad norm): 150 tensors of mixed sizes and dtypes,
/// some over one block's chunk, one strided; vs the CPU's f64 sum (1e-12: both sum f64 squares).
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn sum_squares_all_matches_cpu() {
    let g = gpu();
    let mut ts: Vec<Tensor> = (0..150).map(|i| rnd(&[1 + (i * 7919) % 20000], 90 + i as u64, if i % 3 == 0 { DType::BF16 } else { DType::F32 })).collect();
    ts.push(rnd(&[300, 70], 91, DType::F32).t());
    let want = fmlab_tensor::sum_squares_all(&ts).item();
    let got = fmlab_tensor::sum_squares_all(&ts.iter().map(|t| t.to_device(g)).collect::<Vec<_>>());
    assert_eq!(got.device(), g);
    let got = got.item();
    assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
}

/// Flash attention (bf16, tensor cores) against the composite twin computed in f32 on the CPU from
/// the same bf16 inputs: output and the gradients of q, k and v, at head_dim 32/64/128, causal and
/// not, key padding, more keys than queries, T not a multiple of the 64-row tile, and q/k/v as
/// strided views of one projection (as the model calls it).
/// Tolerance 2e-2 of the largest reference value: the kernels round P and dS to bf16 for the
/// tensor-core products (as FlashAttention-2 does) and the outputs to bf16 (2^-8 relative).
/// Attention over one fused projection's output (q, k, v = thirds of x·w + b, as GPT-2's c_attn
/// makes them), in mixed precision (bf16 casts of f32 masters): the flash backward writes the
/// three gradients into one buffer in place (flash.rs `fused_qkv`), which the projection's
/// backward then reads for dx, dw and db. Checked against the CPU's f32 composite (T = 100 and
/// 130, not multiples of the 64-row tiles, causal and not) at the flash tolerance, 2e-2 (bf16
/// products and outputs).
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn flash_fused_qkv_bias_gradient_matches_cpu() {
    let g = gpu();
    let (b, h, d) = (2, 3, 32);
    let c = h * d;
    for (t, mask) in [(100, AttnMask::Causal), (130, AttnMask::None)] {
        let x = rnd(&[b, t, c], 900, DType::F32);
        let (w, bias) = (rnd(&[c, 3 * c], 901, DType::F32).affine(0.1, 0.0), rnd(&[3 * c], 902, DType::F32));
        let up = rnd(&[b, h, t, d], 903, DType::F32);
        let run = |dev: Device, dt: DType| {
            let vars: Vec<Tensor> = [&x, &w, &bias].iter().map(|v| Tensor::new_var(&v.to_device(dev))).collect();
            let qkv = vars[0].to_dtype(dt).linear(&vars[1].to_dtype(dt), Some(&vars[2].to_dtype(dt))); // [b, t, 3c]
            let heads = |i: usize| qkv.narrow(2, i * c, c).reshape(&[b, t, h, d]).transpose(1, 2);
            let y = if dev == Device::Cpu { fmlab_tensor::attention_slow(&heads(0), &heads(1), &heads(2), &mask) } else { attention(&heads(0), &heads(1), &heads(2), &mask) };
            y.to_dtype(DType::F32).mul(&up.to_device(dev)).sum_all().backward();
            vars.iter().map(|v| v.grad().unwrap().to_dtype(DType::F32)).collect::<Vec<_>>()
        };
        let (want, got) = (run(Device::Cpu, DType::F32), run(g, DType::BF16));
        for (i, name) in ["dx", "dw", "db"].iter().enumerate() {
            eprintln!("fused qkv T{t}: {name} relative error {:.2e}", rel(&got[i], &want[i]));
            close(&format!("fused qkv T{t} {name}"), &got[i], &want[i], 2e-2);
        }
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn flash_attention_matches_composite() {
    let g = gpu();
    let (b, h) = (2, 3);
    // head_dim 32 twice on Hopper: the wgmma kernels (flash_sm90.cu, the default there) and
    // flash.cu's mma.sync kernels.
    for (d, sm90) in [(32, true), (32, false), (64, true), (128, true)] {
        fmlab_tensor::settings::flash_sm90(Some(sm90));
        for (t, s, mask_name) in [(100, 100, "none"), (100, 100, "causal"), (77, 150, "causal"), (130, 130, "padding"), (64, 64, "causal")] {
            let x = rnd(&[b, t, h * d], 100 + d as u64, DType::F32).to_dtype(DType::BF16);
            let kv = rnd(&[b, s, 2 * h * d], 101 + d as u64, DType::F32).to_dtype(DType::BF16);
            let up = rnd(&[b, h, t, d], 102, DType::F32).to_dtype(DType::BF16);
            let pad: Vec<u8> = (0..b * s).map(|i| (i % s < s - 1 - (i / s) * 7) as u8).collect();
            let mask = match mask_name {
                "none" => AttnMask::None,
                "causal" => AttnMask::Causal,
                _ => AttnMask::KeyPadding(Tensor::from_vec(pad.clone(), &[b, s])),
            };
            let run = |dev: Device, dt: DType, slow: bool| {
                let (vx, vkv) = (Tensor::new_var(&x.to_dtype(dt).to_device(dev)), Tensor::new_var(&kv.to_dtype(dt).to_device(dev)));
                let heads = |y: &Tensor, n: usize| y.reshape(&[b, n, h, d]).transpose(1, 2);
                let (q, k, v) = (heads(&vx, t), heads(&vkv.narrow(2, 0, h * d), s), heads(&vkv.narrow(2, h * d, h * d), s));
                let y = if slow { fmlab_tensor::attention_slow(&q, &k, &v, &mask) } else { attention(&q, &k, &v, &mask) };
                y.mul(&up.to_dtype(dt).to_device(dev)).to_dtype(DType::F32).sum_all().backward();
                (y, vx.grad().unwrap(), vkv.grad().unwrap())
            };
            let (yr, dxr, dkvr) = run(Device::Cpu, DType::F32, true);
            let (yg, dxg, dkvg) = run(g, DType::BF16, false);
            let name = format!("flash d{d} T{t} S{s} {mask_name}{}", if sm90 { "" } else { " (mma.sync)" });
            let f32_of = |t: &Tensor| t.to_device(Device::Cpu).to_dtype(DType::F32);
            let e = [rel(&f32_of(&yg), &yr), rel(&f32_of(&dxg), &dxr), rel(&f32_of(&dkvg), &dkvr)];
            println!("{name}: rel. error output {:.2e}, dq {:.2e}, dk|dv {:.2e}", e[0], e[1], e[2]);
            assert!(e.iter().all(|&x| x <= 2e-2), "{name}: errors {e:?}");
        }
    }
    fmlab_tensor::settings::flash_sm90(None);
}

/// Sums/maxima over leading dims of contiguous tensors (bias gradients): the column kernel,
/// with one and with several row splits.
#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn column_reductions() {
    for (dt, tol) in [(DType::F32, 1e-6), (DType::BF16, 8e-3), (DType::F64, 1e-14)] {
        for shape in [[3000usize, 70], [20, 33], [100000, 3]] {
            let x = rnd(&shape, 80, dt);
            same("sum dim 0", &[x.clone()], tol, |v| v[0].sum(&[0], false));
            same("max dim 0", &[x.clone()], tol, |v| v[0].max(&[0], true));
            same("min dim 0", &[x.clone()], tol, |v| v[0].min(&[0], true));
        }
        let x = rnd(&[40, 30, 9], 81, dt);
        same("sum dims 0,1", &[x.clone()], tol, |v| v[0].sum(&[0, 1], false));
        // Row broadcast (the bias-add vector path) and narrow's gradient (memset + slice copy).
        same("row broadcast add", &[rnd(&[97, 64], 82, dt), rnd(&[64], 83, dt)], tol, |v| v[0].add(&v[1]));
        same("row broadcast mul", &[rnd(&[3, 5, 16], 84, dt), rnd(&[16], 85, dt)], tol, |v| v[0].mul(&v[1]));
        let run = |dev: Device| {
            let x = Tensor::new_var(&rnd(&[4, 12, 5], 86, dt).to_device(dev));
            x.narrow(1, 3, 4).sum_all().add(&x.narrow(1, 9, 3).scale(2.0).sum_all()).to_dtype(DType::F32).backward();
            x.grad().unwrap()
        };
        close("narrow backward", &run(gpu()), &run(Device::Cpu), tol);
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn allocator_reuses_blocks_and_reports_out_of_memory() {
    let g = gpu();
    let dev = fmlab_tensor::cuda::device(0).unwrap();
    {
        let _a = Tensor::zeros_on(&[1 << 20], DType::F32, g);
    }
    let before = dev.mem_stats();
    for _ in 0..10 {
        let _a = Tensor::zeros_on(&[1 << 20], DType::F32, g);
    }
    let after = dev.mem_stats();
    assert_eq!(before.driver_allocs, after.driver_allocs, "freed blocks must be reused");
    assert!(after.peak >= 4 << 20);
    // 2^40 bytes: far beyond any GPU. The panic message is the typed error's.
    let r = std::panic::catch_unwind(|| Tensor::zeros_on(&[1usize << 38], DType::F32, g));
    let msg = match r {
        Ok(_) => panic!("a 1 TiB allocation succeeded"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("out of GPU memory") && msg.contains("requested 1099511627776 bytes") && msg.contains("reserved") && msg.contains("--batch"), "{msg}");
}

/// The kernel modules compile for Hopper and Ampere with NVRTC alone (no driver or GPU needed):
/// `FMLAB_CUDA_LIBS=<dir with libnvrtc.so.13> cargo test -p fmlab-tensor --test cuda_ops -- --ignored kernel_sources`
/// (scripts/test.sh runs it with NVRTC from `scripts/fetch-assets.sh nvrtc`).
#[test]
#[ignore = "needs libnvrtc (scripts/test.sh fetches it; or FMLAB_CUDA_LIBS on any machine)"]
fn kernel_sources_compile() {
    for arch in ["sm_90", "sm_80"] {
        let bytes = fmlab_tensor::ops::compile_all(arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(bytes > 10_000, "{arch}: {bytes} bytes of CUBIN");
    }
}
