//! `fmlab train gpt`: GPT-2 pre-training on CPU with gradient accumulation, periodic validation,
//! checkpoints and exact resume.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::VarBuilder;
use fmlab_train::gpt::GptRun;
use fmlab_tensor::DType;

use crate::assets::load_tokenizer;
use crate::checkpoint::{self, RunConfig};
use crate::corpus;

/// Flags of a run's config are options, so that `--resume` can tell which were given (and refuse
/// any that differ from the run's); their defaults are applied in `resolve`.
#[derive(Args)]
pub struct GptArgs {
    /// Model preset: gpt2-mini, cpu-small, cpu-tiny, gpt2 (`fmlab model info NAME`) [default: cpu-small].
    #[arg(long)]
    preset: Option<String>,
    /// `gpt2`, or a tokenizer file; a preset's vocabulary is resized to the tokenizer's [default: gpt2].
    #[arg(long)]
    tokenizer: Option<String>,
    /// Text files, directories of them, or token shards.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Validation files (default: the last tenth of --data's files is held out).
    #[arg(long, num_args = 1..)]
    val_data: Vec<PathBuf>,
    /// Run folder (config, metrics.jsonl, checkpoint, samples) [default: runs/PRESET-UNIXTIME].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (its config; --steps may be raised).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Sequences per micro-batch [default: 8].
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence [default: the preset's n_ctx].
    #[arg(long)]
    seq: Option<usize>,
    /// Tokens per optimizer step; gradient accumulation makes up the difference from batch × seq
    /// [default: batch × seq].
    #[arg(long)]
    tokens_per_step: Option<usize>,
    /// Optimizer steps [default: 200; with --resume, the run's own].
    #[arg(long)]
    steps: Option<u64>,
    /// Peak learning rate, > 0 [default: 1e-3].
    #[arg(long, allow_hyphen_values = true)]
    lr: Option<f64>,
    /// Floor of the cosine schedule, in [0, lr] [default: lr/10].
    #[arg(long, allow_hyphen_values = true)]
    min_lr: Option<f64>,
    /// Steps of linear warm-up [default: 20].
    #[arg(long)]
    warmup: Option<u64>,
    /// AdamW's decoupled weight decay, ≥ 0 [default: 0.1].
    #[arg(long, allow_hyphen_values = true)]
    weight_decay: Option<f64>,
    /// AdamW's β1, in [0, 1) [default: 0.9].
    #[arg(long, allow_hyphen_values = true)]
    beta1: Option<f64>,
    /// AdamW's β2, in [0, 1) [default: 0.95].
    #[arg(long, allow_hyphen_values = true)]
    beta2: Option<f64>,
    /// Clip the global gradient norm to this, > 0; 0 = no clipping [default: 1.0].
    #[arg(long, allow_hyphen_values = true)]
    grad_clip: Option<f64>,
    /// Steps between validations, ≥ 1 [default: 50].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Batches per validation, ≥ 1 [default: 8].
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Steps between checkpoints, ≥ 1 (one is also written at the end) [default: 100].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Seed of the initial weights, the batches and dropout [default: 1337].
    #[arg(long)]
    seed: Option<u64>,
    /// Dropout probability, in [0, 1) [default: the preset's, 0].
    #[arg(long, allow_hyphen_values = true)]
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
    #[arg(long)]
    precision: Option<String>,
    /// Tokens per sample in the run folder's samples.txt, written when the run ends (0 = none).
    #[arg(long, default_value_t = 64)]
    sample_tokens: usize,
    /// auto, on or off: capture the training step (forward, backward, clip, AdamW) once as a CUDA
    /// graph and replay it. auto = on a GPU when the step can be captured (no dropout: its masks
    /// would be frozen; no gradient accumulation).
    #[arg(long, default_value = "auto")]
    cuda_graph: String,
}

fn preset_name(a: &GptArgs) -> &str {
    a.preset.as_deref().unwrap_or("cpu-small")
}

fn preset(a: &GptArgs) -> Result<Gpt2Config> {
    let name = preset_name(a);
    Gpt2Config::preset(name).with_context(|| format!("--preset {name}: unknown preset (known: {})", Gpt2Config::PRESETS.join(", ")))
}

fn tokenizer_spec(a: &GptArgs) -> &str {
    a.tokenizer.as_deref().unwrap_or("gpt2")
}

/// The run config the flags describe, every value range-checked (the message gives the range).
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
    let batch = a.batch.unwrap_or(8);
    if batch == 0 {
        bail!("--batch must be positive");
    }
    let micro = batch * seq;
    let grad_accum = match a.tokens_per_step {
        Some(t) if t % micro != 0 || t == 0 => bail!("--tokens-per-step {t} is not a multiple of --batch × --seq = {micro}"),
        Some(t) => t / micro,
        None => 1,
    };
    if a.data.is_empty() {
        bail!("--data: give text files, directories or token shards to train on");
    }
    let lr = a.lr.unwrap_or(1e-3);
    if !(lr > 0.0 && lr.is_finite()) {
        bail!("--lr {lr}: must be a positive number");
    }
    let min_lr = a.min_lr.unwrap_or(lr / 10.0);
    if !(0.0..=lr).contains(&min_lr) {
        bail!("--min-lr {min_lr}: must be in [0, --lr = {lr}]");
    }
    let weight_decay = a.weight_decay.unwrap_or(0.1);
    if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
        bail!("--weight-decay {weight_decay}: must be ≥ 0");
    }
    let (beta1, beta2) = (a.beta1.unwrap_or(0.9), a.beta2.unwrap_or(0.95));
    for (flag, b) in [("--beta1", beta1), ("--beta2", beta2)] {
        if !(0.0..1.0).contains(&b) {
            bail!("{flag} {b}: must be in [0, 1)");
        }
    }
    let grad_clip = a.grad_clip.unwrap_or(1.0);
    if !(grad_clip >= 0.0 && grad_clip.is_finite()) {
        bail!("--grad-clip {grad_clip}: must be > 0, or 0 for no clipping");
    }
    let (eval_every, eval_batches, checkpoint_every) = (a.eval_every.unwrap_or(50), a.eval_batches.unwrap_or(8), a.checkpoint_every.unwrap_or(100));
    for (flag, v) in [("--eval-every", eval_every), ("--eval-batches", eval_batches as u64), ("--checkpoint-every", checkpoint_every)] {
        if v == 0 {
            bail!("{flag} 0: must be at least 1");
        }
    }
    let warmup = a.warmup.unwrap_or(20);
    Ok(RunConfig {
        preset: preset_name(a).to_string(),
        model,
        tokenizer: tokenizer_spec(a).to_string(),
        data: a.data.clone(),
        val_data: a.val_data.clone(),
        batch,
        seq,
        grad_accum,
        steps,
        lr,
        min_lr,
        warmup: warmup.min(steps),
        weight_decay,
        beta1,
        beta2,
        grad_clip,
        eval_every,
        eval_batches,
        checkpoint_every,
        seed: a.seed.unwrap_or(1337),
        precision: crate::device::precision_name(precision).into(),
    })
}

