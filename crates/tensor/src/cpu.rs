//! CPU storage and kernels: plain Rust, rayon for large tensors, the `gemm` crate for matmul.
//!
//! Every kernel takes layouts, so strided/broadcast views are read in place. Float math runs in
//! f32 or f64; bf16/f16 inputs are widened to f32, computed, and narrowed back. Results are
//! deterministic: parallel loops split the *output*, and each reduction is summed by one thread in
//! a fixed order, so a run repeats bit for bit.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::backend::BackendStorage;
use crate::dtype::num_like::NumLike;
use crate::dtype::{DType, WithDType};
use crate::layout::{coalesce, Layout};
use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};

#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

/// Applies `$body` with `$v` bound to the inner Vec, whatever the dtype.
macro_rules! with_vec {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::I32($v) => $body,
            CpuStorage::U32($v) => $body,
            CpuStorage::U8($v) => $body,
        }
    };
}
/// Like `with_vec!`, re-wrapping a Vec result in the same variant.
macro_rules! map_vec {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F64($v) => CpuStorage::F64($body),
            CpuStorage::BF16($v) => CpuStorage::BF16($body),
            CpuStorage::F16($v) => CpuStorage::F16($body),
            CpuStorage::I32($v) => CpuStorage::I32($body),
            CpuStorage::U32($v) => CpuStorage::U32($body),
            CpuStorage::U8($v) => CpuStorage::U8($body),
        }
    };
}

/// Elements per parallel task: below this, threads cost more than they save.
const PAR_GRAIN: usize = 1 << 15;

pub trait VecOf: WithDType {
    fn wrap(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
}
macro_rules! vec_of {
    ($t:ty, $d:ident) => {
        impl VecOf for $t {
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$d(v)
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$d(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
vec_of!(f32, F32);
vec_of!(f64, F64);
vec_of!(bf16, BF16);
vec_of!(f16, F16);
vec_of!(i32, I32);
vec_of!(u32, U32);
vec_of!(u8, U8);

/// Fills `out` (contiguous, shape `shape`) from N strided operands. `kernel(out_run, offsets,
/// inner_strides)` fills one contiguous run of the output, reading operand k at
/// `offsets[k] + j * inner_strides[k]` for the run's j-th element.
fn map_strided<O: Send, const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
    offsets: [usize; N],
    out: &mut [O],
    kernel: impl Fn(&mut [O], [usize; N], [usize; N]) + Sync,
) {
    let (sh, st) = coalesce(shape, strides);
    let nd = sh.len();
    let inner = sh[nd - 1];
    let inner_st: [usize; N] = std::array::from_fn(|k| st[k][nd - 1]);
    let rows = out.len() / inner.max(1);
    if out.is_empty() {
        return;
    }
    let row_off = |r: usize| -> [usize; N] {
        let mut o = offsets;
        let mut rem = r;
        for d in (0..nd - 1).rev() {
            let i = rem % sh[d];
            rem /= sh[d];
            for k in 0..N {
                o[k] += i * st[k][d];
            }
        }
        o
    };
    if out.len() < PAR_GRAIN {
        for (r, run) in out.chunks_mut(inner).enumerate() {
            kernel(run, row_off(r), inner_st);
        }
    } else if rows >= 4 {
        let rows_per = (PAR_GRAIN / inner).max(1);
        out.par_chunks_mut(rows_per * inner).enumerate().for_each(|(c, chunk)| {
            for (i, run) in chunk.chunks_mut(inner).enumerate() {
                kernel(run, row_off(c * rows_per + i), inner_st);
            }
        });
    } else {
        // Few long rows: split each row.
        for (r, run) in out.chunks_mut(inner).enumerate() {
            let base = row_off(r);
            run.par_chunks_mut(PAR_GRAIN).enumerate().for_each(|(c, piece)| {
                let o: [usize; N] = std::array::from_fn(|k| base[k] + c * PAR_GRAIN * inner_st[k]);
                kernel(piece, o, inner_st);
            });
        }
    }
}

fn unary_map<T: VecOf, O: VecOf>(v: &[T], l: &Layout, f: impl Fn(T) -> O + Sync) -> Vec<O> {
    let mut out = vec![O::zero(); l.numel()];
    map_strided(&l.shape, [&l.strides], [l.offset], &mut out, |run, [o], [s]| {
        for (j, x) in run.iter_mut().enumerate() {
            *x = f(v[o + j * s]);
        }
    });
    out
}

fn binary_map<A: VecOf, B: VecOf, O: VecOf>(a: &[A], la: &Layout, b: &[B], lb: &Layout, f: impl Fn(A, B) -> O + Sync) -> Vec<O> {
    let mut out = vec![O::zero(); la.numel()];
    map_strided(&la.shape, [&la.strides, &lb.strides], [la.offset, lb.offset], &mut out, |run, [oa, ob], [sa, sb]| {
        if sa == 1 && sb == 1 {
            let n = run.len();
            let (a, b) = (&a[oa..oa + n], &b[ob..ob + n]);
            for ((x, &p), &q) in run.iter_mut().zip(a).zip(b) {
                *x = f(p, q);
            }
        } else if sa == 1 && sb == 0 {
            let q = b[ob];
            let n = run.len();
            for (x, &p) in run.iter_mut().zip(&a[oa..oa + n]) {
                *x = f(p, q);
            }
        } else {
            for (j, x) in run.iter_mut().enumerate() {
                *x = f(a[oa + j * sa], b[ob + j * sb]);
            }
        }
    });
    out
}

fn widen<T: WithDType>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f64() as f32).collect()
}

fn narrow_to(v: Vec<f32>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(f16::from_f32).collect()),
        d => panic!("narrow_to {d}"),
    }
}

