//! `fmlab bench ann`: HNSW recall@10 against QPS on a real dataset (fmlab_index::bench), build
//! time, memory, and a filter-selectivity sweep.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct AnnArgs {
    /// fashion-mnist-784 (L2; train as base, test as queries) or glove-50 (cosine; every 40th
    /// row held out as a query).
    #[arg(long)]
    dataset: String,
    /// ef values to measure (search beam width; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,20,40,80,160,320")]
    ef: Vec<usize>,
    /// HNSW links per node (M).
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// Beam width while building.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Number of queries (the first N of the query set).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Also sweep filter selectivity (100%, 10%, 1%, 0.1%) at this ef.
    #[arg(long)]
    filter_ef: Option<usize>,
}

pub fn run(a: AnnArgs) -> Result<()> {
    use fmlab_index::bench;
    anyhow::ensure!(a.queries > 0 && a.m >= 2 && a.ef_construction > 0 && a.ef.iter().all(|&e| e > 0), "--queries, --ef-construction and every --ef must be positive, --m at least 2");
    let bench::Dataset { base, queries: q, dim, metric } = bench::dataset(&crate::assets::cache_dir(), &a.dataset, a.queries)?;
    let (n, nq) = (base.len() / dim, q.len() / dim);
    let b = bench::build(&base, &q, dim, metric, a.m, a.ef_construction);
    eprintln!("{}: {n} base × {dim}, {nq} queries, {metric:?}; exact ground truth in {:.1}s", a.dataset, b.truth_seconds);
    println!("fmlab {}: build {:.2}s ({} threads), M {} ef_construction {}, index memory {:.1} MB, kernel {}", a.dataset, b.build_seconds, rayon::current_num_threads(), a.m, a.ef_construction, b.index.memory_bytes() as f64 / 1e6, b.index.kernel());
    println!("| ef | recall@10 | QPS 1 thread | QPS {} threads |", rayon::current_num_threads());
    println!("|---|---|---|---|");
    let rows: Vec<String> = bench::ef_sweep(&b, &q, dim, &a.ef).iter().map(|r| format!("| {} | {:.4} | {:.0} | {:.0} |", r.ef, r.recall, r.qps_1, r.qps_all)).collect();
    println!("{}", rows.join("\n"));
    if let Some(ef) = a.filter_ef {
        println!("filter sweep at ef {ef}:");
        println!("| selectivity | plan | recall@10 | QPS 1 thread |");
        println!("|---|---|---|---|");
        let rows: Vec<String> = bench::filter_sweep(&b, &base, &q, dim, metric, ef).iter().map(|r| format!("| {}% | {:?} | {:.4} | {:.0} |", r.percent, r.plan, r.recall, r.qps_1)).collect();
        println!("{}", rows.join("\n"));
    }
    Ok(())
}
