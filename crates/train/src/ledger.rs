//! The experiment ledger: every run folder holds `run.json` (what ran: command, config hash, git
//! commit, seed, machine, start time), `config.json` (the resolved config), `metrics.jsonl` (one
//! object per step) and, when finished, `final.json`. `fmlab runs` reads them back.

use std::path::{Path, PathBuf};

use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// 64-bit FNV-1a of the resolved config: runs with the same hash ran the same configuration.
pub fn config_hash(cfg_json: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in cfg_json.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Writes a file of the ledger (or any artifact) crash-safely, with the path in the error.
pub fn write_file(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    fmlab_fs::write_atomic(path, bytes.as_ref()).map_err(|e| TrainError::file(path, format!("writing: {e}")))
}

/// run.json. `git_commit`: the binary's (its build records it); `gpu`: the device's name.
#[allow(clippy::too_many_arguments)]
pub fn write_run_info(dir: &Path, command: &str, cfg_json: &str, seed: u64, device: fmlab_tensor::Device, git_commit: Option<String>, gpu: Option<String>) -> Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    let info = serde_json::json!({
        "command": command,
        "argv": std::env::args().collect::<Vec<_>>(),
        "config_hash": config_hash(cfg_json),
        "git_commit": git_commit,
        "seed": seed,
        "machine": {"host": host, "cpu": cpu, "threads": rayon::current_num_threads(), "device": device.to_string(), "gpu": gpu},
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "fmlab_version": env!("CARGO_PKG_VERSION"),
    });
    write_file(&dir.join("run.json"), json(&info))
}

/// A run's start in its folder: config.json (the resolved config, rewritten on resume: --steps
/// may have grown) and, for a new run, run.json.
#[allow(clippy::too_many_arguments)]
pub fn record_start(run_dir: &Path, command: &str, cfg: &impl serde::Serialize, seed: u64, device: fmlab_tensor::Device, git_commit: Option<String>, gpu: Option<String>, resumed: bool) -> Result<()> {
    let cfg_json = serde_json::to_string_pretty(cfg)?;
    write_file(&run_dir.join("config.json"), &cfg_json)?;
    if !resumed {
        write_run_info(run_dir, command, &cfg_json, seed, device, git_commit, gpu)?;
    }
    Ok(())
}

/// A resumed run redoes the steps logged after its checkpoint (before a kill): their
/// metrics.jsonl lines are dropped.
pub fn drop_metrics_after(run_dir: &Path, step: u64) -> Result<()> {
    let mp = run_dir.join("metrics.jsonl");
    if let Ok(text) = std::fs::read_to_string(&mp) {
        let kept: String = text.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step)).map(|l| format!("{l}\n")).collect();
        write_file(&mp, kept)?;
    }
    Ok(())
}

pub fn write_final(dir: &Path, v: serde_json::Value) -> Result<()> {
    write_file(&dir.join("final.json"), json(&v))
}

pub struct RunSummary {
    pub dir: PathBuf,
    pub info: serde_json::Value,
    pub config: serde_json::Value,
    pub metrics: Vec<serde_json::Value>,
}

impl RunSummary {
    pub fn load(dir: &Path) -> Result<RunSummary> {
        let read = |n: &str| -> Result<serde_json::Value> {
            let p = dir.join(n);
            let s = std::fs::read_to_string(&p).map_err(|_| TrainError::file(dir, format!("not a run folder (no {n})")))?;
            serde_json::from_str(&s).map_err(|e| TrainError::file(&p, format!("not valid JSON: {e}")))
        };
        let metrics = match std::fs::read_to_string(dir.join("metrics.jsonl")) {
            Ok(s) => s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).map_err(|e| TrainError::file(&dir.join("metrics.jsonl"), format!("bad line: {e}")))).collect::<Result<_>>()?,
            Err(_) => Vec::new(),
        };
        Ok(RunSummary { dir: dir.to_path_buf(), info: read("run.json")?, config: read("config.json")?, metrics })
    }
    pub fn id(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }
    pub fn last(&self, key: &str) -> Option<f64> {
        self.metrics.iter().rev().find_map(|m| m.get(key).and_then(|v| v.as_f64()))
    }
    pub fn median_tok_s(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.metrics.iter().filter_map(|m| m["tok_s"].as_f64()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

/// Run folders directly under `root` (those with a run.json), sorted by name.
pub fn list(root: &Path) -> Result<Vec<RunSummary>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(r) => r,
        Err(_) => return Ok(out),
    };
    let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("run.json").is_file()).collect();
    dirs.sort();
    for d in dirs {
        out.push(RunSummary::load(&d)?);
    }
    Ok(out)
}

fn json(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("a JSON value prints")
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4}"))
}

/// `fmlab runs list`: one markdown row per run.
pub fn list_table(runs: &[RunSummary]) -> String {
    let mut out = String::from("| run | command | preset | steps | train loss | val loss | tok/s (median) | config hash | commit |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.id(),
            r.info["command"].as_str().unwrap_or("?"),
            r.config["preset"].as_str().unwrap_or("?"),
            r.metrics.last().and_then(|m| m["step"].as_u64()).unwrap_or(0),
            fmt(r.last("loss")),
            fmt(r.last("val_loss")),
            r.median_tok_s().map_or("-".into(), |x| format!("{x:.0}")),
            r.info["config_hash"].as_str().unwrap_or("?"),
            r.info["git_commit"].as_str().map_or("-".into(), |c| c[..c.len().min(10)].to_string()),
        ));
    }
    out
}

/// `fmlab runs show`: a run's provenance, config and last metrics.
pub fn show(r: &RunSummary) -> String {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("a JSON value prints");
    format!(
        "run      {}\ninfo     {}\nconfig   {}\nsteps    {}\nloss     {}   val loss {}   tok/s (median) {}\n",
        r.dir.display(),
        pretty(&r.info),
        pretty(&r.config),
        r.metrics.len(),
        fmt(r.last("loss")),
        fmt(r.last("val_loss")),
        r.median_tok_s().map_or("-".into(), |x| format!("{x:.0}"))
    )
}

/// `fmlab runs compare`: the config fields that differ between runs, then their final losses.
pub fn compare(rs: &[RunSummary]) -> String {
    let keys: std::collections::BTreeSet<String> = rs.iter().flat_map(|r| r.config.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()).collect();
    let differ: Vec<&String> = keys.iter().filter(|k| rs.iter().any(|r| r.config.get(*k) != rs[0].config.get(*k))).collect();
    let row = |name: &str, cells: Vec<String>| format!("| {name} |{}\n", cells.iter().map(|c| format!(" {c} |")).collect::<String>());
    let mut out = row("field", rs.iter().map(|r| r.id()).collect());
    out.push_str(&format!("|---|{}\n", "---|".repeat(rs.len())));
    for k in differ {
        out.push_str(&row(k, rs.iter().map(|r| r.config.get(k).map_or("-".into(), |v| v.to_string())).collect()));
    }
    for (name, key) in [("train loss", "loss"), ("val loss", "val_loss")] {
        out.push_str(&row(name, rs.iter().map(|r| fmt(r.last(key))).collect()));
    }
    out
}
