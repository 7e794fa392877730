//! Caching allocator. cuMemAlloc/cuMemFree synchronize the device and cost tens of µs, so freed
//! blocks are kept in per-size free lists and handed out again. Every op runs on the device's one
//! stream, so a block freed by the host can be reused at once: later work on the stream is
//! ordered after the last use.
//!
//! Sizes are rounded (512 B below 1 MiB, 2 MiB above) so a training step's repeating shapes hit
//! the lists. On failure the cache is released and the allocation retried once; then the error
//! reports requested / allocated / reserved bytes.
//!
//! CUDA-graph capture (graph.rs) gets a private pool. A captured graph replays its kernels on the
//! same addresses every time, so every block it may touch must stay its own: blocks allocated
//! during the capture, and blocks freed during it (a captured kernel may still read them), belong
//! to the graph until it is dropped. Freed, they go back to the graph's free lists, never to the
//! shared ones, so no tensor made between replays can land on memory a replay overwrites.

use std::collections::HashMap;

use cudarc::driver::result as drv;

use super::CudaError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Bytes in use: in live tensors, and held by captured CUDA graphs (a graph's blocks are in
    /// use on every replay, whether or not a tensor still points at them).
    pub allocated: usize,
    /// Bytes obtained from the driver (live + cached).
    pub reserved: usize,
    /// Highest `allocated` since the last reset.
    pub peak: usize,
    /// Highest `reserved` since the last reset.
    pub peak_reserved: usize,
    /// Driver allocations made (cache misses).
    pub driver_allocs: u64,
    /// Times the cache was emptied to satisfy an allocation (each one synchronizes the device).
    pub flushes: u64,
}

/// Where blocks come from: the CUDA driver, or (in the unit tests below) a fake that hands out
/// addresses, so the pool's bookkeeping is tested without a GPU.
pub(crate) trait Source {
    fn malloc(&mut self, size: usize) -> Option<u64>;
    fn free(&mut self, p: u64, size: usize);
    /// (free, total) bytes on the device, for the out-of-memory error.
    fn mem_info(&self) -> (usize, usize);
}

pub(crate) struct Driver;

impl Source for Driver {
    fn malloc(&mut self, size: usize) -> Option<u64> {
        unsafe { drv::malloc_sync(size) }.ok()
    }
    fn free(&mut self, p: u64, _size: usize) {
        let _ = unsafe { drv::free_sync(p) };
    }
    fn mem_info(&self) -> (usize, usize) {
        drv::mem_get_info().unwrap_or((0, 0))
    }
}

pub(crate) struct Pool<S: Source = Driver> {
    src: S,
    device: usize,
    free: HashMap<usize, Vec<u64>>,
    stats: MemStats,
    /// The graph being captured, if any.
    capturing: Option<u64>,
    /// Blocks owned by a graph (block → graph id) and each graph's free lists.
    owner: HashMap<u64, u64>,
    private: HashMap<u64, HashMap<usize, Vec<u64>>>,
}

pub(crate) fn rounded(bytes: usize) -> usize {
    let b = bytes.max(1);
    if b < (1 << 20) {
        b.div_ceil(512) * 512
    } else {
        b.div_ceil(2 << 20) * (2 << 20)
    }
}

impl Pool {
    pub fn new(device: usize) -> Pool {
        Pool::with_source(device, Driver)
    }
}

impl<S: Source> Pool<S> {
    pub fn with_source(device: usize, src: S) -> Pool<S> {
        Pool { src, device, free: HashMap::new(), stats: MemStats::default(), capturing: None, owner: HashMap::new(), private: HashMap::new() }
    }

    pub fn stats(&self) -> MemStats {
        self.stats
    }
    pub fn reset_peak(&mut self) {
        self.stats.peak = self.stats.allocated;
        self.stats.peak_reserved = self.stats.reserved;
    }

    /// From now on blocks are allocated for (and freed into) graph `id`'s private pool.
    pub fn begin_capture(&mut self, id: u64) {
        assert!(self.capturing.is_none(), "a CUDA-graph capture is already running on this device");
        self.capturing = Some(id);
        self.private.entry(id).or_default();
    }
    /// Ends the capture; returns its graph id.
    pub fn end_capture(&mut self) -> Option<u64> {
        self.capturing.take()
    }
    /// Graph `id` is gone (and the device idle): its cached blocks join the shared lists; its
    /// blocks still held by tensors become ordinary blocks.
    pub fn release_graph(&mut self, id: u64) {
        if let Some(lists) = self.private.remove(&id) {
            for (size, v) in lists {
                self.stats.allocated -= size * v.len();
                self.free.entry(size).or_default().extend(v);
            }
        }
        self.owner.retain(|_, g| *g != id);
    }

    /// A block of at least `bytes`; returns (pointer, rounded size).
    pub fn alloc(&mut self, bytes: usize) -> Result<(u64, usize), CudaError> {
        let size = rounded(bytes);
        // A graph reuses its own blocks first (already counted as in use), then takes idle shared
        // ones for good.
        let own = self.capturing.and_then(|id| self.private.get_mut(&id)).and_then(|l| l.get_mut(&size)).and_then(|v| v.pop());
        if let Some(p) = own {
            return Ok((p, size));
        }
        let cached = self.free.get_mut(&size).and_then(|v| v.pop());
        let p = match cached {
            Some(p) => p,
            None => {
                let p = match self.src.malloc(size) {
                    Some(p) => p,
                    None => {
                        self.release_cached();
                        self.stats.flushes += 1;
                        self.src.malloc(size).ok_or_else(|| {
                            let (free, total) = self.src.mem_info();
                            CudaError::OutOfMemory { device: self.device, requested: bytes, allocated: self.stats.allocated, reserved: self.stats.reserved, free, total }
                        })?
                    }
                };
                self.stats.reserved += size;
                self.stats.driver_allocs += 1;
                self.stats.peak_reserved = self.stats.peak_reserved.max(self.stats.reserved);
                p
            }
        };
        if let Some(id) = self.capturing {
            self.owner.insert(p, id);
        }
        self.stats.allocated += size;
        self.stats.peak = self.stats.peak.max(self.stats.allocated);
        Ok((p, size))
    }

