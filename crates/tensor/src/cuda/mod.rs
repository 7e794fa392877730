//! The CUDA backend (cudarc 0.19, `dynamic-loading`: the binary builds and runs on machines
//! without CUDA; the libraries are found at run time by `libs`).
//!
//! One `CudaDevice` per GPU, made on first use: a context, its own stream (where every op goes
//! unless a thread makes another stream current: stream.rs), a caching allocator, the kernel modules
//! (NVRTC-compiled on first use from the `.cu` sources: the primitives' under kernels/, each fused
//! op's beside it in ops/; see kernel.rs; cached on disk), and the
//! cuBLASLt handle.
//!
//! Tensor ops are infallible by design (misuse panics), so a failure inside an op on the GPU —
//! out of memory, a failed launch — panics with the typed `CudaError`'s message; the CLI turns
//! that into a plain error. Fallible steps that the world can cause up front (no driver, no GPU,
//! missing library, kernel compile error) come back from `device()` as `Result`.

mod alloc;
pub(crate) mod gemm;
pub mod graph;
pub mod profile;
mod staging;
pub(crate) mod kernel;
pub mod stream;
pub mod libs;
pub(crate) mod storage;

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result as drv, sys, CudaContext, CudaFunction, CudaModule, CudaStream};

pub(crate) use kernel::KernelId;

pub use alloc::MemStats;
pub use storage::CudaStorage;
pub use stream::{Event, Stream};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA library {lib} ({what}) not found; looked on the loader path and in: {searched}. Set FMLAB_CUDA_LIBS to the folder that holds it")]
    LibraryMissing { lib: String, what: String, searched: String },
    #[error("no CUDA device cuda:{ordinal}: {reason}")]
    NoDevice { ordinal: usize, reason: String },
    #[error("CUDA driver error during {what}: {msg}")]
    Driver { what: String, msg: String },
    #[error("NVRTC could not compile kernel source `{kernel}` for {arch}:\n{log}")]
    Compile { kernel: String, arch: String, log: String },
    #[error(
        "out of GPU memory on cuda:{device}: requested {requested} bytes; fmlab holds {allocated} bytes in live tensors and {reserved} reserved ({free} of {total} bytes free on the device). Hint: lower --batch (keep the tokens per step with --tokens-per-step, i.e. gradient accumulation) or --seq"
    )]
    OutOfMemory { device: usize, requested: usize, allocated: usize, reserved: usize, free: usize, total: usize },
    #[error("cuBLASLt error during {what}: {msg}")]
    Blas { what: String, msg: String },
}

pub(crate) fn drv_err(what: &str) -> impl Fn(drv::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver { what: what.to_string(), msg: format!("{e:?}") }
}

pub struct CudaDevice {
    pub ordinal: usize,
    pub name: String,
    /// e.g. "sm_90"
    pub arch: String,
    /// Most shared memory one block may opt into (bytes).
    pub(crate) smem_optin: usize,
    /// Streaming multiprocessors (the grid of a persistent kernel).
    pub(crate) sm_count: usize,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    /// Every stream made on this device, by id (0: `stream`); kept for the device's life.
    pub(crate) streams: Mutex<Vec<Arc<CudaStream>>>,
    /// Kernel modules by name, compiled (or read from the disk cache) and loaded on first use:
    /// a training step's first, eager run loads every module it uses before any graph capture.
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    funcs: Mutex<HashMap<KernelId, CudaFunction>>,
    pub(crate) pool: Mutex<alloc::Pool>,
    pub(crate) blas: Mutex<Option<gemm::Blas>>,
    pub(crate) staging: Mutex<staging::Staging>,
    /// While a graph is captured: the pinned buffers its uploads copy from (graph.rs).
    /// (Addresses as integers: freed only by the graph that owns them.)
    pub(crate) capture_uploads: Mutex<Option<Vec<usize>>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda:{} ({})", self.ordinal, self.name)
    }
}

static DEVICES: Mutex<Vec<Option<Arc<CudaDevice>>>> = Mutex::new(Vec::new());

/// The device `cuda:ordinal`, initialized on first call (libraries, context, kernels).
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>, CudaError> {
    let mut g = DEVICES.lock().unwrap();
    if let Some(Some(d)) = g.get(ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(CudaDevice::new(ordinal)?);
    if g.len() <= ordinal {
        g.resize(ordinal + 1, None);
    }
    g[ordinal] = Some(d.clone());
    Ok(d)
}

/// Number of CUDA devices (0 when there is no driver or no GPU).
pub fn device_count() -> usize {
    if libs::preload().is_err() {
        return 0;
    }
    CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)
}

