//! CUDA-graph capture and replay. A training step is about a thousand kernel launches; captured
//! once into a graph, it is replayed with one launch: no host work per kernel, and no gaps on the
//! GPU while the host catches up after the step's one synchronization (the loss read).
//!
//! Capture runs ordinary tensor code with the device's stream in capture mode: kernels, GEMMs,
//! copies and memsets are recorded, not run. What that demands of the code inside:
//! - memory: blocks allocated or freed during capture belong to the graph (alloc.rs), so every
//!   replay finds its buffers where the capture put them and nothing else lands on them;
//! - uploads: host data uploaded during capture (position ids, constants) is copied into pinned
//!   buffers the graph keeps, and is the same on every replay. Data that changes per step must
//!   live in device tensors made before capture and overwritten (`Tensor::overwrite`) before each
//!   replay, and scalars that change per step (learning rate, bias corrections, the clip
//!   coefficient) must be read by kernels from device memory, not passed as launch arguments;
//! - no host reads: a download or a synchronization inside capture panics with a message saying
//!   so (it could not return the value: nothing has run yet).

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::{result as drv, sys};

use super::{drv_err, gemm, CudaDevice, CudaError};
use super::kernel::Kernel;

const MEMSET_ELEMS: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("memset_elems");

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A graph and its instantiation (raw: the graph is edited between the two, `memsets_to_kernels`).
struct Exec {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

impl Drop for Exec {
    fn drop(&mut self) {
        let _ = unsafe { drv::graph::exec_destroy(self.exec) };
        let _ = unsafe { drv::graph::destroy(self.graph) };
    }
}

/// A captured, instantiated graph with the memory it replays on.
pub struct Graph {
    dev: Arc<CudaDevice>,
    exec: Option<Exec>,
    id: u64,
    /// Pinned host buffers the graph's upload nodes copy from.
    pinned: Vec<usize>,
}

/// Ends a capture that `f` left by panicking, so the device stays usable.
struct Abort<'a>(&'a CudaDevice, bool);

impl Drop for Abort<'_> {
    fn drop(&mut self) {
        if self.1 {
            return;
        }
        let _ = unsafe { drv::stream::end_capture(self.0.cu_stream()) };
        let id = self.0.pool.lock().unwrap().end_capture();
        for p in self.0.capture_uploads.lock().unwrap().take().unwrap_or_default() {
            let _ = unsafe { drv::free_host(p as *mut c_void) };
        }
        if let Some(id) = id {
            self.0.pool.lock().unwrap().release_graph(id);
        }
    }
}

impl CudaDevice {
    /// Captures the work `f` enqueues on this device into a graph (nothing runs until `replay`).
    /// Returns the graph and `f`'s result (tensors made inside live on the graph's memory: after
    /// each replay they hold that replay's values).
    pub fn capture<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> Result<(Graph, R), CudaError> {
        gemm::ensure_blas(self)?;
        // Staging uploads queued before capture must not be waited on by the capture.
        self.synchronize()?;
        self.bind();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Captured on the current stream (stream.rs); replays go to the stream current then.
        let stream = self.current_stream();
        self.pool.lock().unwrap().begin_capture(id, stream.id());
        *self.capture_uploads.lock().unwrap() = Some(Vec::new());
        // Relaxed: allocating device or pinned memory inside capture is allowed (it is not
        // recorded; the allocator does it once, at capture time).
        if let Err(e) = stream.inner.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) {
            drop(Abort(self, false));
            return Err(drv_err("beginning a CUDA-graph capture")(e));
        }
        let mut abort = Abort(self, false);
        let out = f();
        abort.1 = true;
        let ended = unsafe { drv::stream::end_capture(stream.inner.cu_stream()) };
        self.pool.lock().unwrap().end_capture();
        let pinned = self.capture_uploads.lock().unwrap().take().unwrap_or_default();
        let mut graph = Graph { dev: self.clone(), exec: None, id, pinned };
        let g = ended.map_err(drv_err("ending a CUDA-graph capture (an operation inside it could not be captured)"))?;
        if g.is_null() {
            return Err(CudaError::Driver { what: "ending a CUDA-graph capture".into(), msg: "nothing was captured".into() });
        }
        let exec = memsets_to_kernels(self, g)
            .map_err(drv_err("replacing a CUDA graph's memset nodes"))
            .and_then(|()| unsafe { drv::graph::instantiate(g, sys::CUgraphInstantiate_flags(0)) }.map_err(drv_err("instantiating a CUDA graph")));
        let exec = match exec {
            Ok(e) => e,
            Err(e) => {
                let _ = unsafe { drv::graph::destroy(g) };
                return Err(e);
            }
        };
        graph.exec = Some(Exec { graph: g, exec });
        unsafe { drv::graph::upload(exec, stream.inner.cu_stream()) }.map_err(drv_err("uploading a CUDA graph"))?;
        Ok((graph, out))
    }

    /// True while a graph is being captured on this device.
    pub fn is_capturing(&self) -> bool {
        self.capture_uploads.lock().unwrap().is_some()
    }

    /// An upload made during capture: copied into a pinned buffer the graph keeps, recorded as a
    /// copy node (replayed with the same bytes).
    pub(crate) fn capture_upload(&self, dst: u64, bytes: &[u8]) -> Result<bool, CudaError> {
        let mut g = self.capture_uploads.lock().unwrap();
        let Some(list) = g.as_mut() else { return Ok(false) };
        let p = unsafe { drv::malloc_host(bytes.len(), 0) }.map_err(drv_err("allocating pinned host memory"))? as *mut u8;
        list.push(p as usize);
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            sys::cuMemcpyHtoDAsync_v2(dst, p as *const c_void, bytes.len(), self.cu_stream()).result().map_err(drv_err("host-to-device copy during capture"))?;
        }
        Ok(true)
    }
}