    pub fn free(&mut self, p: u64, size: usize) {
        let graph = match self.owner.get(&p) {
            Some(&g) => Some(g),
            None => self.capturing.inspect(|&g| {
                self.owner.insert(p, g);
            }),
        };
        match graph.and_then(|g| self.private.get_mut(&g)) {
            // Still in use by the graph: stays counted in `allocated`.
            Some(lists) => lists.entry(size).or_default().push(p),
            None => {
                self.stats.allocated -= size;
                self.free.entry(size).or_default().push(p);
            }
        }
    }

    /// Returns every cached block to the driver.
    pub fn release_cached(&mut self) {
        for (size, v) in self.free.drain() {
            for p in v {
                self.src.free(p, size);
                self.stats.reserved -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses from a counter, with an optional limit on bytes held.
    struct Fake {
        next: u64,
        held: usize,
        limit: usize,
    }

    impl Source for Fake {
        fn malloc(&mut self, size: usize) -> Option<u64> {
            if self.held + size > self.limit {
                return None;
            }
            self.held += size;
            self.next += 1 << 32;
            Some(self.next)
        }
        fn free(&mut self, _p: u64, size: usize) {
            self.held -= size;
        }
        fn mem_info(&self) -> (usize, usize) {
            (self.limit - self.held, self.limit)
        }
    }

    fn pool(limit: usize) -> Pool<Fake> {
        Pool::with_source(0, Fake { next: 0, held: 0, limit })
    }

    #[test]
    fn freed_blocks_are_reused_by_size() {
        let mut p = pool(usize::MAX);
        let (a, sa) = p.alloc(1000).unwrap();
        assert_eq!(sa, 1024, "rounded to 512 B below 1 MiB");
        p.free(a, sa);
        assert_eq!(p.alloc(600).unwrap().0, a, "same rounded size: the cached block");
        assert_eq!(p.stats().driver_allocs, 1);
        let (_, big) = p.alloc(3 << 20).unwrap();
        assert_eq!(big, 4 << 20, "rounded to 2 MiB above 1 MiB");
    }

    #[test]
    fn a_graph_keeps_its_blocks_until_it_is_released() {
        let mut p = pool(usize::MAX);
        // Before capture: a cached block, and a live one the capture will free.
        let (idle, s) = p.alloc(1024).unwrap();
        let (pre, _) = p.alloc(1024).unwrap();
        p.free(idle, s);
        p.begin_capture(7);
        let (inside, _) = p.alloc(1024).unwrap();
        assert_eq!(inside, idle, "an idle shared block is taken into the graph");
        p.free(pre, 1024); // freed during capture: a captured kernel may still read it
        let (again, _) = p.alloc(1024).unwrap();
        assert_eq!(again, pre, "within the capture, the graph reuses its own freed blocks");
        p.free(inside, 1024);
        p.free(again, 1024);
        assert_eq!(p.end_capture(), Some(7));
        // Between replays: nothing the graph uses is handed out, and it stays counted in use.
        assert_eq!(p.stats().allocated, 2048, "the graph's two blocks count as in use");
        let (outside, _) = p.alloc(1024).unwrap();
        assert!(outside != idle && outside != pre, "a new block, not one the graph replays on");
        p.free(outside, 1024);
        assert_eq!(p.stats().allocated, 2048);
        // Released: its blocks join the shared cache.
        p.release_graph(7);
        assert_eq!(p.stats().allocated, 0);
        let mut got: Vec<u64> = (0..3).map(|_| p.alloc(1024).unwrap().0).collect();
        got.sort();
        let mut want = vec![idle, pre, outside];
        want.sort();
        assert_eq!(got, want, "all three cached blocks reused, no new driver allocation");
        assert_eq!(p.stats().driver_allocs, 3);
    }

    #[test]
    fn a_tensor_outliving_its_graph_frees_into_the_shared_cache() {
        let mut p = pool(usize::MAX);
        p.begin_capture(1);
        let (out, s) = p.alloc(4096).unwrap(); // e.g. the captured step's loss
        p.end_capture();
        p.release_graph(1);
        assert_eq!(p.stats().allocated, s);
        p.free(out, s);
        assert_eq!(p.stats().allocated, 0);
        assert_eq!(p.alloc(4096).unwrap().0, out, "back in the shared cache");
    }

    #[test]
    fn out_of_memory_flushes_the_cache_then_reports_the_numbers() {
        let mut p = pool(5 << 20);
        let (a, sa) = p.alloc(2 << 20).unwrap();
        p.free(a, sa); // cached: 2 MiB held by the pool, not in use
        let (_b, _) = p.alloc(4 << 20).unwrap();
        assert_eq!(p.stats().flushes, 1, "the cached block was returned to make room");
        assert_eq!(p.stats().reserved, 4 << 20);
        match p.alloc(2 << 20) {
            Err(CudaError::OutOfMemory { requested, allocated, reserved, free, total, .. }) => {
                assert_eq!((requested, allocated, reserved, free, total), (2 << 20, 4 << 20, 4 << 20, 1 << 20, 5 << 20));
            }
            other => panic!("expected out of memory, got {other:?}"),
        }
    }
}
