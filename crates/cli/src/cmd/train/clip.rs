//! `fmlab train clip`: a CLIP (ViT image tower, BERT text tower) trained from scratch on
//! generated scenes with symmetric InfoNCE or SigLIP, a learned or fixed temperature; retrieval
//! on the held-out compositions as it trains; checkpoints, Ctrl-C and exact resume as `train gpt`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use fmlab_models::clip::{Clip, ClipConfig, ContrastiveLoss, Temperature};
use fmlab_nn::VarBuilder;
use fmlab_tensor::DType;
use fmlab_train::clip::{ClipData, ClipMeta, ClipRun, ClipRunConfig};

#[derive(Args)]
pub struct ClipArgs {
    /// clip-cpu (vit-cpu + a 2-layer BERT, d 64) or clip-tiny (vit-tiny + a 4-layer BERT, d 192).
    #[arg(long, default_value = "clip-cpu")]
    preset: String,
    /// Training data: `scenes` (the seeded scene generator, 64 × 64 RGB) or `fashion-mnist`
    /// (the asset cache's, captioned from prompts; with --preset clip-fashion).
    #[arg(long, default_value = "scenes")]
    data: String,
    /// With fashion-mnist: the classes whose pairs are trained on (the others are zero-shot).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4,5,6")]
    train_classes: Vec<u8>,
    /// infonce (CLIP's symmetric cross-entropy) or siglip (pairwise sigmoid).
    #[arg(long, default_value = "infonce")]
    loss: String,
    /// `learnable` (from τ = 0.07, or 0.1 for SigLIP) or a fixed τ > 0, e.g. 0.07.
    #[arg(long, default_value = "learnable", allow_hyphen_values = true)]
    tau: String,
    /// (image, caption) pairs per step (≥ 2).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Optimizer steps [default: 500; with --resume, the run's own unless raised].
    #[arg(long)]
    steps: Option<u64>,
    /// Peak learning rate, > 0.
    #[arg(long, default_value_t = 1e-3, allow_hyphen_values = true)]
    lr: f64,
    /// Steps of linear warm-up.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// AdamW's weight decay, ≥ 0.
    #[arg(long, default_value_t = 0.05, allow_hyphen_values = true)]
    weight_decay: f64,
    /// Steps between retrieval evaluations (≥ 1).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Held-out scenes the retrieval ranks among (≥ 10).
    #[arg(long, default_value_t = 500)]
    eval_scenes: usize,
    /// Steps between checkpoints (≥ 1; one is also written at the end).
    #[arg(long, default_value_t = 250)]
    checkpoint_every: u64,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Seed of the scene generator (the held-out pairs and every scene).
    #[arg(long, default_value_t = 7)]
    data_seed: u64,
    /// Run folder [default: runs/clip-PRESET-UNIXTIME].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (its config; --steps may be raised).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many steps in this invocation.
    #[arg(long)]
    stop_after: Option<u64>,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

impl ClipArgs {
    /// The run config the flags describe, every value range-checked.
    fn resolve(&self, vocab: usize) -> Result<ClipRunConfig> {
        let data = match self.data.as_str() {
            "scenes" => ClipData::Scenes,
            "fashion-mnist" => {
                let dir = crate::assets::cache_dir().join("fashion-mnist");
                if !dir.join("train-images-idx3-ubyte").is_file() {
                    bail!("--data fashion-mnist: {} is missing ({}); run `scripts/fetch-assets.sh fashion-mnist`", dir.join("train-images-idx3-ubyte").display(), crate::assets::cache_hint());
                }
                if self.train_classes.is_empty() || self.train_classes.iter().any(|&c| c >= 10) {
                    bail!("--train-classes {:?}: give classes in 0..10", self.train_classes);
                }
                ClipData::FashionMnist { dir, train_classes: self.train_classes.clone() }
            }
            d => bail!("--data {d}: expected scenes or fashion-mnist"),
        };
        let loss = match self.loss.as_str() {
            "infonce" => ContrastiveLoss::InfoNce,
            "siglip" => ContrastiveLoss::Siglip,
            l => bail!("--loss {l}: expected infonce or siglip"),
        };
        let temperature = match self.tau.as_str() {
            "learnable" => Temperature::Learnable,
            t => match t.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => Temperature::Fixed(v),
                _ => bail!("--tau {t}: expected `learnable` or a positive number"),
            },
        };
        let model = ClipConfig::preset(&self.preset, vocab, fmlab_train::clip::MAX_TOKENS, loss, temperature)
            .with_context(|| format!("--preset {}: unknown preset (known: {})", self.preset, ClipConfig::PRESETS.join(", ")))?;
        if self.batch < 2 {
            bail!("--batch {}: a contrastive batch needs at least 2 pairs", self.batch);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr {}: must be a positive number", self.lr);
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!("--weight-decay {}: must be ≥ 0", self.weight_decay);
        }
        for (flag, v) in [("--eval-every", self.eval_every), ("--checkpoint-every", self.checkpoint_every)] {
            if v == 0 {
                bail!("{flag} 0: must be at least 1");
            }
        }
        if self.eval_scenes < 10 {
            bail!("--eval-scenes {}: must be at least 10", self.eval_scenes);
        }
        let (vision, fashion) = (&model.vision, matches!(data, ClipData::FashionMnist { .. }));
        if fashion != (vision.image == 28 && vision.channels == 1) {
            bail!("--preset {} takes {} × {} images with {} channel(s); --data {} needs {}", self.preset, vision.image, vision.image, vision.channels, self.data, if fashion { "--preset clip-fashion" } else { "64 × 64 RGB (clip-cpu or clip-tiny)" });
        }
        Ok(ClipRunConfig {
            preset: self.preset.clone(),
            model,
            data,
            image: 64,
            max_objects: 3,
            data_seed: self.data_seed,
            batch: self.batch,
            steps: self.steps.unwrap_or(500),
            lr: self.lr,
            min_lr: self.lr / 10.0,
            warmup: self.warmup.min(self.steps.unwrap_or(500)),
            weight_decay: self.weight_decay,
            beta1: 0.9,
            beta2: 0.98,
            grad_clip: 1.0,
            eval_every: self.eval_every,
            eval_scenes: self.eval_scenes,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
        })
    }
}

