//! CLIP training on generated scenes (`fmlab train clip`): the run's config, the data (scenes
//! drawn by index from the seeded generator, captions in a rotating phrasing, a BPE tokenizer
//! trained on the training captions and kept in the run folder), image↔text retrieval on the
//! held-out compositions, and the loop around the `Trainer` step (warmup-cosine schedule,
//! evaluation, checkpoints, Ctrl-C, exact resume: batch k is always scenes k·B..(k+1)·B).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fmlab_data::images::Image;
use fmlab_data::scenes::{Scene, SceneGen, Split};
use fmlab_models::clip::{Clip, ClipConfig};
use fmlab_nn::optim::default_decay;
use fmlab_nn::{AdamW, AdamWConfig, NnError, Schedule, VarBuilder};
use fmlab_tensor::{no_grad, DType, Device, Rng, Tensor};
use fmlab_tokenizer::{train_from_texts, Tokenizer, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::{Meta, NoHooks, StepOptions, Trainer, TrainError};

/// What a run trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClipData {
    /// The scene generator (64 × 64 RGB).
    Scenes,
    /// Fashion-MNIST's IDX files in `dir` (28 × 28 gray), captioned from prompt templates, the
    /// training pairs only of `train_classes`: the others are zero-shot classes.
    FashionMnist { dir: PathBuf, train_classes: Vec<u8> },
}

fn scenes_data() -> ClipData {
    ClipData::Scenes
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipRunConfig {
    pub preset: String,
    pub model: ClipConfig,
    #[serde(default = "scenes_data")]
    pub data: ClipData,
    /// The scene generator: image side, objects per scene, seed (the held-out pairs and scenes).
    pub image: usize,
    pub max_objects: usize,
    pub data_seed: u64,
    pub batch: usize,
    pub steps: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub grad_clip: f64,
    pub eval_every: u64,
    /// Held-out scenes the retrieval metrics rank among.
    pub eval_scenes: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
}

pub type ClipMeta = Meta<ClipRunConfig>;

impl crate::checkpoint::Checkpointed for Clip {
    type Config = ClipConfig;
    fn from_checkpoint(tensors: std::collections::HashMap<String, Tensor>, cfg: &ClipConfig) -> Result<(Self, VarBuilder), NnError> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32);
        let m = Clip::load(&vb, cfg)?;
        let unused = vb.unused_keys();
        if !unused.is_empty() {
            return Err(NnError::Other(format!("checkpoint has tensors the model does not use: {}", unused.join(", "))));
        }
        Ok((m, vb))
    }
}

/// The longest caption, in tokens (captions are padded to it).
pub const MAX_TOKENS: usize = 24;

/// A BPE tokenizer for the scene captions, trained on the captions of the first 4,000
/// training scenes (the held-out compositions' words all occur there: every colour and shape
/// keeps training pairs).
pub fn caption_tokenizer(gen: &SceneGen, data_seed: u64) -> Result<Tokenizer, TrainError> {
    let caps: Vec<String> = gen.scenes(Split::Train, data_seed, 4000).into_iter().flat_map(|s| s.captions).collect();
    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    train_from_texts(&refs, &TrainConfig { vocab_size: 512, ..TrainConfig::default() }).map_err(|e| TrainError::Other(format!("training the caption tokenizer: {e}")))
}

/// ids [B, MAX_TOKENS] (i32) and mask [B, MAX_TOKENS] (u8) of captions.
pub fn encode_captions(tok: &Tokenizer, caps: &[&str]) -> (Tensor, Tensor) {
    fmlab_models::clip::encode_captions(tok, caps, MAX_TOKENS)
}

/// images [B, H, W, C] f32 in [0, 1].
pub fn image_batch(images: &[&Image]) -> Tensor {
    let (h, w, c) = (images[0].height, images[0].width, images[0].channels);
    let px: Vec<f32> = images.iter().flat_map(|i| i.pixels.iter().map(|&p| p as f32 / 255.0)).collect();
    Tensor::from_vec(px, &[images.len(), h, w, c])
}

