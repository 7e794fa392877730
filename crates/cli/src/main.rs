//! The fmlab binary: one subcommand per file under `cmd/`.

mod assets;
mod checkpoint;
mod cmd;
mod corpus;
mod device;
mod llm;
mod sampling;

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
    /// Corpora → token shards.
    #[command(subcommand)]
    Data(cmd::data::DataCmd),
    /// Train models.
    #[command(subcommand)]
    Train(cmd::train::TrainCmd),
    /// Generate text from a checkpoint.
    Sample(cmd::sample::SampleArgs),
    /// Loss, perplexity and bits-per-byte of a checkpoint on held-out data.
    Eval(cmd::eval::EvalArgs),
    /// Generate text with a Llama-family model (SmolLM2 GGUF).
    Generate(cmd::generate::GenerateArgs),
    /// Interactive chat with a Llama-family model.
    Chat(cmd::chat::ChatArgs),
    /// Sentence embeddings (all-MiniLM-L6-v2).
    Embed(cmd::embed::EmbedArgs),
    /// A grid of training runs in one ledger group (resumable).
    Sweep(cmd::sweep::SweepArgs),
    /// A markdown report with SVG plots from a sweep group's ledger.
    Report(cmd::sweep::ReportArgs),
    /// The experiment ledger: runs/<id>/ folders.
    #[command(subcommand)]
    Runs(cmd::runs::RunsCmd),
    /// Model presets.
    #[command(subcommand)]
    Model(cmd::model::ModelCmd),
    /// Vector indexes (HNSW).
    #[command(subcommand)]
    Index(cmd::index::IndexCmd),
    /// A trained CLIP: scenes as PNGs, an image index, text search.
    #[command(subcommand)]
    Clip(cmd::clip::ClipCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// Every FMLAB_* environment setting: its value here, default and meaning.
    Settings,
}

/// glibc malloc tuning, set once here at startup (the binary's one process-wide setting).
/// Tensors are large and short-lived; by default glibc serves each from a fresh mmap and unmaps
/// it on free, so every op pays page faults to zero new pages (measured: ~30% of a CPU training
/// step). Keeping allocations on the heap and never trimming it lets freed buffers be reused.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            // One arena: buffers freed by any thread are reusable by all (rayon workers allocate too).
            mallopt(M_ARENA_MAX, 1);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

fn main() {
    tune_malloc();
    device::install_panic_hook();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Tokenizer(c) => cmd::tokenizer::run(c),
        Cmd::Data(c) => cmd::data::run(c),
        Cmd::Train(c) => cmd::train::run(c),
        Cmd::Sample(a) => cmd::sample::run(a),
        Cmd::Eval(a) => cmd::eval::run(a),
        Cmd::Embed(a) => cmd::embed::run(a),
        Cmd::Generate(a) => cmd::generate::run(a),
        Cmd::Chat(a) => cmd::chat::run(a),
        Cmd::Sweep(a) => cmd::sweep::run_sweep(a),
        Cmd::Report(a) => cmd::sweep::run_report(a),
        Cmd::Runs(c) => cmd::runs::run(c),
        Cmd::Model(c) => cmd::model::run(c),
        Cmd::Index(c) => cmd::index::run(c),
        Cmd::Bench(c) => cmd::bench::run(c),
        Cmd::Clip(c) => cmd::clip::run(c),
        Cmd::Settings => cmd::settings::run(),
    };
    if let Err(e) = res {
        // A training run stopped by Ctrl-C / SIGTERM: the shell's status for SIGINT.
        if let Some(i @ fmlab_train::TrainError::Interrupted { .. }) = e.downcast_ref::<fmlab_train::TrainError>() {
            eprintln!("{i}");
            std::process::exit(130);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
