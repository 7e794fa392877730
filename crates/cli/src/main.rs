//! The fmlab binary: one subcommand per file under `cmd/`.

mod assets;
mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fmlab", version, about = "Build foundation models from scratch and measure them")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Byte-level BPE: train, encode, decode, stats.
    #[command(subcommand)]
    Tokenizer(cmd::tokenizer::TokenizerCmd),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Tokenizer(c) => cmd::tokenizer::run(c),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