/// Training batch `k`: scenes k·B..(k+1)·B of the training split, each with the phrasing
/// (k + i) mod its caption count (so a scene seen again is described differently).
pub fn train_batch(gen: &SceneGen, tok: &Tokenizer, data_seed: u64, batch: usize, k: u64) -> Vec<Tensor> {
    let scenes: Vec<Scene> = (0..batch as u64).map(|i| gen.scene(Split::Train, data_seed, k * batch as u64 + i)).collect();
    let caps: Vec<&str> = scenes.iter().enumerate().map(|(i, s)| s.captions[(k as usize + i) % s.captions.len()].as_str()).collect();
    let (ids, mask) = encode_captions(tok, &caps);
    vec![image_batch(&scenes.iter().map(|s| &s.image).collect::<Vec<_>>()), ids, mask]
}

/// Recall@1/5/10 both ways among a set of scenes, with each scene's canonical caption. A
/// retrieved caption (image → text) or image (text → image) counts when its canonical caption
/// is the query's: scenes that share one are indistinguishable by it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Recall {
    pub i2t: [f64; 3],
    pub t2i: [f64; 3],
    /// The chance level of R@1 (1 / scenes).
    pub chance_r1: f64,
}

pub fn retrieval(clip: &Clip, tok: &Tokenizer, scenes: &[Scene]) -> Recall {
    let _ng = no_grad();
    let n = scenes.len();
    let caps: Vec<&str> = scenes.iter().map(|s| s.captions[0].as_str()).collect();
    let mut img_e = Vec::new();
    let mut txt_e = Vec::new();
    let dev = clip.device();
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let imgs: Vec<&Image> = chunk.iter().map(|&i| &scenes[i].image).collect();
        img_e.push(clip.image_embeddings(&image_batch(&imgs).to_device(dev)));
        let (ids, mask) = encode_captions(tok, &chunk.iter().map(|&i| caps[i]).collect::<Vec<_>>());
        txt_e.push(clip.text_embeddings(&ids, &mask));
    }
    let sims = Tensor::cat(&img_e, 0).matmul(&Tensor::cat(&txt_e, 0).t()).to_vec_f64(); // [n, n]
    // Rank (0 = first) of the best-scoring item whose caption is q's: the items with another
    // caption that score above it.
    let rank_hit = |scores: &dyn Fn(usize) -> f64, q: usize| -> usize {
        let best = (0..n).filter(|&j| caps[j] == caps[q]).map(scores).fold(f64::NEG_INFINITY, f64::max);
        (0..n).filter(|&j| caps[j] != caps[q] && scores(j) > best).count()
    };
    let (mut i2t, mut t2i) = ([0.0; 3], [0.0; 3]);
    for q in 0..n {
        let ri = rank_hit(&|j| sims[q * n + j], q);
        let rt = rank_hit(&|j| sims[j * n + q], q);
        for (k, &cut) in [1, 5, 10].iter().enumerate() {
            i2t[k] += (ri < cut) as u8 as f64 / n as f64;
            t2i[k] += (rt < cut) as u8 as f64 / n as f64;
        }
    }
    Recall { i2t, t2i, chance_r1: 1.0 / n as f64 }
}

pub struct ClipRun {
    pub cfg: ClipRunConfig,
    pub run_dir: PathBuf,
    pub device: Device,
    pub vars: Vec<(String, Tensor)>,
    pub tok: Tokenizer,
    pub tokenizer_file: PathBuf,
    pub git_commit: Option<String>,
    pub gpu: Option<String>,
    pub resume: Option<(PathBuf, ClipMeta)>,
    pub stop_after: Option<u64>,
}

pub struct ClipDone {
    pub step: u64,
    pub recall: Option<Recall>,
    pub zero_shot: Option<ZeroShot>,
}

