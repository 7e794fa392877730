//! Every primitive and composite op: backward vs central finite differences in f64, at awkward
//! inputs (0, ±2, large magnitudes) and on non-contiguous and broadcast layouts.
//!
//! The same checks run on a GPU with `FMLAB_TEST_DEVICE=cuda` (scripts/gpu-check.sh): inputs,
//! perturbations and weights are moved there; constants the ops make are uploaded by the engine.
//!
//! Tolerance: central differences with h = 1e-6 in f64 have truncation error O(h²·f''') ≈ 1e-12
//! and rounding error O(ε·|f|/h) ≈ 1e-10·|f|; we accept |analytic − numeric| ≤ 1e-6·(1 + |numeric|),
//! far above both and far below any real bug.

use fmlab_tensor::{attention, rope_tables, AttnMask, DType, Device, Rng, Tensor};

/// The device under test: `FMLAB_TEST_DEVICE` (cpu, cuda, cuda:N), default cpu.
fn test_device() -> Device {
    let d = std::env::var("FMLAB_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let dev = Device::parse(&d).unwrap_or_else(|| panic!("FMLAB_TEST_DEVICE={d}: expected cpu, cuda or cuda:N"));
    dev.init().unwrap_or_else(|e| panic!("FMLAB_TEST_DEVICE={d}: {e}"));
    dev
}

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

/// Checks d(sum(f(xs) * w))/dxs against finite differences, w a fixed random weighting so every
/// output element matters with a different weight.
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let dev = test_device();
    let inputs: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev)).collect();
    let vars: Vec<Tensor> = inputs.iter().map(Tensor::new_var).collect();
    let out = f(&vars);
    assert_eq!(out.device(), dev, "{name}: output left the device under test");
    let mut rng = Rng::new(99);
    let w = Tensor::randn(out.shape(), 0.0, 1.0, DType::F64, &mut rng).to_device(dev);
    let loss = |o: &Tensor| o.mul(&w).sum_all();
    let f0 = loss(&out);
    // Rounding in evaluating f (summation order differs per device) enters the difference
    // quotient as ~ε·|f|/h: part of the tolerance, so large |f| (x³ at 30) is judged fairly.
    let rounding = 8.0 * f64::EPSILON * f0.item().abs() / H;
    f0.backward();
    for (vi, v) in vars.iter().enumerate() {
        let analytic = v.grad().map(|g| g.to_vec_f64()).unwrap_or_else(|| vec![0.0; v.numel()]);
        let base = inputs[vi].to_vec_f64();
        for i in 0..base.len() {
            let eval = |d: f64| {
                let mut x = base.clone();
                x[i] += d;
                let mut ins: Vec<Tensor> = inputs.to_vec();
                ins[vi] = Tensor::from_f64(&x, inputs[vi].shape(), DType::F64).to_device(dev);
                loss(&f(&ins)).item()
            };
            let numeric = (eval(H) - eval(-H)) / (2.0 * H);
            let a = analytic[i];
            assert!(
                (a - numeric).abs() <= TOL * (1.0 + numeric.abs()) + rounding,
                "{name}: d/d input{vi}[{i}]: analytic {a} vs numeric {numeric} (x = {})",
                base[i]
            );
        }
    }
}

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64(v, shape, DType::F64)
}

fn rnd(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    Tensor::randn(shape, 0.0, scale, DType::F64, &mut Rng::new(seed))
}

/// Awkward values: zero, ±2, large, small, plus a few generic ones.
fn awkward() -> Tensor {
    t(&[0.0, 2.0, -2.0, 30.0, -30.0, 1e-3, 0.5, -0.7, 1.3, 7.0, -4.0, 0.1], &[3, 4])
}

