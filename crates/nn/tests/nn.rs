//! Schedules against their formulas, clipping, safetensors round trips and corruption, and the
//! VarBuilder's key/shape checks.

use std::collections::HashMap;

use fmlab_nn::{clip_grad_norm, safetensors_io, Init, Schedule, VarBuilder};
use fmlab_tensor::{DType, Tensor};

#[test]
fn warmup_cosine_matches_the_formula() {
    let s = Schedule::WarmupCosine { lr: 1e-3, min_lr: 1e-4, warmup: 10, total: 110 };
    assert!((s.lr_at(0) - 1e-4).abs() < 1e-15); // (0+1)/10 of peak
    assert!((s.lr_at(9) - 1e-3).abs() < 1e-15);
    for step in [10u64, 35, 60, 85, 109] {
        let p = (step - 10) as f64 / 100.0;
        let want = 1e-4 + 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) * (1e-3 - 1e-4);
        assert!((s.lr_at(step) - want).abs() < 1e-15, "step {step}");
    }
    assert!((s.lr_at(60) - 5.5e-4).abs() < 1e-12, "midpoint is halfway");
    assert_eq!(s.lr_at(110), 1e-4);
    assert_eq!(s.lr_at(10_000), 1e-4);
}

#[test]
fn wsd_and_constant() {
    let s = Schedule::Wsd { lr: 1.0, min_lr: 0.0, warmup: 2, decay: 4, total: 10 };
    let got: Vec<f64> = (0..11).map(|i| s.lr_at(i)).collect();
    assert_eq!(got, vec![0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]);
    assert_eq!(Schedule::Constant { lr: 0.3 }.lr_at(123), 0.3);
}

#[test]
fn clip_grad_norm_scales_to_max_norm_like_pytorch() {
    let a = Tensor::new_var(&Tensor::zeros(&[2], DType::F32));
    let b = Tensor::new_var(&Tensor::zeros(&[1], DType::F32));
    a.set_grad(Some(Tensor::from_vec(vec![3.0f32, 0.0], &[2])));
    b.set_grad(Some(Tensor::from_vec(vec![4.0f32], &[1])));
    let n = clip_grad_norm(&[a.clone(), b.clone()], 1.0);
    assert!((n - 5.0).abs() < 1e-12);
    let coef = 1.0 / (5.0 + 1e-6);
    let ga = a.grad().unwrap().to_vec_f64();
    assert!((ga[0] - 3.0 * coef).abs() < 1e-6 && (b.grad().unwrap().item() - 4.0 * coef).abs() < 1e-6);
    // Below the threshold nothing changes.
    let n2 = clip_grad_norm(&[a.clone(), b.clone()], 10.0);
    assert!((n2 - 1.0).abs() < 1e-5);
    assert!((a.grad().unwrap().to_vec_f64()[0] - 3.0 * coef).abs() < 1e-6);
}

#[test]
fn safetensors_round_trip_and_corruption() {
    let d = std::env::temp_dir().join(format!("fmlab-nn-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("m.safetensors");
    let ts = vec![
        ("a".to_string(), Tensor::from_vec(vec![1.0f32, -2.5, 3.25], &[3])),
        ("b.c".to_string(), Tensor::from_vec(vec![7i32, 8, 9, 10], &[2, 2])),
        ("h".to_string(), Tensor::from_vec(vec![1.5f32; 4], &[4]).to_dtype(DType::BF16)),
    ];
    let meta: HashMap<String, String> = [("step".to_string(), "12".to_string())].into();
    safetensors_io::save(&p, &ts, Some(meta)).unwrap();
    let back = safetensors_io::load(&p).unwrap();
    for (n, t) in &ts {
        assert_eq!(back[n].shape(), t.shape());
        assert_eq!(back[n].dtype(), t.dtype());
        assert_eq!(back[n].to_vec_f64(), t.to_vec_f64());
    }
    assert_eq!(safetensors_io::metadata(&p).unwrap()["step"], "12");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(d.join("t.safetensors"), &bytes[..bytes.len() - 5]).unwrap();
    let e = safetensors_io::load(&d.join("t.safetensors")).unwrap_err().to_string();
    assert!(e.contains("t.safetensors") && e.contains("truncated or corrupt"), "{e}");
    // No temporary files left behind by the atomic write.
    let left: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.contains(".tmp")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn varbuilder_paths_tying_and_checks() {
    let vb = VarBuilder::new(DType::F32, 1);
    let w = vb.pp("h").pp(0).pp("attn").get(&[2, 3], "weight", Init::Normal { std: 0.02 }).unwrap();
    let again = vb.pp("h.0.attn").get(&[2, 3], "weight", Init::Zeros).unwrap();
    assert!(w.same_storage(&again), "same key = same variable (weight tying)");
    assert_eq!(vb.vars()[0].0, "h.0.attn.weight");
    let e = vb.pp("h.0.attn").get(&[3, 3], "weight", Init::Zeros).unwrap_err().to_string();
    assert!(e.contains("h.0.attn.weight"), "{e}");
    // Same seed, same init.
    let vb2 = VarBuilder::new(DType::F32, 1);
    let w2 = vb2.pp("h.0.attn").get(&[2, 3], "weight", Init::Normal { std: 0.02 }).unwrap();
    assert_eq!(w.to_vec_f64(), w2.to_vec_f64());
}
