//! Streams and events. Every op enqueues its work on the calling thread's *current* stream of
//! the device: the device's own stream unless code runs inside `Stream::run`. Work on two streams
//! may overlap on the GPU; an `Event` recorded on one stream and waited for by another orders
//! them, and two timing events measure the GPU time between them (no host synchronization in
//! between, unlike wall-clock timing around `synchronize`).
//!
//! Memory and streams (alloc.rs): a block belongs to the stream it was allocated on and, freed,
//! is reused only by allocations on that stream, so the stream's order protects it. A tensor
//! used on another stream must be marked with `Tensor::record_stream(&stream)`: when it is freed,
//! an event is recorded on each such stream and the block waits for them before it is reused.
//! (The rule PyTorch's caching allocator has, for the same reason.)
//!
//! Streams are kept for the device's life (like PyTorch's stream pool): a `Stream` is a cheap
//! handle, and a block cached for a stream never outlives it.

use std::cell::RefCell;
use std::sync::Arc;

use cudarc::driver::{sys, CudaEvent, CudaStream};

use super::{drv_err, CudaDevice, CudaError};

/// A queue of GPU work on one device.
#[derive(Clone)]
pub struct Stream {
    dev: Arc<CudaDevice>,
    id: u32,
    pub(crate) inner: Arc<CudaStream>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream {} on cuda:{}", self.id, self.dev.ordinal)
    }
}

/// A point in a stream's work: recorded once, then waited for (by the host or another stream)
/// or timed against another event.
pub struct Event {
    inner: CudaEvent,
}

thread_local! {
    /// Per device ordinal: the current stream's (id, CUstream) on this thread; None: the device's own.
    static CURRENT: RefCell<Vec<Option<(u32, usize)>>> = const { RefCell::new(Vec::new()) };
}

/// The current stream's id and handle for device `ordinal` on this thread.
pub(crate) fn current(ordinal: usize) -> Option<(u32, sys::CUstream)> {
    CURRENT.with(|c| c.borrow().get(ordinal).copied().flatten()).map(|(id, s)| (id, s as sys::CUstream))
}

fn set_current(ordinal: usize, v: Option<(u32, usize)>) -> Option<(u32, usize)> {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() <= ordinal {
            c.resize(ordinal + 1, None);
        }
        std::mem::replace(&mut c[ordinal], v)
    })
}

impl CudaDevice {
    /// A new stream on this device (kept for the device's life; id ≥ 1).
    pub fn new_stream(self: &Arc<Self>) -> Result<Stream, CudaError> {
        self.bind();
        let inner = self.ctx.new_stream().map_err(drv_err("stream creation"))?;
        let id = {
            let mut g = self.streams.lock().unwrap();
            g.push(inner.clone());
            g.len() as u32 - 1
        };
        self.pool.lock().unwrap().add_stream(id, inner.cu_stream() as usize);
        Ok(Stream { dev: self.clone(), id, inner })
    }

    /// The device's own stream (id 0): where work goes outside any `Stream::run`.
    pub fn default_stream(self: &Arc<Self>) -> Stream {
        Stream { dev: self.clone(), id: 0, inner: self.stream.clone() }
    }

    /// The stream this thread's work on this device goes to now.
    pub fn current_stream(self: &Arc<Self>) -> Stream {
        match current(self.ordinal) {
            None => self.default_stream(),
            Some((id, _)) => Stream { dev: self.clone(), id, inner: self.streams.lock().unwrap()[id as usize].clone() },
        }
    }

    /// Id of the current stream (0: the device's own).
    pub(crate) fn current_stream_id(&self) -> u32 {
        current(self.ordinal).map_or(0, |(id, _)| id)
    }
}

/// Restores the previous current stream when `Stream::run` ends, by return or by panic.
struct Restore(usize, Option<(u32, usize)>);

impl Drop for Restore {
    fn drop(&mut self) {
        set_current(self.0, self.1);
    }
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// Runs `f` with this stream current on this thread: the ops `f` runs on this device enqueue
    /// their work here. Nests; the previous stream is current again afterwards.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let v = (self.id != 0).then_some((self.id, self.inner.cu_stream() as usize));
        let _restore = Restore(self.dev.ordinal, set_current(self.dev.ordinal, v));
        f()
    }

    /// Records an event (with timing) after the work enqueued on this stream so far.
    pub fn record(&self) -> Result<Event, CudaError> {
        self.dev.bind();
        let inner = self.inner.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv_err("recording an event"))?;
        Ok(Event { inner })
    }

    /// Work enqueued on this stream from now on starts after `e`'s work is done (the host does
    /// not wait).
    pub fn wait(&self, e: &Event) -> Result<(), CudaError> {
        self.inner.wait(&e.inner).map_err(drv_err("making a stream wait for an event"))
    }

    /// `wait` for everything enqueued on `other` so far.
    pub fn wait_stream(&self, other: &Stream) -> Result<(), CudaError> {
        self.wait(&other.record()?)
    }

    /// Blocks the host until this stream's work is done.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        if self.dev.is_capturing() {
            return Err(CudaError::Driver { what: "synchronize".into(), msg: "a CUDA graph is being captured: nothing has run yet, so nothing can be waited for inside the capture".into() });
        }
        self.inner.synchronize().map_err(drv_err("stream synchronize"))
    }
}

impl Event {
    /// Blocks the host until the event's work is done.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.inner.synchronize().map_err(drv_err("event synchronize"))
    }
    /// Whether the event's work is done (without waiting).
    pub fn is_complete(&self) -> Result<bool, CudaError> {
        self.inner.try_is_complete().map_err(drv_err("event query"))
    }
    /// GPU milliseconds from this event to `end` (waits for both).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, CudaError> {
        self.inner.elapsed_ms(&end.inner).map_err(drv_err("event timing"))
    }
}