#[test]
fn unary_ops() {
    let x = awkward();
    check("neg", &[x.clone()], |v| v[0].neg());
    check("exp", &[x.scale(0.1)], |v| v[0].exp());
    check("tanh", &[x.clone()], |v| v[0].tanh());
    check("sin", &[x.clone()], |v| v[0].sin());
    check("cos", &[x.clone()], |v| v[0].cos());
    check("erf", &[x.clone()], |v| v[0].erf());
    check("affine", &[x.clone()], |v| v[0].affine(-1.5, 0.25));
    check("sqr", &[x.clone()], |v| v[0].sqr());
    // Domain-restricted ops away from their singularities; abs/relu away from the kink at 0.
    let pos = t(&[1e-2, 0.5, 2.0, 30.0, 1e3, 7.0], &[2, 3]);
    check("log", &[pos.clone()], |v| v[0].log());
    check("sqrt", &[pos.clone()], |v| v[0].sqrt());
    check("recip", &[pos.clone()], |v| v[0].recip());
    // (1e3^2.5 would make |f| ~ 3e7, where rounding swamps a difference with h = 1e-6.)
    check("powf", &[t(&[1e-2, 0.5, 2.0, 7.0], &[4])], |v| v[0].powf(2.5));
    let nz = t(&[-2.0, 2.0, -30.0, 30.0, 0.5, -0.5], &[2, 3]);
    check("abs", &[nz.clone()], |v| v[0].abs());
    check("relu", &[nz.clone()], |v| v[0].relu());
    check("cube", &[nz.clone()], |v| v[0].powf(3.0));
}

#[test]
fn binary_ops_with_broadcast_and_strides() {
    let a = awkward();
    let b = rnd(&[3, 4], 1, 2.0).add_scalar(5.0); // away from 0 for div
    for (name, f) in [
        ("add", Tensor::add as fn(&Tensor, &Tensor) -> Tensor),
        ("sub", Tensor::sub),
        ("mul", Tensor::mul),
        ("div", Tensor::div),
        ("maximum", Tensor::maximum),
        ("minimum", Tensor::minimum),
    ] {
        check(name, &[a.clone(), b.clone()], |v| f(&v[0], &v[1]));
        // Broadcast: [3, 4] op [4] and [3, 1].
        check(&format!("{name} bcast row"), &[a.clone(), rnd(&[4], 2, 1.0).add_scalar(4.0)], |v| f(&v[0], &v[1]));
        check(&format!("{name} bcast col"), &[a.clone(), rnd(&[3, 1], 3, 1.0).add_scalar(4.0)], |v| f(&v[0], &v[1]));
        // Non-contiguous: a transposed operand.
        check(&format!("{name} strided"), &[rnd(&[4, 3], 4, 1.0), b.clone()], |v| f(&v[0].t(), &v[1]));
    }
}

#[test]
fn reductions() {
    let x = rnd(&[2, 3, 4], 5, 3.0);
    check("sum all", &[x.clone()], |v| v[0].sum_all());
    check("sum 1", &[x.clone()], |v| v[0].sum(&[1], false));
    check("sum 0,2 keep", &[x.clone()], |v| v[0].sum(&[0, 2], true));
    check("mean 2", &[x.clone()], |v| v[0].mean(&[2], false));
    check("max 2", &[x.clone()], |v| v[0].max(&[2], true));
    check("min 1", &[x.clone()], |v| v[0].min(&[1], false));
    check("sum strided", &[x.clone()], |v| v[0].permute(&[2, 0, 1]).sum(&[1], false));
}

#[test]
fn matmul_batched_transposed_broadcast() {
    check("matmul 2d", &[rnd(&[3, 4], 6, 1.0), rnd(&[4, 5], 7, 1.0)], |v| v[0].matmul(&v[1]));
    check("matmul batched", &[rnd(&[2, 3, 4], 8, 1.0), rnd(&[2, 4, 2], 9, 1.0)], |v| v[0].matmul(&v[1]));
    check("matmul bcast rhs", &[rnd(&[2, 3, 4], 10, 1.0), rnd(&[4, 2], 11, 1.0)], |v| v[0].matmul(&v[1]));
    check("matmul bcast batch", &[rnd(&[2, 1, 3, 4], 12, 1.0), rnd(&[3, 4, 2], 13, 1.0)], |v| v[0].matmul(&v[1]));
    check("matmul transposed", &[rnd(&[4, 3], 14, 1.0), rnd(&[5, 4], 15, 1.0)], |v| v[0].t().matmul(&v[1].t()));
}

