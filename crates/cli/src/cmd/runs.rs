//! `fmlab runs list|show|compare`: read the ledger.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;

use fmlab_train::ledger::{self, list, RunSummary};

#[derive(Subcommand)]
pub enum RunsCmd {
    /// One line per run under ROOT (default runs/).
    List {
        /// Folder to list runs under.
        #[arg(default_value = "runs")]
        root: PathBuf,
    },
    /// A run's provenance, config and last metrics.
    Show { run: PathBuf },
    /// Runs side by side: config fields that differ, then final metrics.
    Compare {
        /// Run folders to compare.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
    },
}

pub fn run(cmd: RunsCmd) -> Result<()> {
    match cmd {
        RunsCmd::List { root } => {
            let runs = list(&root)?;
            if runs.is_empty() {
                bail!("no runs under {} (a run folder has a run.json)", root.display());
            }
            print!("{}", ledger::list_table(&runs));
        }
        RunsCmd::Show { run } => print!("{}", ledger::show(&RunSummary::load(&run)?)),
        RunsCmd::Compare { runs } => {
            let rs: Vec<RunSummary> = runs.iter().map(|p| RunSummary::load(p)).collect::<std::result::Result<_, _>>()?;
            print!("{}", ledger::compare(&rs));
        }
    }
    Ok(())
}
