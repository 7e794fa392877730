//! GPT-2 pre-training (`fmlab train gpt`): the run's resolved config, and the loop around the
//! `Trainer` step — the warmup-cosine schedule, validation every `eval_every` steps on fixed
//! batches, checkpoints every `checkpoint_every` (and at the end, or at `stop_after`), one
//! metrics.jsonl line a step, exact resume from a checkpoint (optimizer, data sampler and
//! dropout RNG states), final.json.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fmlab_data::WindowSampler;
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::optim::default_decay;
use fmlab_nn::{AdamW, AdamWConfig, IdRange, Schedule};
use fmlab_tensor::{Device, Rng, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Meta, NoHooks, StepOptions, Trainer, TrainError};

/// Everything a run was started with, after defaults and presets are applied (logged as
/// `config.json` in the run folder and in each checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub preset: String,
    pub model: Gpt2Config,
    pub tokenizer: String,
    pub data: Vec<PathBuf>,
    pub val_data: Vec<PathBuf>,
    pub batch: usize,
    pub seq: usize,
    pub grad_accum: usize,
    pub steps: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub grad_clip: f64,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Activation dtype of the run: "fp32", or "bf16" (mixed precision). Older runs: fp32.
    #[serde(default = "fp32")]
    pub precision: String,
}

fn fp32() -> String {
    "fp32".into()
}

/// A `train gpt` checkpoint's meta.json.
pub type GptMeta = Meta<RunConfig>;

/// What a run needs besides the model: its config and folder, the data, and provenance.
pub struct GptRun {
    pub cfg: RunConfig,
    pub run_dir: PathBuf,
    pub device: Device,
    /// The model's parameters under their checkpoint names.
    pub vars: Vec<(String, Tensor)>,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// The unigram model's validation loss, for the log lines.
    pub baseline: f64,
    /// A tokenizer file the run carries a copy of in each checkpoint.
    pub tokenizer_file: Option<PathBuf>,
    pub git_commit: Option<String>,
    pub gpu: Option<String>,
    /// The checkpoint to continue from (its folder and meta.json).
    pub resume: Option<(PathBuf, GptMeta)>,
    /// Stop (with a checkpoint) after this many steps of this invocation.
    pub stop_after: Option<u64>,
    /// The step as one CUDA graph (`StepOptions::graph`).
    pub use_graph: bool,
}

/// Where a run ended.
pub struct GptDone {
    pub step: u64,
    /// The last validation loss (NaN if none was taken).
    pub last_val: f64,
}

