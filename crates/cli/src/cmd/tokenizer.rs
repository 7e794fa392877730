//! `fmlab tokenizer train|encode|decode|stats`.

use std::io::{BufRead, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fmlab_tokenizer::{AllowedSpecial, Pattern, TrainConfig};
use rayon::prelude::*;

use crate::assets::{expand_inputs, load_tokenizer};

#[derive(Subcommand)]
pub enum TokenizerCmd {
    /// Train a byte-level BPE vocabulary on text files (streamed; directories are walked).
    Train(TrainArgs),
    /// Encode text to ids: one output line of space-separated ids per input line.
    Encode(EncodeArgs),
    /// Decode ids (space-separated, one sequence per line) back to text.
    Decode(DecodeArgs),
    /// Bytes per token and encode speed on a corpus.
    Stats(StatsArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// Text files or folders of them.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Vocabulary size: 256 bytes + specials + merges, below 2^31.
    #[arg(long)]
    vocab_size: usize,
    /// Output: `.json` writes a HF tokenizer.json, anything else our `.fmtok` format.
    #[arg(long)]
    out: PathBuf,
    /// Special tokens (repeatable); default `<|endoftext|>`.
    #[arg(long = "special")]
    specials: Vec<String>,
    /// Stop merging when no pair occurs this often.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Pre-tokenizer: gpt2 or cl100k (GPT-4's).
    #[arg(long, default_value = "gpt2")]
    pattern: String,
}

#[derive(Args)]
pub struct EncodeArgs {
    /// `gpt2`, or a tokenizer file (.fmtok, tokenizer.json, encoder.json).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Input file; stdin if absent.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Special tokens in the text: all (recognized), none (encoded as text), error (refuse).
    #[arg(long, default_value = "all")]
    special: String,
}

#[derive(Args)]
pub struct DecodeArgs {
    /// `gpt2`, or a tokenizer file (.fmtok or tokenizer.json).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Text files or folders of them.
    #[arg(long)]
    input: Option<PathBuf>,
}

#[derive(Args)]
pub struct StatsArgs {
    /// `gpt2`, or a tokenizer file (.fmtok or tokenizer.json).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Text files or folders of them.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
}

fn read_input(input: &Option<PathBuf>) -> Result<String> {
    let mut s = String::new();
    match input {
        Some(p) => {
            s = std::fs::read_to_string(p).with_context(|| format!("--input {}", p.display()))?;
        }
        None => {
            std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        }
    }
    Ok(s)
}

pub fn run(cmd: TokenizerCmd) -> Result<()> {
    match cmd {
        TokenizerCmd::Train(a) => {
            let pattern = match a.pattern.as_str() {
                "gpt2" => Pattern::Gpt2,
                "cl100k" => Pattern::Cl100k,
                p => bail!("--pattern {p}: expected gpt2 or cl100k"),
            };
            let specials = if a.specials.is_empty() { vec!["<|endoftext|>".to_string()] } else { a.specials };
            let cfg = TrainConfig { vocab_size: a.vocab_size, specials, min_frequency: a.min_frequency, pattern };
            let files = expand_inputs(&a.input)?;
            if files.is_empty() {
                bail!("--input: no files found");
            }
            let t = Instant::now();
            let tok = fmlab_tokenizer::train_from_files(&files, &cfg)?;
            if a.out.extension().is_some_and(|e| e == "json") {
                tok.save_hf_json(&a.out)?;
            } else {
                tok.save(&a.out)?;
            }
            eprintln!(
                "trained vocab {} ({} merges) on {} files in {:.2} s -> {}",
                tok.vocab_size(),
                tok.merges().len(),
                files.len(),
                t.elapsed().as_secs_f64(),
                a.out.display()
            );
            if tok.vocab_size() < a.vocab_size {
                eprintln!("note: stopped at {} < --vocab-size {}: no pair occurs --min-frequency {} times", tok.vocab_size(), a.vocab_size, a.min_frequency);
            }
        }
        TokenizerCmd::Encode(a) => {
            let tok = load_tokenizer(&a.tokenizer)?;
            let text = read_input(&a.input)?;
            let lines: Vec<&str> = text.lines().collect();
            let allowed = match a.special.as_str() {
                "all" => AllowedSpecial::All,
                "none" => AllowedSpecial::None,
                "error" => {
                    for (i, l) in lines.iter().enumerate() {
                        tok.encode_checked(l).with_context(|| format!("line {} (--special error)", i + 1))?;
                    }
                    AllowedSpecial::None
                }
                s => bail!("--special {s}: expected all, none or error"),
            };
            let ids = tok.encode_batch(&lines, &allowed);
            let mut out = BufWriter::new(std::io::stdout().lock());
            for line in ids {
                let s: Vec<String> = line.iter().map(|i| i.to_string()).collect();
                writeln!(out, "{}", s.join(" "))?;
            }
        }
        TokenizerCmd::Decode(a) => {
            let tok = load_tokenizer(&a.tokenizer)?;
            let text = read_input(&a.input)?;
            let mut out = BufWriter::new(std::io::stdout().lock());
            for (n, line) in std::io::Cursor::new(text).lines().enumerate() {
                let line = line?;
                let ids: Vec<u32> = line
                    .split_whitespace()
                    .map(|t| t.parse::<u32>().with_context(|| format!("line {}: {t:?} is not a token id", n + 1)))
                    .collect::<Result<_>>()?;
                let s = tok.decode(&ids).with_context(|| format!("line {}", n + 1))?;
                writeln!(out, "{s}")?;
            }
        }
        TokenizerCmd::Stats(a) => {
            let tok = load_tokenizer(&a.tokenizer)?;
            let files = expand_inputs(&a.input)?;
            let texts: Vec<String> = files
                .iter()
                .map(|f| std::fs::read_to_string(f).with_context(|| format!("--input {}", f.display())))
                .collect::<Result<_>>()?;
            let bytes: usize = texts.iter().map(|t| t.len()).sum();
            let t = Instant::now();
            let tokens: usize = texts.par_iter().map_init(|| tok.encoder(), |e, t| e.encode(t, &AllowedSpecial::All).len()).sum();
            let secs = t.elapsed().as_secs_f64();
            println!("files        {}", files.len());
            println!("bytes        {bytes}");
            println!("tokens       {tokens}");
            println!("bytes/token  {:.4}", bytes as f64 / tokens.max(1) as f64);
            println!("encode       {:.1} MB/s ({} threads)", bytes as f64 / 1e6 / secs, rayon::current_num_threads());
        }
    }
    Ok(())
}