/// Applies a unary op elementwise. The `match` is outside the loop so each op gets its own
/// monomorphized (and vectorizable) loop — a per-element match cost ~10% of a training step.
fn unary_apply<T: VecOf + NumLike, S: VecOf>(v: &[S], l: &Layout, op: UnaryOp, conv: impl Fn(S) -> T + Sync + Copy) -> Vec<T> {
    let z = T::lit(0.0);
    match op {
        UnaryOp::Neg => unary_map(v, l, move |x| -conv(x)),
        UnaryOp::Exp => unary_map(v, l, move |x| conv(x).exp()),
        UnaryOp::Log => unary_map(v, l, move |x| conv(x).ln()),
        UnaryOp::Sqrt => unary_map(v, l, move |x| conv(x).sqrt()),
        UnaryOp::Tanh => unary_map(v, l, move |x| conv(x).tanh()),
        UnaryOp::Sin => unary_map(v, l, move |x| conv(x).sin()),
        UnaryOp::Cos => unary_map(v, l, move |x| conv(x).cos()),
        UnaryOp::Abs => unary_map(v, l, move |x| conv(x).abs()),
        UnaryOp::Erf => unary_map(v, l, move |x| conv(x).erf()),
        UnaryOp::Recip => unary_map(v, l, move |x| T::lit(1.0) / conv(x)),
        UnaryOp::Relu => unary_map(v, l, move |x| {
            let x = conv(x);
            if x > z { x } else { z }
        }),
        UnaryOp::Affine(m, a) => {
            let (m, a) = (T::lit(m), T::lit(a));
            unary_map(v, l, move |x| conv(x) * m + a)
        }
        // Small integer powers by multiplication: exact and ~10x cheaper than powf (GELU's x³).
        UnaryOp::Powf(p) if p == 2.0 => unary_map(v, l, move |x| {
            let x = conv(x);
            x * x
        }),
        UnaryOp::Powf(p) if p == 3.0 => unary_map(v, l, move |x| {
            let x = conv(x);
            x * x * x
        }),
        UnaryOp::Powf(p) => {
            let p = T::lit(p);
            unary_map(v, l, move |x| conv(x).powf(p))
        }
    }
}

/// Binary counterpart of `unary_apply`.
fn binary_apply<T: VecOf + NumLike>(a: &[T], la: &Layout, b: &[T], lb: &Layout, op: BinaryOp) -> Vec<T> {
    match op {
        BinaryOp::Add => binary_map(a, la, b, lb, |x, y| x + y),
        BinaryOp::Sub => binary_map(a, la, b, lb, |x, y| x - y),
        BinaryOp::Mul => binary_map(a, la, b, lb, |x, y| x * y),
        BinaryOp::Div => binary_map(a, la, b, lb, |x, y| x / y),
        // NaN-propagating, like torch.maximum.
        BinaryOp::Maximum => binary_map(a, la, b, lb, |x: T, y: T| if x.is_nan() || x > y { x } else { y }),
        BinaryOp::Minimum => binary_map(a, la, b, lb, |x: T, y: T| if x.is_nan() || x < y { x } else { y }),
    }
}

