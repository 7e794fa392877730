//! HNSW (Malkov & Yashunin, 2018). Names follow the paper: `M`, `M0 = 2M` links on layer 0,
//! `mL = 1/ln M` for level generation, `ef_construction`, `ef`.
//!
//! Layout: a packed level-0 arena, one fixed-size record per point
//! `[link count, M0 links, dim floats]`, so the links of a point and its vector share cache lines
//! (a search touches both for every point it expands). Upper-layer links, which few points have,
//! are kept per point.
//!
//! Parallel build: every point's level is drawn up front (seeded), all vectors are copied into the
//! arena first, then points are inserted from many threads. A point's link lists are read and
//! written only under that point's lock while building; queries on a built index take no locks.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::distance::{self, DistFn, Metric};
use crate::filter::Bitset;

#[derive(Clone, Copy, Debug)]
pub struct HnswParams {
    pub m: usize,
    pub ef_construction: usize,
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams { m: 16, ef_construction: 200, seed: 100 }
    }
}

/// A distance with a total order (NaN sorts last), paired with a point id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cand(pub f32, pub u32);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

/// Generation-stamped visited marks: clearing is one increment, not a pass over all points.
struct Visited {
    mark: Vec<u16>,
    cur: u16,
}

impl Visited {
    fn new(n: usize) -> Visited {
        Visited { mark: vec![0; n], cur: 0 }
    }
    fn reset(&mut self, n: usize) {
        if self.mark.len() < n {
            self.mark.resize(n, 0);
        }
        self.cur = self.cur.wrapping_add(1);
        if self.cur == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.cur = 1;
        }
    }
    #[inline]
    fn prefetch(&self, i: u32) {
        if let Some(m) = self.mark.get(i as usize) {
            prefetch(m as *const u16);
        }
    }
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        let m = &mut self.mark[i as usize];
        if *m == self.cur {
            false
        } else {
            *m = self.cur;
            true
        }
    }
}

/// How many neighbours ahead the search loop prefetches (measured on glove-50, see benchmarks.md).
const PREFETCH: usize = 12;

#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint with no memory effects, valid for any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

pub struct Hnsw {
    pub(crate) metric: Metric,
    pub(crate) dist: DistFn,
    pub(crate) dist_name: &'static str,
    pub(crate) dim: usize,
    pub(crate) m: usize,
    pub(crate) m0: usize,
    pub(crate) ef_construction: usize,
    pub(crate) seed: u64,
    /// Level-0 arena: n records of `rec` u32 words.
    pub(crate) arena: Vec<u32>,
    pub(crate) rec: usize,
    pub(crate) levels: Vec<u8>,
    /// Upper layers, flat: point i with level L > 0 owns L blocks of `1 + M` words (count, links)
    /// for layers 1..=L, starting at `upper_off[i]`.
    pub(crate) upper: Vec<u32>,
    pub(crate) upper_off: Vec<usize>,
    /// Base pointers of the two arenas, taken with exclusive access (`refresh_ptrs`) so that
    /// build threads can write link lists under per-point locks without aliasing `&mut`s.
    arena_ptr: *mut u32,
    upper_ptr: *mut u32,
    pub(crate) locks: Vec<Mutex<()>>,
    /// (entry point, max level); None when empty.
    pub(crate) entry: Mutex<Option<(u32, usize)>>,
    pub(crate) deleted: Vec<bool>,
    pub(crate) n_deleted: usize,
    visited: Mutex<Vec<Visited>>,
}

// SAFETY: the arenas are written only (a) with &mut self, or (b) during `build`, where each point's
// link lists are accessed only under that point's lock and vectors are written before any thread
// starts; queries (&self after build) only read. The raw base pointers stay valid because the
// arenas are reallocated only through &mut self, which refreshes them.
unsafe impl Sync for Hnsw {}
unsafe impl Send for Hnsw {}

impl Hnsw {
    pub fn len(&self) -> usize {
        self.levels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn kernel(&self) -> &'static str {
        self.dist_name
    }
    pub fn params(&self) -> HnswParams {
        HnswParams { m: self.m, ef_construction: self.ef_construction, seed: self.seed }
    }
    pub fn num_deleted(&self) -> usize {
        self.n_deleted
    }
    pub fn max_level(&self) -> usize {
        self.entry.lock().unwrap().map_or(0, |e| e.1)
    }

