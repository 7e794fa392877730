//! Every GEMM goes through this one cuBLASLt wrapper: row-major batched C = A·B with any
//! operand given by strides (transposed views need no copy), f32/f64 exact (no TF32), bf16/f16 in
//! and out with f32 accumulation. Plans (descriptors + the heuristic's algorithm) are cached per
//! shape, strides, dtype and pointer alignment.
//!
//! Tuning (FMLAB_GEMM_TUNE=N, off by default): each shape's first call outside a graph capture
//! times the heuristic's first N candidates (cuBLASLt offers up to 8 here) and keeps the fastest
//! (FMLAB_GEMM_TUNE_LOG=1 prints each choice). The choice is stored beside the kernel cache
//! (`gemm-choices-…` per GPU model, arch and cuBLASLt version; one line per shape) and read back
//! by later tuned runs, which then run the same kernels, in the same summation order, as the run
//! that timed them: only a machine's first tuned run rests on timings (a bf16 training run of 30
//! steps, three times on the H100: the same losses to the bit). Off by default because the step
//! does not measurably gain: gpt2-mini, 30 steps, N = 8 vs 1 interleaved, two calls: 19.4 / 19.5
//! vs 19.8 / 19.8 ms, then 19.7 / 19.7 vs 19.5 / 19.5 (the isolated timings do not carry over to
//! the step). Session 10, before the weight-gradient GEMMs lost their bias epilogue, it found a
//! faster kernel for 11 of the 15 shapes, by 1-15%.

use std::collections::HashMap;

use cudarc::cublaslt::{result as lt, sys};

use super::{CudaDevice, CudaError};
use crate::DType;

/// One operand as cuBLASLt sees it (column-major): stored rows × cols, leading dim, transposed?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Operand {
    pub trans: bool,
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
    pub batch_stride: i64,
}

/// The column-major operand for Xᵀ, where X is the row-major r×c matrix with element strides
/// (sr, sc). None when neither dim is unit-stride (the caller copies first).
pub(crate) fn transposed_view(r: usize, c: usize, sr: usize, sc: usize, batch_stride: usize) -> Option<Operand> {
    let (r64, c64) = (r as u64, c as u64);
    if sc == 1 || c == 1 {
        let ld = if r == 1 { c } else { sr };
        if ld >= c.max(1) {
            return Some(Operand { trans: false, rows: c64, cols: r64, ld: ld as i64, batch_stride: batch_stride as i64 });
        }
    }
    if sr == 1 || r == 1 {
        let ld = if c == 1 { r } else { sc };
        if ld >= r.max(1) {
            return Some(Operand { trans: true, rows: r64, cols: c64, ld: ld as i64, batch_stride: batch_stride as i64 });
        }
    }
    None
}

/// What cuBLASLt does after the product, in the row-major terms of `matmul` (C = A·B, [M, N]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    None,
    /// C += bias[N] on every row (column-major: a bias per row of D, `CUBLASLT_EPILOGUE_BIAS`).
    Bias,
    /// Also writes out[N] = Σ_k B[k, n], the column sums of B (a Linear's bias gradient when
    /// B is the output gradient and the GEMM makes the weight gradient). Column-major, B is
    /// cuBLASLt's A operand and the sum runs over the GEMM's k: `CUBLASLT_EPILOGUE_BGRADA`.
    BiasGrad,
    /// `BiasGrad` with C and the bias gradient in f32 (16-bit A and B): a mixed-precision
    /// Linear's weight and bias gradients made straight in the f32 masters' dtype, with no
    /// bf16 rounding and no cast launch per parameter after the GEMM. (`OutF32` plus a
    /// column-sum kernel is faster at GPT-2's shapes and the default: ops/linear.rs.)
    BiasGradF32,
    /// C += A·B into an f32 C (16-bit A and B; beta = 1): gradients summed over chunks in f32
    /// without a cast and an add per chunk.
    AccumulateF32,
    /// C = A·B with C in f32 (16-bit A and B): a mixed-precision weight gradient made in its f32
    /// master's dtype, its bias gradient summed by a separate kernel (see `BiasGradF32`).
    OutF32,
    /// C = gelu(A·B + bias[N]) (tanh form) and aux = A·B + bias, the pre-activation its backward
    /// needs: an MLP's first layer in one pass (`CUBLASLT_EPILOGUE_GELU_AUX_BIAS`).
    GeluAuxBias,
    /// C = gelu(A·B + bias[N]) without the pre-activation (`CUBLASLT_EPILOGUE_GELU_BIAS`): an
    /// MLP's first layer whose backward makes the pre-activation again (ops/mlp.rs `mlp_gelu`).
    GeluBias,
    /// C = (A·B) ⊙ gelu'(aux): the MLP backward's dh GEMM and the GELU backward in one pass
    /// (`CUBLASLT_EPILOGUE_DGELU`). (`DGELU_BGRAD`, which also sums the first bias's gradient,
    /// measured 4.2 ms per step at GPT-2 mini's shapes against 0.5 ms for this one: the bias
    /// gradient comes from the weight-gradient GEMM's epilogue instead.)
    DGelu,
}

