//! `Tensor`: a cheap-to-clone handle (Arc) to storage + layout + dtype, and, when it needs a
//! gradient, the `Op` that produced it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::BackendStorage;
use crate::cpu::{CpuStorage, VecOf};
use crate::cuda::storage::Ids;
use crate::cuda::CudaStorage;
use crate::dtype::DType;
use crate::layout::{broadcast_shape, contiguous_strides, Layout};
use crate::op::{BinaryOp, CmpOp, Op, ReduceOp, UnaryOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
    /// `cpu`, `cuda` (= cuda:0), `cuda:N`; `auto` is resolved by the caller (see `Device::auto`).
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda),
        }
    }
    /// cuda:0 if a GPU can be initialized, else the CPU with the reason it was not used.
    pub fn auto() -> (Device, Option<String>) {
        match crate::cuda::device(0) {
            Ok(_) => (Device::Cuda(0), None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }
    /// Initializes the device (CUDA: libraries, context, kernels): the place where a missing
    /// driver or GPU becomes an error rather than a panic inside an op.
    pub fn init(&self) -> Result<(), crate::cuda::CudaError> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => crate::cuda::device(*i).map(|_| ()),
        }
    }
}

fn cuda_dev(i: usize) -> std::sync::Arc<crate::cuda::CudaDevice> {
    crate::cuda::device(i).unwrap_or_else(|e| panic!("{e}"))
}

/// Where elements live. One variant per backend, dispatched by `match`.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.dev.ordinal),
        }
    }
    /// A contiguous copy of the elements viewed by `l`, on the same device.
    fn copy_strided(&self, l: &Layout) -> Storage {
        match self {
            Storage::Cpu(s) => Storage::Cpu(s.copy_strided(l)),
            Storage::Cuda(s) => Storage::Cuda(s.copy_strided(l)),
        }
    }
    /// A contiguous host copy of the elements viewed by `l`.
    fn to_host(&self, l: &Layout) -> CpuStorage {
        match self {
            Storage::Cpu(s) => s.copy_strided(l),
            Storage::Cuda(s) => {
                // Copy just the view on the device first, so only its bytes cross the bus.
                if l.is_contiguous() && l.offset == 0 && l.numel() == s.len() {
                    s.to_cpu()
                } else {
                    s.copy_strided(l).to_cpu()
                }
            }
        }
    }
    /// A contiguous copy of the view on `dev`.
    fn to_device(&self, l: &Layout, dev: Device) -> Storage {
        match (self, dev) {
            (Storage::Cpu(s), Device::Cpu) => Storage::Cpu(s.copy_strided(l)),
            (Storage::Cuda(s), Device::Cuda(i)) if s.dev.ordinal == i => Storage::Cuda(s.copy_strided(l)),
            (_, Device::Cpu) => Storage::Cpu(self.to_host(l)),
            (_, Device::Cuda(i)) => Storage::Cuda(CudaStorage::from_cpu(&cuda_dev(i), &self.to_host(l))),
        }
    }
}

/// Runs the CPU or the CUDA arm of an op on two storages of one device.
macro_rules! dispatch2 {
    ($what:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $cpu:expr, |$cx:ident, $cy:ident| $cuda:expr) => {
        match (&*$a, &*$b) {
            (Storage::Cpu($x), Storage::Cpu($y)) => Storage::Cpu($cpu),
            (Storage::Cuda($cx), Storage::Cuda($cy)) => Storage::Cuda($cuda),
            (x, y) => panic!("{}: operands on {} and {}", $what, x.device(), y.device()),
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(usize);

fn next_id() -> TensorId {
    static N: AtomicUsize = AtomicUsize::new(1);
    TensorId(N.fetch_add(1, Ordering::Relaxed))
}

pub struct TensorInner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    op: Option<Op>,
    /// A trainable leaf: gradients accumulate in `grad` across backward calls.
    is_var: bool,
    grad: Mutex<Option<Tensor>>,
}

#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}{}]", self.shape(), self.dtype(), if self.is_var() { ", var" } else { "" })
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// While alive, ops record no history (inference, optimizer updates, backward itself).
pub struct NoGradGuard(bool);
pub fn no_grad() -> NoGradGuard {
    NoGradGuard(GRAD_ENABLED.with(|g| g.replace(false)))
}
impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.0));
    }
}
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

impl Tensor {
    // ---- construction --------------------------------------------------------------------------

    fn make(storage: Storage, layout: Layout, dtype: DType, op: Option<Op>) -> Tensor {
        let op = if grad_enabled() { op.filter(|o| o.inputs().iter().any(|t| t.track_grad())) } else { None };
        Tensor(Arc::new(TensorInner { id: next_id(), storage: Arc::new(RwLock::new(storage)), layout, dtype, op, is_var: false, grad: Mutex::new(None) }))
    }

    /// A tensor sharing this one's storage whose history is `op` (a fused op's output: `self`
    /// holds the values without history, kept in `op` for backward).
    pub(crate) fn with_op(&self, op: Op) -> Tensor {
        Tensor(Arc::new(TensorInner { id: next_id(), storage: self.0.storage.clone(), layout: self.0.layout.clone(), dtype: self.0.dtype, op: Some(op), is_var: false, grad: Mutex::new(None) }))
    }

    /// A view of this tensor's storage under `layout`, without history (kernels that write
    /// several outputs into one buffer hand out views of it).
    pub(crate) fn strided_view(&self, layout: Layout) -> Tensor {
        assert!(layout.offset + layout.shape.iter().zip(&layout.strides).map(|(&n, &s)| n.saturating_sub(1) * s).sum::<usize>() < self.storage_len().max(1), "strided_view: layout outside the buffer");
        Tensor(Arc::new(TensorInner { id: next_id(), storage: self.0.storage.clone(), layout, dtype: self.0.dtype, op: None, is_var: false, grad: Mutex::new(None) }))
    }

