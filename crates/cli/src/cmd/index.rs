//! `fmlab index build|search`: HNSW indexes over vector files.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fmlab_index::vectors::read_vectors;
use fmlab_index::{file, Bitset, Filter, Hnsw, HnswParams, Metric, Payload, Plan};
use rayon::prelude::*;

#[derive(Subcommand)]
pub enum IndexCmd {
    /// Build an HNSW index from a vector file (.npy, .fvecs, IDX *-ubyte).
    Build(BuildArgs),
    /// k-NN search: one line of space-separated ids (rows of the vectors file) per query.
    Search(SearchArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// Vectors to index: .npy (f32/f64, 2-D), .fvecs or IDX (*-ubyte).
    #[arg(long)]
    vectors: PathBuf,
    /// l2, ip (inner product) or cosine.
    #[arg(long, default_value = "l2")]
    metric: String,
    /// HNSW links per node (M, ≥ 2).
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// Beam width while building.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Per-vector payloads for filtered search: a JSON-lines file, one object per vector row.
    #[arg(long)]
    payloads: Option<PathBuf>,
    /// Index file to write.
    #[arg(long)]
    out: PathBuf,
    /// Build threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
pub struct SearchArgs {
    /// Index file (from `fmlab index build`).
    #[arg(long)]
    index: PathBuf,
    /// Query vectors, same formats as --vectors.
    #[arg(long)]
    queries: PathBuf,
    /// Neighbours per query (≥ 1).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Search beam width (≥ 1; larger: better recall, slower).
    #[arg(long, default_value_t = 64)]
    ef: usize,
    /// Search threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// e.g. `color=red && year>=2000` (needs payloads at build time).
    #[arg(long)]
    filter: Option<String>,
}

pub fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        if t == 0 {
            bail!("--threads must be positive");
        }
        b = b.num_threads(t);
    }
    Ok(b.build()?)
}

pub fn run(cmd: IndexCmd) -> Result<()> {
    match cmd {
        IndexCmd::Build(a) => {
            let metric = Metric::parse(&a.metric).with_context(|| format!("--metric {}: expected l2, ip or cosine", a.metric))?;
            if a.m < 2 {
                bail!("--m {}: must be at least 2", a.m);
            }
            let (v, dim) = read_vectors(&a.vectors)?;
            let n = v.len() / dim;
            let payloads = match &a.payloads {
                Some(p) => {
                    let f = std::fs::File::open(p).with_context(|| format!("--payloads {}", p.display()))?;
                    let rows: Vec<Payload> = std::io::BufReader::new(f)
                        .lines()
                        .enumerate()
                        .map(|(i, l)| serde_json::from_str(&l?).with_context(|| format!("--payloads {} line {}", p.display(), i + 1)))
                        .collect::<Result<_>>()?;
                    if rows.len() != n {
                        bail!("--payloads {}: {} rows for {n} vectors", p.display(), rows.len());
                    }
                    Some(rows)
                }
                None => None,
            };
            let t = Instant::now();
            let h = pool(a.threads)?.install(|| Hnsw::build(&v, dim, metric, HnswParams { m: a.m, ef_construction: a.ef_construction, seed: 100 }));
            let secs = t.elapsed().as_secs_f64();
            file::save(&h, payloads.as_deref(), &a.out)?;
            eprintln!("built {n} × {dim} ({:?}, M {}, ef_construction {}) in {secs:.2}s, {:.1} MB, kernel {} -> {}", metric, a.m, a.ef_construction, h.memory_bytes() as f64 / 1e6, h.kernel(), a.out.display());
        }
        IndexCmd::Search(a) => {
            if a.k == 0 || a.ef == 0 {
                bail!("--k {} --ef {}: both must be at least 1", a.k, a.ef);
            }
            let (h, payloads) = file::load(&a.index)?;
            let (q, dim) = read_vectors(&a.queries)?;
            if dim != h.dim() {
                bail!("--queries {}: {dim}-d vectors for a {}-d index", a.queries.display(), h.dim());
            }
            let allowed = match &a.filter {
                Some(expr) => {
                    let f = Filter::parse(expr)?;
                    let p = payloads.with_context(|| format!("--filter: the index {} has no payloads (build with --payloads)", a.index.display()))?;
                    Some(Bitset::from_fn(p.len(), |i| f.matches(&p[i])))
                }
                None => None,
            };
            let t = Instant::now();
            let res: Vec<Vec<(u32, f32)>> = pool(a.threads)?.install(|| {
                q.par_chunks(dim)
                    .map(|x| match &allowed {
                        Some(b) => h.search_filtered(x, a.k, a.ef, b).0,
                        None => h.search(x, a.k, a.ef, None),
                    })
                    .collect()
            });
            let secs = t.elapsed().as_secs_f64();
            let mut out = BufWriter::new(std::io::stdout().lock());
            for r in &res {
                let ids: Vec<String> = r.iter().map(|x| x.0.to_string()).collect();
                writeln!(out, "{}", ids.join(" "))?;
            }
            let plan = allowed.as_ref().map(|b| match fmlab_index::plan(h.len(), b.count(), a.ef.max(a.k), 2 * h.params().m) {
                Plan::Exact => format!(", filter passes {} points: exact scan", b.count()),
                Plan::Graph => format!(", filter passes {} points: filtered graph search", b.count()),
            });
            eprintln!("{} queries in {secs:.3}s: {:.0} QPS{}", res.len(), res.len() as f64 / secs, plan.unwrap_or_default());
        }
    }
    Ok(())
}
