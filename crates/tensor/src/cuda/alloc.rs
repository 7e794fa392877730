//! Caching allocator. cuMemAlloc/cuMemFree synchronize the device and cost tens of µs, so freed
//! blocks are kept in per-size free lists and handed out again. Every op runs on the device's one
//! stream, so a block freed by the host can be reused at once: later work on the stream is
//! ordered after the last use.
//!
//! Sizes are rounded (512 B below 1 MiB, 2 MiB above) so a training step's repeating shapes hit
//! the lists. On failure the cache is released and the allocation retried once; then the error
//! reports requested / allocated / reserved bytes.

use std::collections::HashMap;

use cudarc::driver::result as drv;

use super::CudaError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Bytes in live tensors.
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
        Pool { device, free: HashMap::new(), stats: MemStats::default() }
    }

    pub fn stats(&self) -> MemStats {
        self.stats
    }
    pub fn reset_peak(&mut self) {
        self.stats.peak = self.stats.allocated;
        self.stats.peak_reserved = self.stats.reserved;
    }

    /// A block of at least `bytes`; returns (pointer, rounded size).
    pub fn alloc(&mut self, bytes: usize) -> Result<(u64, usize), CudaError> {
        let size = rounded(bytes);
        let p = match self.free.get_mut(&size).and_then(|v| v.pop()) {
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
        self.stats.allocated += size;
        self.stats.peak = self.stats.peak.max(self.stats.allocated);
        Ok((p, size))
    }

    pub fn free(&mut self, p: u64, size: usize) {
        self.stats.allocated -= size;
        self.free.entry(size).or_default().push(p);
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
