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

pub(crate) struct Pool {
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
        Pool { device, free: HashMap::new(), stats: MemStats::default(), capturing: None, owner: HashMap::new(), private: HashMap::new() }
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
                let p = match unsafe { drv::malloc_sync(size) } {
                    Ok(p) => p,
                    Err(_) => {
                        self.release_cached();
                        self.stats.flushes += 1;
                        unsafe { drv::malloc_sync(size) }.map_err(|_| {
                            let (free, total) = drv::mem_get_info().unwrap_or((0, 0));
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
                let _ = unsafe { drv::free_sync(p) };
                self.stats.reserved -= size;
            }
        }
    }
}