impl CudaDevice {
    fn new(ordinal: usize) -> Result<CudaDevice, CudaError> {
        libs::preload()?;
        let n = CudaContext::device_count().map_err(|e| CudaError::NoDevice { ordinal, reason: format!("the driver reports no usable GPU ({e:?})") })?;
        if ordinal >= n.max(0) as usize {
            return Err(CudaError::NoDevice { ordinal, reason: format!("this machine has {n} CUDA device(s)") });
        }
        let ctx = CudaContext::new(ordinal).map_err(drv_err("context creation"))?;
        // One stream, ordered: cudarc's per-buffer event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv_err("stream creation"))?;
        let (maj, min) = ctx.compute_capability().map_err(drv_err("device query"))?;
        let arch = format!("sm_{maj}{min}");
        let name = ctx.name().map_err(drv_err("device query"))?;
        let smem_optin = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).map_err(drv_err("device query"))?.max(0) as usize;
        let sm_count = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(drv_err("device query"))?.max(1) as usize;
        let mut pool = alloc::Pool::new(ordinal);
        pool.add_stream(0, stream.cu_stream() as usize);
        Ok(CudaDevice { ordinal, name, arch, smem_optin, sm_count, ctx, streams: Mutex::new(vec![stream.clone()]), stream, modules: Mutex::new(HashMap::new()), funcs: Mutex::new(HashMap::new()), pool: Mutex::new(pool), blas: Mutex::new(None), staging: Mutex::new(staging::Staging::default()), capture_uploads: Mutex::new(None) })
    }

    /// The entry point `id`, from its own module (loaded first if need be).
    pub(crate) fn func(&self, id: KernelId) -> CudaFunction {
        let mut g = self.funcs.lock().unwrap();
        if let Some(f) = g.get(&id) {
            return f.clone();
        }
        let m = self.module(id.kernel.module);
        let f = m.load_function(&id.to_string()).unwrap_or_else(|_| panic!("no CUDA kernel `{id}` in module `{}` (an op/dtype pair without a kernel)", id.kernel.module.name));
        g.insert(id, f.clone());
        f
    }

    /// Module `m`, compiled for this device (NVRTC, or the disk cache) and loaded on first use.
    /// A compile error panics with NVRTC's log (the test command compiles every module, so a
    /// release never has one).
    fn module(&self, m: &'static kernel::Module) -> Arc<CudaModule> {
        let mut g = self.modules.lock().unwrap();
        if let Some(cm) = g.get(m.name) {
            return cm.clone();
        }
        let arch = match m.arch {
            kernel::Arch::Device => self.arch.clone(),
            // wgmma and TMA are arch-specific features: only on sm_90 itself.
            kernel::Arch::Sm90a if self.arch == "sm_90" => "sm_90a".to_string(),
            kernel::Arch::Sm90a => panic!("kernel module `{}` is for sm_90a; this device is {} (check `has_module` first)", m.name, self.arch),
        };
        self.bind();
        let cm = compile_cached(m.name, &format!("{}{}", tuning_defines(), m.source()), &arch)
            .and_then(|bin| self.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(bin)).map_err(drv_err(&format!("loading kernel module {}", m.name))))
            .unwrap_or_else(|e| panic!("{e}"));
        g.insert(m.name, cm.clone());
        cm
    }

    /// The architecture NVRTC compiles for, as "sm_90".
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The major compute capability (9 for sm_90), from `arch`.
    pub(crate) fn cc_major(&self) -> u32 {
        self.arch.strip_prefix("sm_").and_then(|a| a.parse::<u32>().ok()).map_or(0, |a| a / 10)
    }

    /// Whether module `m` can be built for this device (the sm_90a modules only on Hopper).
    pub(crate) fn has_module(&self, m: &kernel::Module) -> bool {
        m.arch == kernel::Arch::Device || self.arch == "sm_90"
    }

    /// Blocks the host until all work on every stream of this device is done.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.refuse_in_capture()?;
        self.ctx.synchronize().map_err(drv_err("synchronize"))
    }

    /// Blocks the host until the current stream's work is done (what a read-back needs).
    pub(crate) fn sync_current(&self) -> Result<(), CudaError> {
        self.refuse_in_capture()?;
        self.bind();
        unsafe { drv::stream::synchronize(self.cu_stream()) }.map_err(drv_err("synchronize"))
    }

    fn refuse_in_capture(&self) -> Result<(), CudaError> {
        if self.is_capturing() {
            return Err(CudaError::Driver { what: "synchronize".into(), msg: "the stream is being captured into a CUDA graph: nothing has run yet, so nothing can be waited for or read back inside the capture (read results after a replay)".into() });
        }
        Ok(())
    }

    pub fn mem_stats(&self) -> MemStats {
        self.pool.lock().unwrap().stats()
    }
    pub fn reset_peak(&self) {
        self.pool.lock().unwrap().reset_peak()
    }

    /// Queues a host-to-device copy of `bytes` to `dst` without waiting for the stream: small
    /// copies go through pinned staging buffers (staging.rs); large ones wait for the copy.
    pub(crate) fn upload(&self, dst: u64, bytes: &[u8]) -> Result<(), CudaError> {
        if bytes.is_empty() || self.capture_upload(dst, bytes)? {
            return Ok(());
        }
        if bytes.len() <= staging::MAX_STAGED {
            return self.staging.lock().unwrap().upload(dst, bytes, self.cu_stream());
        }
        unsafe { drv::memcpy_htod_async(dst, bytes, self.cu_stream()) }.map_err(drv_err("host-to-device copy"))?;
        // The host slice may be freed as soon as this returns.
        self.sync_current()
    }

    /// The calling thread's current stream on this device (stream.rs).
    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        match stream::current(self.ordinal) {
            Some((_, s)) => s,
            None => self.stream.cu_stream(),
        }
    }

    pub(crate) fn bind(&self) {
        self.ctx.bind_to_thread().unwrap_or_else(|e| panic!("{}", CudaError::Driver { what: "binding the context".into(), msg: format!("{e:?}") }));
    }
}