impl Epilogue {
    /// Whether the epilogue reads or writes the vector argument (bias or bias gradient).
    fn has_vec(self) -> bool {
        matches!(self, Epilogue::Bias | Epilogue::BiasGrad | Epilogue::BiasGradF32 | Epilogue::GeluAuxBias | Epilogue::GeluBias)
    }
    /// Whether it reads or writes an auxiliary [M, N] matrix laid out like C.
    fn has_aux(self) -> bool {
        matches!(self, Epilogue::GeluAuxBias | Epilogue::DGelu)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    epi: Epilogue,
    dtype: DType,
    a: Operand,
    b: Operand,
    m: u64,
    n: u64,
    batch: u64,
    align: [u32; 3],
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    la: sys::cublasLtMatrixLayout_t,
    lb: sys::cublasLtMatrixLayout_t,
    lc: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    /// The heuristic's other candidates, best guess first, until `tune` has timed them (then
    /// empty, with `algo` the fastest).
    cands: Vec<sys::cublasLtMatmulAlgo_t>,
}

pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    /// A workspace per stream (by stream id): GEMMs on two streams may run at once, and must not
    /// share scratch memory.
    ws: HashMap<u32, u64>,
    ws_size: usize,
    /// None: no algorithm for that key (only possible with an epilogue; the caller falls back).
    plans: HashMap<Key, Option<Plan>>,
    /// Tuned choices stored by earlier runs (and this one): key (its Debug text) → algorithm.
    /// None until the first tuning reads the file.
    choices: Option<HashMap<String, sys::cublasLtMatmulAlgo_t>>,
}
// The handle and plans are used only under the device's mutex.
unsafe impl Send for Blas {}

const WORKSPACE: usize = 32 << 20;

fn blas_err(what: &str) -> impl Fn(lt::CublasError) -> CudaError + '_ {
    move |e| CudaError::Blas { what: what.to_string(), msg: format!("{e:?}") }
}

fn align_of(p: u64) -> u32 {
    let tz = p.trailing_zeros().min(8);
    1u32 << tz
}

fn types(d: DType) -> (sys::cudaDataType, sys::cublasComputeType_t, sys::cudaDataType) {
    use sys::cudaDataType_t::*;
    use sys::cublasComputeType_t::*;
    match d {
        DType::F32 => (CUDA_R_32F, CUBLAS_COMPUTE_32F, CUDA_R_32F),
        DType::F64 => (CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F),
        DType::BF16 => (CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F),
        DType::F16 => (CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F),
        d => panic!("matmul on CUDA: no GEMM for {d} tensors"),
    }
}

impl Blas {
    fn new() -> Result<Blas, CudaError> {
        let handle = lt::create_handle().map_err(blas_err("creating the handle"))?;
        Ok(Blas { handle, ws: HashMap::new(), ws_size: WORKSPACE, plans: HashMap::new(), choices: None })
    }

    /// The current stream's workspace (allocated on its first GEMM; kept for the device's life).
    fn workspace(&mut self, dev: &CudaDevice) -> Result<u64, CudaError> {
        let sid = dev.current_stream_id();
        if let Some(&w) = self.ws.get(&sid) {
            return Ok(w);
        }
        let (w, _) = dev.pool.lock().unwrap().alloc(self.ws_size, sid)?;
        self.ws.insert(sid, w);
        Ok(w)
    }

