//! The fused contrastive losses (InfoNCE, SigLIP) against their composite twins and against
//! f64 central finite differences, at ordinary and at extreme logits.

use fmlab_tensor::{DType, Rng, Tensor};

fn logits(n: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut r = Rng::new(seed);
    (0..n * n).map(|_| (r.uniform() * 2.0 - 1.0) * scale).collect()
}

/// (loss, gradient) of `f` at `x` [n, n] in f64.
fn value_and_grad(x: &[f64], n: usize, f: &dyn Fn(&Tensor) -> Tensor) -> (f64, Vec<f64>) {
    let v = Tensor::new_var(&Tensor::from_f64(x, &[n, n], DType::F64));
    let y = f(&v);
    y.backward();
    (y.item(), v.grad().unwrap().to_vec_f64())
}

fn check(name: &str, fused: &dyn Fn(&Tensor) -> Tensor, slow: &dyn Fn(&Tensor) -> Tensor) {
    for (n, scale, seed) in [(1, 1.0, 1), (5, 1.0, 2), (7, 14.3, 3), (6, 60.0, 4)] {
        let x = logits(n, scale, seed);
        let (lf, gf) = value_and_grad(&x, n, fused);
        let (ls, gs) = value_and_grad(&x, n, slow);
        assert!(lf.is_finite() && (lf - ls).abs() < 1e-10 * (1.0 + ls.abs()), "{name} n {n} scale {scale}: loss {lf} vs twin {ls}");
        for i in 0..n * n {
            assert!((gf[i] - gs[i]).abs() < 1e-10, "{name} n {n}: grad[{i}] {} vs twin {}", gf[i], gs[i]);
        }
        // Central differences of the fused loss (forward only, no graph).
        let h = 1e-6;
        for i in 0..n * n {
            let at = |d: f64| {
                let mut y = x.clone();
                y[i] += d;
                fused(&Tensor::from_f64(&y, &[n, n], DType::F64)).item()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((gf[i] - fd).abs() < 1e-6 * (1.0 + fd.abs()), "{name} n {n} scale {scale}: grad[{i}] {} vs finite difference {fd}", gf[i]);
        }
    }
}

#[test]
fn info_nce_matches_its_twin_and_finite_differences() {
    check("info_nce", &|t| t.info_nce(), &|t| t.info_nce_slow());
    // The closed form ∂L/∂logits = (P − I)/2N + (Q − I)/2N: P − I has rows summing to 0 and
    // Q − I columns summing to 0, so the whole gradient sums to 0.
    let n = 4;
    let x = logits(n, 3.0, 9);
    let (_, g) = value_and_grad(&x, n, &|t| t.info_nce());
    let total: f64 = g.iter().sum();
    assert!(total.abs() < 1e-12, "the gradient sums to {total}");
    // Perfectly separated pairs: the loss goes to 0.
    let sep: Vec<f64> = (0..16).map(|i| if i / 4 == i % 4 { 40.0 } else { -40.0 }).collect();
    assert!(Tensor::from_f64(&sep, &[4, 4], DType::F64).info_nce().item() < 1e-20);
    // f32 in, f32 out.
    assert_eq!(Tensor::from_f64(&x, &[n, n], DType::F32).info_nce().dtype(), DType::F32);
}

#[test]
fn siglip_matches_its_twin_and_finite_differences() {
    check("siglip_loss", &|t| t.siglip_loss(), &|t| t.siglip_loss_slow());
    // At L = 0 every pair costs log 2: N² log 2 / N.
    let z = Tensor::zeros(&[3, 3], DType::F64).siglip_loss().item();
    assert!((z - 3.0 * std::f64::consts::LN_2).abs() < 1e-12, "{z}");
}

#[test]
#[should_panic(expected = "non-empty square")]
fn a_non_square_matrix_is_refused() {
    Tensor::zeros(&[2, 3], DType::F32).info_nce();
}