    /// Copies `g` into the slice of this contiguous tensor that starts at `start` along `dim`,
    /// in place and without history: for buffers their maker owns (backward's gradient buffers,
    /// a preallocated KV cache). Views of this tensor see the new values.
    pub fn write_slice(&self, g: &Tensor, dim: usize, start: usize) {
        assert!(self.is_contiguous(), "write_slice: into a view {:?}", self.layout());
        assert!(g.rank() == self.rank() && (0..g.rank()).all(|d| if d == dim { start + g.dim(d) <= self.dim(d) } else { g.dim(d) == self.dim(d) }), "write_slice: {:?} at {start} along dim {dim} of {:?}", g.shape(), self.shape());
        if g.numel() == 0 {
            return;
        }
        let ost = contiguous_strides(self.shape());
        let dl = Layout { shape: g.shape().to_vec(), strides: ost.clone(), offset: self.layout().offset + start * ost[dim] };
        // A fresh copy where g views this very buffer (then the write is of its own values).
        let g = if g.dtype() != self.dtype() { g.to_dtype(self.dtype()) } else if g.shares_storage(self) { g.contiguous() } else { g.clone() };
        let src = g.0.storage.read().unwrap();
        let mut dst = self.0.storage.write().unwrap();
        match (&*src, &mut *dst) {
            (Storage::Cpu(s), Storage::Cpu(d)) => s.copy_into(g.layout(), d, &dl),
            (Storage::Cuda(s), Storage::Cuda(d)) => s.copy_into(g.layout(), d, &dl),
            (s, d) => panic!("write_slice: from {} into {}", s.device(), d.device()),
        }
    }

    /// Whether the two tensors are views of one buffer.
    pub(crate) fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// Elements in the buffer this tensor views.
    pub(crate) fn storage_len(&self) -> usize {
        match &*self.0.storage.read().unwrap() {
            Storage::Cpu(c) => c.len(),
            Storage::Cuda(c) => c.len(),
        }
    }

    /// A new tensor sharing this one's storage under another layout (a view).
    fn view(&self, layout: Layout, op: Op) -> Tensor {
        let op = if grad_enabled() && self.track_grad() { Some(op) } else { None };
        Tensor(Arc::new(TensorInner { id: next_id(), storage: self.0.storage.clone(), layout, dtype: self.0.dtype, op, is_var: false, grad: Mutex::new(None) }))
    }

    fn from_cpu(s: CpuStorage, shape: &[usize], op: Option<Op>) -> Tensor {
        Tensor::from_any(Storage::Cpu(s), shape, op)
    }

    /// A contiguous tensor over `s`.
    pub(crate) fn from_any(s: Storage, shape: &[usize], op: Option<Op>) -> Tensor {
        let (dtype, len) = match &s {
            Storage::Cpu(c) => (c.dtype(), c.len()),
            Storage::Cuda(c) => (c.dtype(), c.len()),
        };
        assert_eq!(len, shape.iter().product::<usize>(), "storage of {len} elements for shape {shape:?}");
        Tensor::make(s, Layout::contiguous(shape), dtype, op)
    }

    pub(crate) fn from_storage(s: CpuStorage, shape: &[usize]) -> Tensor {
        Tensor::from_cpu(s, shape, None)
    }

    /// Runs `f` on the storage (for fused kernels; pair with `layout()`).
    pub(crate) fn with_storage<R>(&self, f: impl FnOnce(&Storage) -> R) -> R {
        let s = self.0.storage.read().unwrap();
        f(&s)
    }

    pub fn from_vec<T: VecOf>(v: Vec<T>, shape: &[usize]) -> Tensor {
        assert_eq!(v.len(), shape.iter().product::<usize>(), "from_vec: {} values for shape {shape:?}", v.len());
        Tensor::from_cpu(T::wrap(v), shape, None)
    }

    pub fn from_f64(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
        assert_eq!(v.len(), shape.iter().product::<usize>(), "from_f64: {} values for shape {shape:?}", v.len());
        Tensor::from_cpu(CpuStorage::from_f64(dtype, v), shape, None)
    }

    pub fn scalar(v: f64, dtype: DType) -> Tensor {
        Tensor::from_f64(&[v], &[], dtype)
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_cpu(CpuStorage::zeros(dtype, shape.iter().product()), shape, None)
    }

    #[track_caller]
    pub fn zeros_on(shape: &[usize], dtype: DType, device: Device) -> Tensor {
        match device {
            Device::Cpu => Tensor::zeros(shape, dtype),
            Device::Cuda(i) => Tensor::from_any(Storage::Cuda(CudaStorage::zeros(&cuda_dev(i), dtype, shape.iter().product())), shape, None),
        }
    }

    /// A buffer for a kernel to write every element of: uninitialized on a GPU (no memset, which
    /// in a CUDA graph also costs a gap of a few µs before the next kernel), zeros on the CPU.
    pub(crate) fn uninit_on(shape: &[usize], dtype: DType, device: Device) -> Tensor {
        match device {
            Device::Cpu => Tensor::zeros(shape, dtype),
            Device::Cuda(i) => Tensor::from_any(Storage::Cuda(CudaStorage::alloc(&cuda_dev(i), dtype, shape.iter().product())), shape, None),
        }
    }

    pub fn full_on(v: f64, shape: &[usize], dtype: DType, device: Device) -> Tensor {
        match device {
            Device::Cpu => Tensor::full(v, shape, dtype),
            Device::Cuda(i) => Tensor::from_any(Storage::Cuda(CudaStorage::full(&cuda_dev(i), dtype, shape.iter().product(), v)), shape, None),
        }
    }

    /// A 0-d constant on this tensor's device and of its dtype.
    pub fn scalar_like(&self, v: f64) -> Tensor {
        Tensor::full_on(v, &[], self.dtype(), self.device())
    }

