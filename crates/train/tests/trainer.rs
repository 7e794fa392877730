//! The Trainer step on the CPU: accumulation over micro-batches equals one batch of all of
//! them; a non-finite loss or gradient norm stops the step before the optimizer runs.

use fmlab_nn::optim::default_decay;
use fmlab_nn::{AdamW, AdamWConfig};
use fmlab_tensor::{DType, Rng, Tensor};
use fmlab_train::{NoHooks, StepOptions, TrainError, Trainer};

const W0: [f64; 3] = [0.5, -1.0, 2.0];

fn trainer(accum: usize, check_loss_first: bool) -> (Trainer, Tensor) {
    let w = Tensor::new_var(&Tensor::from_f64(&W0, &[3, 1], DType::F64));
    let vars = vec![("w".to_string(), w.clone())];
    let opt = AdamW::new(vars.clone(), AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
    (Trainer::new(opt, vars, StepOptions { grad_accum: accum, grad_clip: 1.0, graph: false, ranges: vec![], check_loss_first }), w)
}

/// Rows of x [n, 3] and targets y [n, 1].
fn data(n: usize) -> (Tensor, Tensor) {
    let mut r = Rng::new(9);
    (Tensor::rand_uniform(&[n, 3], -1.0, 1.0, DType::F64, &mut r), Tensor::rand_uniform(&[n, 1], -1.0, 1.0, DType::F64, &mut r))
}

/// Mean squared error of x·w against y.
fn mse(w: &Tensor, inp: &[Tensor]) -> Tensor {
    inp[0].matmul(w).sub(&inp[1]).sqr().mean_all()
}

#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let (x, y) = data(8);
    let (mut one, w1) = trainer(1, true);
    let mut full = Some(vec![x.clone(), y.clone()]);
    let a = one.step(0.1, &mut || full.take().unwrap(), &|inp, _| mse(&w1, inp), &mut Rng::new(0), &mut NoHooks).unwrap();
    let (mut two, w2) = trainer(2, true);
    // Popped from the back: rows 0..4 first, then 4..8.
    let mut halves = vec![vec![x.narrow(0, 4, 4), y.narrow(0, 4, 4)], vec![x.narrow(0, 0, 4), y.narrow(0, 0, 4)]];
    let b = two.step(0.1, &mut || halves.pop().unwrap(), &|inp, _| mse(&w2, inp), &mut Rng::new(0), &mut NoHooks).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-12 && (a.grad_norm - b.grad_norm).abs() < 1e-12, "{a:?} vs {b:?}");
    for (p, q) in w1.to_vec_f64().iter().zip(w2.to_vec_f64()) {
        assert!((p - q).abs() < 1e-12, "{p} vs {q}");
    }
    assert_ne!(w1.to_vec_f64(), W0.to_vec(), "the optimizer ran");
}

#[test]
fn a_non_finite_loss_or_norm_stops_before_the_optimizer() {
    let (x, y) = data(4);
    // Loss read first (training): the NaN loss is caught before its backward.
    let (mut t, w) = trainer(1, true);
    let mut b = Some(vec![x.clone(), y.clone()]);
    let e = t.step(0.1, &mut || b.take().unwrap(), &|inp, _| mse(&w, inp).scale(f64::NAN), &mut Rng::new(0), &mut NoHooks).unwrap_err();
    assert!(matches!(e, TrainError::NonFiniteLoss { .. }), "{e}");
    assert_eq!(w.to_vec_f64(), W0.to_vec());
    // Loss read after the step (the benchmark's order): the NaN gradient norm stops it instead.
    let (mut t, w) = trainer(1, false);
    let mut b = Some(vec![x, y]);
    let e = t.step(0.1, &mut || b.take().unwrap(), &|inp, _| mse(&w, inp).scale(f64::NAN), &mut Rng::new(0), &mut NoHooks).unwrap_err();
    assert!(matches!(e, TrainError::NonFiniteNorm { .. }), "{e}");
    assert!(e.to_string().contains("gradient of `w`"), "{e}");
    assert_eq!(w.to_vec_f64(), W0.to_vec(), "AdamW did not run");
}

/// grad_clip 0 is "no clipping": the step equals one with a bound far above the norm, and the
/// norm is still reported (a 0 bound taken literally would zero every gradient).
#[test]
fn grad_clip_zero_means_no_clipping() {
    let (x, y) = data(8);
    let run = |clip: f64| {
        let w = Tensor::new_var(&Tensor::from_f64(&W0, &[3, 1], DType::F64));
        let vars = vec![("w".to_string(), w.clone())];
        let opt = AdamW::new(vars.clone(), AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 }, default_decay);
        let mut t = Trainer::new(opt, vars, StepOptions { grad_accum: 1, grad_clip: clip, graph: false, ranges: vec![], check_loss_first: true });
        let mut b = Some(vec![x.clone(), y.clone()]);
        let out = t.step(0.1, &mut || b.take().unwrap(), &|inp, _| mse(&w, inp).scale(100.0), &mut Rng::new(0), &mut NoHooks).unwrap();
        (out.grad_norm, w.to_vec_f64())
    };
    let (n0, w0) = run(0.0);
    let (n1, w1) = run(1e12);
    let (_, wc) = run(1e-3);
    assert!(n0 > 1.0 && n0 == n1, "{n0} {n1}");
    assert_eq!(w0, w1);
    assert_ne!(w0, W0.to_vec(), "the optimizer moved the weights");
    // Adam normalizes the step, so a tiny clip bound still moves w; but a bound of literally 0
    // would leave only weight decay (0 here), i.e. no move at all.
    assert_ne!(wc, W0.to_vec());
}