    fn plan(&mut self, key: Key) -> Result<Option<&Plan>, CudaError> {
        if !self.plans.contains_key(&key) {
            let (dt, compute, scale) = types(key.dtype);
            let layout = |rows: u64, cols: u64, ld: i64, stride: i64| -> Result<sys::cublasLtMatrixLayout_t, CudaError> {
                let l = lt::create_matrix_layout(dt, rows, cols, ld).map_err(blas_err("matrix layout"))?;
                if key.batch > 1 {
                    let count = key.batch as i32;
                    unsafe {
                        lt::set_matrix_layout_attribute(l, sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count as *const i32 as *const _, 4).map_err(blas_err("batch count"))?;
                        lt::set_matrix_layout_attribute(l, sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride as *const i64 as *const _, 8).map_err(blas_err("batch stride"))?;
                    }
                }
                Ok(l)
            };
            let la = layout(key.a.rows, key.a.cols, key.a.ld, key.a.batch_stride)?;
            let lc_of = |dt_c: sys::cudaDataType| -> Result<sys::cublasLtMatrixLayout_t, CudaError> { lt::create_matrix_layout(dt_c, key.m, key.n, key.m as i64).map_err(blas_err("matrix layout")) };
            let lb = layout(key.b.rows, key.b.cols, key.b.ld, key.b.batch_stride)?;
            let lc = if matches!(key.epi, Epilogue::AccumulateF32 | Epilogue::BiasGradF32 | Epilogue::OutF32) { lc_of(sys::cudaDataType_t::CUDA_R_32F)? } else { layout(key.m, key.n, key.m as i64, (key.m * key.n) as i64)? };
            let desc = lt::create_matmul_desc(compute, scale).map_err(blas_err("matmul descriptor"))?;
            let (ta, tb) = (key.a.trans as i32, key.b.trans as i32);
            unsafe {
                lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const i32 as *const _, 4).map_err(blas_err("transa"))?;
                lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const i32 as *const _, 4).map_err(blas_err("transb"))?;
                let epi = match key.epi {
                    Epilogue::None | Epilogue::AccumulateF32 | Epilogue::OutF32 => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
                    Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
                    Epilogue::BiasGrad | Epilogue::BiasGradF32 => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADA,
                    Epilogue::GeluAuxBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
                    Epilogue::GeluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
                    Epilogue::DGelu => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DGELU,
                };
                lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi as *const _ as *const _, std::mem::size_of_val(&epi)).map_err(blas_err("epilogue"))?;
                if key.epi == Epilogue::BiasGradF32 {
                    let bt = sys::cudaDataType_t::CUDA_R_32F;
                    lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt as *const _ as *const _, std::mem::size_of_val(&bt)).map_err(blas_err("bias data type"))?;
                }
                if key.epi.has_aux() {
                    // The aux matrix is laid out like C: column-major leading dim = C's rows.
                    let ld = key.m as i64;
                    lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld as *const i64 as *const _, 8).map_err(blas_err("aux leading dim"))?;
                }
            }
            let pref = lt::create_matmul_pref().map_err(blas_err("preference"))?;
            unsafe {
                use sys::cublasLtMatmulPreferenceAttributes_t::*;
                lt::set_matmul_pref_attribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &self.ws_size as *const usize as *const _, 8).map_err(blas_err("workspace"))?;
                for (attr, al) in [(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align[0]), (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align[1]), (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align[2]), (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align[2])] {
                    lt::set_matmul_pref_attribute(pref, attr, &al as *const u32 as *const _, 4).map_err(blas_err("alignment"))?;
                }
            }
            let want = tune_candidates();
            let mut found = vec![unsafe { std::mem::zeroed::<sys::cublasLtMatmulHeuristicResult_t>() }; want];
            let mut count = 0i32;
            let heur = unsafe { sys::cublasLtMatmulAlgoGetHeuristic(self.handle, desc, la, lb, lc, lc, pref, want as i32, found.as_mut_ptr(), &mut count) }.result();
            unsafe { lt::destroy_matmul_pref(pref) }.map_err(blas_err("preference"))?;
            // FMLAB_GEMM_LOG=1: each new plan's candidates as the heuristic rates them.
            if crate::settings::present("FMLAB_GEMM_LOG") {
                for h in &found[..(count.max(0) as usize).min(want)] {
                    eprintln!("gemm plan {key:?}: candidate workspace {} bytes, waves {:.2}", h.workspaceSize, h.wavesCount);
                }
            }
            let algos: Vec<_> = found[..(count.max(0) as usize).min(want)].iter().filter(|h| h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).map(|h| h.algo).collect();
            let plan = match (heur, algos.first()) {
                (Ok(()), Some(&algo)) => Some(Plan { desc, la, lb, lc, algo, cands: algos }),
                // No kernel fuses this epilogue for these layouts: the caller does it separately.
                _ if key.epi != Epilogue::None => None,
                (Err(e), _) => return Err(CudaError::Blas { what: format!("choosing an algorithm for {key:?}"), msg: format!("{e:?}") }),
                (Ok(()), None) => return Err(CudaError::Blas { what: format!("choosing an algorithm for {key:?}"), msg: "the heuristic offered none".into() }),
            };
            self.plans.insert(key, plan);
        }
        Ok(self.plans[&key].as_ref())
    }
}

