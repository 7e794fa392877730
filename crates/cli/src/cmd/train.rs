//! `fmlab train gpt`: GPT-2 pre-training on CPU with gradient accumulation, periodic validation,
//! checkpoints and exact resume.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::VarBuilder;
use fmlab_train::gpt::GptRun;
use fmlab_tensor::DType;

use crate::assets::load_tokenizer;
use crate::checkpoint::{self, RunConfig};
use crate::corpus;

#[derive(Subcommand)]
pub enum TrainCmd {
    /// Pre-train a GPT-2 on text files or token shards.
    Gpt(GptArgs),
}

#[derive(Args)]
pub struct GptArgs {
    /// Model preset: gpt2-mini, cpu-small, cpu-tiny, gpt2 (`fmlab model info NAME`).
    #[arg(long, default_value = "cpu-small")]
    preset: String,
    /// `gpt2`, or a tokenizer file; a preset's vocabulary is resized to the tokenizer's.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Text files, directories of them, or token shards.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Validation files (default: the last tenth of --data's files is held out).
    #[arg(long, num_args = 1..)]
    val_data: Vec<PathBuf>,
    /// Run folder (config, metrics.jsonl, checkpoint, samples).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (same config; --steps may be raised).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Sequence length (default: the preset's n_ctx).
    #[arg(long)]
    seq: Option<usize>,
    /// Tokens per optimizer step; gradient accumulation makes up the difference from batch × seq.
    #[arg(long)]
    tokens_per_step: Option<usize>,
    /// Optimizer steps (default 200; with --resume, the run's own unless given).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Floor of the cosine schedule (default lr/10).
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.95)]
    beta2: f64,
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Dropout probability (default: the preset's, 0).
    #[arg(long)]
    dropout: Option<f64>,
    /// Stop (with a checkpoint) after this many steps in this invocation; continue later with
    /// --resume. The schedule still runs to --steps.
    #[arg(long)]
    stop_after: Option<u64>,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Activations: auto (bf16 mixed precision on a GPU, fp32 on the CPU), fp32 or bf16. Master
    /// weights and optimizer state are fp32 either way. Fixed by the run on --resume.
    #[arg(long, default_value = "auto")]
    precision: String,
    /// Tokens per sample in the run folder's samples.txt, written when the run ends (0 = none).
    #[arg(long, default_value_t = 64)]
    sample_tokens: usize,
    /// auto, on or off: capture the training step (forward, backward, clip, AdamW) once as a CUDA
    /// graph and replay it. auto = on a GPU when the step can be captured (no dropout: its masks
    /// would be frozen; no gradient accumulation).
    #[arg(long, default_value = "auto")]
    cuda_graph: String,
}

pub fn run(cmd: TrainCmd) -> Result<()> {
    match cmd {
        TrainCmd::Gpt(a) => train_gpt(a),
    }
}

fn preset(a: &GptArgs) -> Result<Gpt2Config> {
    Gpt2Config::preset(&a.preset).with_context(|| format!("--preset {}: unknown preset (known: {})", a.preset, Gpt2Config::PRESETS.join(", ")))
}

fn resolve(a: &GptArgs, vocab: usize, precision: DType) -> Result<RunConfig> {
    let mut model = preset(a)?;
    model.vocab_size = vocab;
    let steps = a.steps.unwrap_or(200);
    if let Some(p) = a.dropout {
        if !(0.0..1.0).contains(&p) {
            bail!("--dropout {p}: must be in [0, 1)");
        }
        model.dropout = p;
    }
    let seq = a.seq.unwrap_or(model.n_ctx);
    if seq == 0 || seq > model.n_ctx {
        bail!("--seq {seq}: must be in 1..={} (the preset's n_ctx)", model.n_ctx);
    }
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    let micro = a.batch * seq;
    let grad_accum = match a.tokens_per_step {
        Some(t) if t % micro != 0 || t == 0 => bail!("--tokens-per-step {t} is not a multiple of --batch × --seq = {micro}"),
        Some(t) => t / micro,
        None => 1,
    };
    if a.data.is_empty() {
        bail!("--data: give text files, directories or token shards to train on");
    }
    if !(a.lr > 0.0) {
        bail!("--lr {}: must be positive", a.lr);
    }
    Ok(RunConfig {
        preset: a.preset.clone(),
        model,
        tokenizer: a.tokenizer.clone(),
        data: a.data.clone(),
        val_data: a.val_data.clone(),
        batch: a.batch,
        seq,
        grad_accum,
        steps,
        lr: a.lr,
        min_lr: a.min_lr.unwrap_or(a.lr / 10.0),
        warmup: a.warmup.min(steps),
        weight_decay: a.weight_decay,
        beta1: a.beta1,
        beta2: a.beta2,
        grad_clip: a.grad_clip,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
        precision: crate::device::precision_name(precision).into(),
    })
}