/// The config flags given with `--resume` whose values differ from the run's own, as
/// "--flag given (the run has value)".
fn resume_conflicts(a: &GptArgs, cfg: &RunConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |flag: &str, given: Option<String>, has: String| {
        if let Some(g) = given.filter(|g| *g != has) {
            out.push(format!("{flag} {g} (the run has {has})"));
        }
    };
    cmp("--preset", a.preset.clone(), cfg.preset.clone());
    cmp("--tokenizer", a.tokenizer.clone(), cfg.tokenizer.clone());
    let paths = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ");
    cmp("--data", (!a.data.is_empty()).then(|| paths(&a.data)), paths(&cfg.data));
    cmp("--val-data", (!a.val_data.is_empty()).then(|| paths(&a.val_data)), paths(&cfg.val_data));
    cmp("--batch", a.batch.map(|v| v.to_string()), cfg.batch.to_string());
    cmp("--seq", a.seq.map(|v| v.to_string()), cfg.seq.to_string());
    cmp("--tokens-per-step", a.tokens_per_step.map(|v| v.to_string()), (cfg.batch * cfg.seq * cfg.grad_accum).to_string());
    cmp("--lr", a.lr.map(|v| v.to_string()), cfg.lr.to_string());
    cmp("--min-lr", a.min_lr.map(|v| v.to_string()), cfg.min_lr.to_string());
    cmp("--warmup", a.warmup.map(|v| v.to_string()), cfg.warmup.to_string());
    cmp("--weight-decay", a.weight_decay.map(|v| v.to_string()), cfg.weight_decay.to_string());
    cmp("--beta1", a.beta1.map(|v| v.to_string()), cfg.beta1.to_string());
    cmp("--beta2", a.beta2.map(|v| v.to_string()), cfg.beta2.to_string());
    cmp("--grad-clip", a.grad_clip.map(|v| v.to_string()), cfg.grad_clip.to_string());
    cmp("--eval-every", a.eval_every.map(|v| v.to_string()), cfg.eval_every.to_string());
    cmp("--eval-batches", a.eval_batches.map(|v| v.to_string()), cfg.eval_batches.to_string());
    cmp("--checkpoint-every", a.checkpoint_every.map(|v| v.to_string()), cfg.checkpoint_every.to_string());
    cmp("--seed", a.seed.map(|v| v.to_string()), cfg.seed.to_string());
    cmp("--dropout", a.dropout.map(|v| v.to_string()), cfg.model.dropout.to_string());
    cmp("--precision", a.precision.clone().filter(|p| p != "auto").map(|p| if p == "f32" { "fp32".into() } else { p }), cfg.precision.clone());
    out
}