/// Trains `model` as `run` says (see the module docs). `memory`: the device's memory figures
/// for each metrics line on a GPU.
pub fn run(model: &Gpt2, run: GptRun, memory: &dyn Fn() -> serde_json::Value) -> Result<GptDone, TrainError> {
    let GptRun { cfg, run_dir, device, vars, train, val, baseline, tokenizer_file, git_commit, gpu, resume, stop_after, use_graph } = run;
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: 1e-8, weight_decay: cfg.weight_decay },
        default_decay,
    );
    let schedule = Schedule::WarmupCosine { lr: cfg.lr, min_lr: cfg.min_lr, warmup: cfg.warmup, total: cfg.steps };
    let mut sampler = WindowSampler::new(cfg.seed ^ 0x5eed);
    let mut drop_rng = Rng::new(cfg.seed ^ 0xd20b);
    let mut step = 0u64;
    if let Some((ck, meta)) = &resume {
        crate::checkpoint::load_optimizer(ck, &mut opt)?;
        sampler.rng = Rng::from_state(meta.sampler_rng);
        drop_rng = Rng::from_state(meta.dropout_rng);
        step = meta.step;
        // Steps logged after the checkpoint (before a kill) are redone now: drop their lines.
        crate::ledger::drop_metrics_after(&run_dir, step)?;
        eprintln!("resuming {} at step {step} of {}", run_dir.display(), cfg.steps);
    }
    crate::ledger::record_start(&run_dir, "train gpt", &cfg, cfg.seed, device, git_commit.clone(), gpu, resume.is_some())?;
    eprintln!(
        "model: gpt2 {} ({} params) on {device} in {}, batch {} × seq {} × accum {} = {} tokens/step, {} steps, lr {} → {} (warmup {}), wd {}",
        cfg.preset,
        cfg.model.num_params(),
        cfg.precision,
        cfg.batch,
        cfg.seq,
        cfg.grad_accum,
        cfg.batch * cfg.seq * cfg.grad_accum,
        cfg.steps,
        cfg.lr,
        cfg.min_lr,
        cfg.warmup,
        cfg.weight_decay
    );

    let mp = run_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&mp).map_err(|e| TrainError::file(&mp, e))?;
    let pb = indicatif::ProgressBar::new(cfg.steps);
    pb.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").unwrap());
    pb.set_position(step);
    let tokens_per_step = cfg.batch * cfg.seq * cfg.grad_accum;
    let save = |step: u64, opt: &AdamW, sampler: &WindowSampler, drop_rng: &Rng| -> Result<(), TrainError> {
        let meta = Meta {
            format: crate::checkpoint::FORMAT.into(),
            version: crate::checkpoint::VERSION,
            config: cfg.clone(),
            step,
            sampler_rng: sampler.rng.state(),
            dropout_rng: drop_rng.state(),
            git_commit: git_commit.clone(),
            files: Default::default(),
        };
        crate::checkpoint::save(&run_dir.join("checkpoint"), &vars, opt, &meta, tokenizer_file.as_deref())
    };
    let mut last_val = f64::NAN;
    let stop_at = stop_after.map_or(cfg.steps, |n| (step + n).min(cfg.steps));
    let ranges = vec![IdRange { name: "input ids", bound: cfg.model.vocab_size, ignore: None }, IdRange { name: "targets", bound: cfg.model.vocab_size, ignore: Some(-100) }];
    let mut trainer = Trainer::new(opt, vars.clone(), StepOptions { grad_accum: cfg.grad_accum, grad_clip: cfg.grad_clip, graph: use_graph, ranges, check_loss_first: true });
    let loss_fn = |inp: &[Tensor], rng: Option<&mut Rng>| model.loss(&inp[0], &inp[1], rng);
    let mut saved_at = resume.as_ref().map(|(_, m)| m.step);
    while step < stop_at {
        crate::interrupt::checkpoint_if_requested(step, saved_at, &run_dir, || save(step, &trainer.opt, &sampler, &drop_rng)).inspect_err(|_| pb.finish_and_clear())?;
        let ts = Instant::now();
        let lr = schedule.lr_at(step);
        let mut next = || {
            let (x, y) = sampler.batch(&train, cfg.batch, cfg.seq);
            vec![x, y]
        };
        let out = trainer.step(lr, &mut next, &loss_fn, &mut drop_rng, &mut NoHooks).map_err(|e| diverged(e, step, &run_dir))?;
        let (loss, norm) = (out.loss, out.grad_norm);
        step += 1;
        let dt = ts.elapsed().as_secs_f64();
        let tok_s = tokens_per_step as f64 / dt;
        let mut rec = serde_json::json!({"step": step, "loss": loss, "lr": lr, "grad_norm": norm, "tok_s": tok_s, "step_s": dt, "mfu": crate::mfu::mfu(cfg.model.flops_per_token(cfg.seq), tok_s, device)});
        if device.is_cuda() {
            rec["memory"] = memory();
        }
        if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
            last_val = crate::eval::mean_loss(&val, cfg.batch, cfg.seq, cfg.eval_batches, &|x, y| model.loss(x, y, None));
            rec["val_loss"] = serde_json::json!(last_val);
            let line = format!("step {step:>5}: train loss {loss:.4}  val loss {last_val:.4}  (unigram baseline {baseline:.4})  lr {lr:.2e}  {tok_s:.0} tok/s");
            // Not a terminal (CI, logs): indicatif draws nothing, so print plainly.
            if pb.is_hidden() { eprintln!("{line}") } else { pb.println(line) }
        }
        writeln!(metrics, "{rec}").map_err(|e| TrainError::file(&mp, e))?;
        let val = if last_val.is_nan() { "—".to_string() } else { format!("{last_val:.4}") };
        pb.set_message(format!("loss {loss:.4} | val {val} | {tok_s:.0} tok/s | lr {lr:.1e}"));
        pb.set_position(step);
        if step.is_multiple_of(cfg.checkpoint_every) || step == cfg.steps || step == stop_at {
            save(step, &trainer.opt, &sampler, &drop_rng)?;
            saved_at = Some(step);
        }
    }
    pb.finish_and_clear();
    // Global L2 norm of the weight-decayed matrices: what weight decay acts on (see docs/concepts.md).
    let wnorm = vars.iter().filter(|(n, v)| default_decay(n, v)).map(|(_, v)| v.to_vec::<f32>().iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>()).sum::<f64>().sqrt();
    crate::ledger::write_final(&run_dir, serde_json::json!({"step": step, "val_loss": last_val, "unigram_baseline": baseline, "weight_norm": wnorm}))?;
    Ok(GptDone { step, last_val })
}

/// The error that stops training at a non-finite loss or gradient norm: the step, the first
/// non-finite tensor, and whether a checkpoint is there to resume from.
fn diverged(e: TrainError, step: u64, run_dir: &Path) -> TrainError {
    let ck = run_dir.join("checkpoint");
    let saved = if ck.is_dir() { format!("the last checkpoint ({}) is intact", ck.display()) } else { "no checkpoint was written yet".into() };
    match e {
        TrainError::NonFiniteLoss { loss, first } => TrainError::Other(format!("non-finite loss ({loss}) at step {step}; first non-finite tensor: {first}; {saved}")),
        TrainError::NonFiniteNorm { first } => TrainError::Other(format!("non-finite gradient norm at step {step}; first non-finite tensor: {first}")),
        e => e,
    }
}
