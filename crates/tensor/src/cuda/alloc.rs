//! Caching allocator. cuMemAlloc/cuMemFree synchronize the device and cost tens of µs, so freed
//! blocks are kept in per-size free lists and handed out again.
//!
//! Streams (stream.rs): a block belongs to the stream it was allocated on, and its free lists are
//! that stream's. A block freed by the host can be reused at once by the next allocation on the
//! same stream: that work is ordered after the block's last use. A block also used on other
//! streams (`record_use`, from `Tensor::record_stream`) is not: when freed, an event is recorded
//! on each of those streams, and the block waits in `pending` (still counted in use) until they
//! have all passed.
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
    /// An event recorded after the work enqueued so far on `stream` (a CUstream as an integer).
    fn record(&mut self, stream: usize) -> u64;
    /// Whether event `ev`'s work is done; a done event is destroyed.
    fn done(&mut self, ev: u64) -> bool;
    /// Waits for all work on the device.
    fn wait_all(&mut self);
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
    fn record(&mut self, stream: usize) -> u64 {
        use cudarc::driver::sys;
        // On failure (an earlier fault), a null event: `done` then waits for the whole device.
        let Ok(ev) = drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING) else { return 0 };
        if unsafe { drv::event::record(ev, stream as sys::CUstream) }.is_err() {
            let _ = unsafe { drv::event::destroy(ev) };
            return 0;
        }
        ev as u64
    }
    fn done(&mut self, ev: u64) -> bool {
        use cudarc::driver::sys;
        if ev == 0 {
            self.wait_all();
            return true;
        }
        let ev = ev as sys::CUevent;
        match unsafe { drv::event::query(ev) } {
            Err(drv::DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => false,
            _ => {
                let _ = unsafe { drv::event::destroy(ev) };
                true
            }
        }
    }
    fn wait_all(&mut self) {
        let _ = drv::ctx::synchronize();
    }
}

/// A freed block waiting for other streams' uses of it to pass.
struct Pending {
    p: u64,
    size: usize,
    stream: u32,
    events: Vec<u64>,
}