#[test]
fn movement_ops() {
    let x = rnd(&[2, 3, 4], 16, 1.0);
    check("reshape", &[x.clone()], |v| v[0].reshape(&[6, 4]).mul(&v[0].reshape(&[6, 4])));
    check("permute", &[x.clone()], |v| v[0].permute(&[2, 0, 1]).contiguous().reshape(&[4, 6]));
    check("reshape of strided", &[x.clone()], |v| v[0].transpose(0, 2).reshape(&[24]).sqr());
    check("narrow", &[x.clone()], |v| v[0].narrow(2, 1, 2).sqr());
    check("expand", &[rnd(&[3, 1], 17, 1.0)], |v| v[0].expand(&[2, 3, 4]).sqr());
    check("cat", &[rnd(&[2, 3], 18, 1.0), rnd(&[2, 2], 19, 1.0)], |v| Tensor::cat(&[v[0].clone(), v[1].clone()], 1).sqr());
    check("unsqueeze/squeeze", &[x.clone()], |v| v[0].unsqueeze(1).squeeze(1).sqr());
}

#[test]
fn indexing_ops() {
    let ids = Tensor::from_vec(vec![2i32, 0, 2, 1], &[4]);
    check("index_select", &[rnd(&[3, 5], 20, 1.0)], |v| v[0].index_select(&ids, 0).sqr());
    check("index_select dim1", &[rnd(&[2, 3], 21, 1.0)], |v| v[0].index_select(&ids, 1).sqr());
    check("index_add", &[rnd(&[3, 2], 22, 1.0), rnd(&[4, 2], 23, 1.0)], |v| v[0].index_add(&ids, &v[1], 0).sqr());
    let idx = Tensor::from_vec(vec![1i32, 0, 2, 2, 1, 0], &[2, 3]);
    check("gather", &[rnd(&[2, 4], 24, 1.0)], |v| v[0].gather(&idx, 1).sqr());
    check("scatter_add", &[rnd(&[2, 4], 25, 1.0), rnd(&[2, 3], 26, 1.0)], |v| v[0].scatter_add(&idx, &v[1], 1).sqr());
    let mask = Tensor::from_vec(vec![1u8, 0, 1, 1, 0, 0], &[2, 3]);
    check("where", &[rnd(&[2, 3], 27, 1.0), rnd(&[3], 28, 1.0)], |v| mask.where_cond(&v[0], &v[1]).sqr());
    // Cast: finite differences through f32 rounding are meaningless; the gradient is the
    // incoming gradient cast back, checked directly.
    let x = Tensor::new_var(&rnd(&[2, 3], 29, 1.0));
    x.to_dtype(DType::F32).scale(3.0).sum_all().backward();
    assert_eq!(x.grad().unwrap().to_vec_f64(), vec![3.0; 6]);
    assert_eq!(x.grad().unwrap().dtype(), DType::F64);
}

