//! Vector indexes: HNSW (graph, approximate) and brute force (exact), payload filters with a
//! planner, and a versioned, checksummed file format. No dependency on the tensor crate.

pub mod bench;
pub mod brute;
pub mod distance;
pub mod file;
pub mod filter;
pub mod hnsw;
pub mod vectors;

pub use brute::{plan, BruteForce, Plan};
pub use distance::Metric;
pub use filter::{Bitset, Filter, Payload, Value};
pub use hnsw::{Hnsw, HnswParams};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{0}")]
    Format(String),
    #[error("filter: {0}")]
    Filter(String),
}

impl IndexError {
    pub(crate) fn file(path: &std::path::Path, msg: impl std::fmt::Display) -> IndexError {
        IndexError::File { path: path.display().to_string(), msg: msg.to_string() }
    }
}

/// recall@k of `got` against exact `truth` (ids), averaged over queries.
pub fn recall(got: &[Vec<(u32, f32)>], truth: &[Vec<(u32, f32)>], k: usize) -> f64 {
    let mut hit = 0usize;
    let mut total = 0usize;
    for (g, t) in got.iter().zip(truth) {
        let t: std::collections::HashSet<u32> = t.iter().take(k).map(|x| x.0).collect();
        hit += g.iter().take(k).filter(|x| t.contains(&x.0)).count();
        total += t.len();
    }
    hit as f64 / total.max(1) as f64
}
