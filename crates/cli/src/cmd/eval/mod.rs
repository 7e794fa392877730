//! `fmlab eval`: loss, perplexity and bits-per-byte of a GPT checkpoint on held-out text; `fmlab
//! eval clip` (clip.rs) for a CLIP run.

mod clip;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::assets::expand_inputs;
use crate::checkpoint;
use crate::corpus;

/// `fmlab eval --checkpoint RUN --data …` scores a GPT; `fmlab eval clip --checkpoint RUN` a CLIP.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    which: Option<EvalCmd>,
    /// A run folder or a checkpoint folder.
    #[arg(long, required = true)]
    checkpoint: Option<PathBuf>,
    /// Text files / directories (or token shards: then bits-per-byte is not reported).
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Window length (default: the model's n_ctx).
    #[arg(long)]
    seq: Option<usize>,
    /// Sliding window: advance by this many tokens; each window scores only the tokens the
    /// previous one did not, so every token is predicted once with up to seq - stride tokens of
    /// context. Default: seq (non-overlapping windows).
    #[arg(long)]
    stride: Option<usize>,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Activations: auto (bf16 mixed precision on a GPU, fp32 on the CPU), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    precision: String,
}

/// `EvalArgs` checked against the checkpoint's metadata, before any weights are read.
struct Eval {
    dir: PathBuf,
    meta: checkpoint::Meta,
    device: fmlab_tensor::Device,
    precision: fmlab_tensor::DType,
    files: Vec<PathBuf>,
    seq: usize,
    stride: usize,
}

impl EvalArgs {
    fn validate(self) -> Result<Eval> {
        let (dir, meta) = checkpoint::open_arg(self.checkpoint.as_deref().expect("clap requires --checkpoint"))?;
        let n_ctx = meta.config.model.n_ctx;
        let seq = self.seq.unwrap_or(n_ctx);
        if seq == 0 || seq > n_ctx {
            bail!("--seq {seq}: must be in 1..={n_ctx}");
        }
        let stride = self.stride.unwrap_or(seq);
        if stride == 0 || stride > seq {
            bail!("--stride {stride}: must be in 1..=seq ({seq})");
        }
        let files = expand_inputs(&self.data)?;
        let device = crate::device::resolve(&self.device)?;
        let precision = crate::device::precision(&self.precision, device)?;
        Ok(Eval { dir, meta, device, precision, files, seq, stride })
    }
}

#[derive(clap::Subcommand)]
pub enum EvalCmd {
    /// A CLIP run: image↔text retrieval on scenes of the held-out compositions.
    Clip(clip::EvalClipArgs),
}

pub fn run(a: EvalArgs) -> Result<()> {
    if let Some(EvalCmd::Clip(c)) = a.which {
        return clip::run(c);
    }
    let Eval { dir, meta, device, precision, files, seq, stride } = a.validate()?;
    let tok = checkpoint::tokenizer_of(&dir, &meta)?;
    let tok_name = crate::assets::tokenizer_id(&meta.config.tokenizer);
    let (tokens, _) = corpus::tokens_of(&files, &tok, &tok_name)?;
    if tokens.len() < 2 {
        bail!("--data: fewer than 2 tokens to evaluate");
    }
    let model = checkpoint::load_model_on(&dir, &meta, device, precision)?;
    let scored = fmlab_train::eval::sliding(&tokens, seq, stride, &|x, y| model.loss(x, y, None));
    let (nats, n, predicted) = (scored.nats, scored.tokens, scored.predicted);
    // Bytes of the text the predicted tokens spell (specials such as <|endoftext|> count as
    // their literal text; they are a handful).
    let bytes = tok.decode_bytes(&predicted)?.len();
    let loss = nats / n as f64;
    if !loss.is_finite() {
        bail!("--checkpoint {}: the loss is {loss} (non-finite) over {n} tokens; the weights are broken (a diverged run?), so nothing is recorded in evals.jsonl", dir.display());
    }
    println!("tokens evaluated  {n} (windows of {seq}, stride {stride}; {device}, {})", crate::device::precision_name(precision));
    println!("loss (nats/token) {loss:.4}");
    println!("perplexity        {:.3}", loss.exp());
    println!("bits per byte     {:.4}", nats / std::f64::consts::LN_2 / bytes as f64);
    println!("bytes             {bytes}");
    // Ledger: an evaluation of a run's checkpoint is recorded in that run's folder.
    if let Some(run) = dir.parent().filter(|r| r.join("run.json").is_file()) {
        use std::io::Write;
        let rec = serde_json::json!({
            "data": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(), "seq": seq, "stride": stride,
            "tokens": n, "loss": loss, "perplexity": loss.exp(), "bits_per_byte": nats / std::f64::consts::LN_2 / bytes as f64,
            "checkpoint_step": meta.step, "git_commit": crate::checkpoint::git_commit(),
            "device": device.to_string(), "precision": crate::device::precision_name(precision),
        });
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(run.join("evals.jsonl"))?;
        writeln!(f, "{rec}")?;
    }
    Ok(())
}
