//! `fmlab bench …`: one benchmark per file.

mod ann;
mod ops;
mod train;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Training-step throughput.
    Train(train::TrainArgs),
    /// GPU kernels at a training step's shapes: ms, GB/s or TFLOP/s, error vs the CPU engine.
    Ops(ops::OpsArgs),
    /// HNSW: recall@10 vs QPS on a real dataset, build time, memory, filter selectivity sweep.
    Ann(ann::AnnArgs),
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Train(a) => train::run(a),
        BenchCmd::Ops(a) => ops::run(a),
        BenchCmd::Ann(a) => ann::run(a),
    }
}
