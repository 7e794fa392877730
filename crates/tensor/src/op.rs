//! The closed set of primitive ops, as recorded on outputs for autograd, and the custom-op
//! interface for the fused ops that live outside it (one arm, `Op::Custom`).
//!
//! The custom-op interface: how a fused op lives outside the closed primitive set (candle's
//! CustomOp pattern). One `CustomOp` implementation carries the op's CPU forward, its CUDA
//! forward and its backward; `Tensor::apply_op` runs the forward for the inputs' device and
//! records the op on the output, so autograd (backward.rs) calls its `backward` through one
//! generic arm. A new fused op is a new file under ops/ and touches no core file.
//!
//! A forward may decline (`None`: no kernel takes these inputs here); the caller then takes the
//! op's `_slow` twin, composed of primitives. A forward that makes more than one output (the
//! residual sum beside LayerNorm's rows) makes its values itself and records the op with
//! `Tensor::from_op`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::{no_grad, Tensor, TensorId};

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
    /// A fused op outside the primitive set (below): its node carries the inputs, what its
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

/// What a forward pass returns: the output's values (without history) and the tensors its
/// backward needs kept (statistics, a held activation, gradients made early).
pub struct Fwd {
    pub out: Tensor,
    pub saved: Vec<Tensor>,
}

impl Fwd {
    pub fn new(out: Tensor, saved: Vec<Tensor>) -> Fwd {
        Fwd { out, saved }
    }
}

/// A fused op: its forward per device and its backward. Shape or dtype misuse panics (a
/// programmer bug), as for the primitives.
pub trait CustomOp: Any + Send + Sync {
    fn name(&self) -> String;
    /// The forward on the CPU over `inputs`; None where this op has no CPU kernel for them.
    fn cpu_fwd(&self, inputs: &[Tensor]) -> Option<Fwd> {
        let _ = inputs;
        None
    }
    /// The forward on a CUDA device; None where no kernel takes these inputs.
    fn cuda_fwd(&self, inputs: &[Tensor]) -> Option<Fwd>;
    /// One gradient per input, in order (None: none flows there). Runs without history.
    fn backward(&self, cx: &mut Backward<'_>) -> Vec<Option<Tensor>>;
}

/// A custom op recorded on its output: the op, its inputs (gradients flow to those that track
/// them) and what its forward kept.
#[derive(Clone)]
pub struct CustomNode {
    pub op: Arc<dyn CustomOp>,
    pub inputs: Vec<Tensor>,
    pub saved: Vec<Tensor>,
    /// The output's values without history (its backward may read them: softmax's p).
    pub out: Tensor,
}

impl CustomNode {
    /// The recorded op as its concrete type, if it is one.
    pub fn op_as<T: CustomOp>(&self) -> Option<&T> {
        (self.op.as_ref() as &dyn Any).downcast_ref::<T>()
    }
}

/// The state backward keeps across nodes that a custom op's backward may use (backward.rs).
#[derive(Default)]
pub(crate) struct BackwardState {
    /// Gradients accumulated so far, by tensor.
    pub(crate) grads: HashMap<TensorId, Tensor>,
    /// Gradient buffers that narrows' gradients are written into, with the ranges written.
    pub(crate) slabs: HashMap<TensorId, Vec<(usize, usize, usize)>>,
    pub(crate) sums: ColumnSums,
}

/// One custom op's backward call: its node, the upstream gradient, and access to the pass.
pub struct Backward<'a> {
    pub node: &'a CustomNode,
    /// The upstream gradient, shaped like the output.
    pub g: &'a Tensor,
    /// Whether this node is the root of `Tensor::backward` (a seed of 1): a gradient made for
    /// an upstream 1 (the fused classifier's) passes on unscaled.
    pub seed_is_one: bool,
    pub(crate) state: &'a mut BackwardState,
}