pub fn run(model: &Clip, run: ClipRun) -> Result<ClipDone, TrainError> {
    let ClipRun { cfg, run_dir, device, vars, tok, tokenizer_file, git_commit, gpu, resume, stop_after } = run;
    let gen = SceneGen::new(cfg.image, cfg.max_objects, cfg.data_seed);
    let mut opt = AdamW::new(vars.clone(), AdamWConfig { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: 1e-8, weight_decay: cfg.weight_decay }, default_decay);
    let schedule = Schedule::WarmupCosine { lr: cfg.lr, min_lr: cfg.min_lr, warmup: cfg.warmup, total: cfg.steps };
    let mut step = 0u64;
    if let Some((ck, meta)) = &resume {
        crate::checkpoint::load_optimizer(ck, &mut opt)?;
        step = meta.step;
        crate::ledger::drop_metrics_after(&run_dir, step)?;
        eprintln!("resuming {} at step {step} of {}", run_dir.display(), cfg.steps);
    }
    crate::ledger::record_start(&run_dir, "train clip", &cfg, cfg.seed, device, git_commit.clone(), gpu, resume.is_some())?;
    eprintln!(
        "model: {} (vision d{} L{}, text d{} L{}, embed {}), {:?} loss, temperature {:?}, on {device}; batch {} × {} steps, lr {} (warmup {}); {}",
        cfg.preset, cfg.model.vision.d_model, cfg.model.vision.layers, cfg.model.text.hidden_size, cfg.model.text.num_hidden_layers, cfg.model.embed, cfg.model.loss, cfg.model.temperature, cfg.batch, cfg.steps, cfg.lr, cfg.warmup,
        match &cfg.data {
            ClipData::Scenes => format!("scenes, held-out (colour, shape) pairs {:?}", gen.held_out),
            ClipData::FashionMnist { train_classes, .. } => format!("Fashion-MNIST, pairs of classes {train_classes:?} only"),
        }
    );
    let fashion = match &cfg.data {
        ClipData::Scenes => None,
        ClipData::FashionMnist { dir, train_classes } => Some(FashionSet::load(dir, train_classes, cfg.data_seed)?),
    };
    let eval_set = if fashion.is_none() { gen.scenes(Split::Test, cfg.data_seed ^ 0xe7a1, cfg.eval_scenes) } else { Vec::new() };
    // Zero-shot evaluation on a fixed slice of the test split (all of it at the end).
    let fashion_eval: Vec<(Image, u8)> = fashion.as_ref().map(|f| f.test.iter().take(cfg.eval_scenes).cloned().collect()).unwrap_or_default();
    let mp = run_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&mp).map_err(|e| TrainError::file(&mp, e))?;
    let save = |step: u64, opt: &AdamW| -> Result<(), TrainError> {
        let meta = Meta { format: crate::checkpoint::FORMAT.into(), version: crate::checkpoint::VERSION, config: cfg.clone(), step, sampler_rng: [0; 4], dropout_rng: [0; 4], git_commit: git_commit.clone(), files: Default::default() };
        crate::checkpoint::save(&run_dir.join("checkpoint"), &vars, opt, &meta, Some(&tokenizer_file))
    };
    // Eager steps (the caption ids are range-checked by the embedding lookup on the host).
    let mut trainer = Trainer::new(opt, vars.clone(), StepOptions { grad_accum: 1, grad_clip: cfg.grad_clip, graph: false, ranges: Vec::new(), check_loss_first: true });
    let loss_fn = |inp: &[Tensor], _: Option<&mut Rng>| model.loss(&inp[0].to_device(device), &inp[1], &inp[2]);
    let stop_at = stop_after.map_or(cfg.steps, |n| (step + n).min(cfg.steps));
    let progress = fmlab_progress::bar(cfg.steps - step, "training steps");
    let mut saved_at = resume.as_ref().map(|(_, m)| m.step);
    let mut last_recall = None;
    let mut last_zero_shot = None;
    let mut no_dropout = Rng::new(0);
    while step < stop_at {
        crate::interrupt::checkpoint_if_requested(step, saved_at, &run_dir, || save(step, &trainer.opt))?;
        let ts = Instant::now();
        let lr = schedule.lr_at(step);
        let k = step;
        let mut next = || match &fashion {
            Some(f) => f.batch(&tok, cfg.batch, k),
            None => train_batch(&gen, &tok, cfg.data_seed, cfg.batch, k),
        };
        let out = trainer.step(lr, &mut next, &loss_fn, &mut no_dropout, &mut NoHooks)?;
        step += 1;
        let dt = ts.elapsed().as_secs_f64();
        let mut rec = serde_json::json!({"step": step, "loss": out.loss, "lr": lr, "grad_norm": out.grad_norm, "scale": model.scale().item(), "pairs_s": cfg.batch as f64 / dt, "step_s": dt});
        if (step.is_multiple_of(cfg.eval_every) || step == cfg.steps) && fashion.is_some() {
            let f = fashion.as_ref().expect("checked");
            let z = zero_shot(model, &tok, if step == cfg.steps { &f.test } else { &fashion_eval }, &f.train_classes)?;
            rec["zero_shot"] = serde_json::to_value(z)?;
            eprintln!("step {step:>5}: loss {:.4}  Fashion-MNIST test top-1: {:.3} over 10 classes, {:.3} on the trained classes, {:.3} on the held-out ones (chance {:.2}), scale {:.1}", out.loss, z.top1, z.top1_trained, z.top1_held_out, z.chance, model.scale().item());
            last_zero_shot = Some(z);
        } else if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
            let r = retrieval(model, &tok, &eval_set);
            rec["recall"] = serde_json::to_value(r)?;
            eprintln!(
                "step {step:>5}: loss {:.4}  held-out compositions ({} scenes): image→text R@1 {:.3} R@5 {:.3} R@10 {:.3}, text→image R@1 {:.3} (chance {:.3}), scale {:.1}",
                out.loss, eval_set.len(), r.i2t[0], r.i2t[1], r.i2t[2], r.t2i[0], r.chance_r1, model.scale().item()
            );
            last_recall = Some(r);
        }
        writeln!(metrics, "{rec}").map_err(|e| TrainError::file(&mp, e))?;
        progress.inc(1);
        if step.is_multiple_of(cfg.checkpoint_every) || step == cfg.steps || step == stop_at {
            save(step, &trainer.opt)?;
            saved_at = Some(step);
        }
    }
    if step == cfg.steps {
        crate::ledger::write_final(&run_dir, serde_json::json!({"step": step, "recall": last_recall, "zero_shot": last_zero_shot, "scale": model.scale().item()}))?;
    }
    Ok(ClipDone { step, recall: last_recall, zero_shot: last_zero_shot })
}