#[test]
fn composite_ops() {
    let x = awkward();
    check("gelu_tanh", &[x.clone()], |v| v[0].gelu_tanh());
    check("gelu_erf", &[x.clone()], |v| v[0].gelu_erf());
    check("gelu_tanh_slow", &[x.clone()], |v| v[0].gelu_tanh_slow());
    check("gelu_erf_slow", &[x.clone()], |v| v[0].gelu_erf_slow());
    check("sigmoid", &[x.clone()], |v| v[0].sigmoid());
    check("silu", &[x.clone()], |v| v[0].silu());
    // Large logits: softmax must stay finite (the max shift), and so must its gradient.
    let logits = t(&[1000.0, 999.0, -1000.0, 0.0, 2.0, -2.0, 0.0, 0.0, 50.0, 49.5, 48.0, -3.0], &[3, 4]);
    check("softmax", &[logits.clone()], |v| v[0].softmax(1));
    check("log_softmax", &[logits.clone()], |v| v[0].log_softmax(1));
    check("softmax dim0 strided", &[rnd(&[4, 3], 30, 3.0)], |v| v[0].t().softmax(0));
    let w = rnd(&[4], 31, 1.0);
    let b = rnd(&[4], 32, 1.0);
    check("layer_norm", &[x.clone(), w.clone(), b.clone()], |v| v[0].layer_norm(&v[1], Some(&v[2]), 1e-5));
    check("layer_norm no bias", &[x.clone(), w.clone()], |v| v[0].layer_norm(&v[1], None, 1e-5));
    check("layer_norm_slow", &[x.clone(), w.clone(), b.clone()], |v| v[0].layer_norm_slow(&v[1], Some(&v[2]), 1e-5));
    // Rows wider than a warp and not a multiple of 32, strided input.
    let (wx, ww, wb) = (rnd(&[70, 3], 39, 2.0), rnd(&[70], 40, 1.0), rnd(&[70], 41, 1.0));
    check("layer_norm wide strided", &[wx, ww, wb], |v| v[0].t().layer_norm(&v[1], Some(&v[2]), 1e-5));
    check("rms_norm", &[x.clone(), w.clone()], |v| v[0].rms_norm(&v[1], 1e-6));
    let targets = Tensor::from_vec(vec![3i32, 0, 1], &[3]);
    check("cross_entropy", &[logits.clone()], |v| v[0].cross_entropy(&targets, None));
    let with_ignored = Tensor::from_vec(vec![3i32, -100, 1], &[3]);
    check("cross_entropy ignore", &[logits.clone()], |v| v[0].cross_entropy(&with_ignored, Some(-100)));
    check("cross_entropy ignore a valid id", &[logits.clone()], |v| v[0].cross_entropy(&targets, Some(0)));
    check("cross_entropy_slow", &[logits.clone()], |v| v[0].cross_entropy_slow(&with_ignored, Some(-100)));
    let head = rnd(&[5, 4], 42, 1.0);
    check("linear_cross_entropy", &[logits.clone(), head.clone()], |v| v[0].linear_cross_entropy_chunked(&v[1], &with_ignored, Some(-100), 2));
    let sc = rnd(&[2, 3, 5], 37, 2.0);
    check("softmax_scaled causal", &[sc.clone()], |v| v[0].softmax_scaled(0.7, true));
    check("softmax_scaled", &[sc.clone()], |v| v[0].softmax_scaled(0.7, false));
    check("softmax_scaled causal, more keys than queries", &[rnd(&[2, 3, 6], 38, 2.0)], |v| v[0].softmax_scaled(0.5, true));
    for causal in [false, true] {
        let (a, b) = (sc.to_device(test_device()).softmax_scaled(0.7, causal), sc.to_device(test_device()).softmax_scaled_slow(0.7, causal));
        let d = a.to_vec_f64().iter().zip(b.to_vec_f64()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(d < 1e-14, "softmax_scaled vs its twin (causal {causal}): {d}");
    }
    let (cos, sin) = rope_tables(3, 4, 10000.0, 0, DType::F64);
    check("rope", &[rnd(&[2, 3, 4], 33, 1.0)], |v| v[0].rope(&cos, &sin));
}

#[test]
fn attention_variants() {
    let (b, h, tq, d) = (2, 2, 3, 4);
    let q = rnd(&[b, h, tq, d], 34, 1.0);
    let k = rnd(&[b, h, tq, d], 35, 1.0);
    let v = rnd(&[b, h, tq, d], 36, 1.0);
    check("attention none", &[q.clone(), k.clone(), v.clone()], |x| attention(&x[0], &x[1], &x[2], &AttnMask::None));
    check("attention causal", &[q.clone(), k.clone(), v.clone()], |x| attention(&x[0], &x[1], &x[2], &AttnMask::Causal));
    let pad = Tensor::from_vec(vec![1u8, 1, 0, 1, 1, 1], &[2, 3]);
    check("attention padding", &[q.clone(), k.clone(), v.clone()], |x| attention(&x[0], &x[1], &x[2], &AttnMask::KeyPadding(pad.clone())));
    // Cross-attention: 3 queries over 5 keys.
    let k5 = rnd(&[b, h, 5, d], 37, 1.0);
    let v5 = rnd(&[b, h, 5, d], 38, 1.0);
    check("cross attention", &[q.clone(), k5.clone(), v5.clone()], |x| attention(&x[0], &x[1], &x[2], &AttnMask::None));
    check("causal with cache offset", &[q, k5, v5], |x| attention(&x[0], &x[1], &x[2], &AttnMask::Causal));
}

#[test]
fn erf_matches_reference_values() {
    // Values of erf from the C library (Python's math.erf).
    for (x, want) in [(0.0, 0.0), (0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527),
                      (2.4999, 0.9995928300996666), (2.5, 0.999593047982555), (3.0, 0.9999779095030014), (-1.3, -0.9340079449406524), (6.0, 1.0)] {
        let got = Tensor::from_f64(&[x], &[1], DType::F64).erf().item();
        assert!((got - want).abs() < 1e-14, "erf({x}) = {got}, want {want}");
    }
}

#[test]
fn dropout_scales_and_is_seeded() {
    let x = Tensor::ones(&[1000], DType::F64);
    let y = x.dropout(0.25, &mut Rng::new(1));
    let v = y.to_vec_f64();
    let kept = v.iter().filter(|&&a| a != 0.0).count();
    assert!((700..800).contains(&kept), "kept {kept} of 1000 at p = 0.25");
    assert!(v.iter().all(|&a| a == 0.0 || (a - 1.0 / 0.75).abs() < 1e-12));
    assert_eq!(v, x.dropout(0.25, &mut Rng::new(1)).to_vec_f64(), "same seed, same mask");
    // The gradient is the same mask.
    check("dropout", &[rnd(&[10], 39, 1.0)], |v| v[0].dropout(0.5, &mut Rng::new(5)));
}

#[test]
fn gradients_accumulate_across_backward_calls_and_no_grad_records_nothing() {
    let w = Tensor::new_var(&t(&[1.0, 2.0], &[2]));
    w.mul(&w).sum_all().backward(); // d = 2w
    w.sum_all().scale(3.0).backward(); // d = 3
    assert_eq!(w.grad().unwrap().to_vec_f64(), vec![5.0, 7.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    let y = {
        let _g = fmlab_tensor::no_grad();
        w.mul(&w)
    };
    assert!(!y.track_grad());
    assert!(!w.mul(&w).detach().track_grad());
}

/// The fused ops against their composite twins in f64: values and every input's gradient.
#[test]
fn fused_ops_match_their_twins() {
    let dev = test_device();
    fn run(dev: Device, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) -> Vec<Vec<f64>> {
        let vars: Vec<Tensor> = inputs.iter().map(|t| Tensor::new_var(&t.to_device(dev))).collect();
        let y = f(&vars);
        let w = rnd(y.shape(), 7, 1.0).to_device(dev);
        y.mul(&w).sum_all().backward();
        let mut out = vec![y.to_vec_f64()];
        out.extend(vars.iter().map(|v| v.grad().expect("a gradient").to_vec_f64()));
        out
    }
    let close = |name: &str, a: Vec<Vec<f64>>, b: Vec<Vec<f64>>| {
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = x.iter().zip(y).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0.0, f64::max);
            assert!(d < 1e-12, "{name}: {} differs from the twin by {d}", if k == 0 { "output".to_string() } else { format!("gradient {}", k - 1) });
        }
    };
    let x = rnd(&[9, 70], 50, 3.0).add_scalar(1.5);
    let (w, b) = (rnd(&[70], 51, 1.0), rnd(&[70], 52, 1.0));
    close("layer_norm", run(dev, &[x.clone(), w.clone(), b.clone()], &|v| v[0].layer_norm(&v[1], Some(&v[2]), 1e-5)), run(dev, &[x.clone(), w.clone(), b.clone()], &|v| v[0].layer_norm_slow(&v[1], Some(&v[2]), 1e-5)));
    close("layer_norm no bias", run(dev, &[x.clone(), w.clone()], &|v| v[0].layer_norm(&v[1], None, 1e-5)), run(dev, &[x.clone(), w.clone()], &|v| v[0].layer_norm_slow(&v[1], None, 1e-5)));
    let g = Tensor::from_f64(&(0..241).map(|i| (i as f64 - 120.0) / 15.0).collect::<Vec<_>>(), &[241], DType::F64);
    close("gelu_tanh", run(dev, &[g.clone()], &|v| v[0].gelu_tanh()), run(dev, &[g.clone()], &|v| v[0].gelu_tanh_slow()));
    close("gelu_erf", run(dev, &[g.clone()], &|v| v[0].gelu_erf()), run(dev, &[g.clone()], &|v| v[0].gelu_erf_slow()));
    // The fused classifier: chunks of 1, 4 and all 10 rows (chunk boundaries inside and at the
    // end), ignored rows, against full logits + cross-entropy.
    let (hx, hw) = (rnd(&[10, 6], 53, 1.5), rnd(&[13, 6], 54, 1.0));
    let tg = Tensor::from_vec(vec![3i32, -100, 12, 0, 5, 5, -100, 7, 1, 11], &[10]);
    for rows in [1, 4, 10] {
        close(
            &format!("linear_cross_entropy, {rows} rows per chunk"),
            run(dev, &[hx.clone(), hw.clone()], &|v| v[0].linear_cross_entropy_chunked(&v[1], &tg, Some(-100), rows)),
            run(dev, &[hx.clone(), hw.clone()], &|v| v[0].linear_cross_entropy_slow(&v[1], &tg, Some(-100))),
        );
    }
}
