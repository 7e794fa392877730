//! The experiment ledger: every run folder holds `run.json` (what ran: command, config hash, git
//! commit, seed, machine, start time), `config.json` (the resolved config), `metrics.jsonl` (one
//! object per step) and, when finished, `final.json`. `fmlab runs` reads them back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

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
    fmlab_fs::write_atomic(path, bytes.as_ref()).with_context(|| format!("writing {}", path.display()))
}

pub fn write_run_info(dir: &Path, command: &str, cfg_json: &str, seed: u64, device: fmlab_tensor::Device) -> Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    let info = serde_json::json!({
        "command": command,
        "argv": std::env::args().collect::<Vec<_>>(),
        "config_hash": config_hash(cfg_json),
        "git_commit": crate::checkpoint::git_commit(),
        "seed": seed,
        "machine": {"host": host, "cpu": cpu, "threads": rayon::current_num_threads(), "device": device.to_string(), "gpu": crate::device::gpu_name(device)},
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "fmlab_version": env!("CARGO_PKG_VERSION"),
    });
    write_file(&dir.join("run.json"), serde_json::to_string_pretty(&info)?)
}

pub fn write_final(dir: &Path, v: serde_json::Value) -> Result<()> {
    write_file(&dir.join("final.json"), serde_json::to_string_pretty(&v)?)
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
            let s = std::fs::read_to_string(&p).with_context(|| format!("{}: not a run folder (no {n})", dir.display()))?;
            serde_json::from_str(&s).with_context(|| format!("{}: not valid JSON", p.display()))
        };
        let metrics = match std::fs::read_to_string(dir.join("metrics.jsonl")) {
            Ok(s) => s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", dir.join("metrics.jsonl").display()))).collect::<Result<_>>()?,
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
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
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