/// The run folder's tokenizer path.
pub fn tokenizer_path(run_dir: &Path) -> PathBuf {
    run_dir.join("tokenizer.fmtok")
}

/// Unit image embeddings of `images` (all of the model's input size), row-major [n × embed],
/// in batches of 256.
pub fn embed_images(clip: &Clip, images: &[Image]) -> Result<Vec<f32>, TrainError> {
    let v = &clip.cfg.vision;
    if let Some((i, im)) = images.iter().enumerate().find(|(_, im)| (im.width, im.height, im.channels) != (v.image, v.image, v.channels)) {
        return Err(TrainError::Other(format!("image {i} is {} × {} with {} channel(s); the model takes {} × {} with {}", im.width, im.height, im.channels, v.image, v.image, v.channels)));
    }
    let _ng = no_grad();
    let mut out = Vec::with_capacity(images.len() * clip.cfg.embed);
    for chunk in images.chunks(256) {
        let refs: Vec<&Image> = chunk.iter().collect();
        out.extend(clip.image_embeddings(&image_batch(&refs).to_device(clip.device())).to_vec::<f32>());
    }
    Ok(out)
}

/// The unit text embedding of one query.
pub fn embed_text(clip: &Clip, tok: &Tokenizer, text: &str) -> Vec<f32> {
    let _ng = no_grad();
    let (ids, mask) = encode_captions(tok, &[text]);
    clip.text_embeddings(&ids, &mask).to_vec::<f32>()
}

/// Prompt templates for a Fashion-MNIST class (training captions, and the zero-shot ensemble).
pub const FASHION_TEMPLATES: [&str; 4] = ["a photo of a {}", "a {}", "a picture of a {}", "an image of a {}"];

fn fashion_caption(class: u8, template: usize) -> String {
    FASHION_TEMPLATES[template % FASHION_TEMPLATES.len()].replace("{}", &fmlab_data::images::FASHION_MNIST_CLASSES[class as usize].to_lowercase())
}

/// A BPE tokenizer for the Fashion-MNIST prompts (every class's name, held-out ones included:
/// a tokenizer knows words; zero-shot is about image–text pairs never trained on).
pub fn fashion_tokenizer() -> Result<Tokenizer, TrainError> {
    let caps: Vec<String> = (0..10u8).flat_map(|c| (0..FASHION_TEMPLATES.len()).map(move |t| fashion_caption(c, t))).collect();
    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    train_from_texts(&refs, &TrainConfig { vocab_size: 400, ..TrainConfig::default() }).map_err(|e| TrainError::Other(format!("training the prompt tokenizer: {e}")))
}

/// Fashion-MNIST for CLIP: the training images of the trained classes in a seeded order, and the
/// test split.
pub struct FashionSet {
    pub train: Vec<(Image, u8)>,
    pub test: Vec<(Image, u8)>,
    pub train_classes: Vec<u8>,
}

