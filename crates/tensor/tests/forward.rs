//! Forward values against references: naive f64 loops, and f32/bf16 against the same op in f64.

use fmlab_tensor::{DType, Rng, Tensor};

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut Rng::new(seed))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn matmul_matches_naive_loops_on_large_strided_inputs() {
    // Large enough for the parallel GEMM path; rhs read transposed through its strides.
    let (m, k, n) = (67, 129, 70);
    let a = rnd(&[m, k], 1);
    let bt = rnd(&[n, k], 2);
    let got = a.matmul(&bt.t()).to_vec_f64();
    let (av, bv) = (a.to_vec_f64(), bt.to_vec_f64());
    let mut want = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| av[i * k + p] * bv[j * k + p]).sum();
        }
    }
    assert!(max_abs_diff(&got, &want) < 1e-12);
}

#[test]
fn f32_ops_match_f64_within_f32_rounding() {
    // Tolerance: a few f32 ulps of the result's magnitude (2^-23 ≈ 1.2e-7), times the depth of
    // the composite (≤ 10 roundings).
    let x64 = rnd(&[8, 33], 3).scale(3.0);
    let x32 = x64.to_dtype(DType::F32);
    let w64 = rnd(&[33], 4);
    let w32 = w64.to_dtype(DType::F32);
    let cases: Vec<(&str, Box<dyn Fn(&Tensor, &Tensor) -> Tensor>)> = vec![
        ("exp", Box::new(|x, _| x.scale(0.3).exp())),
        ("tanh", Box::new(|x, _| x.tanh())),
        ("erf", Box::new(|x, _| x.erf())),
        ("gelu_tanh", Box::new(|x, _| x.gelu_tanh())),
        ("gelu_erf", Box::new(|x, _| x.gelu_erf())),
        ("softmax", Box::new(|x, _| x.softmax(1))),
        ("log_softmax", Box::new(|x, _| x.log_softmax(1))),
        ("layer_norm", Box::new(|x, w| x.layer_norm(w, Some(w), 1e-5))),
        ("rms_norm", Box::new(|x, w| x.rms_norm(w, 1e-6))),
        ("sum", Box::new(|x, _| x.sum(&[1], false))),
        ("matmul", Box::new(|x, _| x.matmul(&x.t()))),
    ];
    for (name, f) in cases {
        let want = f(&x64, &w64).to_vec_f64();
        let got = f(&x32, &w32).to_vec_f64();
        let scale = want.iter().map(|v| v.abs()).fold(1.0, f64::max);
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-6 * scale, "{name}: max error {err} at scale {scale}");
    }
}

#[test]
fn bf16_computes_through_f32_and_rounds_once() {
    let x = rnd(&[4, 16], 5);
    let xb = x.to_dtype(DType::BF16);
    let xf = xb.to_dtype(DType::F32);
    // bf16 has 8 significant bits: relative rounding error ≤ 2^-8.
    let y = xb.add(&xb).to_dtype(DType::F64).to_vec_f64();
    let want = xf.add(&xf).to_vec_f64();
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() <= b.abs() * 2f64.powi(-8));
    }
    let mm = xb.matmul(&xb.t()).to_dtype(DType::F64).to_vec_f64();
    let mm_want = xf.matmul(&xf.t()).to_vec_f64();
    for (a, b) in mm.iter().zip(&mm_want) {
        assert!((a - b).abs() <= b.abs() * 2f64.powi(-8) + 1e-6);
    }
}

#[test]
fn softmax_of_huge_logits_is_finite_and_cross_entropy_matches_formula() {
    let l = Tensor::from_f64(&[1e4, 0.0, -1e4, 3.0, 1.0, 2.0], &[2, 3], DType::F32);
    let p = l.softmax(1).to_vec_f64();
    assert!(p.iter().all(|v| v.is_finite()));
    assert!((p[0] - 1.0).abs() < 1e-7);
    let t = Tensor::from_vec(vec![0i32, 2], &[2]);
    let ce = l.cross_entropy(&t, None).item();
    // row 0: -log softmax = 0; row 1: logsumexp(3,1,2) - 2
    let lse = (3f64.exp() + 1f64.exp() + 2f64.exp()).ln();
    assert!((ce - (lse - 2.0) / 2.0).abs() < 1e-6, "{ce}");
}

#[test]
fn views_share_storage_and_contiguous_copies() {
    let x = Tensor::arange(24, DType::F32).reshape(&[2, 3, 4]);
    let p = x.permute(&[2, 0, 1]);
    assert!(p.same_storage(&x) && !p.is_contiguous());
    let n = x.narrow(1, 1, 2);
    assert!(n.same_storage(&x));
    assert_eq!(n.to_vec_f64(), vec![4., 5., 6., 7., 8., 9., 10., 11., 16., 17., 18., 19., 20., 21., 22., 23.]);
    let e = Tensor::arange(3, DType::F32).reshape(&[3, 1]).expand(&[3, 2]);
    assert_eq!(e.to_vec_f64(), vec![0., 0., 1., 1., 2., 2.]);
    assert_eq!(p.contiguous().to_vec_f64()[..4], [0., 4., 8., 12.]);
}

#[test]
#[should_panic(expected = "matmul: inner dims differ: [2, 3] @ [4, 5]")]
fn shape_misuse_panics_with_the_op_and_shapes() {
    Tensor::zeros(&[2, 3], DType::F32).matmul(&Tensor::zeros(&[4, 5], DType::F32));
}

#[test]
fn fused_cross_entropy_equals_its_slow_twin() {
    // A GPT-2-sized row count and vocabulary: the parallel path. Tolerance: f32 logits, the fused
    // op sums exp() in f64 while the twin sums in f64 after an f32 exp as well; both agree to
    // ~1e-6 relative.
    let (n, v) = (300, 5003);
    let logits = Tensor::randn(&[n, v], 0.0, 3.0, DType::F32, &mut Rng::new(8));
    let t: Vec<i32> = (0..n).map(|i| if i % 7 == 0 { -100 } else { ((i * 7919) % v) as i32 }).collect();
    let t = Tensor::from_vec(t, &[n]);
    let (a, b) = (Tensor::new_var(&logits), Tensor::new_var(&logits));
    let la = a.cross_entropy(&t, Some(-100));
    let lb = b.cross_entropy_slow(&t, Some(-100));
    assert!((la.item() - lb.item()).abs() < 1e-5, "{} vs {}", la.item(), lb.item());
    la.backward();
    lb.backward();
    let d = max_abs_diff(&a.grad().unwrap().to_vec_f64(), &b.grad().unwrap().to_vec_f64());
    assert!(d < 1e-8, "gradients differ by {d}");
}