/// Creates the cuBLASLt handle and workspace now (graph capture must not be the first GEMM: the
/// workspace would become the graph's and the handle's setup is not capturable).
pub(crate) fn ensure_blas(dev: &CudaDevice) -> Result<(), CudaError> {
    let mut g = dev.blas.lock().unwrap();
    if g.is_none() {
        *g = Some(Blas::new()?);
    }
    g.as_mut().unwrap().workspace(dev).map(|_| ())
}

/// Row-major C[batch, M, N] = A[batch, M, K] · B[batch, K, N]; `a`/`b` are the column-major
/// operands for Aᵀ and Bᵀ (see `transposed_view`), C is contiguous. With an epilogue, `vec` is
/// the bias (read) or the bias gradient (written), N elements of `dtype`; Ok(false) when
/// cuBLASLt has no kernel for that epilogue here (nothing was launched). `aux` is the [M, N]
/// matrix of the GELU epilogues (written by `GeluAuxBias`, read by `DGeluBGrad`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(dev: &CudaDevice, dtype: DType, pa: u64, a: Operand, pb: u64, b: Operand, pc: u64, m: usize, n: usize, batch: usize, epi: Epilogue, vec: u64, aux: u64) -> Result<bool, CudaError> {
    // Profiled GEMMs are named by shape (row-major M×N×K, N/T per operand, batch), so the table
    // shows which of the step's GEMMs takes the time.
    let label = if super::profile::enabled() {
        let k = if a.trans { a.cols } else { a.rows };
        let t = |o: &Operand, plain: bool| if o.trans == plain { 'T' } else { 'N' };
        let e = match epi {
            Epilogue::None => "",
            Epilogue::Bias => " +bias",
            Epilogue::BiasGrad => " +bgrad",
            Epilogue::BiasGradF32 => " +bgrad f32",
            Epilogue::AccumulateF32 => " +=f32",
            Epilogue::OutF32 => " ->f32",
            Epilogue::GeluAuxBias => " +bias gelu",
            Epilogue::GeluBias => " +bias gelu (no aux)",
            Epilogue::DGelu => " dgelu",
        };
        format!("gemm {m}x{n}x{k} {}{}{} {dtype}{e}", t(&a, true), t(&b, true), if batch > 1 { format!(" x{batch}") } else { String::new() })
    } else {
        String::new()
    };
    let _p = super::profile::Scope::new(dev, if label.is_empty() { "gemm" } else { &label });
    let mut g = dev.blas.lock().unwrap();
    let blas = match &mut *g {
        Some(b) => b,
        None => g.insert(Blas::new()?),
    };
    // Column-major: Cᵀ[N, M] = Bᵀ[N, K] · Aᵀ[K, M].
    let key = Key { epi, dtype, a: b, b: a, m: n as u64, n: m as u64, batch: batch as u64, align: [align_of(pb), align_of(pa), align_of(pc)] };
    let ws = blas.workspace(dev)?;
    let (handle, ws_size) = (blas.handle, blas.ws_size);
    if blas.plan(key)?.is_none() {
        return Ok(false);
    }
    let (one64, zero64) = (1.0f64, 0.0f64);
    let (one32, zero32) = (1.0f32, if epi == Epilogue::AccumulateF32 { 1.0f32 } else { 0.0f32 });
    let (alpha, beta): (*const std::ffi::c_void, *const std::ffi::c_void) =
        if dtype == DType::F64 { (&one64 as *const f64 as *const _, &zero64 as *const f64 as *const _) } else { (&one32 as *const f32 as *const _, &zero32 as *const f32 as *const _) };
    // The first call of a shape outside a capture takes the stored choice or times the
    // heuristic's candidates.
    if !dev.is_capturing() && blas.plans[&key].as_ref().is_some_and(|p| p.cands.len() > 1) {
        let choices = blas.choices.get_or_insert_with(|| load_choices(dev));
        let plan = blas.plans.get_mut(&key).and_then(|p| p.as_mut()).expect("planned above");
        let name = format!("{key:?}");
        // A stored choice counts only if it is still one of the candidates.
        match choices.get(&name).filter(|a| plan.cands.iter().any(|c| c.data == a.data)) {
            Some(a) => plan.algo = *a,
            None => {
                // Timing only picks among valid kernels: if it cannot run (no memory for its
                // scratch outputs), the heuristic's first choice stays, and is not stored.
                if let Ok(true) = tune(dev, handle, plan, &key, [pa, pb, vec, aux], (alpha, beta), ws, ws_size) {
                    choices.insert(name.clone(), plan.algo);
                    store_choice(dev, &name, &plan.algo);
                }
            }
        }
        plan.cands.clear();
    }
    let plan = blas.plans[&key].as_ref().expect("planned above");
    if epi.has_vec() {
        // The vector's address is per call; the descriptor is only used under this lock.
        set_pointer(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, vec)?;
    }
    if epi.has_aux() {
        set_pointer(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux)?;
    }
    unsafe {
        lt::matmul(handle, plan.desc, alpha, beta, pb as *const _, plan.la, pa as *const _, plan.lb, pc as *const _, plan.lc, pc as *mut _, plan.lc, &plan.algo, ws as *mut _, ws_size, dev.cu_stream() as *mut _)
    }
    .map_err(|e| CudaError::Blas { what: format!("matmul [{batch}×{m}×{n}] {dtype}"), msg: format!("{e:?}") })?;
    Ok(true)
}

