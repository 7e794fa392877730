//! `CudaStorage`: a device buffer (from the caching allocator) plus dtype and length, and the
//! primitive ops with the same contracts as `CpuStorage`'s (layouts in, contiguous result out).

use std::sync::Arc;

use cudarc::driver::result as drv;

use super::{gemm, grid_for, Args, CudaDevice, CudaError};
use crate::backend::BackendStorage;
use crate::cpu::CpuStorage;
use crate::layout::{coalesce, contiguous_strides, Layout};
use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::DType;
use super::kernel::Kernel;

const BINARY: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("binary");
const BINARY_ROWBC: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("binary_rowbc");
const BINARY_VEC: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("binary_vec");
const CAST: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("cast");
const CMP: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("cmp");
const COPY: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("copy");
const COPY_W16: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("copy_w16");
const FILL: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("fill");
const GATHER: Kernel = super::kernel::INDEX_KERNELS.kernel("gather");
const INDEX_ADD: Kernel = super::kernel::INDEX_KERNELS.kernel("index_add");
const INDEX_SELECT: Kernel = super::kernel::INDEX_KERNELS.kernel("index_select");
const REDUCE: Kernel = super::kernel::REDUCE_KERNELS.kernel("reduce");
const REDUCE_ALL_PART: Kernel = super::kernel::REDUCE_KERNELS.kernel("reduce_all_part");
const REDUCE_COLS: Kernel = super::kernel::REDUCE_KERNELS.kernel("reduce_cols");
const REDUCE_COLS_FINAL: Kernel = super::kernel::REDUCE_KERNELS.kernel("reduce_cols_final");
const SCATTER_ADD: Kernel = super::kernel::INDEX_KERNELS.kernel("scatter_add");
const UNARY: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("unary");
const UNARY_VEC: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("unary_vec");
const WHERE: Kernel = super::kernel::ELEMENTWISE_KERNELS.kernel("where");

pub struct CudaStorage {
    pub(crate) ptr: u64,
    size: usize,
    len: usize,
    dtype: DType,
    pub(crate) dev: Arc<CudaDevice>,
    /// The stream the block was allocated on (alloc.rs: its free lists).
    stream: u32,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({} × {} on {:?})", self.len, self.dtype, self.dev)
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        self.dev.pool.lock().unwrap().free(self.ptr, self.size, self.stream);
    }
}

/// Indices for the lookup kernels: host values (range-checked, uploaded per call), or the address
/// and count of i32 indices already on this device (inside a CUDA-graph capture, where the host
/// cannot read them; see `Tensor::captured_indices`).
pub enum Ids<'a> {
    Host(&'a [usize]),
    Device(u64, usize),
}

