//! Sweeps and their reports: a grid of `train gpt` runs in one ledger group (sequential,
//! resumable: running the same sweep again skips finished runs and resumes interrupted ones
//! exactly), and a markdown report with figures generated from the group's ledger.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ledger::{list, RunSummary};
use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// Context for an error or a missing value, as TrainError::Other("context: cause").
trait Ctx<T> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T>;
}
impl<T, E: std::fmt::Display> Ctx<T> for std::result::Result<T, E> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| TrainError::Other(format!("{}: {e}", f())))
    }
}
impl<T> Ctx<T> for Option<T> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| TrainError::Other(f()))
    }
}

macro_rules! bail {
    ($($t:tt)*) => { return Err(TrainError::Other(format!($($t)*))) };
}

/// `name=v1,v2,...` → (the `train gpt` flag, the values spelled canonically).
pub fn parse_grid(g: &str) -> Result<(String, Vec<String>)> {
    let (k, v) = g.split_once('=').with_context(|| format!("--grid {g}: expected name=v1,v2,..."))?;
    let (flag, integer) = match k {
        "lr" => ("--lr", false),
        "wd" | "weight_decay" => ("--weight-decay", false),
        "batch" => ("--batch", true),
        "warmup" => ("--warmup", true),
        _ => bail!("--grid {g}: unknown parameter `{k}` (lr, wd, batch, warmup)"),
    };
    let spell = |x: &str| -> Result<String> {
        if integer {
            Ok(x.parse::<u64>().with_context(|| format!("--grid {g}: `{x}` is not a whole number"))?.to_string())
        } else {
            Ok(canonical(x.parse::<f64>().with_context(|| format!("--grid {g}: `{x}` is not a number"))?))
        }
    };
    let vals: Vec<String> = v.split(',').map(str::trim).filter(|x| !x.is_empty()).map(spell).collect::<Result<_>>()?;
    if vals.is_empty() {
        bail!("--grid {g}: no values");
    }
    Ok((flag.to_string(), vals))
}

/// One spelling per number, so that `lr=0.001` and `lr=1e-3` name the same run folder (and a second
/// sweep over a point finds the first one's runs): the shorter of the plain and the exponent form.
fn canonical(x: f64) -> String {
    let plain = format!("{x}");
    let exp = format!("{x:e}");
    if exp.len() < plain.len() {
        exp
    } else {
        plain
    }
}

/// A sweep: each `grid` (`name=v1,v2,...`) crossed with the others, each point run with `seeds`
/// seeds from `seed`, as `exe train gpt ... --seed S --out GROUP/NAME` in `root/group`, one after
/// another; finished runs are skipped and interrupted ones resumed (`--resume`). `argv`: the
/// invocation, recorded in group.json.
pub struct Sweep {
    pub grids: Vec<String>,
    pub seeds: u64,
    pub seed: u64,
    pub group: String,
    pub root: PathBuf,
    pub train_args: Vec<String>,
    pub argv: Vec<String>,
}

