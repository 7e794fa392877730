//! The closed set of primitive ops, as recorded on outputs for autograd.

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
    /// Fused cross-entropy: (contiguous logits, targets i32 with ignored rows as given, per-row
    /// log-sum-exp f64, number of kept rows).
    CrossEntropy(Tensor, Tensor, Tensor, usize),
    /// Fused scaled (optionally causal) softmax over the last dim: (input, output probabilities
    /// held without history, scale, causal).
    SoftmaxScaled(Tensor, Tensor, f64, bool),
    /// Fused LayerNorm: (contiguous input, weight, bias, per-row mean, per-row rstd), the
    /// statistics held without history.
    LayerNorm(Tensor, Tensor, Option<Tensor>, Tensor, Tensor),
    /// Fused GELU of the contiguous input; true = tanh approximation, false = erf.
    Gelu(Tensor, bool),
    /// Flash attention: (q, k, v, the [B, T, H, D] output held without history, per-row
    /// log-sum-exp f32 [B·H·T], key padding mask, causal, scale).
    FlashAttention(Tensor, Tensor, Tensor, Tensor, Tensor, Option<Tensor>, bool, f64),
    /// Fused classifier (LM head + cross-entropy): (x [N, C], w [V, C], and their gradients for an
    /// upstream gradient of 1, computed chunk by chunk in the forward pass, held without history).
    LinearCrossEntropy(Tensor, Tensor, Tensor, Tensor),
    /// x [rows, K] · w [K, N] + bias [N] (linear.rs: the bias in GEMM epilogues).
    Linear(Tensor, Tensor, Tensor),
    /// GELU MLP block (linear.rs): (x [rows, K], w1, b1, w2, b2, and held without history
    /// h = gelu(pre) and the pre-activation pre [rows, H]; None where the backward makes pre
    /// again instead of keeping it).
    MlpGelu(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Option<Tensor>),
}

impl Op {
    pub fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary(a, _) | Op::Reduce(a, _, _) | Op::Reshape(a) | Op::Permute(a, _) | Op::Narrow(a, _, _) | Op::Expand(a) | Op::Contiguous(a) | Op::Cast(a) => vec![a],
            Op::IndexSelect(a, _, _) | Op::Gather(a, _, _) => vec![a],
            Op::Binary(a, b, _) | Op::Matmul(a, b) | Op::LinearCrossEntropy(a, b, ..) => vec![a, b],
            Op::FlashAttention(q, k, v, ..) | Op::Linear(q, k, v) => vec![q, k, v],
            Op::IndexAdd(a, _, s, _) | Op::ScatterAdd(a, _, s, _) => vec![a, s],
            Op::Where(_, a, b) => vec![a, b],
            Op::MlpGelu(x, w1, b1, w2, b2, ..) => vec![x, w1, b1, w2, b2],
            Op::Cat(v, _) => v.iter().collect(),
            Op::CrossEntropy(x, ..) | Op::SoftmaxScaled(x, ..) | Op::Gelu(x, _) => vec![x],
            Op::LayerNorm(x, w, b, ..) => std::iter::once(x).chain(std::iter::once(w)).chain(b.as_ref()).collect(),
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
            Op::CrossEntropy(..) => "cross_entropy".into(),
            Op::SoftmaxScaled(..) => "softmax_scaled".into(),
            Op::LayerNorm(..) => "layer_norm".into(),
            Op::FlashAttention(..) => "flash_attention".into(),
            Op::LinearCrossEntropy(..) => "linear_cross_entropy".into(),
            Op::Linear(..) => "linear".into(),
            Op::MlpGelu(..) => "mlp_gelu".into(),
            Op::Gelu(_, approx) => if *approx { "gelu_tanh" } else { "gelu_erf" }.into(),
        }
    }
}
