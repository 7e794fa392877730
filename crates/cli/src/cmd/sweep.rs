//! `fmlab sweep`: a grid of `train gpt` runs (one ledger folder each, sequential), resumable;
//! `fmlab report`: a markdown report with figures from a group's ledger (fmlab_train::sweep).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct SweepArgs {
    /// `lr=1e-3,3e-3` or `wd=0,0.1` (repeatable): the grid is their product.
    #[arg(long = "grid", required = true)]
    grids: Vec<String>,
    /// Seeds per grid point (seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Seed of the first run (seed k adds k).
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Group name: runs go to ROOT/<group>/<run>.
    #[arg(long)]
    group: String,
    /// Folder the group's runs go under.
    #[arg(long, default_value = "runs")]
    root: PathBuf,
    /// Arguments for every `fmlab train gpt` run (after `--`).
    #[arg(last = true)]
    train_args: Vec<String>,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The group folder written by `fmlab sweep`.
    #[arg(long)]
    group: PathBuf,
}

pub fn run_sweep(a: SweepArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let sweep = fmlab_train::sweep::Sweep { grids: a.grids, seeds: a.seeds, seed: a.seed, group: a.group, root: a.root, train_args: a.train_args, argv: std::env::args().collect() };
    Ok(fmlab_train::sweep::run(&sweep, &exe)?)
}

pub fn run_report(a: ReportArgs) -> Result<()> {
    let path = fmlab_train::sweep::report(&a.group)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