impl Backward<'_> {
    pub fn inputs(&self) -> &[Tensor] {
        &self.node.inputs
    }
    pub fn saved(&self) -> &[Tensor] {
        &self.node.saved
    }
    pub fn out(&self) -> &Tensor {
        &self.node.out
    }
    /// Takes the gradient accumulated so far for `t` (None if none or `t` tracks none), for an
    /// op that adds it inside its own kernel (LayerNorm's backward sums the residual stream's
    /// gradient as it writes dx) and returns the sum as t's gradient.
    pub fn take_grad(&mut self, t: &Tensor) -> Option<Tensor> {
        if !t.track_grad() {
            return None;
        }
        self.state.slabs.remove(&t.id());
        self.state.grads.remove(&t.id())
    }
    /// Keeps `sums`, the f32 column sums of the gradient `g` just made, for a later consumer
    /// of g (`take_column_sums`).
    pub fn keep_column_sums(&mut self, g: &Tensor, sums: Tensor) {
        self.state.sums.keep(g, sums);
    }
    /// The column sums of `g` if an op kept them (removed from the store).
    pub fn take_column_sums(&mut self, g: &Tensor) -> Option<Tensor> {
        self.state.sums.take(g)
    }
}

/// Column sums (f32) of gradients made by the fused LayerNorm backward, which sums them as it
/// writes dx (`ln_bwd_dwdb`). A pre-LN transformer's residual stream r' = r + Linear(..) passes
/// that dx unchanged to the Linear's output, whose bias gradient is exactly those sums: taken
/// here instead of a `colsum16` pass that reads the gradient again (gpt2-mini: 24 of the step's
/// 36 bias column sums, proj's and fc2's). A sum is handed out only for the very buffer it was
/// made from (same storage, offset and size, contiguous, same columns: a reshaped view of it
/// matches), and gradients are never written in place after they are made (accumulation adds
/// into a new tensor), so the sums stay true. The few most recent are kept.
#[derive(Default)]
pub(crate) struct ColumnSums(Vec<(Tensor, Tensor)>);

impl ColumnSums {
    const KEEP: usize = 4;

    fn keep(&mut self, g: &Tensor, sums: Tensor) {
        // FMLAB_LN_SUMS=0: the bias gradients from `colsum16` passes even where LayerNorm made them.
        if !crate::settings::LN_SUMS.on() {
            return;
        }
        if self.0.len() == Self::KEEP {
            self.0.remove(0);
        }
        self.0.push((g.clone(), sums));
    }

    /// The column sums of g [rows, c] if kept, removed from the store.
    fn take(&mut self, g: &Tensor) -> Option<Tensor> {
        let c = *g.shape().last()?;
        let same = |t: &Tensor| t.same_storage(g) && t.layout().offset == g.layout().offset && t.is_contiguous() && g.is_contiguous() && t.numel() == g.numel() && t.shape().last() == Some(&c);
        let i = self.0.iter().position(|(t, s)| same(t) && s.numel() == c)?;
        Some(self.0.remove(i).1)
    }
}

impl Tensor {
    /// Runs the custom op `op` over `inputs` (all on one device) and records it on the output
    /// when a gradient is wanted. None where the op's forward declines (no kernel for these
    /// inputs on their device): the caller takes the op's `_slow` twin.
    pub fn apply_op(op: impl CustomOp, inputs: &[Tensor]) -> Option<Tensor> {
        let first = inputs.first().unwrap_or_else(|| panic!("{}: no inputs", op.name()));
        let dev = first.device();
        for t in inputs {
            assert_eq!(t.device(), dev, "{}: inputs on {} and {}", op.name(), dev, t.device());
        }
        let fwd = {
            let _ng = no_grad();
            if dev.is_cuda() { op.cuda_fwd(inputs) } else { op.cpu_fwd(inputs) }
        }?;
        Some(Tensor::from_op(fwd.out, Arc::new(op), inputs.to_vec(), fwd.saved))
    }

    /// Records the custom op `op` on `values` (made by the caller, without history) when any of
    /// `inputs` tracks a gradient and gradients are on; else returns `values` as is.
    pub fn from_op(values: Tensor, op: Arc<dyn CustomOp>, inputs: Vec<Tensor>, saved: Vec<Tensor>) -> Tensor {
        if !(crate::grad_enabled() && inputs.iter().any(|t| t.track_grad())) {
            return values;
        }
        let out = values.clone();
        values.with_op(Op::Custom(CustomNode { op, inputs, saved, out }))
    }
}