    /// A contiguous copy on `device` (no history: for data and constants; variables move with
    /// `move_to_device`). Returns `self` if it is already there.
    pub fn to_device(&self, device: Device) -> Tensor {
        if self.device() == device {
            return self.clone();
        }
        let s = self.0.storage.read().unwrap().to_device(self.layout(), device);
        Tensor::from_any(s, self.shape(), None)
    }

    /// Moves a variable's values to `device` in place (it stays the same variable, so models and
    /// optimizers that hold it follow). Its gradient is dropped.
    pub fn move_to_device(&self, device: Device) {
        assert!(self.is_var(), "move_to_device on a tensor that is not a variable");
        if self.device() == device {
            return;
        }
        let new = self.0.storage.read().unwrap().to_device(self.layout(), device);
        *self.0.storage.write().unwrap() = new;
        self.zero_grad();
    }

    pub fn full(v: f64, shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_f64(&vec![v; shape.iter().product()], shape, dtype)
    }

    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(1.0, shape, dtype)
    }

    pub fn arange(n: usize, dtype: DType) -> Tensor {
        Tensor::from_f64(&(0..n).map(|i| i as f64).collect::<Vec<_>>(), &[n], dtype)
    }

    #[track_caller]
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros_on(self.shape(), self.dtype(), self.device())
    }

    /// A trainable leaf holding a copy of `t`'s values (on `t`'s device).
    pub fn new_var(t: &Tensor) -> Tensor {
        let s = t.contiguous_storage();
        Tensor(Arc::new(TensorInner {
            id: next_id(),
            storage: Arc::new(RwLock::new(s)),
            layout: Layout::contiguous(t.shape()),
            dtype: t.dtype(),
            op: None,
            is_var: true,
            grad: Mutex::new(None),
        }))
    }

    // ---- accessors -----------------------------------------------------------------------------

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn dims(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn dim(&self, d: usize) -> usize {
        self.0.layout.shape[d]
    }
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.storage.read().unwrap().device()
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }
    pub fn is_var(&self) -> bool {
        self.0.is_var
    }
    /// Whether gradients flow to this tensor.
    pub fn track_grad(&self) -> bool {
        self.0.is_var || self.0.op.is_some()
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// Runs `f` on the storage's CPU or CUDA arm with this tensor's layout; the result is a
    /// new contiguous tensor storage on the same device.
    fn map_storage(&self, cpu: impl FnOnce(&CpuStorage, &Layout) -> CpuStorage, cuda: impl FnOnce(&CudaStorage, &Layout) -> CudaStorage) -> Storage {
        let s = self.0.storage.read().unwrap();
        match &*s {
            Storage::Cpu(c) => Storage::Cpu(cpu(c, &self.0.layout)),
            Storage::Cuda(c) => Storage::Cuda(cuda(c, &self.0.layout)),
        }
    }

    /// A contiguous copy of the viewed elements on the same device.
    fn contiguous_storage(&self) -> Storage {
        self.0.storage.read().unwrap().copy_strided(&self.0.layout)
    }

    /// A contiguous host copy of the viewed elements (a device-to-host copy for CUDA tensors).
    pub fn to_host_storage(&self) -> CpuStorage {
        self.0.storage.read().unwrap().to_host(&self.0.layout)
    }

    pub fn to_vec_f64(&self) -> Vec<f64> {
        let h = self.to_host_storage();
        h.to_f64_vec(&Layout::contiguous(self.shape()))
    }

    pub fn to_vec<T: VecOf>(&self) -> Vec<T> {
        let t = if self.dtype() == T::DTYPE { self.clone() } else { self.to_dtype(T::DTYPE) };
        let s = t.to_host_storage();
        T::slice(&s).unwrap().to_vec()
    }

    /// Inside a CUDA-graph capture, indices that are already on the GPU of `src` are used where
    /// they are: the host cannot read them there (nothing has run yet), so they are not
    /// range-checked here — a graph's per-step inputs are checked on the host when they are
    /// written (see fmlab-nn's graph step). Elsewhere None: indices are read and checked.
    pub(crate) fn captured_indices(&self, src: &Tensor) -> Option<Tensor> {
        let Device::Cuda(o) = self.device() else { return None };
        if src.device() != self.device() || !crate::cuda::device(o).is_ok_and(|d| d.is_capturing()) {
            return None;
        }
        assert_eq!(self.dtype(), DType::I32, "indices used inside a CUDA-graph capture must be i32 on the GPU");
        Some(self.contiguous())
    }

    /// The indices of a lookup into `src` along `dim`: checked host values, or (inside a CUDA-graph
    /// capture) the device tensor itself, with no host values.
    fn lookup_indices(&self, src: &Tensor, dim: usize, what: &str) -> (Vec<usize>, Option<Tensor>) {
        match self.captured_indices(src) {
            Some(t) => (Vec::new(), Some(t)),
            None => (self.host_indices(src.dim(dim), what), None),
        }
    }

    /// Index values of an i32/u32 tensor on any device, range-checked against `bound`.
    fn host_indices(&self, bound: usize, what: &str) -> Vec<usize> {
        let h = self.to_host_storage();
        h.to_indices(&Layout::contiguous(self.shape()), bound, what)
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> f64 {
        assert_eq!(self.numel(), 1, "item() on a tensor of shape {:?}", self.shape());
        self.to_vec_f64()[0]
    }

    // ---- variables and gradients ---------------------------------------------------------------

    /// A tensor with the same values and no history.
    pub fn detach(&self) -> Tensor {
        Tensor(Arc::new(TensorInner { id: next_id(), storage: self.0.storage.clone(), layout: self.0.layout.clone(), dtype: self.0.dtype, op: None, is_var: false, grad: Mutex::new(None) }))
    }

    /// Marks this CUDA tensor's buffer as used by work on `stream` (one other than the stream it
    /// was made on): when the buffer is freed, it is not handed out again until the work
    /// enqueued on `stream` by then is done (cuda/stream.rs). Needed whenever a tensor made on one
    /// stream is read or written on another and may be dropped before that work finishes.
    pub fn record_stream(&self, stream: &crate::cuda::Stream) {
        self.with_storage(|s| match s {
            Storage::Cuda(c) => c.record_stream(stream),
            s => panic!("record_stream: the tensor is on {}, not a CUDA device", s.device()),
        })
    }

    /// Copies `src`'s values into this tensor's own buffer (same shape and dtype; a contiguous
    /// tensor that is its buffer's only view), keeping the buffer's address: a CUDA graph that
    /// reads this tensor sees the new values on its next replay (graph inputs, per-step scalars).
    /// On a GPU a host `src` is queued as an upload without waiting.
    pub fn overwrite(&self, src: &Tensor) {
        assert_eq!(self.shape(), src.shape(), "overwrite: shape {:?} into {:?}", src.shape(), self.shape());
        assert_eq!(self.dtype(), src.dtype(), "overwrite: {} values into a {} tensor", src.dtype(), self.dtype());
        assert!(self.is_contiguous() && self.layout().offset == 0, "overwrite: the destination must be a whole contiguous buffer");
        let host = src.to_host_storage();
        let mut dst = self.0.storage.write().unwrap();
        match &mut *dst {
            Storage::Cpu(c) => {
                assert_eq!(c.len(), host.len(), "overwrite: the destination is a view into a larger buffer");
                *c = host;
            }
            Storage::Cuda(c) => {
                assert_eq!(c.len(), host.len(), "overwrite: the destination is a view into a larger buffer");
                c.dev.upload(c.ptr, host.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    /// Overwrites a variable's values in place (optimizer steps, checkpoint loads).
    pub fn set_data(&self, src: &Tensor) {
        assert!(self.is_var(), "set_data on a tensor that is not a variable");
        assert_eq!(self.shape(), src.shape(), "set_data: shape {:?} into {:?}", src.shape(), self.shape());
        let src = if src.dtype() == self.dtype() { src.clone() } else { src.to_dtype(self.dtype()) };
        let new = src.0.storage.read().unwrap().to_device(src.layout(), self.device());
        *self.0.storage.write().unwrap() = new;
    }

    /// The gradient accumulated on this variable by `backward` calls since the last `zero_grad`.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap().clone()
    }
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap() = None;
    }
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap() = g;
    }
    pub(crate) fn accumulate_grad(&self, g: &Tensor) {
        let mut slot = self.0.grad.lock().unwrap();
        let g = if g.dtype() != self.dtype() { g.to_dtype(self.dtype()) } else { g.clone() };
        *slot = Some(match slot.take() {
            Some(old) => old.add(&g),
            None => g.contiguous(),
        });
    }

    // ---- elementwise ---------------------------------------------------------------------------

    pub fn unary(&self, op: UnaryOp) -> Tensor {
        assert!(self.dtype().is_float(), "{op:?}: needs a float tensor, got {}", self.dtype());
        let s = self.map_storage(|s, l| s.unary(l, op), |s, l| s.unary(l, op));
        Tensor::from_any(s, self.shape(), Some(Op::Unary(self.clone(), op)))
    }
    pub fn neg(&self) -> Tensor { self.unary(UnaryOp::Neg) }
    pub fn exp(&self) -> Tensor { self.unary(UnaryOp::Exp) }
    pub fn log(&self) -> Tensor { self.unary(UnaryOp::Log) }
    pub fn sqrt(&self) -> Tensor { self.unary(UnaryOp::Sqrt) }
    pub fn tanh(&self) -> Tensor { self.unary(UnaryOp::Tanh) }
    pub fn sin(&self) -> Tensor { self.unary(UnaryOp::Sin) }
    pub fn cos(&self) -> Tensor { self.unary(UnaryOp::Cos) }
    pub fn abs(&self) -> Tensor { self.unary(UnaryOp::Abs) }
    pub fn erf(&self) -> Tensor { self.unary(UnaryOp::Erf) }
    pub fn recip(&self) -> Tensor { self.unary(UnaryOp::Recip) }
    pub fn relu(&self) -> Tensor { self.unary(UnaryOp::Relu) }
    pub fn affine(&self, mul: f64, add: f64) -> Tensor { self.unary(UnaryOp::Affine(mul, add)) }
    pub fn scale(&self, mul: f64) -> Tensor { self.affine(mul, 0.0) }
    pub fn add_scalar(&self, add: f64) -> Tensor { self.affine(1.0, add) }
    pub fn powf(&self, p: f64) -> Tensor { self.unary(UnaryOp::Powf(p)) }
    pub fn sqr(&self) -> Tensor { self.mul(self) }

    /// Both operands broadcast to a common shape (expand views recorded for autograd).
    fn broadcast_pair(&self, rhs: &Tensor, what: &str) -> (Tensor, Tensor) {
        assert_eq!(self.dtype(), rhs.dtype(), "{what}: dtypes {} and {} differ", self.dtype(), rhs.dtype());
        let (lhs, rhs) = same_device(self, rhs, what);
        let lhs = &lhs;
        let shape = broadcast_shape(lhs.shape(), rhs.shape())
            .unwrap_or_else(|| panic!("{what}: shapes {} and {} do not broadcast", shape_str(lhs.shape()), shape_str(rhs.shape())));
        (lhs.expand(&shape), rhs.expand(&shape))
    }

    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Tensor {
        let (a, b) = self.broadcast_pair(rhs, &format!("{op:?}"));
        let s = {
            let (sa, sb) = (a.0.storage.read().unwrap(), b.0.storage.read().unwrap());
            dispatch2!(format!("{op:?}"), sa, sb, |x, y| x.binary(a.layout(), y, b.layout(), op), |x, y| x.binary(a.layout(), y, b.layout(), op))
        };
        let shape = a.shape().to_vec();
        Tensor::from_any(s, &shape, Some(Op::Binary(a, b, op)))
    }
    pub fn add(&self, rhs: &Tensor) -> Tensor { self.binary(rhs, BinaryOp::Add) }
    pub fn sub(&self, rhs: &Tensor) -> Tensor { self.binary(rhs, BinaryOp::Sub) }
    pub fn mul(&self, rhs: &Tensor) -> Tensor { self.binary(rhs, BinaryOp::Mul) }
    pub fn div(&self, rhs: &Tensor) -> Tensor { self.binary(rhs, BinaryOp::Div) }
    pub fn maximum(&self, rhs: &Tensor) -> Tensor { self.binary(rhs, BinaryOp::Maximum) }
    pub fn minimum(&self, rhs: &Tensor) -> Tensor { self.binary(rhs, BinaryOp::Minimum) }

    /// Elementwise comparison → u8 mask; never tracks gradients.
    pub fn cmp(&self, rhs: &Tensor, op: CmpOp) -> Tensor {
        let (a, b) = {
            let _g = no_grad();
            self.broadcast_pair(rhs, &format!("{op:?}"))
        };
        let s = {
            let (sa, sb) = (a.0.storage.read().unwrap(), b.0.storage.read().unwrap());
            dispatch2!(format!("{op:?}"), sa, sb, |x, y| x.cmp(a.layout(), y, b.layout(), op), |x, y| x.cmp(a.layout(), y, b.layout(), op))
        };
        Tensor::from_any(s, a.shape(), None)
    }
    pub fn eq(&self, rhs: &Tensor) -> Tensor { self.cmp(rhs, CmpOp::Eq) }
    pub fn ne(&self, rhs: &Tensor) -> Tensor { self.cmp(rhs, CmpOp::Ne) }
    pub fn lt(&self, rhs: &Tensor) -> Tensor { self.cmp(rhs, CmpOp::Lt) }
    pub fn le(&self, rhs: &Tensor) -> Tensor { self.cmp(rhs, CmpOp::Le) }
    pub fn gt(&self, rhs: &Tensor) -> Tensor { self.cmp(rhs, CmpOp::Gt) }
    pub fn ge(&self, rhs: &Tensor) -> Tensor { self.cmp(rhs, CmpOp::Ge) }
    pub fn cmp_scalar(&self, v: f64, op: CmpOp) -> Tensor {
        self.cmp(&self.scalar_like(v), op)
    }

    /// `self ? on_true : on_false`, with `self` a u8 mask; all three broadcast together.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Tensor {
        assert_eq!(self.dtype(), DType::U8, "where_cond: the condition must be a u8 mask, got {}", self.dtype());
        assert_eq!(on_true.dtype(), on_false.dtype(), "where_cond: branch dtypes {} and {}", on_true.dtype(), on_false.dtype());
        let shape = broadcast_shape(self.shape(), on_true.shape())
            .and_then(|s| broadcast_shape(&s, on_false.shape()))
            .unwrap_or_else(|| panic!("where_cond: shapes {:?}, {:?}, {:?} do not broadcast", self.shape(), on_true.shape(), on_false.shape()));
        let (on_true, on_false) = same_device(on_true, on_false, "where_cond");
        let dev = on_true.device();
        let c = { let _g = no_grad(); self.to_device(dev).expand(&shape) };
        let (a, b) = (on_true.expand(&shape), on_false.expand(&shape));
        let s = {
            let (sc, sa, sb) = (c.0.storage.read().unwrap(), a.0.storage.read().unwrap(), b.0.storage.read().unwrap());
            match (&*sc, &*sa, &*sb) {
                (Storage::Cpu(x), Storage::Cpu(y), Storage::Cpu(z)) => Storage::Cpu(CpuStorage::where_cond(x, c.layout(), y, a.layout(), z, b.layout())),
                (Storage::Cuda(x), Storage::Cuda(y), Storage::Cuda(z)) => Storage::Cuda(CudaStorage::where_cond(x, c.layout(), y, a.layout(), z, b.layout())),
                _ => unreachable!("moved to one device above"),
            }
        };
        Tensor::from_any(s, &shape, Some(Op::Where(c, a, b)))
    }

    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let s = self.map_storage(|s, l| s.cast(l, dtype), |s, l| s.cast(l, dtype));
        let op = if dtype.is_float() && self.dtype().is_float() { Some(Op::Cast(self.clone())) } else { None };
        Tensor::from_any(s, self.shape(), op)
    }

    // ---- reductions ----------------------------------------------------------------------------

    fn reduce(&self, op: ReduceOp, dims: &[usize], keepdim: bool) -> Tensor {
        let mut dims = dims.to_vec();
        dims.sort_unstable();
        dims.dedup();
        for &d in &dims {
            assert!(d < self.rank(), "{op:?}: dim {d} out of range for shape {:?}", self.shape());
        }
        let s = self.map_storage(|s, l| s.reduce(l, op, &dims), |s, l| s.reduce(l, op, &dims));
        let kept: Vec<usize> = self.shape().iter().enumerate().map(|(i, &d)| if dims.contains(&i) { 1 } else { d }).collect();
        let out = Tensor::from_any(s, &kept, Some(Op::Reduce(self.clone(), op, dims.clone())));
        if keepdim {
            out
        } else {
            let sq: Vec<usize> = self.shape().iter().enumerate().filter(|(i, _)| !dims.contains(i)).map(|(_, &d)| d).collect();
            out.reshape(&sq)
        }
    }
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Tensor { self.reduce(ReduceOp::Sum, dims, keepdim) }
    pub fn max(&self, dims: &[usize], keepdim: bool) -> Tensor { self.reduce(ReduceOp::Max, dims, keepdim) }
    pub fn min(&self, dims: &[usize], keepdim: bool) -> Tensor { self.reduce(ReduceOp::Min, dims, keepdim) }
    pub fn sum_all(&self) -> Tensor {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.sum(&dims, false)
    }
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Tensor {
        let n: usize = dims.iter().map(|&d| self.dim(d)).product();
        self.sum(dims, keepdim).scale(1.0 / n as f64)
    }
    pub fn mean_all(&self) -> Tensor {
        self.sum_all().scale(1.0 / self.numel() as f64)
    }

    // ---- matmul --------------------------------------------------------------------------------

    /// `[.., M, K] @ [.., K, N] -> [.., M, N]`; batch dims broadcast. Transposed operands are
    /// read through their strides (no copy).
    pub fn matmul(&self, rhs: &Tensor) -> Tensor {
        let (ra, rb) = (self.rank(), rhs.rank());
        assert!(ra >= 2 && rb >= 2, "matmul: needs rank >= 2, got {:?} @ {:?}", self.shape(), rhs.shape());
        assert_eq!(self.dtype(), rhs.dtype(), "matmul: dtypes {} and {}", self.dtype(), rhs.dtype());
        let (m, k) = (self.dim(ra - 2), self.dim(ra - 1));
        let (k2, n) = (rhs.dim(rb - 2), rhs.dim(rb - 1));
        assert_eq!(k, k2, "matmul: inner dims differ: {:?} @ {:?}", self.shape(), rhs.shape());
        // A 2-D right operand against a batched left one: one big GEMM over the merged rows.
        if rb == 2 && ra > 2 && self.is_contiguous() {
            let rows: usize = self.shape()[..ra - 1].iter().product();
            let mut out_shape = self.shape()[..ra - 1].to_vec();
            out_shape.push(n);
            return self.reshape(&[rows, k]).matmul(rhs).reshape(&out_shape);
        }
        let batch = broadcast_shape(&self.shape()[..ra - 2], &rhs.shape()[..rb - 2])
            .unwrap_or_else(|| panic!("matmul: batch dims of {:?} and {:?} do not broadcast", self.shape(), rhs.shape()));
        let a = self.expand(&[batch.clone(), vec![m, k]].concat());
        let b = rhs.expand(&[batch.clone(), vec![k, n]].concat());
        let s = {
            let (sa, sb) = (a.0.storage.read().unwrap(), b.0.storage.read().unwrap());
            dispatch2!("matmul", sa, sb, |x, y| x.matmul(a.layout(), y, b.layout()), |x, y| x.matmul(a.layout(), y, b.layout()))
        };
        Tensor::from_any(s, &[batch, vec![m, n]].concat(), Some(Op::Matmul(a, b)))
    }

    // ---- movement (views where possible) -------------------------------------------------------

    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), self.numel(), "reshape: {:?} to {:?}", self.shape(), shape);
        if self.shape() == shape {
            return self.clone();
        }
        if !self.is_contiguous() {
            // A view when the elements' order allows one (e.g. splitting the heads out of a q slice
            // of a fused QKV projection), else a contiguous copy first.
            let l = self.layout();
            if let Some(strides) = crate::layout::view_strides(&l.shape, &l.strides, shape) {
                return self.view(Layout { shape: shape.to_vec(), strides, offset: l.offset }, Op::Reshape(self.clone()));
            }
        }
        let src = if self.is_contiguous() { self.clone() } else { self.contiguous() };
        let layout = Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: src.layout().offset };
        src.view(layout, Op::Reshape(src.clone()))
    }

    pub fn permute(&self, perm: &[usize]) -> Tensor {
        let mut seen = perm.to_vec();
        seen.sort_unstable();
        assert!(seen == (0..self.rank()).collect::<Vec<_>>(), "permute: {perm:?} is not a permutation of the dims of {:?}", self.shape());
        let l = self.layout();
        let layout = Layout { shape: perm.iter().map(|&d| l.shape[d]).collect(), strides: perm.iter().map(|&d| l.strides[d]).collect(), offset: l.offset };
        self.view(layout, Op::Permute(self.clone(), perm.to_vec()))
    }

    pub fn transpose(&self, d0: usize, d1: usize) -> Tensor {
        let mut p: Vec<usize> = (0..self.rank()).collect();
        p.swap(d0, d1);
        self.permute(&p)
    }

    /// Swaps the last two dims.
    pub fn t(&self) -> Tensor {
        let r = self.rank();
        self.transpose(r - 2, r - 1)
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Tensor {
        assert!(dim < self.rank() && start + len <= self.dim(dim), "narrow: dim {dim} [{start}, {}) of shape {:?}", start + len, self.shape());
        let l = self.layout();
        let mut layout = l.clone();
        layout.shape[dim] = len;
        layout.offset = l.offset + start * l.strides[dim];
        self.view(layout, Op::Narrow(self.clone(), dim, start))
    }

    /// Broadcast view to `shape` (numpy rules); stride 0 along expanded dims.
    pub fn expand(&self, shape: &[usize]) -> Tensor {
        if self.shape() == shape {
            return self.clone();
        }
        let layout = self.layout().broadcast_to(shape).unwrap_or_else(|| panic!("expand: {:?} to {:?}", self.shape(), shape));
        self.view(layout, Op::Expand(self.clone()))
    }

    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() && self.layout().offset == 0 {
            return self.clone();
        }
        let s = self.contiguous_storage();
        Tensor::from_any(s, self.shape(), Some(Op::Contiguous(self.clone())))
    }

    pub fn unsqueeze(&self, dim: usize) -> Tensor {
        let mut s = self.shape().to_vec();
        s.insert(dim, 1);
        self.reshape(&s)
    }

    pub fn squeeze(&self, dim: usize) -> Tensor {
        assert_eq!(self.dim(dim), 1, "squeeze: dim {dim} of {:?} is not 1", self.shape());
        let mut s = self.shape().to_vec();
        s.remove(dim);
        self.reshape(&s)
    }

    pub fn flatten_all(&self) -> Tensor {
        self.reshape(&[self.numel()])
    }

    pub fn cat(parts: &[Tensor], dim: usize) -> Tensor {
        assert!(!parts.is_empty(), "cat: no tensors");
        let r = parts[0].rank();
        for p in parts {
            assert!(p.rank() == r && p.dtype() == parts[0].dtype(), "cat: {:?} ({}) with {:?} ({})", p.shape(), p.dtype(), parts[0].shape(), parts[0].dtype());
            for d in 0..r {
                assert!(d == dim || p.dim(d) == parts[0].dim(d), "cat along {dim}: shapes {:?} and {:?}", p.shape(), parts[0].shape());
            }
        }
        let dev = parts[0].device();
        assert!(parts.iter().all(|p| p.device() == dev), "cat: parts on different devices");
        let guards: Vec<_> = parts.iter().map(|p| p.0.storage.read().unwrap()).collect();
        let s = match dev {
            Device::Cpu => {
                let refs: Vec<(&CpuStorage, &Layout)> = guards.iter().zip(parts).map(|(g, p)| (match &**g { Storage::Cpu(c) => c, _ => unreachable!() }, p.layout())).collect();
                Storage::Cpu(CpuStorage::cat(&refs, dim))
            }
            Device::Cuda(_) => {
                let refs: Vec<(&CudaStorage, &Layout)> = guards.iter().zip(parts).map(|(g, p)| (match &**g { Storage::Cuda(c) => c, _ => unreachable!() }, p.layout())).collect();
                Storage::Cuda(CudaStorage::cat(&refs, dim))
            }
        };
        drop(guards);
        let mut shape = parts[0].shape().to_vec();
        shape[dim] = parts.iter().map(|p| p.dim(dim)).sum();
        Tensor::from_any(s, &shape, Some(Op::Cat(parts.to_vec(), dim)))
    }

    // ---- indexing ------------------------------------------------------------------------------

    /// `out[.., i, ..] = self[.., ids[i], ..]` along `dim` (ids: 1-D i32/u32). Embedding lookup.
    pub fn index_select(&self, ids: &Tensor, dim: usize) -> Tensor {
        assert_eq!(ids.rank(), 1, "index_select: ids must be 1-D, got {:?}", ids.shape());
        let (idx, on_dev) = ids.lookup_indices(self, dim, "index_select");
        let cids = Ids::of(&idx, on_dev.as_ref().map(|t| (cuda_ptr(t), t.numel())));
        let s = self.map_storage(|s, l| s.index_select(l, &idx, dim), |s, l| s.index_select(l, &cids, dim));
        let mut shape = self.shape().to_vec();
        shape[dim] = ids.numel();
        Tensor::from_any(s, &shape, Some(Op::IndexSelect(self.clone(), ids.clone(), dim)))
    }

    /// `out = self; out[.., ids[i], ..] += src[.., i, ..]`.
    pub fn index_add(&self, ids: &Tensor, src: &Tensor, dim: usize) -> Tensor {
        let (idx, on_dev) = self.index_add_ids(ids, src, dim);
        let cids = Ids::of(&idx, on_dev.as_ref().map(|t| (cuda_ptr(t), t.numel())));
        let s = {
            let (bs, ss) = (self.0.storage.read().unwrap(), src.0.storage.read().unwrap());
            dispatch2!("index_add", bs, ss, |b, x| b.copy_strided(self.layout()).index_add(self.shape(), &idx, x, src.layout(), dim), |b, x| b.index_add(self.layout(), &cids, x, src.layout(), dim))
        };
        Tensor::from_any(s, self.shape(), Some(Op::IndexAdd(self.clone(), ids.clone(), src.clone(), dim)))
    }

    /// `index_add`'s shape check and its ids (host, or on the device inside a capture).
    fn index_add_ids(&self, ids: &Tensor, src: &Tensor, dim: usize) -> (Vec<usize>, Option<Tensor>) {
        let mut want = self.shape().to_vec();
        want[dim] = ids.numel();
        assert_eq!(src.shape(), &want[..], "index_add: source {:?} for base {:?} and {} ids", src.shape(), self.shape(), ids.numel());
        ids.lookup_indices(self, dim, "index_add")
    }

    /// `index_add` written into this tensor's own buffer where nothing else holds it (a CUDA
    /// gradient being summed in backward: no copy of a fresh 51 MB embedding gradient), else as
    /// `index_add` (a copy). Records no graph node: for backward's sums only.
    pub(crate) fn index_add_owned(self, ids: &Tensor, src: &Tensor, dim: usize) -> Tensor {
        let alone = Arc::strong_count(&self.0) == 1 && Arc::strong_count(&self.0.storage) == 1;
        let dense = self.is_contiguous() && self.layout().offset == 0 && self.storage_len() == self.numel();
        if !(alone && dense && self.device().is_cuda() && src.dtype() == self.dtype()) {
            let _ng = no_grad();
            return self.index_add(ids, src, dim);
        }
        let (idx, on_dev) = self.index_add_ids(ids, src, dim);
        let cids = Ids::of(&idx, on_dev.as_ref().map(|t| (cuda_ptr(t), t.numel())));
        {
            let (bs, ss) = (self.0.storage.read().unwrap(), src.0.storage.read().unwrap());
            match (&*bs, &*ss) {
                (Storage::Cuda(b), Storage::Cuda(x)) => b.index_add_in_place(self.shape(), &cids, x, src.layout(), dim),
                (b, x) => panic!("index_add: operands on {} and {}", b.device(), x.device()),
            }
        }
        self
    }

    /// `out[i][j] = self[i][idx[i][j]]` (dim 1; any rank/dim alike). `idx` has the output shape.
    pub fn gather(&self, idx: &Tensor, dim: usize) -> Tensor {
        assert_eq!(idx.rank(), self.rank(), "gather: index rank {} for source {:?}", idx.rank(), self.shape());
        let ix = idx.host_indices(self.dim(dim), "gather");
        let s = self.map_storage(|s, l| s.gather(l, &ix, idx.shape(), dim), |s, l| s.gather(l, &ix, idx.shape(), dim));
        Tensor::from_any(s, idx.shape(), Some(Op::Gather(self.clone(), idx.clone(), dim)))
    }

    /// `out = self; out[i][idx[i][j]] += src[i][j]`.
    pub fn scatter_add(&self, idx: &Tensor, src: &Tensor, dim: usize) -> Tensor {
        assert_eq!(idx.shape(), src.shape(), "scatter_add: index {:?} and source {:?}", idx.shape(), src.shape());
        let ix = idx.host_indices(self.dim(dim), "scatter_add");
        let base = self.contiguous_storage();
        let s = {
            let ss = src.0.storage.read().unwrap();
            dispatch2!("scatter_add", &base, ss, |b, x| b.scatter_add(self.shape(), &ix, idx.shape(), x, src.layout(), dim), |b, x| b.scatter_add(self.shape(), &ix, idx.shape(), x, src.layout(), dim))
        };
        Tensor::from_any(s, self.shape(), Some(Op::ScatterAdd(self.clone(), idx.clone(), src.clone(), dim)))
    }

    // ---- raw access for optimizers / IO --------------------------------------------------------

    /// Raw little-endian bytes of the (contiguous) values.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let s = self.to_host_storage();
        fn bytes<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
            v.iter().flat_map(|&x| f(x)).collect()
        }
        match &s {
            CpuStorage::F32(v) => bytes(v, |x| x.to_le_bytes().to_vec()),
            CpuStorage::F64(v) => bytes(v, |x| x.to_le_bytes().to_vec()),
            CpuStorage::BF16(v) => bytes(v, |x| x.to_le_bytes().to_vec()),
            CpuStorage::F16(v) => bytes(v, |x| x.to_le_bytes().to_vec()),
            CpuStorage::I32(v) => bytes(v, |x| x.to_le_bytes().to_vec()),
            CpuStorage::U32(v) => bytes(v, |x| x.to_le_bytes().to_vec()),
            CpuStorage::U8(v) => v.clone(),
        }
    }

    pub fn from_le_bytes(bytes: &[u8], shape: &[usize], dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        assert_eq!(bytes.len(), n * dtype.size_in_bytes(), "from_le_bytes: {} bytes for {shape:?} {dtype}", bytes.len());
        macro_rules! rd {
            ($t:ty, $k:expr) => {
                bytes.chunks_exact($k).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect::<Vec<$t>>()
            };
        }
        let s = match dtype {
            DType::F32 => CpuStorage::F32(rd!(f32, 4)),
            DType::F64 => CpuStorage::F64(rd!(f64, 8)),
            DType::BF16 => CpuStorage::BF16(rd!(half::bf16, 2)),
            DType::F16 => CpuStorage::F16(rd!(half::f16, 2)),
            DType::I32 => CpuStorage::I32(rd!(i32, 4)),
            DType::U32 => CpuStorage::U32(rd!(u32, 4)),
            DType::U8 => CpuStorage::U8(bytes.to_vec()),
        };
        Tensor::from_cpu(s, shape, None)
    }

    /// Runs `f` over the contiguous f32 values of this variable, mutably, in place: the hook for
    /// fused CPU optimizer kernels. Panics if not an f32 variable.
    pub fn with_f32_mut<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        assert!(self.is_var() && self.dtype() == DType::F32, "with_f32_mut: needs an f32 variable");
        let mut g = self.0.storage.write().unwrap();
        match &mut *g {
            Storage::Cpu(CpuStorage::F32(v)) => f(v),
            s => panic!("with_f32_mut: needs a CPU f32 variable, this one is on {}", s.device()),
        }
    }

    /// The contiguous f32 values (a copy unless already contiguous f32).
    pub fn with_f32<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        if self.dtype() == DType::F32 && self.is_contiguous() {
            let g = self.0.storage.read().unwrap();
            if let Storage::Cpu(CpuStorage::F32(v)) = &*g {
                let o = self.layout().offset;
                return f(&v[o..o + self.numel()]);
            }
        }
        let v: Vec<f32> = self.to_vec();
        f(&v)
    }
}

