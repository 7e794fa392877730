//! The custom-op interface from outside the crate: an op defined here (no core file touched)
//! runs forward and backward through `Tensor::apply_op`, checked against its composite twin and
//! finite differences; and Narrow's device-neutral backward (slices written into one buffer)
//! against the concatenation it replaced.

use fmlab_tensor::{Backward, CustomOp, DType, Fwd, Tensor};

/// y = x³ elementwise; backward 3x²·g. A CPU forward only: on a GPU it declines.
struct Cube;

impl CustomOp for Cube {
    fn name(&self) -> String {
        "cube".into()
    }
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let x = &inputs[0];
        Some(Fwd::new(x.mul(x).mul(x), vec![]))
    }
    fn cuda_fwd(&self, _: &[Tensor]) -> Option<Fwd> {
        None
    }
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>> {
        let x = &cx.inputs()[0];
        vec![Some(cx.g.mul(&x.mul(x).scale(3.0)))]
    }
}

fn cube(x: &Tensor) -> Tensor {
    Tensor::apply_op(Cube, &[x.clone()]).unwrap_or_else(|| x.powf(3.0))
}

#[test]
fn an_op_defined_outside_the_crate_gets_autograd() {
    let vals = [-2.0, -0.5, 0.0, 0.25, 1.0, 3.0];
    let x = Tensor::new_var(&Tensor::from_f64(&vals, &[2, 3], DType::F64));
    let y = cube(&x);
    assert_eq!(y.op().map(|o| o.name()), Some("cube".to_string()), "the output records the custom op");
    let w = Tensor::from_f64(&[1.0, -1.0, 2.0, 0.5, 3.0, -2.0], &[2, 3], DType::F64);
    y.mul(&w).sum_all().backward();
    let got = x.grad().unwrap().to_vec_f64();
    // Against the composite twin's gradient.
    let x2 = Tensor::new_var(&Tensor::from_f64(&vals, &[2, 3], DType::F64));
    x2.powf(3.0).mul(&w).sum_all().backward();
    let twin = x2.grad().unwrap().to_vec_f64();
    let wv = w.to_vec_f64();
    for i in 0..vals.len() {
        assert!((got[i] - twin[i]).abs() < 1e-12, "element {i}: {} vs the twin's {}", got[i], twin[i]);
        // Central finite difference of Σ w·x³ in element i.
        let h = 1e-5;
        let f = |v: f64| wv[i] * v * v * v;
        let fd = (f(vals[i] + h) - f(vals[i] - h)) / (2.0 * h);
        assert!((got[i] - fd).abs() < 1e-6 * (1.0 + fd.abs()), "element {i}: {} vs finite difference {fd}", got[i]);
    }
    // Without gradients nothing is recorded.
    let _ng = fmlab_tensor::no_grad();
    assert!(cube(&x).op().is_none());
}

#[test]
fn narrow_slices_gradients_land_in_one_buffer() {
    // Disjoint slices (q, k, v of a fused projection), an overlapping one, and a slice of an
    // f32 input: the gradients equal those of the same sum written with `cat`-padded slices.
    let vals: Vec<f64> = (0..24).map(|i| (i as f64 * 0.37).sin()).collect();
    let run = |padded: bool| {
        let x = Tensor::new_var(&Tensor::from_f64(&vals, &[2, 12], DType::F32));
        let parts = [(0, 4, 1.0), (4, 4, -2.0), (8, 4, 0.5), (2, 5, 3.0)];
        let mut total: Option<Tensor> = None;
        for (start, len, k) in parts {
            let s = if padded {
                // The slice by a mask instead of a narrow: no Narrow backward involved.
                let m: Vec<f64> = (0..12).map(|j| if j >= start && j < start + len { 1.0 } else { 0.0 }).collect();
                x.mul(&Tensor::from_f64(&m, &[12], DType::F32)).sqr().sum_all()
            } else {
                x.narrow(1, start, len).sqr().sum_all()
            };
            let s = s.scale(k);
            total = Some(match total {
                Some(t) => t.add(&s),
                None => s,
            });
        }
        total.unwrap().backward();
        x.grad().unwrap().to_vec_f64()
    };
    let (got, want) = (run(false), run(true));
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-5, "element {i}: {a} vs {b}");
    }
}