/// Kernel arguments, each kept in its own buffer until the launch.
pub(crate) struct Args(Vec<Box<[u64]>>);

impl Args {
    pub fn new() -> Args {
        Args(Vec::with_capacity(12))
    }
    pub fn push<T: Copy>(&mut self, v: T) -> &mut Args {
        let n = std::mem::size_of::<T>().div_ceil(8).max(1);
        let mut b = vec![0u64; n].into_boxed_slice();
        // SAFETY: the buffer holds at least size_of::<T>() bytes; T is Copy (plain data).
        unsafe { std::ptr::copy_nonoverlapping(&v as *const T as *const u8, b.as_mut_ptr() as *mut u8, std::mem::size_of::<T>()) };
        self.0.push(b);
        self
    }
    /// Launches `id` on the device's stream.
    pub fn launch(&mut self, dev: &CudaDevice, id: impl Into<KernelId>, grid: u32, block: u32, shmem: u32) {
        self.launch3(dev, id, (grid.max(1), 1, 1), (block, 1, 1), shmem)
    }
    /// `launch` with 3-D grid and block shapes.
    pub fn launch3(&mut self, dev: &CudaDevice, id: impl Into<KernelId>, grid: (u32, u32, u32), block: (u32, u32, u32), shmem: u32) {
        let id = id.into();
        let label;
        let _p = if profile::enabled() {
            label = id.to_string();
            Some(profile::Scope::new(dev, &label))
        } else {
            None
        };
        let f = dev.func(id);
        if shmem > 48 << 10 {
            // Dynamic shared memory past 48 KB must be opted into per kernel.
            let r = unsafe { sys::cuFuncSetAttribute(f.cu_function(), sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shmem as i32) }.result();
            if let Err(e) = r {
                panic!("{}", CudaError::Driver { what: format!("allowing {shmem} bytes of shared memory for kernel {id}"), msg: format!("{e:?}") });
            }
        }
        let mut ptrs: Vec<*mut c_void> = self.0.iter_mut().map(|b| b.as_mut_ptr() as *mut c_void).collect();
        // SAFETY: the argument list matches the kernel's parameters (each call site mirrors its
        // kernel's signature); pointers are live device buffers on this stream.
        let r = unsafe { drv::launch_kernel(f.cu_function(), grid, block, shmem, dev.cu_stream(), &mut ptrs) };
        if let Err(e) = r {
            panic!("{}", CudaError::Driver { what: format!("launching kernel {id}"), msg: format!("{e:?}") });
        }
        if sync_launches() && !dev.is_capturing() {
            // Debugging aid: surface an asynchronous fault at the launch that caused it.
            if let Err(e) = dev.sync_current() {
                panic!("{}", CudaError::Driver { what: format!("running kernel {id}"), msg: format!("{e:?}") });
            }
        }
    }
}