pub(crate) struct Pool<S: Source = Driver> {
    src: S,
    device: usize,
    /// Cached blocks by (stream id, size).
    free: HashMap<(u32, usize), Vec<u64>>,
    /// Streams by id (CUstream as an integer), for recording events on them.
    streams: Vec<usize>,
    /// Live blocks used on streams other than their own: block → those stream ids.
    uses: HashMap<u64, Vec<u32>>,
    pending: Vec<Pending>,
    stats: MemStats,
    /// The graph being captured, if any.
    capturing: Option<u64>,
    /// Blocks owned by a graph (block → graph id) and each graph's free lists.
    owner: HashMap<u64, u64>,
    private: HashMap<u64, HashMap<usize, Vec<u64>>>,
    /// The stream each graph was captured on.
    graph_stream: HashMap<u64, u32>,
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
        Pool { src, device, free: HashMap::new(), streams: Vec::new(), uses: HashMap::new(), pending: Vec::new(), stats: MemStats::default(), capturing: None, owner: HashMap::new(), private: HashMap::new(), graph_stream: HashMap::new() }
    }

    /// Stream `id` exists (its handle, for events recorded on it).
    pub fn add_stream(&mut self, id: u32, stream: usize) {
        let i = id as usize;
        if self.streams.len() <= i {
            self.streams.resize(i + 1, 0);
        }
        self.streams[i] = stream;
    }

    /// Live block `p` (allocated on stream `own`) is used by work on stream `other` too.
    pub fn record_use(&mut self, p: u64, own: u32, other: u32) {
        if other != own {
            let v = self.uses.entry(p).or_default();
            if !v.contains(&other) {
                v.push(other);
            }
        }
    }

    /// Moves pending blocks whose events have passed (all of them, waiting, with `wait`) to
    /// their streams' free lists.
    fn collect_pending(&mut self, wait: bool) {
        if self.pending.is_empty() {
            return;
        }
        if wait {
            self.src.wait_all();
        }
        let mut i = 0;
        while i < self.pending.len() {
            let src = &mut self.src;
            self.pending[i].events.retain(|&e| !src.done(e));
            if self.pending[i].events.is_empty() {
                let b = self.pending.swap_remove(i);
                self.stats.allocated -= b.size;
                self.free.entry((b.stream, b.size)).or_default().push(b.p);
            } else {
                i += 1;
            }
        }
    }

    pub fn stats(&self) -> MemStats {
        self.stats
    }
    pub fn reset_peak(&mut self) {
        self.stats.peak = self.stats.allocated;
        self.stats.peak_reserved = self.stats.reserved;
    }

    /// From now on blocks are allocated for (and freed into) graph `id`'s private pool; the graph
    /// is captured on stream `stream`.
    pub fn begin_capture(&mut self, id: u64, stream: u32) {
        assert!(self.capturing.is_none(), "a CUDA-graph capture is already running on this device");
        self.capturing = Some(id);
        self.graph_stream.insert(id, stream);
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
            // To the stream the graph was captured on (its replays' stream).
            let stream = self.graph_stream.remove(&id).unwrap_or(0);
            for (size, v) in lists {
                self.stats.allocated -= size * v.len();
                self.free.entry((stream, size)).or_default().extend(v);
            }
        }
        self.owner.retain(|_, g| *g != id);
    }

    /// A block of at least `bytes` for work on stream `stream`; returns (pointer, rounded size).
    pub fn alloc(&mut self, bytes: usize, stream: u32) -> Result<(u64, usize), CudaError> {
        let size = rounded(bytes);
        self.collect_pending(false);
        // A graph reuses its own blocks first (already counted as in use), then takes idle shared
        // ones for good.
        let own = self.capturing.and_then(|id| self.private.get_mut(&id)).and_then(|l| l.get_mut(&size)).and_then(|v| v.pop());
        if let Some(p) = own {
            return Ok((p, size));
        }
        let cached = self.free.get_mut(&(stream, size)).and_then(|v| v.pop());
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

    /// Block `p` (allocated on stream `stream`) is no longer referenced by the host.
    pub fn free(&mut self, p: u64, size: usize, stream: u32) {
        let other = self.uses.remove(&p);
        let graph = match self.owner.get(&p) {
            Some(&g) => Some(g),
            None => self.capturing.inspect(|&g| {
                self.owner.insert(p, g);
            }),
        };
        match graph.and_then(|g| self.private.get_mut(&g)) {
            // Still in use by the graph: stays counted in `allocated`. Other streams' uses are not
            // waited for here: the graph's blocks are reused only by its own capture and join the
            // shared lists when the graph is dropped, after a device-wide synchronization.
            Some(lists) => lists.entry(size).or_default().push(p),
            None => match other {
                Some(streams) => {
                    let events = streams.iter().map(|&s| self.src.record(*self.streams.get(s as usize).expect("record_stream: a stream the pool was told of (add_stream)"))).collect();
                    self.pending.push(Pending { p, size, stream, events });
                }
                None => {
                    self.stats.allocated -= size;
                    self.free.entry((stream, size)).or_default().push(p);
                }
            },
        }
    }

    /// Returns every cached block to the driver.
    pub fn release_cached(&mut self) {
        self.collect_pending(true);
        for ((_, size), v) in self.free.drain() {
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
        /// Recorded events: (stream, passed).
        events: Vec<(usize, bool)>,
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
        fn record(&mut self, stream: usize) -> u64 {
            self.events.push((stream, false));
            self.events.len() as u64
        }
        fn done(&mut self, ev: u64) -> bool {
            self.events[ev as usize - 1].1
        }
        fn wait_all(&mut self) {
            self.events.iter_mut().for_each(|e| e.1 = true);
        }
    }

    fn pool(limit: usize) -> Pool<Fake> {
        Pool::with_source(0, Fake { next: 0, held: 0, limit, events: Vec::new() })
    }

    #[test]
    fn freed_blocks_are_reused_by_size() {
        let mut p = pool(usize::MAX);
        let (a, sa) = p.alloc(1000, 0).unwrap();
        assert_eq!(sa, 1024, "rounded to 512 B below 1 MiB");
        p.free(a, sa, 0);
        assert_eq!(p.alloc(600, 0).unwrap().0, a, "same rounded size: the cached block");
        assert_eq!(p.stats().driver_allocs, 1);
        let (_, big) = p.alloc(3 << 20, 0).unwrap();
        assert_eq!(big, 4 << 20, "rounded to 2 MiB above 1 MiB");
    }

    #[test]
    fn a_graph_keeps_its_blocks_until_it_is_released() {
        let mut p = pool(usize::MAX);
        // Before capture: a cached block, and a live one the capture will free.
        let (idle, s) = p.alloc(1024, 0).unwrap();
        let (pre, _) = p.alloc(1024, 0).unwrap();
        p.free(idle, s, 0);
        p.begin_capture(7, 0);
        let (inside, _) = p.alloc(1024, 0).unwrap();
        assert_eq!(inside, idle, "an idle shared block is taken into the graph");
        p.free(pre, 1024, 0); // freed during capture: a captured kernel may still read it
        let (again, _) = p.alloc(1024, 0).unwrap();
        assert_eq!(again, pre, "within the capture, the graph reuses its own freed blocks");
        p.free(inside, 1024, 0);
        p.free(again, 1024, 0);
        assert_eq!(p.end_capture(), Some(7));
        // Between replays: nothing the graph uses is handed out, and it stays counted in use.
        assert_eq!(p.stats().allocated, 2048, "the graph's two blocks count as in use");
        let (outside, _) = p.alloc(1024, 0).unwrap();
        assert!(outside != idle && outside != pre, "a new block, not one the graph replays on");
        p.free(outside, 1024, 0);
        assert_eq!(p.stats().allocated, 2048);
        // Released: its blocks join the shared cache.
        p.release_graph(7);
        assert_eq!(p.stats().allocated, 0);
        let mut got: Vec<u64> = (0..3).map(|_| p.alloc(1024, 0).unwrap().0).collect();
        got.sort();
        let mut want = vec![idle, pre, outside];
        want.sort();
        assert_eq!(got, want, "all three cached blocks reused, no new driver allocation");
        assert_eq!(p.stats().driver_allocs, 3);
    }

    #[test]
    fn a_tensor_outliving_its_graph_frees_into_the_shared_cache() {
        let mut p = pool(usize::MAX);
        p.begin_capture(1, 0);
        let (out, s) = p.alloc(4096, 0).unwrap(); // e.g. the captured step's loss
        p.end_capture();
        p.release_graph(1);
        assert_eq!(p.stats().allocated, s);
        p.free(out, s, 0);
        assert_eq!(p.stats().allocated, 0);
        assert_eq!(p.alloc(4096, 0).unwrap().0, out, "back in the shared cache");
    }

    #[test]
    fn out_of_memory_flushes_the_cache_then_reports_the_numbers() {
        let mut p = pool(5 << 20);
        let (a, sa) = p.alloc(2 << 20, 0).unwrap();
        p.free(a, sa, 0); // cached: 2 MiB held by the pool, not in use
        let (_b, _) = p.alloc(4 << 20, 0).unwrap();
        assert_eq!(p.stats().flushes, 1, "the cached block was returned to make room");
        assert_eq!(p.stats().reserved, 4 << 20);
        match p.alloc(2 << 20, 0) {
            Err(CudaError::OutOfMemory { requested, allocated, reserved, free, total, .. }) => {
                assert_eq!((requested, allocated, reserved, free, total), (2 << 20, 4 << 20, 4 << 20, 1 << 20, 5 << 20));
            }
            other => panic!("expected out of memory, got {other:?}"),
        }
    }

    #[test]
    fn a_block_is_reused_only_on_its_own_stream() {
        let mut p = pool(usize::MAX);
        p.add_stream(0, 100);
        p.add_stream(1, 101);
        let (a, s) = p.alloc(1024, 0).unwrap();
        p.free(a, s, 0);
        let (b, _) = p.alloc(1024, 1).unwrap();
        assert_ne!(a, b, "stream 1 must not get stream 0's cached block: stream 0 may still be using it");
        assert_eq!(p.alloc(1024, 0).unwrap().0, a, "stream 0 gets its own block back");
        p.free(b, s, 1);
        assert_eq!(p.alloc(1024, 1).unwrap().0, b);
    }

    #[test]
    fn a_block_used_on_another_stream_waits_for_that_streams_event() {
        let mut p = pool(usize::MAX);
        p.add_stream(0, 100);
        p.add_stream(1, 101);
        let (a, s) = p.alloc(1024, 0).unwrap();
        p.record_use(a, 0, 1);
        p.record_use(a, 0, 0); // its own stream: nothing to record
        p.free(a, s, 0);
        assert_eq!(p.src.events, vec![(101, false)], "one event, on the other stream");
        assert_eq!(p.stats().allocated, s, "still in use until stream 1 passes the event");
        let (b, _) = p.alloc(1024, 0).unwrap();
        assert_ne!(b, a, "not reused while stream 1 may still read it");
        p.src.events[0].1 = true; // stream 1's work reached the event
        let (c, _) = p.alloc(1024, 0).unwrap();
        assert_eq!(c, a, "reused once the event has passed");
        assert_eq!(p.stats().allocated, 2 * s);
    }

    #[test]
    fn flushing_the_cache_waits_for_pending_blocks() {
        let mut p = pool(3 << 20);
        p.add_stream(0, 100);
        p.add_stream(1, 101);
        let (a, s) = p.alloc(2 << 20, 0).unwrap();
        p.record_use(a, 0, 1);
        p.free(a, s, 0);
        // Only 1 MiB left: the pending block must be waited for, then returned to the driver.
        let (_b, _) = p.alloc(2 << 20, 1).unwrap();
        assert_eq!(p.stats().flushes, 1);
        assert_eq!(p.stats().allocated, 2 << 20);
        assert!(p.src.events.iter().all(|e| e.1), "the device was waited for");
    }
}