/// Runs `a` with the binary `exe` (see `Sweep`).
pub fn run(a: &Sweep, exe: &Path) -> Result<()> {
    let grids: Vec<(String, Vec<String>)> = a.grids.iter().map(|g| parse_grid(g)).collect::<Result<_>>()?;
    // The sweep owns the seed, the output folder and every swept parameter.
    let owned: Vec<&str> = ["--seed", "--out", "--resume"].into_iter().chain(grids.iter().map(|g| g.0.as_str())).collect();
    if let Some(x) = a.train_args.iter().find(|x| owned.contains(&x.as_str())) {
        bail!("train argument {x} is set by the sweep; remove it after `--`");
    }
    let dir = a.root.join(&a.group);
    std::fs::create_dir_all(&dir)?;
    // group.json lists every sweep invocation into this group (a second pass adding seeds at the
    // best point keeps the first pass's record).
    let gpath = dir.join("group.json");
    let mut sweeps: Vec<serde_json::Value> = match std::fs::read_to_string(&gpath) {
        Ok(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).with_context(|| format!("{}: not JSON", gpath.display()))?;
            match v.get("sweeps").and_then(|s| s.as_array()) {
                Some(a) => a.clone(),
                None => vec![v], // the one-invocation layout of earlier versions
            }
        }
        Err(_) => vec![],
    };
    sweeps.push(serde_json::json!({"argv": a.argv, "grid": a.grids, "seeds": a.seeds, "seed": a.seed, "train_args": a.train_args}));
    crate::ledger::write_file(&gpath, serde_json::to_string_pretty(&serde_json::json!({"sweeps": sweeps}))?)?;
    // Cartesian product of the grid, then seeds.
    let mut points: Vec<Vec<(String, String)>> = vec![vec![]];
    for (flag, vals) in &grids {
        points = points.iter().flat_map(|p| vals.iter().map(move |v| [p.clone(), vec![(flag.clone(), v.clone())]].concat())).collect();
    }
    let total = points.len() as u64 * a.seeds;
    let mut k = 0;
    for p in &points {
        for s in 0..a.seeds {
            k += 1;
            let seed = a.seed + s;
            let name = p.iter().map(|(f, v)| format!("{}{v}", f.trim_start_matches("--").replace("weight-decay", "wd"))).collect::<Vec<_>>().join("_") + &format!("_seed{seed}");
            let run = dir.join(&name);
            let done = RunSummary::load(&run).ok().is_some_and(|r| run.join("final.json").is_file() && r.metrics.last().and_then(|m| m["step"].as_u64()) == r.config["steps"].as_u64());
            if done {
                eprintln!("[{k}/{total}] {name}: finished, skipped");
                continue;
            }
            let mut cmd = Command::new(exe);
            cmd.args(["train", "gpt"]);
            if run.join("checkpoint").is_dir() || run.join("checkpoint.old").is_dir() {
                eprintln!("[{k}/{total}] {name}: resuming");
                cmd.arg("--resume").arg(&run);
            } else {
                eprintln!("[{k}/{total}] {name}");
                cmd.args(&a.train_args).arg("--seed").arg(seed.to_string()).arg("--out").arg(&run);
                for (f, v) in p {
                    cmd.arg(f).arg(v);
                }
            }
            let st = cmd.status().with_context(|| format!("running {}", exe.display()))?;
            if !st.success() {
                bail!("run {name} failed ({st}); fix it and run the same sweep again to continue");
            }
        }
    }
    eprintln!("sweep done: {total} runs in {}; `fmlab report --group {}`", dir.display(), dir.display());
    Ok(())
}

/// Global L2 norm of the decayed weights, as `train` records it in final.json.
fn weight_norm(run: &Path) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("final.json")).ok()?).ok()?;
    v["weight_norm"].as_f64()
}

/// Writes `name.svg` and `name.png` (the same drawing) into the group folder.
fn write_figure(dir: &Path, name: &str, f: &fmlab_plot::Figure) -> Result<()> {
    let svg = f.to_svg().with_context(|| format!("drawing {name}.svg"))?;
    crate::ledger::write_file(&dir.join(format!("{name}.svg")), svg)?;
    let png = f.to_png().with_context(|| format!("drawing {name}.png"))?;
    Ok(crate::ledger::write_file(&dir.join(format!("{name}.png")), png)?)
}