/// A TMA tensor map (the driver's 128-byte `CUtensorMap`) of a row-major [rows, cols] bf16
/// matrix at device address `ptr` with row stride `ld` elements, read in boxes of `box_cols` ×
/// `box_rows` elements written to shared memory in the 128-byte swizzle (box_cols · 2 = 128),
/// rows past the end as zeros. A kernel takes it by value as a `__grid_constant__` parameter.
/// The TMA unit needs `ptr` 16-byte aligned and `ld · 2` a multiple of 16 (the callers check).
pub(crate) fn tma_map_bf16(ptr: u64, rows: usize, cols: usize, ld: usize, box_cols: u32, box_rows: u32) -> [u64; 16] {
    let what = || format!("a [{rows}, {cols}] bf16 matrix (row stride {ld}, box {box_rows} × {box_cols})");
    tma_encode(ptr, &[cols as u64, rows as u64], &[(ld * 2) as u64], &[box_cols, box_rows], sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B, what)
}

/// A TMA tensor map of a [B, H, rows, D] bf16 view at `ptr` with element strides `st` (batch,
/// head, row; D contiguous), read in boxes of one (batch, head) × `box_rows` rows × D = 32
/// columns (64 bytes) written in the 64-byte swizzle, rows past the end as zeros: flash_sm90.cu's
/// tiles. Needs `ptr` and every stride 16-byte aligned (ops/flash.rs's `bhr_strides` views are).
pub(crate) fn tma_map_bf16_bhr(ptr: u64, dims: [usize; 4], st: [u32; 3], box_rows: u32) -> [u64; 16] {
    let [b, h, rows, d] = dims;
    let what = || format!("a [{b}, {h}, {rows}, {d}] bf16 view (strides {st:?}, box {box_rows} × {d})");
    let bytes = [st[2] as u64 * 2, st[1] as u64 * 2, st[0] as u64 * 2];
    tma_encode(ptr, &[d as u64, rows as u64, h as u64, b as u64], &bytes, &[d as u32, box_rows, 1, 1], sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B, what)
}

/// cuTensorMapEncodeTiled for a bf16 tensor: `dims` fastest first, `strides` in bytes of every
/// dimension but the first, `boxes` in elements; out-of-range elements read as zeros.
fn tma_encode(ptr: u64, dims: &[u64], strides: &[u64], boxes: &[u32], swizzle: sys::CUtensorMapSwizzle, what: impl Fn() -> String) -> [u64; 16] {
    use sys::{CUtensorMapDataType as Dt, CUtensorMapFloatOOBfill as Oob, CUtensorMapInterleave as Il, CUtensorMapL2promotion as L2};
    assert!(strides.len() + 1 == dims.len() && boxes.len() == dims.len(), "tma_encode: {} dims, {} strides, {} boxes", dims.len(), strides.len(), boxes.len());
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let steps = vec![1u32; dims.len()];
    // SAFETY: every array holds the rank's entries the driver reads (strides: rank − 1, checked
    // above); `map` is the 128-byte struct it writes.
    let r = unsafe { sys::cuTensorMapEncodeTiled(&mut map, Dt::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, dims.len() as u32, ptr as *mut c_void, dims.as_ptr(), strides.as_ptr(), boxes.as_ptr(), steps.as_ptr(), Il::CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B, Oob::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) }.result();
    if let Err(e) = r {
        panic!("{}", CudaError::Driver { what: format!("encoding a TMA tensor map of {}", what()), msg: format!("{e:?}") });
    }
    map.opaque
}

/// Grid size for `n` elements at `block` threads, capped (kernels grid-stride beyond it).
/// Row splits for the column-reduction kernels (block 32 columns × 8 rows, grid columns/32 ×
/// splits): enough blocks to fill the GPU, each split at least 64 rows. (splits, rows per split).
pub(crate) fn col_splits(rows: usize, cols: usize) -> (usize, usize) {
    let splits = (2048 / cols.div_ceil(32)).clamp(1, rows.div_ceil(64).max(1));
    let rps = rows.div_ceil(splits).max(1);
    (rows.div_ceil(rps).max(1), rps)
}

/// Capped at 4096 blocks (≈ 2 waves of 256-thread blocks on an H100): past that, grid-striding
/// threads amortize their setup over more elements.
pub(crate) fn grid_for(n: usize, block: u32) -> u32 {
    (n.div_ceil(block as usize)).clamp(1, 4096) as u32
}

