//! `fmlab generate` and `fmlab chat`: text generation with a Llama-family model (SmolLM2 from its
//! GGUF), KV cache, temperature / top-k / top-p / repetition penalty, seeded, streamed.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use fmlab_models::chat::{ChatTemplate, Message};
use fmlab_models::llama::{tokenizer_from_gguf, Llama};
use fmlab_nn::gguf::Gguf;

use fmlab_tokenizer::{AllowedSpecial, Tokenizer};

use crate::sampling::stream;
use fmlab_engine::{Sampler, SamplingParams};

#[derive(Args, Clone)]
pub struct GenArgs {
    /// `smollm2` (the asset cache's SmolLM2-135M-Instruct GGUF), a llama GGUF file, or an HF folder
    /// (config.json, model.safetensors, tokenizer.json[, tokenizer_config.json with chat_template]).
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    /// Drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f64,
    /// > 1 discourages tokens already in the context (HF's rule: logit / p if positive, × p if not).
    #[arg(long, default_value_t = 1.1)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep going past end-of-sequence tokens (fixed-length runs for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// auto (a GPU if one starts, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Activations: auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    precision: String,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    gen: GenArgs,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    gen: GenArgs,
    /// A system message (default: the template's own).
    #[arg(long)]
    system: Option<String>,
}

pub struct Lm {
    pub model: Llama,
    pub tok: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub stops: Vec<u32>,
}

impl Lm {
    /// Loads `spec` (see `--model`) onto the device and precision of `gen`'s flags.
    pub fn load_for(gen: &GenArgs) -> Result<Lm> {
        let device = crate::device::resolve(&gen.device)?;
        let precision = crate::device::precision(&gen.precision, device)?;
        let mut lm = Lm::load(&gen.model)?;
        lm.model.to_device(device, precision);
        Ok(lm)
    }

    pub fn load(spec: &str) -> Result<Lm> {
        let path = if spec == "smollm2" {
            let p = crate::assets::cache_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            if !p.is_file() {
                bail!("--model smollm2: the GGUF is not in the asset cache ({}); run `scripts/fetch-assets.sh smollm2`", p.display());
            }
            p
        } else {
            PathBuf::from(spec)
        };
        if path.is_dir() {
            let model = Llama::from_hf_dir(&path)?;
            let tok = Tokenizer::from_hf_json(&path.join("tokenizer.json"))?;
            let template = std::fs::read_to_string(path.join("tokenizer_config.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["chat_template"].as_str().map(str::to_string))
                .map(|t| ChatTemplate::parse(&t).map_err(anyhow::Error::msg))
                .transpose()?;
            let stops = ["<|endoftext|>", "<|im_end|>", "</s>"].iter().filter_map(|s| tok.special_id(s)).collect();
            return Ok(Lm { model, tok, template, stops });
        }
        if !path.is_file() {
            bail!("--model {spec}: no such file or folder (expected `smollm2`, a .gguf file or an HF folder)");
        }
        let g = Gguf::open(&path)?;
        let tok = tokenizer_from_gguf(&g).with_context(|| format!("{}", path.display()))?;
        let model = Llama::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
        let template = match g.metadata.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(t) => Some(ChatTemplate::parse(t).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let mut stops: Vec<u32> = g.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()).map(|x| x as u32).into_iter().collect();
        stops.extend(["<|endoftext|>", "<|im_end|>"].iter().filter_map(|s| tok.special_id(s)));
        Ok(Lm { model, tok, template, stops })
    }

    /// Generates after `prompt`, streaming text to `out`; returns (tokens generated, seconds).
    pub fn generate(&self, prompt: &str, a: &GenArgs, out: &mut dyn Write) -> Result<(usize, f64)> {
        let ids = self.tok.encode(prompt, &AllowedSpecial::All);
        let ctx = self.model.cfg.max_position_embeddings;
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        if ids.len() + 1 > ctx {
            bail!("the prompt is {} tokens; the model's context is {ctx}", ids.len());
        }
        let mut sampler = Sampler::new(a.sampling());
        let stops: &[u32] = if a.ignore_eos { &[] } else { &self.stops };
        // The context's end stops it (no sliding window for a chat model).
        let g = stream(&self.model, &self.tok, &ids, a.max_tokens, &mut sampler, stops, false, out)?;
        // Steps: the forward passes that drew a token, a drawn stop token among them.
        Ok((g.steps, g.seconds))
    }
}

impl GenArgs {
    fn sampling(&self) -> SamplingParams {
        SamplingParams { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, min_p: self.min_p, repetition_penalty: self.repetition_penalty, seed: self.seed }
    }
}

fn check(a: &GenArgs) -> Result<()> {
    a.sampling().check().map_err(anyhow::Error::msg)
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    check(&a.gen)?;
    let lm = Lm::load_for(&a.gen)?;
    let prompt = if a.chat {
        let t = lm.template.as_ref().context("--chat: the model has no chat template")?;
        t.render(&[Message { role: "user".into(), content: a.prompt.clone() }], true)
    } else {
        a.prompt.clone()
    };
    let mut out = std::io::stdout().lock();
    let (n, secs) = lm.generate(&prompt, &a.gen, &mut out)?;
    writeln!(out)?;
    let precision = crate::device::precision_name(lm.model.compute_dtype);
    let on = match lm.model.device() {
        fmlab_tensor::Device::Cpu => format!("cpu, {precision}, {} threads", rayon::current_num_threads()),
        d => format!("{d}, {precision}"),
    };
    eprintln!("{n} tokens in {secs:.2}s ({:.1} tokens/s, prompt + KV cache, {on})", n as f64 / secs);
    Ok(())
}

pub fn run_chat(a: ChatArgs) -> Result<()> {
    check(&a.gen)?;
    let lm = Lm::load_for(&a.gen)?;
    let t = lm.template.clone().context("the model has no chat template")?;
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message { role: "system".into(), content: s.clone() }).collect();
    eprintln!("chatting with {} (empty line or Ctrl-D to quit)", a.gen.model);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        messages.push(Message { role: "user".into(), content: line.trim_end().to_string() });
        let mut reply = Vec::new();
        {
            let mut tee = Tee { a: std::io::stdout().lock(), b: &mut reply };
            lm.generate(&t.render(&messages, true), &a.gen, &mut tee)?;
        }
        println!();
        messages.push(Message { role: "assistant".into(), content: String::from_utf8_lossy(&reply).into_owned() });
    }
    Ok(())
}

/// Writes to the terminal and keeps a copy (the reply joins the conversation).
struct Tee<'a, W: Write> {
    a: W,
    b: &'a mut Vec<u8>,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.b.extend_from_slice(buf);
        self.a.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.a.flush()
    }
}
