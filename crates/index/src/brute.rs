//! Exact search: the ground truth for recall, the small-collection path, and the planner's choice
//! for selective filters.

use rayon::prelude::*;

use crate::distance::{self, DistFn, Metric};
use crate::filter::Bitset;
use crate::hnsw::{Cand, Hnsw};

pub struct BruteForce {
    metric: Metric,
    dist: DistFn,
    dim: usize,
    data: Vec<f32>,
}

/// Top-k of `(distance, id)` pairs, closest first (ties by id).
fn top_k(it: impl Iterator<Item = Cand>, k: usize) -> Vec<(u32, f32)> {
    let mut heap = std::collections::BinaryHeap::with_capacity(k + 1);
    for c in it {
        if heap.len() < k {
            heap.push(c);
        } else if c < *heap.peek().unwrap() {
            heap.pop();
            heap.push(c);
        }
    }
    heap.into_sorted_vec().into_iter().map(|c| (c.1, c.0)).collect()
}

impl BruteForce {
    pub fn new(vectors: &[f32], dim: usize, metric: Metric) -> BruteForce {
        let mut data = vectors.to_vec();
        if metric == Metric::Cosine {
            data.chunks_mut(dim).for_each(distance::normalize);
        }
        BruteForce { metric, dist: distance::select(metric).0, dim, data }
    }
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn search(&self, query: &[f32], k: usize, allowed: Option<&Bitset>) -> Vec<(u32, f32)> {
        let mut q = query.to_vec();
        if self.metric == Metric::Cosine {
            distance::normalize(&mut q);
        }
        let it = self.data.chunks(self.dim).enumerate().filter(|(i, _)| allowed.is_none_or(|a| a.contains(*i))).map(|(i, v)| Cand((self.dist)(&q, v), i as u32));
        top_k(it, k)
    }

    /// Many queries in parallel (ground truth for benchmarks).
    pub fn search_batch(&self, queries: &[f32], k: usize, allowed: Option<&Bitset>) -> Vec<Vec<(u32, f32)>> {
        queries.par_chunks(self.dim).map(|q| self.search(q, k, allowed)).collect()
    }
}

/// How a filtered query is answered. With n points, m of them allowed, the exact scan costs m
/// distance computations; a filter-aware graph search must expand about ef/s points (s = m/n)
/// to collect ef allowed ones, each costing up to M0 distances. The planner scans exactly when
///     m² ≤ ef · M0 · n,
/// i.e. when the scan is estimated to be no more expensive than the graph search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Exact,
    Graph,
}

pub fn plan(n: usize, allowed: usize, ef: usize, m0: usize) -> Plan {
    if (allowed as u128).pow(2) <= ef as u128 * m0 as u128 * n as u128 {
        Plan::Exact
    } else {
        Plan::Graph
    }
}

impl Hnsw {
    /// Filtered search with the planner above; deleted points are never returned.
    pub fn search_filtered(&self, query: &[f32], k: usize, ef: usize, allowed: &Bitset) -> (Vec<(u32, f32)>, Plan) {
        match plan(self.len(), allowed.count(), ef.max(k), self.m0) {
            Plan::Graph => (self.search(query, k, ef, Some(allowed)), Plan::Graph),
            Plan::Exact => {
                let mut q = query.to_vec();
                if self.metric == Metric::Cosine {
                    distance::normalize(&mut q);
                }
                let it = allowed.iter().filter(|&i| !self.is_deleted(i as u32)).map(|i| Cand((self.dist)(&q, self.vector(i as u32)), i as u32));
                (top_k(it, k), Plan::Exact)
            }
        }
    }
}