fn half_binary<H: VecOf>(a: &[H], la: &Layout, b: &[H], lb: &Layout, op: BinaryOp, to: impl Fn(f32) -> H + Sync, from: impl Fn(H) -> f32 + Sync) -> Vec<H> {
    // Half precision on CPU: widen, compute in f32, round once.
    let f = |x: f32, y: f32| match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Maximum => if x.is_nan() || x > y { x } else { y },
        BinaryOp::Minimum => if x.is_nan() || x < y { x } else { y },
    };
    binary_map(a, la, b, lb, |x: H, y: H| to(f(from(x), from(y))))
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::I32(_) => DType::I32,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::U8(_) => DType::U8,
        }
    }

    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::F64 => CpuStorage::F64(vec![0.0; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::I32 => CpuStorage::I32(vec![0; n]),
            DType::U32 => CpuStorage::U32(vec![0; n]),
            DType::U8 => CpuStorage::U8(vec![0; n]),
        }
    }

    pub fn from_f64(dtype: DType, v: &[f64]) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => CpuStorage::F64(v.to_vec()),
            DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            DType::F16 => CpuStorage::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::I32 => CpuStorage::I32(v.iter().map(|&x| x as i32).collect()),
            DType::U32 => CpuStorage::U32(v.iter().map(|&x| x as u32).collect()),
            DType::U8 => CpuStorage::U8(v.iter().map(|&x| x as u8).collect()),
        }
    }

    /// All elements in layout order, as f64 (tests, printing, small reads).
    pub fn to_f64_vec(&self, l: &Layout) -> Vec<f64> {
        with_vec!(self, v => unary_map(v, l, |x| x.to_f64()))
    }

    /// Writes the elements viewed by `l` into `dst` viewed by `dl` (same shape and dtype).
    pub fn copy_into(&self, l: &Layout, dst: &mut CpuStorage, dl: &Layout) {
        assert_eq!(l.shape, dl.shape, "copy_into: a view of {:?} into one of {:?}", l.shape, dl.shape);
        let src = self.copy_strided(l);
        let offs = strided_offsets(dl);
        macro_rules! go {
            ($($v:ident),*) => {
                match (&src, dst) {
                    $((CpuStorage::$v(a), CpuStorage::$v(d)) => {
                        for (&x, &o) in a.iter().zip(&offs) {
                            d[o] = x;
                        }
                    })*
                    (a, d) => panic!("copy_into: {} values into a {} buffer", a.dtype(), d.dtype()),
                }
            };
        }
        go!(F32, F64, BF16, F16, I32, U32, U8);
    }

    /// `out[.., i, ..] = self[.., ids[i], ..]` along `dim`.
    pub fn index_select(&self, l: &Layout, ids: &[usize], dim: usize) -> CpuStorage {
        let src = self.copy_strided(l);
        let outer: usize = l.shape[..dim].iter().product();
        let d = l.shape[dim];
        let inner: usize = l.shape[dim + 1..].iter().product();
        map_vec!(&src, v => {
            let mut out = Vec::with_capacity(outer * ids.len() * inner);
            for o in 0..outer {
                for &i in ids {
                    let s = (o * d + i) * inner;
                    out.extend_from_slice(&v[s..s + inner]);
                }
            }
            out
        })
    }

    /// `self[.., ids[i], ..] += src[.., i, ..]` along `dim`; self contiguous, returns a new storage.
    pub fn index_add(&self, shape: &[usize], ids: &[usize], src: &CpuStorage, ls: &Layout, dim: usize) -> CpuStorage {
        let src = src.copy_strided(ls);
        let outer: usize = shape[..dim].iter().product();
        let d = shape[dim];
        let inner: usize = shape[dim + 1..].iter().product();
        fn go<T: WithDType + NumLike>(base: &[T], src: &[T], ids: &[usize], outer: usize, d: usize, inner: usize) -> Vec<T> {
            let mut out = base.to_vec();
            // Sequential over ids: repeated ids accumulate in a fixed order (deterministic).
            for o in 0..outer {
                for (k, &i) in ids.iter().enumerate() {
                    let dst = &mut out[(o * d + i) * inner..(o * d + i + 1) * inner];
                    let s = &src[(o * ids.len() + k) * inner..(o * ids.len() + k + 1) * inner];
                    for (x, &y) in dst.iter_mut().zip(s) {
                        *x = *x + y;
                    }
                }
            }
            out
        }
        match (self, &src) {
            (CpuStorage::F32(b), CpuStorage::F32(s)) => CpuStorage::F32(go(b, s, ids, outer, d, inner)),
            (CpuStorage::F64(b), CpuStorage::F64(s)) => CpuStorage::F64(go(b, s, ids, outer, d, inner)),
            (b, s) => {
                let dt = b.dtype();
                let b32 = b.cast(&Layout::contiguous(shape), DType::F32);
                let s32 = s.cast(&Layout::contiguous(&[s.len()]), DType::F32);
                let r = b32.index_add(shape, ids, &s32, &Layout::contiguous(&[s32.len()]), dim);
                r.cast(&Layout::contiguous(shape), dt)
            }
        }
    }

    /// The raw bytes of all elements (host byte order, which is little-endian on every target
    /// fmlab builds for).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: plain-old-data element types; the slice covers exactly the Vec's elements.
        with_vec!(self, v => unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v.as_slice())) })
    }

    /// Elements of `dtype` from little-endian bytes.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> CpuStorage {
        macro_rules! rd {
            ($t:ty, $k:expr) => {
                bytes.chunks_exact($k).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect::<Vec<$t>>()
            };
        }
        match dtype {
            DType::F32 => CpuStorage::F32(rd!(f32, 4)),
            DType::F64 => CpuStorage::F64(rd!(f64, 8)),
            DType::BF16 => CpuStorage::BF16(rd!(bf16, 2)),
            DType::F16 => CpuStorage::F16(rd!(f16, 2)),
            DType::I32 => CpuStorage::I32(rd!(i32, 4)),
            DType::U32 => CpuStorage::U32(rd!(u32, 4)),
            DType::U8 => CpuStorage::U8(bytes.to_vec()),
        }
    }

    /// Index values (i32/u32 tensors) as usize, checked against `bound`.
    pub fn to_indices(&self, l: &Layout, bound: usize, what: &str) -> Vec<usize> {
        let v: Vec<i64> = match self {
            CpuStorage::I32(v) => unary_map(v, l, |x: i32| x).into_iter().map(|x| x as i64).collect(),
            CpuStorage::U32(v) => unary_map(v, l, |x: u32| x).into_iter().map(|x| x as i64).collect(),
            s => panic!("{what}: indices must be i32 or u32, got {}", s.dtype()),
        };
        v.into_iter()
            .map(|i| {
                assert!(i >= 0 && (i as usize) < bound, "{what}: index {i} out of range for a dimension of size {bound}");
                i as usize
            })
            .collect()
    }
}