/// Both tensors on one device. Constants made on the host (no gradient history) are copied to the
/// other operand's GPU; a tracked CPU tensor meeting a GPU tensor is a bug in the caller.
fn same_device(a: &Tensor, b: &Tensor, what: &str) -> (Tensor, Tensor) {
    let (da, db) = (a.device(), b.device());
    if da == db {
        return (a.clone(), b.clone());
    }
    match (da, db) {
        (Device::Cpu, _) if !a.track_grad() => (a.to_device(db), b.clone()),
        (_, Device::Cpu) if !b.track_grad() => (a.clone(), b.to_device(da)),
        _ => panic!("{what}: operands on {da} ({:?}) and {db} ({:?}); move them to one device first", a.shape(), b.shape()),
    }
}

/// Device address of a contiguous CUDA tensor's first element (kernel arguments).
pub(crate) fn cuda_ptr(t: &Tensor) -> u64 {
    assert!(t.is_contiguous(), "cuda_ptr: tensor {:?} is not contiguous", t.shape());
    match &*t.0.storage.read().unwrap() {
        Storage::Cuda(c) => c.at(t.layout().offset),
        s => panic!("cuda_ptr: tensor on {}", s.device()),
    }
}

/// The CUDA device a tensor's storage is on (kernel launches).
pub(crate) fn cuda_dev_of(t: &Tensor) -> std::sync::Arc<crate::cuda::CudaDevice> {
    t.with_storage(|s| match s {
        Storage::Cuda(c) => c.dev.clone(),
        s => panic!("expected a CUDA tensor, got one on {}", s.device()),
    })
}