pub fn run(a: GptArgs) -> Result<()> {
    let device = crate::device::resolve(&a.device)?;
    // Resume: the run folder's checkpoint fixes the config; only --steps may grow.
    let (cfg, run_dir, resume_from) = match &a.resume {
        Some(dir) => {
            let (ck, meta) = checkpoint::open(&dir.join("checkpoint"), "--resume")?;
            let mut cfg = meta.config.clone();
            let conflicts = resume_conflicts(&a, &cfg);
            if !conflicts.is_empty() {
                bail!(
                    "--resume {}: a resumed run keeps its config, and these flags differ from it: {}. Only --steps may change (and --device, --stop-after, --sample-tokens, --cuda-graph, which apply to this invocation); start a new run with --out to change the others",
                    dir.display(),
                    conflicts.join(", ")
                );
            }
            if let Some(s) = a.steps {
                if s < meta.step {
                    bail!("--steps {s}: the run is already at step {}", meta.step);
                }
                cfg.steps = s;
            }
            if cfg.steps == meta.step {
                eprintln!("--resume {}: the run is already at step {} of {}; nothing to train (raise --steps to continue)", dir.display(), meta.step, cfg.steps);
                return Ok(());
            }
            (cfg, dir.clone(), Some((ck, meta)))
        }
        None => {
            preset(&a)?;
            if a.steps == Some(0) {
                eprintln!("--steps 0: nothing to train");
                return Ok(());
            }
            let tok = load_tokenizer(tokenizer_spec(&a))?;
            let cfg = resolve(&a, tok.vocab_size(), crate::device::precision(a.precision.as_deref().unwrap_or("auto"), device)?)?;
            let dir = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", cfg.preset, unix_time())));
            // A run folder holds one run: appending a second would mix two ledgers. A start that
            // failed before its first checkpoint left nothing to resume: its folder is reused.
            let has_checkpoint = ["checkpoint", "checkpoint.old"].iter().any(|f| dir.join(f).join("meta.json").is_file());
            if has_checkpoint {
                bail!("--out {}: already holds a run; continue it with --resume {}, or choose another --out", dir.display(), dir.display());
            }
            let leftovers: Vec<&str> = ["run.json", "metrics.jsonl", "config.json", "final.json", "checkpoint", "checkpoint.tmp", "checkpoint.old"].into_iter().filter(|f| dir.join(f).exists()).collect();
            if !leftovers.is_empty() {
                eprintln!("note: --out {} holds a run that never wrote a checkpoint ({}); starting over in it", dir.display(), leftovers.join(", "));
                for f in leftovers {
                    let p = dir.join(f);
                    let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    r.with_context(|| format!("removing {}", p.display()))?;
                }
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