fn fnv64(s: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in s {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Where compiled kernels are kept: $FMLAB_KERNEL_CACHE, else $FMLAB_CACHE/kernels, else
/// ~/.cache/fmlab/kernels.
pub(crate) fn kernel_cache_dir() -> Option<PathBuf> {
    if let Some(d) = crate::settings::string("FMLAB_KERNEL_CACHE") {
        return Some(d.into());
    }
    if let Some(d) = crate::settings::string("FMLAB_CACHE") {
        return Some(PathBuf::from(d).join("kernels"));
    }
    std::env::var("HOME").ok().map(|h| PathBuf::from(h).join(".cache/fmlab/kernels"))
}

fn versions() -> (i32, (i32, i32)) {
    let mut drv_v = 0;
    unsafe { sys::cuDriverGetVersion(&mut drv_v) };
    let (mut a, mut b) = (0, 0);
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
    (drv_v, (a, b))
}

/// CUBIN for `src` on `arch`: from the disk cache (keyed by source hash, arch, driver and NVRTC
/// versions) or compiled by NVRTC and stored (temp file + rename: a crash leaves no torn entry).
fn compile_cached(kname: &str, src: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    let (drv_v, (na, nb)) = versions();
    let key = format!("{kname}-{:016x}-{arch}-drv{drv_v}-nvrtc{na}.{nb}.cubin", fnv64(src.as_bytes()));
    let dir = kernel_cache_dir();
    if let Some(d) = &dir {
        if let Ok(b) = std::fs::read(d.join(&key)) {
            if !b.is_empty() {
                return Ok(b);
            }
        }
    }
    let bin = nvrtc_cubin(kname, src, arch)?;
    if let Some(d) = &dir {
        if std::fs::create_dir_all(d).is_ok() {
            let tmp = d.join(format!(".{key}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, &bin).is_ok() && std::fs::rename(&tmp, d.join(&key)).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    Ok(bin)
}

/// NVRTC straight to SASS for the device's arch (no PTX JIT at load).
pub fn nvrtc_cubin(kname: &str, src: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    use cudarc::nvrtc::{result, sys as nsys};
    libs::preload_nvrtc()?;
    let err = |log: String| CudaError::Compile { kernel: kname.to_string(), arch: arch.to_string(), log };
    let csrc = std::ffi::CString::new(src).unwrap();
    let prog = result::create_program(&csrc, None).map_err(|e| err(format!("{e:?}")))?;
    // --fmad=false: no contraction of a*b+c into one FMA, so elementwise results round like the
    // CPU engine's (and the fused AdamW equals its tensor-op twin bit for bit on the GPU too).
    let opts = [format!("--gpu-architecture={arch}"), "-std=c++17".to_string(), "-default-device".to_string(), "--fmad=false".to_string()];
    let r = unsafe { result::compile_program(prog, &opts) };
    if let Err(e) = r {
        let log = unsafe { result::get_program_log(prog) }.map(|l| l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect::<Vec<u8>>()).unwrap_or_default();
        let _ = unsafe { result::destroy_program(prog) };
        return Err(err(format!("{e:?}\n{}", String::from_utf8_lossy(&log))));
    }
    let mut n = 0usize;
    unsafe { nsys::nvrtcGetCUBINSize(prog, &mut n) }.result().map_err(|e| err(format!("{e:?}")))?;
    let mut buf = vec![0u8; n];
    unsafe { nsys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _) }.result().map_err(|e| err(format!("{e:?}")))?;
    let _ = unsafe { result::destroy_program(prog) };
    Ok(buf)
}

/// Tuning experiments without a rebuild: FMLAB_CUDA_DEFINES="NAME=VALUE,..." becomes `#define`
/// lines ahead of every kernel source (e.g. FA_FWD_MINB=5: the flash forward compiled for 5
/// blocks per SM). The disk cache is keyed by the whole source, so variants never mix.
fn tuning_defines() -> String {
    let Some(v) = crate::settings::string("FMLAB_CUDA_DEFINES") else { return String::new() };
    v.split(',').filter(|d| !d.trim().is_empty()).map(|d| format!("#define {}\n", d.trim().replacen('=', " ", 1))).collect()
}

/// FMLAB_CUDA_SYNC: synchronize after every launch (looked up once; this runs on every launch).
fn sync_launches() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::settings::present("FMLAB_CUDA_SYNC"))
}
