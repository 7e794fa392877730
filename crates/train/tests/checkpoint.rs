//! Checkpoints against damage: every file of a saved checkpoint truncated, bit-flipped, overwritten
//! or replaced by random bytes (fmlab_fs::mutations) is refused by `open` or the loaders with an
//! error naming the file — never a panic, never garbage weights.

use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::optim::default_decay;
use fmlab_nn::{AdamW, AdamWConfig, VarBuilder};
use fmlab_tensor::DType;
use fmlab_train::checkpoint::{self, Meta};

#[test]
fn damaged_checkpoints_are_refused_by_name() {
    let d = std::env::temp_dir().join(format!("fmlab-ck-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let mut cfg = Gpt2Config::preset("cpu-tiny").unwrap();
    cfg.vocab_size = 300;
    let vb = VarBuilder::new(DType::F32, 3);
    let _model = Gpt2::load(&vb, &cfg).unwrap();
    let vars = vb.vars();
    let opt = AdamW::new(vars.clone(), AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
    let meta = Meta { format: checkpoint::FORMAT.into(), version: checkpoint::VERSION, config: cfg.clone(), step: 7, sampler_rng: [1, 2, 3, 4], dropout_rng: [5, 6, 7, 8], git_commit: None, files: Default::default() };
    let ck = d.join("checkpoint");
    checkpoint::save(&ck, &vars, &opt, &meta, None).unwrap();
    let read = || -> Result<(), String> {
        let (dir, m) = checkpoint::open::<Gpt2Config>(&ck).map_err(|e| e.to_string())?;
        checkpoint::load_model::<Gpt2>(&dir, &m.config).map_err(|e| e.to_string())?;
        let mut o = AdamW::new(vars.clone(), AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
        checkpoint::load_optimizer(&dir, &mut o).map_err(|e| e.to_string())
    };
    read().unwrap();
    let m = read_meta_json(&ck);
    assert_eq!(m["version"], 2);
    assert_eq!(m["files"]["model.safetensors"].as_str().unwrap().len(), 64, "a sha256 per file");
    for name in ["model.safetensors", "optim.safetensors", "meta.json"] {
        let good = std::fs::read(ck.join(name)).unwrap();
        // Large files: fewer cases (each hashes the whole checkpoint).
        let cases = if name == "meta.json" { 300 } else { 40 };
        for (i, b) in fmlab_fs::mutations(&good, 17, cases).enumerate() {
            std::fs::write(ck.join(name), &b).unwrap();
            match read() {
                // A mutation can leave meta.json's meaning unchanged (a flipped bit in padding
                // spaces is not possible in JSON, but a new value of an unused field is).
                Ok(()) => assert_eq!(name, "meta.json", "case {i}: damaged {name} was accepted"),
                Err(e) => assert!(e.contains(name) || e.contains("checkpoint"), "case {i} of {name}: the error names no file: {e}"),
            }
        }
        std::fs::write(ck.join(name), &good).unwrap();
        read().unwrap();
    }
    let _ = std::fs::remove_dir_all(&d);
}

fn read_meta_json(ck: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(ck.join("meta.json")).unwrap()).unwrap()
}