    /// Bytes held by the graph and vectors.
    pub fn memory_bytes(&self) -> usize {
        self.arena.len() * 4 + self.upper.len() * 4 + self.upper_off.len() * 8 + self.levels.len() * 2
    }

    pub(crate) fn empty(metric: Metric, dim: usize, p: HnswParams) -> Hnsw {
        assert!(p.m >= 2, "HNSW needs M >= 2");
        let (dist, dist_name) = distance::select(metric);
        let m0 = 2 * p.m;
        Hnsw {
            metric,
            dist,
            dist_name,
            dim,
            m: p.m,
            m0,
            ef_construction: p.ef_construction.max(p.m),
            seed: p.seed,
            arena: Vec::new(),
            rec: 1 + m0 + dim,
            levels: Vec::new(),
            upper: Vec::new(),
            upper_off: Vec::new(),
            arena_ptr: std::ptr::null_mut(),
            upper_ptr: std::ptr::null_mut(),
            locks: Vec::new(),
            entry: Mutex::new(None),
            deleted: Vec::new(),
            n_deleted: 0,
            visited: Mutex::new(Vec::new()),
        }
    }

    /// Builds an index over `n = vectors.len() / dim` points (ids 0..n) using all rayon threads.
    pub fn build(vectors: &[f32], dim: usize, metric: Metric, p: HnswParams) -> Hnsw {
        assert!(dim > 0 && vectors.len().is_multiple_of(dim), "{} floats is not a whole number of {dim}-d vectors", vectors.len());
        let n = vectors.len() / dim;
        let mut h = Hnsw::empty(metric, dim, p);
        let ml = 1.0 / (p.m as f64).ln();
        let mut rng = SplitMix(p.seed);
        h.levels = (0..n).map(|_| ((-(rng.uniform().max(1e-300)).ln() * ml) as usize).min(255) as u8).collect();
        let rec = h.rec;
        let mut arena = vec![0u32; n * rec];
        arena.par_chunks_mut(rec).zip(vectors.par_chunks(dim)).for_each(|(r, v)| {
            let dst = &mut r[1 + h.m0..];
            for (d, &x) in dst.iter_mut().zip(v) {
                *d = x.to_bits();
            }
            if metric == Metric::Cosine {
                // SAFETY: u32 and f32 have the same size and alignment.
                let f = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dim) };
                distance::normalize(f);
            }
        });
        h.arena = arena;
        h.set_upper_layout();
        h.locks = (0..n).map(|_| Mutex::new(())).collect();
        h.deleted = vec![false; n];
        if n == 0 {
            return h;
        }
        *h.entry.lock().unwrap() = Some((0, h.levels[0] as usize));
        let progress = fmlab_progress::bar(n as u64 - 1, "inserting vectors");
        (1..n as u32).into_par_iter().for_each(|q| {
            h.insert::<true>(q);
            progress.inc(1);
        });
        h
    }

    /// Allocates the flat upper-layer arena for `levels` (all links empty).
    pub(crate) fn set_upper_layout(&mut self) {
        let mut off = 0;
        self.upper_off = self.levels.iter().map(|&l| {
            let o = off;
            off += l as usize * (1 + self.m);
            o
        }).collect();
        self.upper = vec![0u32; off];
        self.refresh_ptrs();
    }

    pub(crate) fn refresh_ptrs(&mut self) {
        self.arena_ptr = self.arena.as_mut_ptr();
        self.upper_ptr = self.upper.as_mut_ptr();
    }

    /// Appends one point (single-threaded; &mut self).
    pub fn add(&mut self, v: &[f32]) -> u32 {
        assert_eq!(v.len(), self.dim, "add: vector of {} for a {}-d index", v.len(), self.dim);
        let q = self.len() as u32;
        let ml = 1.0 / (self.m as f64).ln();
        let mut rng = SplitMix(self.seed ^ (q as u64).wrapping_mul(0x9E3779B97F4A7C15));
        let level = ((-(rng.uniform().max(1e-300)).ln() * ml) as usize).min(255);
        let mut rec = vec![0u32; self.rec];
        let mut vv = v.to_vec();
        if self.metric == Metric::Cosine {
            distance::normalize(&mut vv);
        }
        for (d, x) in rec[1 + self.m0..].iter_mut().zip(&vv) {
            *d = x.to_bits();
        }
        self.arena.extend_from_slice(&rec);
        self.upper_off.push(self.upper.len());
        self.upper.resize(self.upper.len() + level * (1 + self.m), 0);
        self.refresh_ptrs();
        self.levels.push(level as u8);
        self.locks.push(Mutex::new(()));
        self.deleted.push(false);
        let mut e = self.entry.lock().unwrap();
        if e.is_none() {
            *e = Some((q, level));
            return q;
        }
        drop(e);
        self.insert::<false>(q);
        q
    }

    /// Marks a point deleted: it is never returned again but still routes searches.
    pub fn delete(&mut self, id: u32) -> bool {
        match self.deleted.get_mut(id as usize) {
            Some(d) if !*d => {
                *d = true;
                self.n_deleted += 1;
                true
            }
            _ => false,
        }
    }

    pub fn is_deleted(&self, id: u32) -> bool {
        self.deleted[id as usize]
    }

    #[inline]
    pub fn vector(&self, i: u32) -> &[f32] {
        // SAFETY: vectors are written before any reader can see the point and never change.
        unsafe {
            let p = self.arena_ptr.add(i as usize * self.rec + 1 + self.m0) as *const f32;
            std::slice::from_raw_parts(p, self.dim)
        }
    }

    /// Raw pointer to the (count, links...) block of point `i` on `layer`.
    #[inline]
    fn links_ptr(&self, i: u32, layer: usize) -> *mut u32 {
        debug_assert!(layer <= self.levels[i as usize] as usize);
        // SAFETY: in bounds by construction; callers hold the point's lock while building, or
        // only read after it.
        unsafe {
            if layer == 0 {
                self.arena_ptr.add(i as usize * self.rec)
            } else {
                self.upper_ptr.add(self.upper_off[i as usize] + (layer - 1) * (1 + self.m))
            }
        }
    }

    /// Copies the links of `i` on `layer` into `out` under the point's lock (while building).
    #[inline]
    fn read_links_locked(&self, i: u32, layer: usize, out: &mut Vec<u32>) {
        let _g = self.locks[i as usize].lock().unwrap();
        out.clear();
        // SAFETY: see links_ptr.
        unsafe {
            let p = self.links_ptr(i, layer);
            let c = *p as usize;
            out.extend_from_slice(std::slice::from_raw_parts(p.add(1), c));
        }
    }

    fn write_links(&self, i: u32, layer: usize, links: &[u32]) {
        // SAFETY: caller holds the lock of `i` (or &mut self).
        unsafe {
            let p = self.links_ptr(i, layer);
            *p = links.len() as u32;
            std::ptr::copy_nonoverlapping(links.as_ptr(), p.add(1), links.len());
        }
    }

    /// Prefetches the cache lines of a point's vector (at most 4: longer vectors are streamed
    /// by the hardware prefetcher once the first lines arrive).
    #[inline(always)]
    fn prefetch_vector(&self, i: u32) {
        let v = self.vector(i).as_ptr() as *const u8;
        let lines = (self.dim * 4).div_ceil(64).min(4);
        for l in 0..lines {
            // SAFETY: the address is inside the arena (`lines` covers at most the vector).
            prefetch(unsafe { v.add(l * 64) });
        }
    }

    #[inline]
    fn d(&self, q: &[f32], i: u32) -> f32 {
        (self.dist)(q, self.vector(i))
    }

    fn take_visited(&self) -> Visited {
        let mut v = self.visited.lock().unwrap().pop().unwrap_or_else(|| Visited::new(self.len()));
        v.reset(self.len());
        v
    }
    fn give_visited(&self, v: Visited) {
        self.visited.lock().unwrap().push(v);
    }

    /// Greedy descent from `ep` through layers `top..=bottom+1`, returning the closest point found.
    fn descend<const LOCKED: bool>(&self, q: &[f32], mut ep: u32, top: usize, bottom: usize) -> u32 {
        let mut d_ep = self.d(q, ep);
        let mut buf = Vec::new();
        for layer in (bottom + 1..=top).rev() {
            loop {
                let mut changed = false;
                let links = self.links::<LOCKED>(ep, layer, &mut buf);
                for &e in links {
                    let d = self.d(q, e);
                    if d < d_ep {
                        d_ep = d;
                        ep = e;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        ep
    }

    /// The links of `i` on `layer`: read in place on a built index (no writers), copied into
    /// `buf` under the point's lock while building.
    #[inline]
    fn links<'a, const LOCKED: bool>(&'a self, i: u32, layer: usize, buf: &'a mut Vec<u32>) -> &'a [u32] {
        if LOCKED {
            self.read_links_locked(i, layer, buf);
            buf
        } else {
            // SAFETY: no writers once built; count and links are in bounds by construction.
            unsafe {
                let p = self.links_ptr(i, layer);
                std::slice::from_raw_parts(p.add(1), *p as usize)
            }
        }
    }

    /// Beam search on one layer (the paper's SEARCH-LAYER): returns up to `ef` closest points as a
    /// max-heap. Points failing `accept` are traversed but not returned (filtered/deleted search).
    fn search_layer<const LOCKED: bool, A: Fn(u32) -> bool>(&self, q: &[f32], ep: u32, ef: usize, layer: usize, accept: A) -> BinaryHeap<Cand> {
        let mut visited = self.take_visited();
        let mut top: BinaryHeap<Cand> = BinaryHeap::with_capacity(ef + 1);
        let mut cands: BinaryHeap<Reverse<Cand>> = BinaryHeap::new();
        let d0 = self.d(q, ep);
        visited.insert(ep);
        cands.push(Reverse(Cand(d0, ep)));
        let mut lower_bound = f32::INFINITY;
        if accept(ep) {
            top.push(Cand(d0, ep));
            lower_bound = d0;
        }
        let mut buf = Vec::new();
        while let Some(Reverse(c)) = cands.pop() {
            if c.0 > lower_bound && top.len() >= ef {
                break;
            }
            let links = self.links::<LOCKED>(c.1, layer, &mut buf);
            #[cfg(target_arch = "x86_64")]
            for &e in links.iter().take(PREFETCH) {
                // Bring the first neighbours' visited marks and vectors in while the loop starts.
                visited.prefetch(e);
                self.prefetch_vector(e);
            }
            for (j, &e) in links.iter().enumerate() {
                #[cfg(target_arch = "x86_64")]
                if let Some(&nx) = links.get(j + PREFETCH) {
                    visited.prefetch(nx);
                    self.prefetch_vector(nx);
                }
                let _ = j;
                if !visited.insert(e) {
                    continue;
                }
                let d = self.d(q, e);
                if top.len() < ef || d < lower_bound {
                    cands.push(Reverse(Cand(d, e)));
                    if accept(e) {
                        top.push(Cand(d, e));
                        if top.len() > ef {
                            top.pop();
                        }
                        lower_bound = top.peek().map_or(f32::INFINITY, |c| c.0);
                    }
                }
            }
        }
        self.give_visited(visited);
        top
    }

    /// The neighbour-selection heuristic (the paper's Algorithm 4, as hnswlib): walk candidates
    /// from closest; keep one only if it is closer to the base than to every kept neighbour.
    fn select_heuristic(&self, mut cands: Vec<Cand>, m: usize) -> Vec<Cand> {
        if cands.len() <= m {
            cands.sort();
            return cands;
        }
        cands.sort();
        let mut kept: Vec<Cand> = Vec::with_capacity(m);
        for c in cands {
            if kept.len() >= m {
                break;
            }
            let v = self.vector(c.1);
            if kept.iter().all(|k| (self.dist)(v, self.vector(k.1)) >= c.0) {
                kept.push(c);
            }
        }
        kept
    }

    /// Inserts point `q` (vector already in the arena, level drawn).
    fn insert<const LOCKED: bool>(&self, q: u32) {
        let level = self.levels[q as usize] as usize;
        // Hold the entry lock through the insert only if this point may become the new entry.
        let mut entry_guard = None;
        let (ep, max_level) = {
            let g = self.entry.lock().unwrap();
            let e = g.expect("insert into an index with no entry point");
            if level > e.1 {
                entry_guard = Some(g);
            }
            e
        };
        let qv = self.vector(q);
        let mut ep = self.descend::<LOCKED>(qv, ep, max_level, level);
        let accept_all = |_: u32| true;
        let mut buf = Vec::new();
        for layer in (0..=level.min(max_level)).rev() {
            let top = self.search_layer::<LOCKED, _>(qv, ep, self.ef_construction, layer, accept_all);
            let cands: Vec<Cand> = top.into_vec();
            let closest = cands.iter().min().map(|c| c.1).unwrap_or(ep);
            let selected = self.select_heuristic(cands.into_iter().filter(|c| c.1 != q).collect(), self.m);
            let max_links = if layer == 0 { self.m0 } else { self.m };
            {
                let _g = if LOCKED { Some(self.locks[q as usize].lock().unwrap()) } else { None };
                let ids: Vec<u32> = selected.iter().map(|c| c.1).collect();
                self.write_links(q, layer, &ids);
            }
            for s in &selected {
                let e = s.1;
                let _g = if LOCKED { Some(self.locks[e as usize].lock().unwrap()) } else { None };
                // SAFETY: we hold e's lock.
                unsafe {
                    let p = self.links_ptr(e, layer);
                    let c = *p as usize;
                    let cur = std::slice::from_raw_parts(p.add(1), c);
                    if cur.contains(&q) {
                        continue;
                    }
                    if c < max_links {
                        *p.add(1 + c) = q;
                        *p = (c + 1) as u32;
                        continue;
                    }
                    buf.clear();
                    buf.extend_from_slice(cur);
                }
                // Overflow: re-select e's links among its current ones plus q.
                let ev = self.vector(e);
                let mut pool: Vec<Cand> = buf.iter().map(|&x| Cand((self.dist)(ev, self.vector(x)), x)).collect();
                pool.push(Cand(s.0, q));
                let keep: Vec<u32> = self.select_heuristic(pool, max_links).iter().map(|c| c.1).collect();
                self.write_links(e, layer, &keep);
            }
            ep = closest;
        }
        if let Some(mut g) = entry_guard {
            if level > g.map_or(0, |e| e.1) {
                *g = Some((q, level));
            }
        }
    }

    /// The `k` nearest points to `query` (id, distance), closest first; `ef` ≥ k is the beam width.
    /// Deleted points are never returned; with `allowed`, only points in the set are.
    pub fn search(&self, query: &[f32], k: usize, ef: usize, allowed: Option<&Bitset>) -> Vec<(u32, f32)> {
        assert_eq!(query.len(), self.dim, "query of {} for a {}-d index", query.len(), self.dim);
        let Some((ep, max_level)) = *self.entry.lock().unwrap() else { return vec![] };
        let mut qn;
        let q = if self.metric == Metric::Cosine {
            qn = query.to_vec();
            distance::normalize(&mut qn);
            &qn[..]
        } else {
            query
        };
        let ep = self.descend::<false>(q, ep, max_level, 0);
        let deleted = &self.deleted;
        let any_deleted = self.n_deleted > 0;
        let top = match allowed {
            Some(set) => self.search_layer::<false, _>(q, ep, ef.max(k), 0, |i| set.contains(i as usize) && !deleted[i as usize]),
            None if any_deleted => self.search_layer::<false, _>(q, ep, ef.max(k), 0, |i| !deleted[i as usize]),
            None => self.search_layer::<false, _>(q, ep, ef.max(k), 0, |_| true),
        };
        let mut v = top.into_sorted_vec();
        v.truncate(k);
        v.into_iter().map(|c| (c.1, c.0)).collect()
    }

    /// Rebuilds without the deleted points (the periodic rebuild after many deletes). Returns the
    /// new index and, for each new id, the old id.
    pub fn compact(&self) -> (Hnsw, Vec<u32>) {
        let keep: Vec<u32> = (0..self.len() as u32).filter(|&i| !self.deleted[i as usize]).collect();
        let mut vecs = Vec::with_capacity(keep.len() * self.dim);
        for &i in &keep {
            vecs.extend_from_slice(self.vector(i));
        }
        (Hnsw::build(&vecs, self.dim, self.metric, self.params()), keep)
    }
}

/// SplitMix64: the level generator (seeded, so builds draw the same levels).
struct SplitMix(u64);
impl SplitMix {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}