fn train_gpt(a: GptArgs) -> Result<()> {
    let device = crate::device::resolve(&a.device)?;
    // Resume: the run folder's checkpoint fixes the config; only --steps may grow.
    let (cfg, run_dir, resume_from) = match &a.resume {
        Some(dir) => {
            let (ck, meta) = checkpoint::open(&dir.join("checkpoint"), "--resume")?;
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
            preset(&a)?;
            let tok = load_tokenizer(&a.tokenizer)?;
            let cfg = resolve(&a, tok.vocab_size(), crate::device::precision(&a.precision, device)?)?;
            let dir = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", a.preset, unix_time())));
            // A run folder holds one run: appending a second would mix two ledgers.
            if ["run.json", "metrics.jsonl", "checkpoint"].iter().any(|f| dir.join(f).exists()) {
                bail!("--out {}: already holds a run; continue it with --resume {}, or choose another --out", dir.display(), dir.display());
            }
            (cfg, dir, None)
        }
    };
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating run folder {}", run_dir.display()))?;
    let tok = match &resume_from {
        Some((ck, meta)) => checkpoint::tokenizer_of(ck, meta)?,
        None => load_tokenizer(&cfg.tokenizer)?,
    };
    // A run carries its own copy of a file tokenizer, so it stays usable if the original moves.
    let tokenizer_file = match &resume_from {
        Some((ck, _)) => Some(ck.join("tokenizer.fmtok")).filter(|p| p.is_file()),
        None => (cfg.tokenizer != "gpt2").then(|| PathBuf::from(&cfg.tokenizer)),
    };
    let tok_name = crate::assets::tokenizer_id(&cfg.tokenizer);

    let t0 = Instant::now();
    let corpus = corpus::load(&cfg.data, &cfg.val_data, &tok, &tok_name)?;
    if corpus.train.len() <= cfg.seq + 1 || corpus.val.len() <= cfg.seq + 1 {
        bail!("--data: {} train / {} validation tokens is too little for --seq {}", corpus.train.len(), corpus.val.len(), cfg.seq);
    }
    let baseline = corpus::unigram_baseline(&corpus.train, &corpus.val, cfg.model.vocab_size);
    eprintln!(
        "data: {} train tokens ({} files), {} val tokens ({} files held out), tokenized in {:.1}s; unigram baseline val loss {:.4}",
        corpus.train.len(),
        corpus.train_files.len(),
        corpus.val.len(),
        corpus.val_files.len(),
        t0.elapsed().as_secs_f64(),
        baseline
    );

    // Initialized on the CPU (the same weights for a seed on every device), then moved.
    let (mut model, vb) = match &resume_from {
        Some((ck, meta)) => checkpoint::load_model(ck, meta)?,
        None => {
            let vb = VarBuilder::new(DType::F32, cfg.seed);
            (Gpt2::load(&vb, &cfg.model)?, vb)
        }
    };
    vb.to_device(device);
    model.compute_dtype = if cfg.precision == "bf16" { DType::BF16 } else { DType::F32 };
    let vars = vb.vars();
    let capturable = cfg.model.dropout == 0.0 && cfg.grad_accum == 1;
    let use_graph = match a.cuda_graph.as_str() {
        "auto" => device.is_cuda() && capturable,
        "on" if !device.is_cuda() => bail!("--cuda-graph on needs a GPU (device is {device})"),
        "on" if !capturable => bail!("--cuda-graph on: the step cannot be captured with dropout {} or gradient accumulation over {} micro-batches", cfg.model.dropout, cfg.grad_accum),
        "on" => true,
        "off" => false,
        o => bail!("--cuda-graph {o}: expected auto, on or off"),
    };
    if use_graph {
        eprintln!("training step: one CUDA graph (captured after the first step; --cuda-graph off launches eagerly)");
    }
    let run = GptRun { cfg: cfg.clone(), run_dir: run_dir.clone(), device, vars, train: corpus.train, val: corpus.val, baseline, tokenizer_file, git_commit: checkpoint::git_commit(), gpu: crate::device::gpu_name(device), resume: resume_from, stop_after: a.stop_after, use_graph };
    // Ctrl-C / SIGTERM: finish the step, checkpoint, exit 130 (fmlab_train::interrupt).
    fmlab_train::interrupt::install()?;
    let done = fmlab_train::gpt::run(&model, run, &|| crate::device::mem_json(device))?;
    let (step, last_val) = (done.step, done.last_val);
    if step == cfg.steps && a.sample_tokens > 0 {
        write_samples(&model, &tok, &run_dir, a.sample_tokens, cfg.seed)?;
    }
    eprintln!("done: {} steps, val loss {last_val:.4} (unigram baseline {baseline:.4}), checkpoint in {}", step, run_dir.join("checkpoint").display());
    Ok(())
}

/// samples.txt: three seeded samples (temperature 0.8, top-k 50, top-p 0.95) — one unconditional,
/// two from fixed prompts — so every run folder shows what its model writes.
fn write_samples(model: &Gpt2, tok: &fmlab_tokenizer::Tokenizer, run_dir: &std::path::Path, n: usize, seed: u64) -> Result<()> {
    let mut sampler = fmlab_engine::Sampler::new(fmlab_engine::SamplingParams { temperature: 0.8, top_k: 50, top_p: 0.95, seed, ..Default::default() });
    let mut buf: Vec<u8> = Vec::new();
    for prompt in ["", "The ", "We the people"] {
        writeln!(buf, "--- prompt {prompt:?}, {n} tokens, temperature 0.8, top-k 50, top-p 0.95, seed {seed} ---")?;
        crate::sampling::generate(model, tok, prompt, n, &mut sampler, &mut buf)?;
    }
    fmlab_train::ledger::write_file(&run_dir.join("samples.txt"), String::from_utf8_lossy(&buf).into_owned())?;
    Ok(())
}

fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