/// How many of cuBLASLt's heuristic candidates the first call of each GEMM shape times
/// (FMLAB_GEMM_TUNE; 1, the default: take the heuristic's first, no timing).
fn tune_candidates() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    if TUNE.load(Relaxed) == 0 {
        TUNE.store(crate::settings::string("FMLAB_GEMM_TUNE").and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 32), Relaxed);
    }
    TUNE.load(Relaxed)
}

/// 0: not read from the environment yet.
static TUNE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many cuBLASLt candidates each new GEMM shape times (1: none, the heuristic's first; 0:
/// back to FMLAB_GEMM_TUNE, or 1). Process-wide; applies to shapes planned afterwards.
pub fn gemm_autotune(candidates: usize) {
    TUNE.store(candidates.min(32), std::sync::atomic::Ordering::Relaxed);
}

/// Times each candidate algorithm of `plan` on the real operands (outputs into scratch memory,
/// so nothing the caller holds is touched) and keeps the fastest. Runs once per shape, outside
/// graph captures; blocks the host until the timings are back. Whether a candidate was timed
/// (then `plan.algo` is the fastest).
#[allow(clippy::too_many_arguments)]
fn tune(dev: &CudaDevice, handle: sys::cublasLtHandle_t, plan: &mut Plan, key: &Key, [pa, pb, vec, aux]: [u64; 4], (alpha, beta): (*const std::ffi::c_void, *const std::ffi::c_void), ws: u64, ws_size: usize) -> Result<bool, CudaError> {
    use cudarc::driver::{result as drv, sys as dsys};
    use sys::cublasLtMatmulDescAttributes_t::{CUBLASLT_MATMUL_DESC_BIAS_POINTER, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER};
    let el = key.dtype.size_in_bytes();
    let f32_out = matches!(key.epi, Epilogue::AccumulateF32 | Epilogue::BiasGradF32 | Epilogue::OutF32);
    let cells = (key.m * key.n * key.batch) as usize;
    // Column-major D is [key.m, key.n]: the row-major N (a bias's length) is key.m.
    let d_bytes = cells * if f32_out { 4 } else { el };
    let vec_bytes = if matches!(key.epi, Epilogue::BiasGrad | Epilogue::BiasGradF32) { key.m as usize * if key.epi == Epilogue::BiasGradF32 { 4 } else { el } } else { 0 };
    let aux_bytes = if key.epi == Epilogue::GeluAuxBias { cells * el } else { 0 };
    let scratch = unsafe { drv::malloc_sync(d_bytes + vec_bytes + aux_bytes + 512) }.map_err(super::drv_err("allocating GEMM tuning scratch"))?;
    let (e0, e1) = (drv::event::create(dsys::CUevent_flags::CU_EVENT_DEFAULT), drv::event::create(dsys::CUevent_flags::CU_EVENT_DEFAULT));
    let stream = dev.cu_stream();
    let timed = |e0: dsys::CUevent, e1: dsys::CUevent| -> Result<Vec<(f32, usize)>, CudaError> {
        let align = |p: u64| p.div_ceil(256) * 256;
        let d = align(scratch);
        let v_out = align(d + d_bytes as u64);
        let aux_out = align(v_out + vec_bytes as u64);
        // Written epilogue outputs go to scratch; read ones are the caller's.
        if key.epi.has_vec() {
            set_pointer(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, if vec_bytes > 0 { v_out } else { vec })?;
        }
        if key.epi.has_aux() {
            set_pointer(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, if aux_bytes > 0 { aux_out } else { aux })?;
        }
        let run = |algo: &sys::cublasLtMatmulAlgo_t| unsafe { lt::matmul(handle, plan.desc, alpha, beta, pb as *const _, plan.la, pa as *const _, plan.lb, d as *const _, plan.lc, d as *mut _, plan.lc, algo, ws as *mut _, ws_size, stream as *mut _) }.is_ok();
        let mut times = Vec::new();
        for (i, algo) in plan.cands.iter().enumerate() {
            // One untimed run (a failure drops the candidate), then the mean of three.
            if !run(algo) {
                continue;
            }
            unsafe { drv::event::record(e0, stream) }.map_err(super::drv_err("recording an event"))?;
            let ok = (0..3).all(|_| run(algo));
            unsafe { drv::event::record(e1, stream) }.map_err(super::drv_err("recording an event"))?;
            let ms = unsafe { drv::event::synchronize(e1).and_then(|_| drv::event::elapsed(e0, e1)) }.map_err(super::drv_err("timing a GEMM"))?;
            if ok {
                times.push((ms / 3.0, i));
            }
        }
        Ok(times)
    };
    let times = match (e0, e1) {
        (Ok(a), Ok(b)) => timed(a, b),
        (Err(e), _) | (_, Err(e)) => Err(super::drv_err("creating an event")(e)),
    };
    // Released on every path.
    unsafe {
        for e in [e0, e1].into_iter().flatten() {
            let _ = drv::event::destroy(e);
        }
        let _ = drv::free_sync(scratch);
    }
    if let Some(&(best, i)) = times?.iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
        if crate::settings::present("FMLAB_GEMM_TUNE_LOG") {
            eprintln!("gemm tune m={} n={} k={} {:?} {}: best candidate #{i} of {}, {:.4} ms", key.m, key.n, if key.a.trans { key.a.rows } else { key.a.cols }, key.epi, key.dtype, plan.cands.len(), best);
        }
        plan.algo = plan.cands[i];
        return Ok(true);
    }
    Ok(false)
}