impl<'a> Ids<'a> {
    /// Device indices when there are (a contiguous i32 CUDA tensor), else the host values.
    /// `dev`: (address, count) of the ids already on the device, if they are.
    pub(crate) fn of(host: &'a [usize], dev: Option<(u64, usize)>) -> Ids<'a> {
        match dev {
            Some((p, n)) => Ids::Device(p, n),
            None => Ids::Host(host),
        }
    }

    fn len(&self) -> usize {
        match self {
            Ids::Host(v) => v.len(),
            Ids::Device(_, n) => *n,
        }
    }
}


/// Kernel geometry; mirrors `struct Geom` in kernels/common.cuh.
const MAXR: usize = 6;
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Geom {
    rank: u32,
    n: u32,
    shape: [u32; MAXR],
    st: [[u32; MAXR]; 4],
}

fn to_u32(v: usize, what: &str) -> u32 {
    u32::try_from(v).unwrap_or_else(|_| panic!("CUDA kernels index with 32 bits: {what} {v} is too large"))
}

/// Geometry of up to 4 operands over `shape` (dims coalesced); also whether every operand is
/// plainly contiguous (then kernels skip the index arithmetic).
fn geom<const N: usize>(shape: &[usize], strides: [&[usize]; N]) -> (Geom, bool) {
    let (sh, st) = coalesce(shape, strides);
    assert!(sh.len() <= MAXR, "CUDA elementwise ops support up to {MAXR} non-mergeable dims, got shape {shape:?}");
    let n: usize = shape.iter().product();
    let mut g = Geom { rank: sh.len() as u32, n: to_u32(n, "element count"), shape: [1; MAXR], st: [[0; MAXR]; 4] };
    for (d, &s) in sh.iter().enumerate() {
        g.shape[d] = s as u32;
        for k in 0..N {
            g.st[k][d] = to_u32(st[k][d], "stride");
        }
    }
    let contig = sh.len() == 1 && (0..N).all(|k| st[k][0] == 1 || sh[0] == 1);
    (g, contig)
}

/// The two-operand geometry `g` of `esz`-byte elements recast as 16-byte words, when both
/// operands' innermost dim is contiguous and every row and stride is a whole number of words:
/// then a strided copy (a slice of a wider tensor, a transpose of whole rows) moves 16 bytes per
/// thread instead of one element.
fn words16(g: &Geom, esz: usize) -> Option<Geom> {
    let v = (16 / esz) as u32;
    let r = g.rank as usize;
    if r == 0 || esz > 16 || !g.shape[r - 1].is_multiple_of(v) || (0..2).any(|k| g.st[k][r - 1] != 1) {
        return None;
    }
    if (0..2).any(|k| g.st[k][..r - 1].iter().any(|s| !s.is_multiple_of(v))) {
        return None;
    }
    let mut w = *g;
    w.n /= v;
    w.shape[r - 1] /= v;
    for k in 0..2 {
        for d in 0..r - 1 {
            w.st[k][d] /= v;
        }
    }
    Some(w)
}

/// Whether every address is 16-byte aligned (the vectorized kernels' requirement).
fn aligned16(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p % 16 == 0)
}

