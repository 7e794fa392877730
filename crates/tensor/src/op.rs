//! The closed set of primitive ops, as recorded on outputs for autograd, and one arm for the
//! fused ops that live outside it (custom.rs).

use crate::custom::CustomNode;
use crate::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sin,
    Cos,
    Abs,
    Erf,
    Recip,
    Relu,
    /// `x * mul + add`
    Affine(f64, f64),
    /// `x ^ p`
    Powf(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// How an output was produced, with its inputs: one arm each in backward.rs.
#[derive(Clone)]
pub enum Op {
    Unary(Tensor, UnaryOp),
    /// Both inputs already broadcast (expanded) to the output shape.
    Binary(Tensor, Tensor, BinaryOp),
    /// Reduced dims kept as size 1.
    Reduce(Tensor, ReduceOp, Vec<usize>),
    Matmul(Tensor, Tensor),
    Reshape(Tensor),
    Permute(Tensor, Vec<usize>),
    Narrow(Tensor, usize, usize),
    Expand(Tensor),
    Contiguous(Tensor),
    Cat(Vec<Tensor>, usize),
    /// (source, ids, dim)
    IndexSelect(Tensor, Tensor, usize),
    /// (base, ids, source, dim)
    IndexAdd(Tensor, Tensor, Tensor, usize),
    /// (source, idx, dim)
    Gather(Tensor, Tensor, usize),
    /// (base, idx, source, dim)
    ScatterAdd(Tensor, Tensor, Tensor, usize),
    /// (cond, on_true, on_false), all broadcast to the output shape.
    Where(Tensor, Tensor, Tensor),
    Cast(Tensor),
    /// A fused op outside the primitive set (custom.rs): its node carries the inputs, what its
    /// forward kept, and the backward.
    Custom(CustomNode),
}

impl Op {
    pub fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary(a, _) | Op::Reduce(a, _, _) | Op::Reshape(a) | Op::Permute(a, _) | Op::Narrow(a, _, _) | Op::Expand(a) | Op::Contiguous(a) | Op::Cast(a) => vec![a],
            Op::IndexSelect(a, _, _) | Op::Gather(a, _, _) => vec![a],
            Op::Binary(a, b, _) | Op::Matmul(a, b) => vec![a, b],
            Op::IndexAdd(a, _, s, _) | Op::ScatterAdd(a, _, s, _) => vec![a, s],
            Op::Where(_, a, b) => vec![a, b],
            Op::Cat(v, _) => v.iter().collect(),
            Op::Custom(n) => n.inputs.iter().collect(),
        }
    }
    pub fn name(&self) -> String {
        match self {
            Op::Unary(_, u) => format!("{u:?}"),
            Op::Binary(_, _, b) => format!("{b:?}"),
            Op::Reduce(_, r, _) => format!("{r:?}"),
            Op::Matmul(..) => "matmul".into(),
            Op::Reshape(_) => "reshape".into(),
            Op::Permute(..) => "permute".into(),
            Op::Narrow(..) => "narrow".into(),
            Op::Expand(_) => "expand".into(),
            Op::Contiguous(_) => "contiguous".into(),
            Op::Cat(..) => "cat".into(),
            Op::IndexSelect(..) => "index_select".into(),
            Op::IndexAdd(..) => "index_add".into(),
            Op::Gather(..) => "gather".into(),
            Op::ScatterAdd(..) => "scatter_add".into(),
            Op::Where(..) => "where".into(),
            Op::Cast(_) => "cast".into(),
            Op::Custom(n) => n.op.name(),
        }
    }
}
