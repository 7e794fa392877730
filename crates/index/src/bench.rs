//! `fmlab bench ann`'s measurements: an HNSW index against exact search on one dataset —
//! recall@10 and queries per second at each `ef`, one thread and all, and a filter sweep at one
//! `ef` over selectivities from 100% to 0.1%.

use std::time::Instant;

use rayon::prelude::*;

use std::path::Path;

use crate::vectors::read_vectors;
use crate::{recall, Bitset, BruteForce, Hnsw, HnswParams, IndexError, Metric, Plan};

/// Vectors to benchmark on: `base` rows and `queries` rows of `dim`, compared by `metric`.
pub struct Dataset {
    pub base: Vec<f32>,
    pub queries: Vec<f32>,
    pub dim: usize,
    pub metric: Metric,
}

/// A benchmark dataset from the asset cache `cache` with its first `nq` queries:
/// `fashion-mnist-784` (L2; the train images as base, the test images as queries) or `glove-50`
/// (cosine; every 40th row held out as a query).
pub fn dataset(cache: &Path, name: &str, nq: usize) -> Result<Dataset, IndexError> {
    let need = |rel: &str, asset: &str| -> Result<std::path::PathBuf, IndexError> {
        let p = cache.join(rel);
        if !p.is_file() {
            return Err(IndexError::File { path: p.display().to_string(), msg: format!("missing; run `scripts/fetch-assets.sh {asset}`") });
        }
        Ok(p)
    };
    match name {
        "fashion-mnist-784" => {
            let (base, dim) = read_vectors(&need("fashion-mnist/train-images-idx3-ubyte", "fashion-mnist")?)?;
            let (q, _) = read_vectors(&need("fashion-mnist/t10k-images-idx3-ubyte", "fashion-mnist")?)?;
            let nq = nq.min(q.len() / dim);
            Ok(Dataset { base, queries: q[..nq * dim].to_vec(), dim, metric: Metric::L2 })
        }
        "glove-50" => {
            let (all, dim) = read_vectors(&need("glove/glove_6B_50d_emb.npy", "glove")?)?;
            let (mut base, mut q) = (Vec::new(), Vec::new());
            for (i, row) in all.chunks(dim).enumerate() {
                if i % 40 == 0 { q.extend_from_slice(row) } else { base.extend_from_slice(row) }
            }
            q.truncate(nq.min(q.len() / dim) * dim);
            Ok(Dataset { base, queries: q, dim, metric: Metric::Cosine })
        }
        d => Err(IndexError::Format(format!("--dataset {d}: expected fashion-mnist-784 or glove-50"))),
    }
}

/// The index and what building it took.
pub struct Built {
    pub index: Hnsw,
    /// Exact top-10 of every query.
    pub truth: Vec<Vec<(u32, f32)>>,
    pub truth_seconds: f64,
    pub build_seconds: f64,
}

/// Builds the index over `base` (rows of `dim`) and the exact top-10 of each query row.
pub fn build(base: &[f32], queries: &[f32], dim: usize, metric: Metric, m: usize, ef_construction: usize) -> Built {
    let t = Instant::now();
    let truth = BruteForce::new(base, dim, metric).search_batch(queries, 10, None);
    let truth_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let index = Hnsw::build(base, dim, metric, HnswParams { m, ef_construction, seed: 100 });
    Built { index, truth, truth_seconds, build_seconds: t.elapsed().as_secs_f64() }
}

/// One `ef`'s row: recall@10, QPS on one thread, QPS on all.
pub struct EfRow {
    pub ef: usize,
    pub recall: f64,
    pub qps_1: f64,
    pub qps_all: f64,
}

/// Recall and throughput at each of `efs`.
pub fn ef_sweep(b: &Built, queries: &[f32], dim: usize, efs: &[usize]) -> Vec<EfRow> {
    let nq = queries.len() / dim;
    efs.iter()
        .map(|&ef| {
            let t = Instant::now();
            let got: Vec<_> = queries.chunks(dim).map(|x| b.index.search(x, 10, ef, None)).collect();
            let qps_1 = nq as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            let _par: Vec<_> = queries.par_chunks(dim).map(|x| b.index.search(x, 10, ef, None)).collect();
            let qps_all = nq as f64 / t.elapsed().as_secs_f64();
            EfRow { ef, recall: recall(&got, &b.truth, 10), qps_1, qps_all }
        })
        .collect()
}

/// One selectivity's row of the filter sweep.
pub struct FilterRow {
    /// Share of points the filter passes, in percent.
    pub percent: f64,
    pub plan: Plan,
    pub recall: f64,
    pub qps_1: f64,
}

/// Filtered search at `ef`: each point gets a pseudo-random bucket 0..999 and a filter
/// `bucket < s·1000` keeps ≈ s of them, for s = 100%, 10%, 1%, 0.1%; recall against the exact
/// filtered top-10.
pub fn filter_sweep(b: &Built, base: &[f32], queries: &[f32], dim: usize, metric: Metric, ef: usize) -> Vec<FilterRow> {
    let (n, nq) = (base.len() / dim, queries.len() / dim);
    let bucket = |i: usize| (i.wrapping_mul(7919)) % 1000;
    let bf = BruteForce::new(base, dim, metric);
    [1000usize, 100, 10, 1]
        .iter()
        .map(|&keep| {
            let allowed = Bitset::from_fn(n, |i| bucket(i) < keep);
            let truth: Vec<_> = queries.par_chunks(dim).map(|x| bf.search(x, 10, Some(&allowed))).collect();
            let t = Instant::now();
            let mut plan = None;
            let got: Vec<_> = queries
                .chunks(dim)
                .map(|x| {
                    let (r, p) = b.index.search_filtered(x, 10, ef, &allowed);
                    plan = Some(p);
                    r
                })
                .collect();
            let qps_1 = nq as f64 / t.elapsed().as_secs_f64();
            FilterRow { percent: keep as f64 / 10.0, plan: plan.expect("at least one query"), recall: recall(&got, &truth, 10), qps_1 }
        })
        .collect()
}