fn fail(e: CudaError) -> ! {
    panic!("{e}")
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// Uninitialized buffer of `len` elements.
    pub(crate) fn alloc(dev: &Arc<CudaDevice>, dtype: DType, len: usize) -> CudaStorage {
        dev.bind();
        // The pool's lock is released before a failure panics (a panic under it would poison it).
        let stream = dev.current_stream_id();
        let r = dev.pool.lock().unwrap().alloc(len * dtype.size_in_bytes(), stream);
        let (ptr, size) = r.unwrap_or_else(|e| fail(e));
        CudaStorage { ptr, size, len, dtype, dev: dev.clone(), stream }
    }

    /// This buffer is used by work on `stream` too: when it is freed, its block waits for that
    /// stream's work enqueued until then before it is reused (alloc.rs).
    pub fn record_stream(&self, stream: &super::Stream) {
        assert!(Arc::ptr_eq(stream.device(), &self.dev), "record_stream: {stream:?} is not on this buffer's device {:?}", self.dev);
        self.dev.pool.lock().unwrap().record_use(self.ptr, self.stream, stream.id());
    }

    /// Device address of element `i`.
    pub(crate) fn at(&self, i: usize) -> u64 {
        self.ptr + (i * self.dtype.size_in_bytes()) as u64
    }

    #[track_caller]
    pub fn zeros(dev: &Arc<CudaDevice>, dtype: DType, len: usize) -> CudaStorage {
        let s = CudaStorage::alloc(dev, dtype, len);
        // FMLAB_MEMSET_LOG=1: where each zeroed buffer comes from. A memset in a CUDA graph costs
        // a gap of ~3 µs before the next kernel; this finds the ones a kernel could do without.
        static LOG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *LOG.get_or_init(|| crate::settings::present("FMLAB_MEMSET_LOG")) {
            eprintln!("memset {} bytes from {}", len * dtype.size_in_bytes(), std::panic::Location::caller());
        }
        unsafe { drv::memset_d8_async(s.ptr, 0, len * dtype.size_in_bytes(), dev.cu_stream()) }.unwrap_or_else(|e| fail(CudaError::Driver { what: "memset".into(), msg: format!("{e:?}") }));
        s
    }

    pub fn full(dev: &Arc<CudaDevice>, dtype: DType, len: usize, v: f64) -> CudaStorage {
        let s = CudaStorage::alloc(dev, dtype, len);
        Args::new().push(s.ptr).push(to_u32(len, "length")).push(v).launch(dev, FILL.of(dtype), grid_for(len, 256), 256, 0);
        s
    }

    pub fn from_cpu(dev: &Arc<CudaDevice>, c: &CpuStorage) -> CudaStorage {
        let s = CudaStorage::alloc(dev, c.dtype(), c.len());
        dev.upload(s.ptr, c.as_bytes()).unwrap_or_else(|e| fail(e));
        s
    }

    /// A host copy of all `len` elements (synchronizes the stream).
    pub fn to_cpu(&self) -> CpuStorage {
        assert!(!self.dev.is_capturing(), "a tensor was read on the host inside a CUDA-graph capture (nothing has run yet): a captured step must keep its values on the device; read them after a replay");
        let mut bytes = vec![0u8; self.len * self.dtype.size_in_bytes()];
        self.dev.bind();
        if !bytes.is_empty() {
            unsafe { drv::memcpy_dtoh_async(&mut bytes, self.ptr, self.dev.cu_stream()) }.unwrap_or_else(|e| fail(CudaError::Driver { what: "device-to-host copy".into(), msg: format!("{e:?}") }));
        }
        self.dev.sync_current().unwrap_or_else(|e| fail(e));
        CpuStorage::from_bytes(self.dtype, &bytes)
    }

    /// Writes the elements viewed by `l` into `dst` viewed by `dl` (same shape).
    pub(crate) fn copy_into(&self, l: &Layout, dst: &CudaStorage, dl: &Layout) {
        // Profiled copies are named by shape and strides: which view is being materialized.
        let label = if super::profile::enabled() { format!("copy {:?} strides {:?} -> {:?} {}", l.shape, l.strides, dl.strides, self.dtype) } else { String::new() };
        let _p = super::profile::enabled().then(|| super::profile::Scope::new(&self.dev, &label));
        let (g, _) = geom(&l.shape, [&l.strides, &dl.strides]);
        let (src, dp) = (self.at(l.offset), dst.at(dl.offset));
        if let Some(w) = words16(&g, self.dtype.size_in_bytes()).filter(|_| aligned16(&[src, dp])) {
            Args::new().push(src).push(dp).push(w).launch(&self.dev, COPY_W16, grid_for(w.n as usize, 256), 256, 0);
            return;
        }
        let n = l.numel();
        Args::new().push(src).push(dp).push(g).launch(&self.dev, COPY.of(self.dtype), grid_for(n, 256), 256, 0);
    }

    /// `matmul` with a cuBLASLt epilogue (`vec`: the bias read, or the bias gradient written; N
    /// elements of this dtype). None when no kernel fuses it for these operands (nothing ran).
    pub(crate) fn matmul_epi(&self, la: &Layout, rhs: &CudaStorage, lb: &Layout, epi: gemm::Epilogue, vec: u64, aux: u64) -> Option<CudaStorage> {
        self.matmul_into(la, rhs, lb, epi, vec, aux, None)
    }

    /// acc[M, N] += A·B for 16-bit 2-D operands into a contiguous f32 `acc` (one GEMM, beta = 1).
    /// False when cuBLASLt has no kernel for it (nothing ran).
    pub(crate) fn matmul_acc_f32(&self, la: &Layout, rhs: &CudaStorage, lb: &Layout, acc: &CudaStorage) -> bool {
        assert!(acc.dtype == DType::F32 && matches!(self.dtype, DType::BF16 | DType::F16), "matmul_acc_f32: 16-bit operands into f32");
        self.matmul_into(la, rhs, lb, gemm::Epilogue::AccumulateF32, 0, 0, Some(acc)).is_some()
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul_into(&self, la: &Layout, rhs: &CudaStorage, lb: &Layout, epi: gemm::Epilogue, vec: u64, aux: u64, into: Option<&CudaStorage>) -> Option<CudaStorage> {
        let r = la.rank();
        let (m, k, n) = (la.shape[r - 2], la.shape[r - 1], lb.shape[r - 1]);
        let batch_shape = &la.shape[..r - 2];
        let nb: usize = batch_shape.iter().product();
        if let Some(acc) = into {
            assert!(acc.len == nb * m * n, "matmul_acc_f32: accumulator of {} elements for [{nb}×{m}×{n}]", acc.len);
        }
        // With an accumulator, `out` is only a placeholder returned on success.
        let out_dtype = if matches!(epi, gemm::Epilogue::BiasGradF32 | gemm::Epilogue::OutF32) { DType::F32 } else { self.dtype };
        let out = CudaStorage::alloc(&self.dev, out_dtype, if into.is_some() { 0 } else { nb * m * n });
        if epi != gemm::Epilogue::None && (nb != 1 || m * n * k == 0) {
            return None;
        }
        if nb * m * n == 0 {
            return Some(out);
        }
        if k == 0 {
            return Some(CudaStorage::zeros(&self.dev, self.dtype, nb * m * n));
        }
        // One uniform batch stride per operand (dims merged); broadcast batches are materialized.
        let batch_stride = |l: &Layout| -> Option<usize> {
            let (sh, [st]) = coalesce(&l.shape[..r - 2], [&l.strides[..r - 2]]);
            if nb == 1 {
                return Some(0);
            }
            (sh.len() == 1 && st[0] != 0).then_some(st[0])
        };
        let operand = |l: &Layout, rows: usize, cols: usize| -> Option<gemm::Operand> {
            let bs = batch_stride(l)?;
            gemm::transposed_view(rows, cols, l.strides[r - 2], l.strides[r - 1], bs)
        };
        let (ca, cla);
        let (a_st, la) = match operand(la, m, k) {
            Some(_) => (self, la.clone()),
            None => {
                ca = self.copy_strided(la);
                cla = Layout::contiguous(&la.shape);
                (&ca, cla)
            }
        };
        let (cb, clb);
        let (b_st, lb) = match operand(lb, k, n) {
            Some(_) => (rhs, lb.clone()),
            None => {
                cb = rhs.copy_strided(lb);
                clb = Layout::contiguous(&lb.shape);
                (&cb, clb)
            }
        };
        let oa = operand(&la, m, k).expect("contiguous operand");
        let ob = operand(&lb, k, n).expect("contiguous operand");
        let pc = into.map_or(out.ptr, |acc| acc.ptr);
        let ran = gemm::matmul(&self.dev, self.dtype, a_st.at(la.offset), oa, b_st.at(lb.offset), ob, pc, m, n, nb, epi, vec, aux).unwrap_or_else(|e| fail(e));
        ran.then_some(out)
    }

    fn upload_ids(&self, ids: &[usize]) -> CudaStorage {
        let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        CudaStorage::from_cpu(&self.dev, &CpuStorage::I32(v))
    }

    /// The device address of `ids` (uploaded first when they are on the host); keeps the upload
    /// alive in `keep`.
    fn ids_ptr(&self, ids: &Ids, keep: &mut Option<CudaStorage>) -> u64 {
        match ids {
            Ids::Host(v) => keep.insert(self.upload_ids(v)).ptr,
            Ids::Device(p, _) => *p,
        }
    }

    /// `out[.., i, ..] = self[.., ids[i], ..]` along `dim`; ids already range-checked.
    pub fn index_select(&self, l: &Layout, ids: &Ids, dim: usize) -> CudaStorage {
        let src = if l.is_contiguous() && l.offset == 0 { None } else { Some(self.copy_strided(l)) };
        let s = src.as_ref().unwrap_or(self);
        let outer: usize = l.shape[..dim].iter().product();
        let inner: usize = l.shape[dim + 1..].iter().product();
        let n = outer * ids.len() * inner;
        let out = CudaStorage::alloc(&self.dev, self.dtype, n);
        if n > 0 {
            let mut keep = None;
            let pid = self.ids_ptr(ids, &mut keep);
            Args::new().push(s.ptr).push(pid).push(out.ptr).push(to_u32(outer, "outer")).push(to_u32(l.shape[dim], "dim")).push(to_u32(ids.len(), "ids")).push(to_u32(inner, "inner")).launch(&self.dev, INDEX_SELECT.of(self.dtype), grid_for(n, 256), 256, 0);
        }
        out
    }

    /// A copy of the base (viewed by `l`) with `src`'s rows added at `ids` along `dim`.
    pub fn index_add(&self, l: &Layout, ids: &Ids, src: &CudaStorage, ls: &Layout, dim: usize) -> CudaStorage {
        let out = self.copy_strided(l);
        out.index_add_in_place(&l.shape, ids, src, ls, dim);
        out
    }

    /// `index_add` into this buffer itself (contiguous, of `shape`): for a buffer no one else
    /// holds (a gradient being summed). A contiguous `src` is read where it lies.
    pub(crate) fn index_add_in_place(&self, shape: &[usize], ids: &Ids, src: &CudaStorage, ls: &Layout, dim: usize) {
        let copied = (!ls.is_contiguous()).then(|| src.copy_strided(ls));
        let sp = copied.as_ref().map_or(src.at(ls.offset), |c| c.ptr);
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let n = outer * ids.len() * inner;
        if n > 0 {
            let mut keep = None;
            let pid = self.ids_ptr(ids, &mut keep);
            Args::new().push(self.ptr).push(pid).push(sp).push(to_u32(outer, "outer")).push(to_u32(shape[dim], "dim")).push(to_u32(ids.len(), "ids")).push(to_u32(inner, "inner")).launch(&self.dev, INDEX_ADD.of(self.dtype), grid_for(n, 256), 256, 0);
        }
    }

    fn outer_inner(shape: &[usize], idx_shape: &[usize], dim: usize, what: &str) -> (usize, usize) {
        for d in 0..shape.len() {
            assert!(d == dim || shape[d] == idx_shape[d], "{what} on CUDA: index shape {idx_shape:?} must match source {shape:?} outside dim {dim}");
        }
        (shape[..dim].iter().product(), shape[dim + 1..].iter().product())
    }

}

/// A whole-tensor reduction of at least ALL_PART_MIN contiguous elements runs over blocks of
/// ALL_PART_CHUNK elements (more when that would make over ALL_PART_MAX_BLOCKS blocks), whose
/// partials one thread then combines in order (`reduce_all_part_*`, reduce.cu).
const ALL_PART_MIN: usize = 8192;
const ALL_PART_CHUNK: usize = 2048;
const ALL_PART_MAX_BLOCKS: usize = 256;

impl crate::backend::BackendStorage for CudaStorage {
    /// A contiguous copy of the viewed elements.
    fn copy_strided(&self, l: &Layout) -> CudaStorage {
        let n = l.numel();
        let out = CudaStorage::alloc(&self.dev, self.dtype, n);
        if n == 0 {
            return out;
        }
        if l.is_contiguous() {
            let b = n * self.dtype.size_in_bytes();
            unsafe { drv::memcpy_dtod_async(out.ptr, self.at(l.offset), b, self.dev.cu_stream()) }.unwrap_or_else(|e| fail(CudaError::Driver { what: "device copy".into(), msg: format!("{e:?}") }));
            return out;
        }
        self.copy_into(l, &out, &Layout::contiguous(&l.shape));
        out
    }

    fn cast(&self, l: &Layout, to: DType) -> CudaStorage {
        let n = l.numel();
        let out = CudaStorage::alloc(&self.dev, to, n);
        if n > 0 {
            let (g, _) = geom(&l.shape, [&l.strides]);
            Args::new().push(self.at(l.offset)).push(out.ptr).push(g).launch(&self.dev, CAST.of2(self.dtype, to), grid_for(n, 256), 256, 0);
        }
        out
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> CudaStorage {
        let (code, p0, p1) = match op {
            UnaryOp::Neg => (0, 0.0, 0.0),
            UnaryOp::Exp => (1, 0.0, 0.0),
            UnaryOp::Log => (2, 0.0, 0.0),
            UnaryOp::Sqrt => (3, 0.0, 0.0),
            UnaryOp::Tanh => (4, 0.0, 0.0),
            UnaryOp::Sin => (5, 0.0, 0.0),
            UnaryOp::Cos => (6, 0.0, 0.0),
            UnaryOp::Abs => (7, 0.0, 0.0),
            UnaryOp::Erf => (8, 0.0, 0.0),
            UnaryOp::Recip => (9, 0.0, 0.0),
            UnaryOp::Relu => (10, 0.0, 0.0),
            UnaryOp::Affine(m, a) => (11, m, a),
            // Small integer powers by multiplication, as on the CPU.
            UnaryOp::Powf(p) if p == 2.0 => (12, p, 0.0),
            UnaryOp::Powf(p) if p == 3.0 => (13, p, 0.0),
            UnaryOp::Powf(p) => (14, p, 0.0),
        };
        let n = l.numel();
        let out = CudaStorage::alloc(&self.dev, self.dtype, n);
        if n > 0 {
            let (g, contig) = geom(&l.shape, [&l.strides]);
            if contig && aligned16(&[self.at(l.offset), out.ptr]) {
                let blocks = grid_for(n.div_ceil(16 / self.dtype.size_in_bytes()), 256);
                Args::new().push(self.at(l.offset)).push(out.ptr).push(g.n).push(code as i32).push(p0).push(p1).launch(&self.dev, UNARY_VEC.of(self.dtype), blocks, 256, 0);
                return out;
            }
            Args::new().push(self.at(l.offset)).push(out.ptr).push(g).push(code as i32).push(p0).push(p1).push(contig as i32).launch(&self.dev, UNARY.of(self.dtype), grid_for(n, 256), 256, 0);
        }
        out
    }

    fn binary(&self, la: &Layout, rhs: &CudaStorage, lb: &Layout, op: BinaryOp) -> CudaStorage {
        let code = match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::Maximum => 4,
            BinaryOp::Minimum => 5,
        };
        let n = la.numel();
        let out = CudaStorage::alloc(&self.dev, self.dtype, n);
        if n > 0 {
            let (g, contig) = geom(&la.shape, [&la.strides, &lb.strides]);
            if contig && aligned16(&[self.at(la.offset), rhs.at(lb.offset), out.ptr]) {
                let blocks = grid_for(n.div_ceil(16 / self.dtype.size_in_bytes()), 256);
                Args::new().push(self.at(la.offset)).push(rhs.at(lb.offset)).push(out.ptr).push(g.n).push(code as i32).launch(&self.dev, BINARY_VEC.of(self.dtype), blocks, 256, 0);
                return out;
            }
            // Row broadcast (a bias): a contiguous [rows, cols], b [cols] repeated.
            let v = 16 / self.dtype.size_in_bytes();
            if g.rank == 2 && g.st[0][1] == 1 && g.st[0][0] == g.shape[1] && g.st[1][0] == 0 && g.st[1][1] == 1 && g.shape[1] as usize % v == 0 && aligned16(&[self.at(la.offset), rhs.at(lb.offset), out.ptr]) {
                let blocks = grid_for(n / v, 256);
                Args::new().push(self.at(la.offset)).push(rhs.at(lb.offset)).push(out.ptr).push(g.n).push(g.shape[1]).push(code as i32).launch(&self.dev, BINARY_ROWBC.of(self.dtype), blocks, 256, 0);
                return out;
            }
            Args::new().push(self.at(la.offset)).push(rhs.at(lb.offset)).push(out.ptr).push(g).push(code as i32).push(contig as i32).launch(&self.dev, BINARY.of(self.dtype), grid_for(n, 256), 256, 0);
        }
        out
    }

    fn cmp(&self, la: &Layout, rhs: &CudaStorage, lb: &Layout, op: CmpOp) -> CudaStorage {
        let code = match op {
            CmpOp::Eq => 0,
            CmpOp::Ne => 1,
            CmpOp::Lt => 2,
            CmpOp::Le => 3,
            CmpOp::Gt => 4,
            CmpOp::Ge => 5,
        };
        let n = la.numel();
        let out = CudaStorage::alloc(&self.dev, DType::U8, n);
        if n > 0 {
            let (g, _) = geom(&la.shape, [&la.strides, &lb.strides]);
            Args::new().push(self.at(la.offset)).push(rhs.at(lb.offset)).push(out.ptr).push(g).push(code as i32).launch(&self.dev, CMP.of(self.dtype), grid_for(n, 256), 256, 0);
        }
        out
    }

    fn where_cond(c: &CudaStorage, lc: &Layout, a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> CudaStorage {
        let n = la.numel();
        let out = CudaStorage::alloc(&a.dev, a.dtype, n);
        if n > 0 {
            let (g, _) = geom(&la.shape, [&lc.strides, &la.strides, &lb.strides]);
            Args::new().push(c.at(lc.offset)).push(a.at(la.offset)).push(b.at(lb.offset)).push(out.ptr).push(g).launch(&a.dev, WHERE.of(a.dtype), grid_for(n, 256), 256, 0);
        }
        out
    }

    /// Reduces over `dims` (sorted, unique), keeping them as size 1; output contiguous.
    fn reduce(&self, l: &Layout, op: ReduceOp, dims: &[usize]) -> CudaStorage {
        assert!(self.dtype.is_float(), "reduce {op:?} on CUDA needs a float tensor, got {}", self.dtype);
        let kept: Vec<usize> = (0..l.rank()).filter(|d| !dims.contains(d)).collect();
        let ks: Vec<usize> = kept.iter().map(|&d| l.shape[d]).collect();
        let kst: Vec<usize> = kept.iter().map(|&d| l.strides[d]).collect();
        let rs: Vec<usize> = dims.iter().map(|&d| l.shape[d]).collect();
        let rst: Vec<usize> = dims.iter().map(|&d| l.strides[d]).collect();
        let n_out: usize = ks.iter().product();
        let red: usize = rs.iter().product();
        let out = CudaStorage::alloc(&self.dev, self.dtype, n_out);
        if n_out == 0 {
            return out;
        }
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        // Reduced dims leading a contiguous input, kept dims trailing: the coalesced column kernel.
        let leading = dims.iter().enumerate().all(|(i, &d)| i == d);
        if l.is_contiguous() && leading && n_out > 1 && red > 1 {
            let (r, k) = (red, n_out);
            let col_blocks = k.div_ceil(32);
            let (splits, rps) = super::col_splits(r, k);
            let part = (splits > 1).then(|| CudaStorage::alloc(&self.dev, DType::F64, splits * k));
            let pp = part.as_ref().map_or(0, |p| p.ptr);
            Args::new().push(self.at(l.offset)).push(pp).push(out.ptr).push(to_u32(r, "rows")).push(to_u32(k, "cols")).push(to_u32(rps, "rows")).push(code as i32).launch3(
                &self.dev,
                REDUCE_COLS.of(self.dtype),
                (to_u32(col_blocks, "blocks"), splits as u32, 1),
                (32, 8, 1),
                0,
            );
            if splits > 1 {
                Args::new().push(pp).push(out.ptr).push(to_u32(k, "cols")).push(splits as u32).push(code as i32).launch(&self.dev, REDUCE_COLS_FINAL.of(self.dtype), grid_for(k, 256), 256, 0);
            }
            return out;
        }
        // Everything of a large contiguous input: blocks over contiguous runs, then their partials
        // in order (one block alone is a chain of dependent adds per thread).
        if n_out == 1 && l.is_contiguous() && red >= ALL_PART_MIN {
            let chunk = ALL_PART_CHUNK.max(red.div_ceil(ALL_PART_MAX_BLOCKS));
            let blocks = red.div_ceil(chunk);
            let part = CudaStorage::alloc(&self.dev, DType::F64, blocks);
            Args::new().push(self.at(l.offset)).push(part.ptr).push(red as u64).push(chunk as u64).push(code as i32).launch(&self.dev, REDUCE_ALL_PART.of(self.dtype), blocks as u32, 256, 0);
            Args::new().push(part.ptr).push(out.ptr).push(1u32).push(blocks as u32).push(code as i32).launch(&self.dev, REDUCE_COLS_FINAL.of(self.dtype), 1, 32, 0);
            return out;
        }
        let (go, _) = geom(&ks, [&kst]);
        let (gr, _) = geom(&rs, [&rst]);
        // One block per output; small reductions get a single warp.
        let block = if red <= 64 { 32 } else if red <= 2048 { 128 } else { 256 };
        Args::new().push(self.at(l.offset)).push(out.ptr).push(go).push(gr).push(code as i32).launch(&self.dev, REDUCE.of(self.dtype), n_out.min(65535 * 16) as u32, block, 0);
        out
    }

    /// Batched matmul: `la` [.., M, K], `lb` [.., K, N], batch dims broadcast to the same shape.
    fn matmul(&self, la: &Layout, rhs: &CudaStorage, lb: &Layout) -> CudaStorage {
        self.matmul_epi(la, rhs, lb, gemm::Epilogue::None, 0, 0).expect("a plain GEMM always has a kernel")
    }

    /// `out[i][j][k] = self[i][idx[i][j][k]][k]` (dim = 1); idx has the output shape.
    fn gather(&self, l: &Layout, idx: &[usize], idx_shape: &[usize], dim: usize) -> CudaStorage {
        let (outer, inner) = CudaStorage::outer_inner(&l.shape, idx_shape, dim, "gather");
        let s = self.copy_strided(l);
        let out = CudaStorage::alloc(&self.dev, self.dtype, idx.len());
        if !idx.is_empty() {
            let d_idx = self.upload_ids(idx);
            Args::new().push(s.ptr).push(d_idx.ptr).push(out.ptr).push(to_u32(outer, "outer")).push(to_u32(l.shape[dim], "dim")).push(to_u32(idx_shape[dim], "k")).push(to_u32(inner, "inner")).launch(&self.dev, GATHER.of(self.dtype), grid_for(idx.len(), 256), 256, 0);
        }
        out
    }

    /// `self[i][idx[i][j][k]][k] += src[i][j][k]`; self contiguous of `shape`; a new storage.
    fn scatter_add(&self, shape: &[usize], idx: &[usize], idx_shape: &[usize], src: &CudaStorage, ls: &Layout, dim: usize) -> CudaStorage {
        let (outer, inner) = CudaStorage::outer_inner(shape, idx_shape, dim, "scatter_add");
        let out = self.copy_strided(&Layout::contiguous(shape));
        let s = if src.dtype == self.dtype { src.copy_strided(ls) } else { src.cast(ls, self.dtype) };
        if !idx.is_empty() {
            let d_idx = self.upload_ids(idx);
            Args::new().push(out.ptr).push(d_idx.ptr).push(s.ptr).push(to_u32(outer, "outer")).push(to_u32(shape[dim], "dim")).push(to_u32(idx_shape[dim], "k")).push(to_u32(inner, "inner")).launch(&self.dev, SCATTER_ADD.of(self.dtype), grid_for(idx.len(), 256), 256, 0);
        }
        out
    }

    /// Concatenates `parts` along `dim` (each copied into its slice of the output).
    fn cat(parts: &[(&CudaStorage, &Layout)], dim: usize) -> CudaStorage {
        let mut shape = parts[0].1.shape.clone();
        shape[dim] = parts.iter().map(|(_, l)| l.shape[dim]).sum();
        let n: usize = shape.iter().product();
        let out = CudaStorage::alloc(&parts[0].0.dev, parts[0].0.dtype, n);
        let ost = contiguous_strides(&shape);
        let mut start = 0;
        for (s, l) in parts {
            if l.numel() > 0 {
                let dl = Layout { shape: l.shape.clone(), strides: ost.clone(), offset: start * ost[dim] };
                s.copy_into(l, &out, &dl);
            }
            start += l.shape[dim];
        }
        out
    }
}