/// Writes `group`/report.md and its figures (SVG and PNG) from the group's ledger; returns the
/// report's path.
pub fn report(group: &Path) -> Result<PathBuf> {
    let runs = list(group)?;
    if runs.is_empty() {
        bail!("--group {}: no runs (folders with run.json)", group.display());
    }
    let f = |r: &RunSummary, k: &str| r.config[k].as_f64().unwrap_or(f64::NAN);
    let mut md = String::new();
    let _ = writeln!(md, "# Sweep report: {}\n", group.display());
    let _ = writeln!(md, "Regenerate: `fmlab report --group {}` (from the ledger; nothing typed by hand).", group.display());
    if let Ok(g) = std::fs::read_to_string(group.join("group.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&g) {
            let sweeps = v.get("sweeps").and_then(|s| s.as_array()).cloned().unwrap_or_else(|| vec![v.clone()]);
            let _ = writeln!(md, "Runs made by:\n");
            for sw in &sweeps {
                let argv: Vec<String> = sw["argv"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default();
                let _ = writeln!(md, "    {}", argv.join(" "));
            }
            let _ = writeln!(md);
        }
    }
    let _ = writeln!(md, "| run | lr | wd | seed | steps | train loss | val loss | weight norm (decayed matrices) |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {} |",
            r.id(),
            f(r, "lr"),
            f(r, "weight_decay"),
            r.config["seed"],
            r.metrics.last().and_then(|m| m["step"].as_u64()).unwrap_or(0),
            r.last("loss").unwrap_or(f64::NAN),
            r.last("val_loss").unwrap_or(f64::NAN),
            weight_norm(&r.dir).map_or("-".into(), |x| format!("{x:.3}"))
        );
    }
    let series = |key: &str| -> Vec<(String, Vec<(f64, f64)>)> {
        runs.iter().map(|r| (r.id(), r.metrics.iter().filter_map(|m| Some((m["step"].as_f64()?, m[key].as_f64()?))).collect())).collect()
    };
    write_figure(&group, "train_loss", &fmlab_plot::line_chart("train loss per run", "step", "loss (nats/token)", &series("loss")))?;
    write_figure(&group, "val_loss", &fmlab_plot::line_chart("validation loss per run", "step", "loss (nats/token)", &series("val_loss")))?;
    // lr × wd heatmap of final val loss, averaged over seeds; seed spread alongside.
    let mut lrs: Vec<f64> = runs.iter().map(|r| f(r, "lr")).collect();
    let mut wds: Vec<f64> = runs.iter().map(|r| f(r, "weight_decay")).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    wds.sort_by(f64::total_cmp);
    wds.dedup();
    let cell = |i: usize, j: usize| -> Vec<f64> { runs.iter().filter(|r| f(r, "lr") == lrs[i] && f(r, "weight_decay") == wds[j]).filter_map(|r| r.last("val_loss")).collect() };
    let mean = |i: usize, j: usize| -> Option<f64> {
        let v = cell(i, j);
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let rows: Vec<String> = lrs.iter().map(|x| format!("{x}")).collect();
    let cols: Vec<String> = wds.iter().map(|x| format!("{x}")).collect();
    write_figure(&group, "heatmap", &fmlab_plot::heatmap("final val loss (mean over seeds)", &rows, &cols, &mean, "lr", "weight decay"))?;
    // What decoupled weight decay does to the weights: their final norm per grid point.
    let wnorm = |i: usize, j: usize| -> Option<f64> {
        let v: Vec<f64> = runs.iter().filter(|r| f(r, "lr") == lrs[i] && f(r, "weight_decay") == wds[j]).filter_map(|r| weight_norm(&r.dir)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    write_figure(&group, "weight_norm", &fmlab_plot::heatmap("final L2 norm of the decayed weights", &rows, &cols, &wnorm, "lr", "weight decay"))?;
    let _ = writeln!(md, "\n![train loss](train_loss.svg)\n\n![validation loss](val_loss.svg)\n\n![lr × wd](heatmap.svg)\n\n![weight norms](weight_norm.svg)\n");
    let _ = writeln!(md, "(Each figure is also written as PNG beside its SVG: train_loss.png, val_loss.png, heatmap.png, weight_norm.png.)\n");
    let _ = writeln!(md, "| lr \\ wd | {} |", cols.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(cols.len()));
    for i in 0..lrs.len() {
        let cells: Vec<String> = (0..wds.len())
            .map(|j| {
                let v = cell(i, j);
                match v.len() {
                    0 => "-".into(),
                    1 => format!("{:.4}", v[0]),
                    n => {
                        let m = v.iter().sum::<f64>() / n as f64;
                        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
                        format!("{m:.4} ± {sd:.4} ({n} seeds)")
                    }
                }
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", rows[i], cells.join(" | "));
    }
    crate::ledger::write_file(&group.join("report.md"), md)?;
    Ok(group.join("report.md"))
}