/// The file of stored choices for this device: beside the kernel cache, per GPU model, arch and
/// cuBLASLt version (the algorithms are only valid there).
fn choices_path(dev: &CudaDevice) -> Option<std::path::PathBuf> {
    let v = unsafe { sys::cublasLtGetVersion() };
    let model: String = dev.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    super::kernel_cache_dir().map(|d| d.join(format!("gemm-choices-{model}-{}-cublaslt{v}.txt", dev.arch)))
}

/// Stored choices: lines of 8 hex words (the algorithm), a tab, the key. Unreadable lines are
/// skipped (a later line for the same key wins).
fn load_choices(dev: &CudaDevice) -> HashMap<String, sys::cublasLtMatmulAlgo_t> {
    let text = choices_path(dev).and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((words, key)) = line.split_once('\t') else { continue };
        let data: Vec<u64> = words.split(' ').filter_map(|w| u64::from_str_radix(w, 16).ok()).collect();
        if let Ok(data) = <[u64; 8]>::try_from(data) {
            out.insert(key.to_string(), sys::cublasLtMatmulAlgo_t { data });
        }
    }
    out
}

/// Appends one choice (one short line in one write: concurrent runs do not tear each other's).
fn store_choice(dev: &CudaDevice, key: &str, algo: &sys::cublasLtMatmulAlgo_t) {
    use std::io::Write;
    let Some(path) = choices_path(dev) else { return };
    let words: Vec<String> = algo.data.iter().map(|w| format!("{w:x}")).collect();
    let line = format!("{}\t{key}\n", words.join(" "));
    let _ = std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")));
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Sets a pointer attribute (bias, aux) of a matmul descriptor.
fn set_pointer(desc: sys::cublasLtMatmulDesc_t, attr: sys::cublasLtMatmulDescAttributes_t, p: u64) -> Result<(), CudaError> {
    unsafe { lt::set_matmul_desc_attribute(desc, attr, &p as *const u64 as *const _, 8) }.map_err(blas_err("epilogue pointer"))
}