/// The storage offset of every element of `l`, in row-major order of its shape.
fn strided_offsets(l: &Layout) -> Vec<usize> {
    let mut out = vec![l.offset];
    for (&n, &st) in l.shape.iter().zip(&l.strides) {
        out = out.iter().flat_map(|&o| (0..n).map(move |i| o + i * st)).collect();
    }
    out
}

impl crate::backend::BackendStorage for CpuStorage {
    /// A contiguous copy of the viewed elements.
    fn copy_strided(&self, l: &Layout) -> CpuStorage {
        if l.is_contiguous() {
            let n = l.numel();
            return map_vec!(self, v => v[l.offset..l.offset + n].to_vec());
        }
        map_vec!(self, v => unary_map(v, l, |x| x))
    }

    fn cast(&self, l: &Layout, to: DType) -> CpuStorage {
        macro_rules! conv {
            ($t:ty) => {
                with_vec!(self, v => <$t as VecOf>::wrap(unary_map(v, l, |x| <$t>::from_f64(x.to_f64()))))
            };
        }
        match to {
            DType::F32 => match self {
                CpuStorage::BF16(v) => CpuStorage::F32(unary_map(v, l, |x| x.to_f32())),
                _ => conv!(f32),
            },
            DType::F64 => conv!(f64),
            DType::BF16 => match self {
                CpuStorage::F32(v) => CpuStorage::BF16(unary_map(v, l, bf16::from_f32)),
                _ => conv!(bf16),
            },
            DType::F16 => conv!(f16),
            DType::I32 => conv!(i32),
            DType::U32 => conv!(u32),
            DType::U8 => conv!(u8),
        }
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> CpuStorage {
        match self {
            CpuStorage::F32(v) => CpuStorage::F32(unary_apply(v, l, op, |x: f32| x)),
            CpuStorage::F64(v) => CpuStorage::F64(unary_apply(v, l, op, |x: f64| x)),
            CpuStorage::BF16(v) => narrow_to(unary_apply(v, l, op, |x: bf16| x.to_f32()), DType::BF16),
            CpuStorage::F16(v) => narrow_to(unary_apply(v, l, op, |x: f16| x.to_f32()), DType::F16),
            s => panic!("unary {op:?} on {} tensor", s.dtype()),
        }
    }

    /// `la` and `lb` are already broadcast to the output shape.
    fn binary(&self, la: &Layout, rhs: &CpuStorage, lb: &Layout, op: BinaryOp) -> CpuStorage {
        match (self, rhs) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(binary_apply(a, la, b, lb, op)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(binary_apply(a, la, b, lb, op)),
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => CpuStorage::BF16(half_binary(a, la, b, lb, op, bf16::from_f32, |x: bf16| x.to_f32())),
            (CpuStorage::F16(a), CpuStorage::F16(b)) => CpuStorage::F16(half_binary(a, la, b, lb, op, f16::from_f32, |x: f16| x.to_f32())),
            (CpuStorage::I32(a), CpuStorage::I32(b)) => CpuStorage::I32(binary_map(a, la, b, lb, |x: i32, y: i32| match op {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Div => x / y,
                BinaryOp::Maximum => x.max(y),
                BinaryOp::Minimum => x.min(y),
            })),
            (a, b) => panic!("binary {op:?} on {} and {} tensors", a.dtype(), b.dtype()),
        }
    }

    /// Elementwise comparison → U8 mask (1 where true).
    fn cmp(&self, la: &Layout, rhs: &CpuStorage, lb: &Layout, op: CmpOp) -> CpuStorage {
        fn f<T: PartialOrd>(op: CmpOp) -> impl Fn(T, T) -> u8 + Sync {
            move |a, b| {
                (match op {
                    CmpOp::Eq => a == b,
                    CmpOp::Ne => a != b,
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    CmpOp::Ge => a >= b,
                }) as u8
            }
        }
        CpuStorage::U8(match (self, rhs) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => binary_map(a, la, b, lb, f(op)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => binary_map(a, la, b, lb, f(op)),
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => binary_map(a, la, b, lb, f(op)),
            (CpuStorage::F16(a), CpuStorage::F16(b)) => binary_map(a, la, b, lb, f(op)),
            (CpuStorage::I32(a), CpuStorage::I32(b)) => binary_map(a, la, b, lb, f(op)),
            (CpuStorage::U32(a), CpuStorage::U32(b)) => binary_map(a, la, b, lb, f(op)),
            (CpuStorage::U8(a), CpuStorage::U8(b)) => binary_map(a, la, b, lb, f(op)),
            (a, b) => panic!("cmp {op:?} on {} and {} tensors", a.dtype(), b.dtype()),
        })
    }

    /// `where(cond, a, b)`; all three layouts already broadcast to the output shape.
    fn where_cond(cond: &CpuStorage, lc: &Layout, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> CpuStorage {
        let CpuStorage::U8(c) = cond else { panic!("where: condition must be u8, got {}", cond.dtype()) };
        fn go<T: VecOf>(c: &[u8], lc: &Layout, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
            let mut out = vec![T::zero(); lc.numel()];
            map_strided(&lc.shape, [&lc.strides, &la.strides, &lb.strides], [lc.offset, la.offset, lb.offset], &mut out, |run, [oc, oa, ob], [sc, sa, sb]| {
                for (j, x) in run.iter_mut().enumerate() {
                    *x = if c[oc + j * sc] != 0 { a[oa + j * sa] } else { b[ob + j * sb] };
                }
            });
            out
        }
        macro_rules! arm {
            ($($d:ident),*) => {
                match (a, b) {
                    $((CpuStorage::$d(a), CpuStorage::$d(b)) => CpuStorage::$d(go(c, lc, a, la, b, lb)),)*
                    (a, b) => panic!("where: branches are {} and {}", a.dtype(), b.dtype()),
                }
            };
        }
        arm!(F32, F64, BF16, F16, I32, U32, U8)
    }

    /// Reduces over `dims` (sorted, unique), keeping them as size 1.
    fn reduce(&self, l: &Layout, op: ReduceOp, dims: &[usize]) -> CpuStorage {
        // Move the reduced dims last and make contiguous: each output is then a contiguous run.
        let kept: Vec<usize> = (0..l.rank()).filter(|d| !dims.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(dims).copied().collect();
        let pl = Layout {
            shape: perm.iter().map(|&d| l.shape[d]).collect(),
            strides: perm.iter().map(|&d| l.strides[d]).collect(),
            offset: l.offset,
        };
        let red: usize = dims.iter().map(|&d| l.shape[d]).product();
        let n_out: usize = kept.iter().map(|&d| l.shape[d]).product();
        fn go<T: WithDType + NumLike>(src: &[T], n_out: usize, red: usize, op: ReduceOp) -> Vec<T> {
            let mut out = vec![T::zero(); n_out];
            let grain = (PAR_GRAIN / red.max(1)).max(1);
            out.par_chunks_mut(grain).enumerate().for_each(|(c, chunk)| {
                for (i, o) in chunk.iter_mut().enumerate() {
                    let row = &src[(c * grain + i) * red..(c * grain + i + 1) * red];
                    *o = match op {
                        // Summed in f64: one rounding per output instead of one per element.
                        ReduceOp::Sum => T::from_f64(row.iter().map(|x| x.to_f64()).sum::<f64>()),
                        ReduceOp::Max => row.iter().fold(T::neg_infinity(), |m, &x| if x > m || x.is_nan() { x } else { m }),
                        ReduceOp::Min => row.iter().fold(-T::neg_infinity(), |m, &x| if x < m || x.is_nan() { x } else { m }),
                    };
                }
            });
            out
        }
        // Reduced dims already last and contiguous (softmax, norms): read in place, no copy.
        let copied;
        let (src, off) = if pl.is_contiguous() {
            (self, pl.offset)
        } else {
            copied = self.copy_strided(&pl);
            (&copied, 0)
        };
        let n = n_out * red;
        match src {
            CpuStorage::F32(v) => CpuStorage::F32(go(&v[off..off + n], n_out, red, op)),
            CpuStorage::F64(v) => CpuStorage::F64(go(&v[off..off + n], n_out, red, op)),
            CpuStorage::BF16(v) => narrow_to(go(&widen(&v[off..off + n]), n_out, red, op), DType::BF16),
            CpuStorage::F16(v) => narrow_to(go(&widen(&v[off..off + n]), n_out, red, op), DType::F16),
            s => panic!("reduce {op:?} on {} tensor", s.dtype()),
        }
    }

    /// Batched matmul. `la`: [.., M, K], `lb`: [.., K, N], batch dims already broadcast to the
    /// same shape (stride 0 where broadcast). Output contiguous [.., M, N].
    fn matmul(&self, la: &Layout, rhs: &CpuStorage, lb: &Layout) -> CpuStorage {
        let r = la.rank();
        let (m, k, n) = (la.shape[r - 2], la.shape[r - 1], lb.shape[r - 1]);
        let batch: Vec<usize> = la.shape[..r - 2].to_vec();
        let nb: usize = batch.iter().product();
        fn go<T: 'static + WithDType>(a: &[T], la: &Layout, b: &[T], lb: &Layout, m: usize, k: usize, n: usize, batch: &[usize], nb: usize) -> Vec<T> {
            let r = la.rank();
            let mut out = vec![T::zero(); nb * m * n];
            if m * n == 0 {
                return out;
            }
            let big = m * n * k >= 1 << 18;
            let par = if big { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
            for bi in 0..nb {
                let (mut oa, mut ob) = (la.offset, lb.offset);
                let mut rem = bi;
                for d in (0..batch.len()).rev() {
                    let i = rem % batch[d];
                    rem /= batch[d];
                    oa += i * la.strides[d];
                    ob += i * lb.strides[d];
                }
                let dst = &mut out[bi * m * n..(bi + 1) * m * n];
                if k == 0 {
                    continue;
                }
                // SAFETY: the pointers and strides describe in-bounds views of `a`, `b` and `dst`
                // (the layouts were checked against the storage sizes when the tensors were made).
                unsafe {
                    gemm::gemm(
                        m, n, k,
                        dst.as_mut_ptr(), 1, n as isize, false,
                        a.as_ptr().add(oa), la.strides[r - 1] as isize, la.strides[r - 2] as isize,
                        b.as_ptr().add(ob), lb.strides[r - 1] as isize, lb.strides[r - 2] as isize,
                        T::zero(), T::from_f64(1.0), false, false, false, par,
                    );
                }
            }
            out
        }
        match (self, rhs) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(go(a, la, b, lb, m, k, n, &batch, nb)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(go(a, la, b, lb, m, k, n, &batch, nb)),
            (CpuStorage::BF16(_), CpuStorage::BF16(_)) | (CpuStorage::F16(_), CpuStorage::F16(_)) => {
                // Half precision on CPU: compute in f32 (the CPU path is for correctness).
                let (a, b) = (self.cast(la, DType::F32), rhs.cast(lb, DType::F32));
                let out = a.matmul(&Layout::contiguous(&la.shape), &b, &Layout::contiguous(&lb.shape));
                out.cast(&Layout::contiguous(&[nb * m * n]), self.dtype())
            }
            (a, b) => panic!("matmul on {} and {} tensors", a.dtype(), b.dtype()),
        }
    }

    /// `out[i][j][k] = self[i][idx[i][j][k]][k]` (for dim = 1); idx has the output shape.
    fn gather(&self, l: &Layout, idx: &[usize], idx_shape: &[usize], dim: usize) -> CpuStorage {
        let src = self.copy_strided(l);
        let st = crate::layout::contiguous_strides(&l.shape);
        let ist = crate::layout::contiguous_strides(idx_shape);
        map_vec!(&src, v => {
            (0..idx.len()).map(|flat| {
                let mut off = 0;
                for d in 0..idx_shape.len() {
                    let i = (flat / ist[d]) % idx_shape[d];
                    off += if d == dim { idx[flat] } else { i } * st[d];
                }
                v[off]
            }).collect()
        })
    }

    /// `self[i][idx[i][j][k]][k] += src[i][j][k]` (for dim = 1); self contiguous of `shape`.
    fn scatter_add(&self, shape: &[usize], idx: &[usize], idx_shape: &[usize], src: &CpuStorage, ls: &Layout, dim: usize) -> CpuStorage {
        let src = src.cast(ls, self.dtype());
        let st = crate::layout::contiguous_strides(shape);
        let ist = crate::layout::contiguous_strides(idx_shape);
        let target = |flat: usize| {
            let mut off = 0;
            for d in 0..idx_shape.len() {
                let i = (flat / ist[d]) % idx_shape[d];
                off += if d == dim { idx[flat] } else { i } * st[d];
            }
            off
        };
        fn go<T: WithDType + NumLike>(base: &[T], s: &[T], target: impl Fn(usize) -> usize) -> Vec<T> {
            let mut out = base.to_vec();
            for (flat, &x) in s.iter().enumerate() {
                let t = target(flat);
                out[t] = out[t] + x;
            }
            out
        }
        match (self, &src) {
            (CpuStorage::F32(b), CpuStorage::F32(s)) => CpuStorage::F32(go(b, s, target)),
            (CpuStorage::F64(b), CpuStorage::F64(s)) => CpuStorage::F64(go(b, s, target)),
            (b, _) => panic!("scatter_add on {} tensor", b.dtype()),
        }
    }

    /// Concatenates contiguous copies of `parts` along `dim`.
    fn cat(parts: &[(&CpuStorage, &Layout)], dim: usize) -> CpuStorage {
        let outer: usize = parts[0].1.shape[..dim].iter().product();
        let srcs: Vec<CpuStorage> = parts.iter().map(|(s, l)| s.copy_strided(l)).collect();
        let inners: Vec<usize> = parts.iter().map(|(_, l)| l.shape[dim..].iter().product()).collect();
        let total: usize = srcs.iter().map(|s| s.len()).sum();
        macro_rules! go {
            ($d:ident) => {{
                let mut out = Vec::with_capacity(total);
                for o in 0..outer {
                    for (s, &inner) in srcs.iter().zip(&inners) {
                        let CpuStorage::$d(v) = s else { panic!("cat: mixed dtypes") };
                        out.extend_from_slice(&v[o * inner..(o + 1) * inner]);
                    }
                }
                CpuStorage::$d(out)
            }};
        }
        match &srcs[0] {
            CpuStorage::F32(_) => go!(F32),
            CpuStorage::F64(_) => go!(F64),
            CpuStorage::BF16(_) => go!(BF16),
            CpuStorage::F16(_) => go!(F16),
            CpuStorage::I32(_) => go!(I32),
            CpuStorage::U32(_) => go!(U32),
            CpuStorage::U8(_) => go!(U8),
        }
    }
}