pub fn run(a: ClipArgs) -> Result<()> {
    let device = crate::device::resolve(&a.device)?;
    let (cfg, run_dir, resume): (ClipRunConfig, PathBuf, Option<(PathBuf, ClipMeta)>) = match &a.resume {
        Some(dir) => {
            let (ck, meta): (PathBuf, ClipMeta) = fmlab_train::checkpoint::open(&dir.join("checkpoint")).context("--resume")?;
            let mut cfg = meta.config.clone();
            if let Some(s) = a.steps {
                if s < meta.step {
                    bail!("--steps {s}: the run is already at step {}", meta.step);
                }
                cfg.steps = s;
            }
            (cfg, dir.clone(), Some((ck, meta)))
        }
        None => {
            if a.steps == Some(0) {
                eprintln!("--steps 0: nothing to train");
                return Ok(());
            }
            let dir = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/clip-{}-{}", a.preset, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))));
            if dir.join("checkpoint").join("meta.json").is_file() {
                bail!("--out {}: already holds a run; continue it with --resume {}, or choose another --out", dir.display(), dir.display());
            }
            // The tokenizer's vocabulary sizes the text tower: train it first.
            let tok = if a.data == "fashion-mnist" {
                fmlab_train::clip::fashion_tokenizer()?
            } else {
                fmlab_train::clip::caption_tokenizer(&fmlab_data::scenes::SceneGen::new(64, 3, a.data_seed), a.data_seed)?
            };
            let cfg = a.resolve(tok.vocab_size())?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating run folder {}", dir.display()))?;
            tok.save(&fmlab_train::clip::tokenizer_path(&dir))?;
            (cfg, dir, None)
        }
    };
    let tokenizer_file = match &resume {
        Some((ck, _)) => ck.join("tokenizer.fmtok"),
        None => fmlab_train::clip::tokenizer_path(&run_dir),
    };
    let tok = fmlab_tokenizer::Tokenizer::load(&tokenizer_file)?;
    let (model, vb) = match &resume {
        Some((ck, meta)) => fmlab_train::checkpoint::load_model::<Clip>(ck, &meta.config.model)?,
        None => {
            let vb = VarBuilder::new(DType::F32, cfg.seed);
            (Clip::load(&vb, &cfg.model)?, vb)
        }
    };
    vb.to_device(device);
    fmlab_train::interrupt::install()?;
    let run = ClipRun { cfg, run_dir: run_dir.clone(), device, vars: vb.vars(), tok, tokenizer_file, git_commit: crate::checkpoint::git_commit(), gpu: crate::device::gpu_name(device), resume, stop_after: a.stop_after };
    let done = fmlab_train::clip::run(&model, run)?;
    if let Some(z) = done.zero_shot {
        eprintln!("done: {} steps; Fashion-MNIST test top-1 {:.3} over 10 classes: {:.3} on the trained classes, {:.3} zero-shot on the held-out ones (chance {:.2}); checkpoint in {}", done.step, z.top1, z.top1_trained, z.top1_held_out, z.chance, run_dir.join("checkpoint").display());
        return Ok(());
    }
    match done.recall {
        Some(r) => eprintln!("done: {} steps; held-out compositions: image→text R@1 {:.3} R@5 {:.3} R@10 {:.3}, text→image R@1 {:.3} (chance {:.3}); checkpoint in {}", done.step, r.i2t[0], r.i2t[1], r.i2t[2], r.t2i[0], r.chance_r1, run_dir.join("checkpoint").display()),
        None => eprintln!("done: {} steps; checkpoint in {}", done.step, run_dir.join("checkpoint").display()),
    }
    Ok(())
}