impl FashionSet {
    pub fn load(dir: &Path, train_classes: &[u8], seed: u64) -> Result<FashionSet, TrainError> {
        let read = |split: &str| -> Result<Vec<(Image, u8)>, TrainError> {
            let (x, y) = fmlab_data::images::read_idx_pair(&dir.join(format!("{split}-images-idx3-ubyte")), &dir.join(format!("{split}-labels-idx1-ubyte"))).map_err(|e| TrainError::Other(e.to_string()))?;
            if let Some((i, l)) = y.iter().enumerate().find(|(_, &l)| l >= 10) {
                return Err(TrainError::file(&dir.join(format!("{split}-labels-idx1-ubyte")), format!("label {l} at {i} is not a Fashion-MNIST class (0..10)")));
            }
            Ok(x.into_iter().zip(y).collect())
        };
        let mut train: Vec<(Image, u8)> = read("train")?.into_iter().filter(|(_, l)| train_classes.contains(l)).collect();
        // A seeded shuffle (Fisher–Yates), so batches mix the classes.
        let mut rng = Rng::new(seed ^ 0xfa5);
        for i in (1..train.len()).rev() {
            train.swap(i, rng.below(i + 1));
        }
        Ok(FashionSet { train, test: read("t10k")?, train_classes: train_classes.to_vec() })
    }

    /// Training batch `k`: images k·B.. (cyclic), each captioned with template (k + i).
    pub fn batch(&self, tok: &Tokenizer, batch: usize, k: u64) -> Vec<Tensor> {
        let n = self.train.len();
        let picks: Vec<&(Image, u8)> = (0..batch).map(|i| &self.train[(k as usize * batch + i) % n]).collect();
        let caps: Vec<String> = picks.iter().enumerate().map(|(i, (_, l))| fashion_caption(*l, k as usize + i)).collect();
        let (ids, mask) = encode_captions(tok, &caps.iter().map(String::as_str).collect::<Vec<_>>());
        vec![image_batch(&picks.iter().map(|p| &p.0).collect::<Vec<_>>()), ids, mask]
    }
}

/// Zero-shot classification: each test image gets the class whose prompt ensemble (the mean of
/// its templates' unit text embeddings, renormalized) is closest. Top-1 over all 10 classes,
/// on the images of the classes trained on, and on the held-out (zero-shot) classes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ZeroShot {
    pub top1: f64,
    pub top1_trained: f64,
    pub top1_held_out: f64,
    pub chance: f64,
}

pub fn zero_shot(clip: &Clip, tok: &Tokenizer, test: &[(Image, u8)], train_classes: &[u8]) -> Result<ZeroShot, TrainError> {
    let _ng = no_grad();
    let e = clip.cfg.embed;
    let mut classes = Vec::with_capacity(10 * e);
    for c in 0..10u8 {
        let caps: Vec<String> = (0..FASHION_TEMPLATES.len()).map(|t| fashion_caption(c, t)).collect();
        let (ids, mask) = encode_captions(tok, &caps.iter().map(String::as_str).collect::<Vec<_>>());
        let v = clip.text_embeddings(&ids, &mask).to_vec::<f32>();
        let mut m: Vec<f32> = (0..e).map(|j| (0..caps.len()).map(|t| v[t * e + j]).sum::<f32>()).collect();
        let norm = m.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        m.iter_mut().for_each(|x| *x /= norm);
        classes.extend(m);
    }
    let images: Vec<Image> = test.iter().map(|(i, _)| i.clone()).collect();
    let emb = embed_images(clip, &images)?;
    let (mut hit, mut n) = ([0usize; 2], [0usize; 2]);
    for (k, (_, label)) in test.iter().enumerate() {
        let x = &emb[k * e..(k + 1) * e];
        let scores: Vec<f32> = classes.chunks(e).map(|c| c.iter().zip(x).map(|(p, q)| p * q).sum()).collect();
        let pred = (0..10).max_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let group = if train_classes.contains(label) { 0 } else { 1 };
        n[group] += 1;
        hit[group] += (pred == Some(*label as usize)) as usize;
    }
    let frac = |h: usize, n: usize| if n == 0 { f64::NAN } else { h as f64 / n as f64 };
    Ok(ZeroShot { top1: frac(hit[0] + hit[1], n[0] + n[1]), top1_trained: frac(hit[0], n[0]), top1_held_out: frac(hit[1], n[1]), chance: 0.1 })
}
