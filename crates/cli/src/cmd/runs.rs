//! `fmlab runs list|show|compare`: read the ledger.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;

use fmlab_train::ledger::{list, RunSummary};

#[derive(Subcommand)]
pub enum RunsCmd {
    /// One line per run under ROOT (default runs/).
    List {
        #[arg(default_value = "runs")]
        root: PathBuf,
    },
    /// A run's provenance, config and last metrics.
    Show { run: PathBuf },
    /// Runs side by side: config fields that differ, then final metrics.
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
    },
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4}"))
}

pub fn run(cmd: RunsCmd) -> Result<()> {
    match cmd {
        RunsCmd::List { root } => {
            let runs = list(&root)?;
            if runs.is_empty() {
                bail!("no runs under {} (a run folder has a run.json)", root.display());
            }
            println!("| run | command | preset | steps | train loss | val loss | tok/s (median) | config hash | commit |");
            println!("|---|---|---|---|---|---|---|---|---|");
            for r in runs {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.id(),
                    r.info["command"].as_str().unwrap_or("?"),
                    r.config["preset"].as_str().unwrap_or("?"),
                    r.metrics.last().and_then(|m| m["step"].as_u64()).unwrap_or(0),
                    fmt(r.last("loss")),
                    fmt(r.last("val_loss")),
                    r.median_tok_s().map_or("-".into(), |x| format!("{x:.0}")),
                    r.info["config_hash"].as_str().unwrap_or("?"),
                    r.info["git_commit"].as_str().map_or("-".into(), |c| c[..c.len().min(10)].to_string()),
                );
            }
        }
        RunsCmd::Show { run } => {
            let r = RunSummary::load(&run)?;
            println!("run      {}", r.dir.display());
            println!("info     {}", serde_json::to_string_pretty(&r.info)?);
            println!("config   {}", serde_json::to_string_pretty(&r.config)?);
            println!("steps    {}", r.metrics.len());
            println!("loss     {}   val loss {}   tok/s (median) {}", fmt(r.last("loss")), fmt(r.last("val_loss")), r.median_tok_s().map_or("-".into(), |x| format!("{x:.0}")));
        }
        RunsCmd::Compare { runs } => {
            let rs: Vec<RunSummary> = runs.iter().map(|p| RunSummary::load(p)).collect::<std::result::Result<_, _>>()?;
            let keys: std::collections::BTreeSet<String> = rs.iter().flat_map(|r| r.config.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()).collect();
            let differ: Vec<&String> = keys.iter().filter(|k| rs.iter().any(|r| r.config.get(*k) != rs[0].config.get(*k))).collect();
            print!("| field |");
            for r in &rs {
                print!(" {} |", r.id());
            }
            println!();
            println!("|---|{}", "---|".repeat(rs.len()));
            for k in differ {
                print!("| {k} |");
                for r in &rs {
                    print!(" {} |", r.config.get(k).map_or("-".into(), |v| v.to_string()));
                }
                println!();
            }
            for (name, key) in [("train loss", "loss"), ("val loss", "val_loss")] {
                print!("| {name} |");
                for r in &rs {
                    print!(" {} |", fmt(r.last(key)));
                }
                println!();
            }
        }
    }
    Ok(())
}
