//! Host-to-device uploads that do not stall the stream. A copy from pageable host memory makes
//! the driver synchronize the stream first, so every small upload in a training step (token ids,
//! positions, the classifier's targets) drained the GPU's queue and left it idle while the host
//! enqueued the work after it. Here the bytes are first copied into a pinned staging buffer, the
//! DMA is queued behind the work already on the stream, and an event recorded after it tells when
//! that buffer may be reused.

use std::ffi::c_void;

use cudarc::driver::{result as drv, sys};

use super::{drv_err, CudaError};

/// Uploads above this size (weights at load time) take the plain synchronous path: keeping
/// pinned buffers that large for the process's life is not worth it for a one-off copy.
pub(crate) const MAX_STAGED: usize = 4 << 20;
/// Buffers kept; past this many in flight, the oldest is waited for and reused.
const MAX_BUFFERS: usize = 64;

struct Buf {
    ptr: *mut u8,
    cap: usize,
    done: sys::CUevent,
    in_flight: bool,
}

#[derive(Default)]
pub(crate) struct Staging {
    bufs: Vec<Buf>,
    next_victim: usize,
}

// The pinned pointers are only touched under the device's mutex.
unsafe impl Send for Staging {}

impl Staging {
    fn new_buf(len: usize) -> Result<Buf, CudaError> {
        let cap = len.next_power_of_two().max(64 << 10);
        let ptr = unsafe { drv::malloc_host(cap, 0) }.map_err(drv_err("allocating pinned host memory"))? as *mut u8;
        let done = drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(drv_err("creating an event"))?;
        Ok(Buf { ptr, cap, done, in_flight: false })
    }

    /// Queues a copy of `bytes` (at most MAX_STAGED) to device address `dst` on `stream`.
    pub fn upload(&mut self, dst: u64, bytes: &[u8], stream: sys::CUstream) -> Result<(), CudaError> {
        let n = bytes.len();
        let free = self.bufs.iter_mut().position(|b| b.cap >= n && (!b.in_flight || unsafe { drv::event::query(b.done) }.is_ok()));
        let i = match free {
            Some(i) => i,
            None if self.bufs.len() < MAX_BUFFERS => {
                self.bufs.push(Self::new_buf(n)?);
                self.bufs.len() - 1
            }
            None => {
                // All in flight: wait for one (round robin) and grow it if it is too small.
                let i = self.next_victim % self.bufs.len();
                self.next_victim += 1;
                let b = &mut self.bufs[i];
                unsafe { drv::event::synchronize(b.done) }.map_err(drv_err("waiting for a staging buffer"))?;
                if b.cap < n {
                    let fresh = Self::new_buf(n)?;
                    unsafe {
                        let _ = drv::free_host(b.ptr as *mut c_void);
                        let _ = drv::event::destroy(b.done);
                    }
                    *b = fresh;
                }
                i
            }
        };
        let b = &mut self.bufs[i];
        // SAFETY: the buffer holds cap >= n bytes and no copy from it is in flight.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.ptr, n);
            sys::cuMemcpyHtoDAsync_v2(dst, b.ptr as *const c_void, n, stream).result().map_err(drv_err("host-to-device copy"))?;
            drv::event::record(b.done, stream).map_err(drv_err("recording an event"))?;
        }
        b.in_flight = true;
        Ok(())
    }
}