impl Graph {
    /// Enqueues one run of the captured work on the current stream (returns at once).
    pub fn replay(&self) -> Result<(), CudaError> {
        let exec = self.exec.as_ref().expect("an instantiated graph");
        self.dev.bind();
        unsafe { drv::graph::launch(exec.exec, self.dev.cu_stream()) }.map_err(drv_err("launching a CUDA graph"))
    }
}

/// Small memset nodes (cuBLASLt zeroes a few bytes before some of its GEMMs) become kernel
/// nodes (`memset_elems`) with the same dependencies: after a memset node a graph waits a few
/// µs before its next kernel. Measured on the H100 (gpt2-mini step, Nsight Systems): see
/// docs/benchmarks.md, session 19. Large memsets stay (the copy engine fills them faster).
/// FMLAB_GRAPH_MEMSETS=keep leaves every memset node as captured.
fn memsets_to_kernels(dev: &CudaDevice, g: sys::CUgraph) -> Result<(), cudarc::driver::DriverError> {
    const MAX_BYTES: usize = 64 << 10;
    if crate::settings::string("FMLAB_GRAPH_MEMSETS").is_some_and(|v| v == "keep") {
        return Ok(());
    }
    let mut n = 0usize;
    unsafe { sys::cuGraphGetNodes(g, std::ptr::null_mut(), &mut n) }.result()?;
    let mut nodes = vec![std::ptr::null_mut(); n];
    unsafe { sys::cuGraphGetNodes(g, nodes.as_mut_ptr(), &mut n) }.result()?;
    let func = dev.func(MEMSET_ELEMS.into());
    for node in nodes {
        let mut ty = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
        unsafe { sys::cuGraphNodeGetType(node, &mut ty) }.result()?;
        if ty != sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEMSET {
            continue;
        }
        let mut p: sys::CUDA_MEMSET_NODE_PARAMS = unsafe { std::mem::zeroed() };
        unsafe { sys::cuGraphMemsetNodeGetParams(node, &mut p) }.result()?;
        let size = p.elementSize as usize;
        if p.height != 1 || !matches!(size, 1 | 2 | 4) || p.width * size > MAX_BYTES {
            continue;
        }
        // The node's edges (default ones: capture makes no others, so no edge data).
        let edges = |get: unsafe fn(sys::CUgraphNode, *mut sys::CUgraphNode, *mut sys::CUgraphEdgeData, *mut usize) -> sys::CUresult| -> Result<Vec<sys::CUgraphNode>, cudarc::driver::DriverError> {
            let mut k = 0usize;
            unsafe { get(node, std::ptr::null_mut(), std::ptr::null_mut(), &mut k) }.result()?;
            let mut v = vec![std::ptr::null_mut(); k];
            unsafe { get(node, v.as_mut_ptr(), std::ptr::null_mut(), &mut k) }.result()?;
            Ok(v)
        };
        let deps = edges(sys::cuGraphNodeGetDependencies_v2)?;
        let outs = edges(sys::cuGraphNodeGetDependentNodes_v2)?;
        let (mut dst, mut value, mut esize, mut count) = (p.dst, p.value, p.elementSize, p.width as u64);
        let mut args: [*mut c_void; 4] = [&mut dst as *mut _ as *mut c_void, &mut value as *mut _ as *mut c_void, &mut esize as *mut _ as *mut c_void, &mut count as *mut _ as *mut c_void];
        let kp = sys::CUDA_KERNEL_NODE_PARAMS {
            func: func.cu_function(),
            gridDimX: (p.width as u32).div_ceil(256).clamp(1, 64),
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 256,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            kernelParams: args.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        };
        let mut kn = std::ptr::null_mut();
        unsafe { sys::cuGraphAddKernelNode_v2(&mut kn, g, deps.as_ptr(), deps.len(), &kp) }.result()?;
        for o in &outs {
            unsafe { sys::cuGraphAddDependencies_v2(g, &kn, o, std::ptr::null(), 1) }.result()?;
        }
        unsafe { sys::cuGraphDestroyNode(node) }.result()?;
    }
    Ok(())
}

impl Drop for Graph {
    fn drop(&mut self) {
        // A replay may still be running: it reads the pinned buffers and the graph's blocks.
        let _ = self.dev.synchronize();
        self.exec = None;
        for &p in &self.pinned {
            let _ = unsafe { drv::free_host(p as *mut c_void) };
        }
        self.dev.pool.lock().unwrap().release_graph(self.id);
    }
}
