//! The backend interface: the primitive ops that every storage (CpuStorage, CudaStorage)
//! implements with the same signatures, so that a new primitive is one trait method the compiler
//! makes every backend provide, and tensor.rs dispatches each op with one `match` on `Storage`.
//! Element offsets and strides come in a `Layout`; outputs are new contiguous storages on the
//! same device. (Index ops take host or device ids and stay inherent to each backend.)

use crate::layout::Layout;
use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::DType;

pub trait BackendStorage: Sized {
    /// A contiguous copy of the elements viewed by `l`.
    fn copy_strided(&self, l: &Layout) -> Self;
    /// The view `l`'s elements converted to `to`.
    fn cast(&self, l: &Layout, to: DType) -> Self;
    fn unary(&self, l: &Layout, op: UnaryOp) -> Self;
    /// Elementwise over two views of one shape (broadcasting already in the layouts).
    fn binary(&self, la: &Layout, rhs: &Self, lb: &Layout, op: BinaryOp) -> Self;
    /// Elementwise comparison: u8 0/1.
    fn cmp(&self, la: &Layout, rhs: &Self, lb: &Layout, op: CmpOp) -> Self;
    /// cond ? a : b elementwise (cond u8), all three viewed at one shape.
    fn where_cond(cond: &Self, lc: &Layout, a: &Self, la: &Layout, b: &Self, lb: &Layout) -> Self;
    /// Reduces `dims` (kept as size 1).
    fn reduce(&self, l: &Layout, op: ReduceOp, dims: &[usize]) -> Self;
    /// Batched matmul: `la` [.., M, K], `lb` [.., K, N], batch dims broadcast to the same shape.
    fn matmul(&self, la: &Layout, rhs: &Self, lb: &Layout) -> Self;
    /// `out[.., i, ..] = self[.., idx[.., i, ..], ..]` along `dim`.
    fn gather(&self, l: &Layout, idx: &[usize], idx_shape: &[usize], dim: usize) -> Self;
    /// self (contiguous, of `shape`) with src's elements added at idx along `dim`.
    fn scatter_add(&self, shape: &[usize], idx: &[usize], idx_shape: &[usize], src: &Self, ls: &Layout, dim: usize) -> Self;
    /// The views concatenated along `dim`.
    fn cat(parts: &[(&Self, &Layout)], dim: usize) -> Self;
}
