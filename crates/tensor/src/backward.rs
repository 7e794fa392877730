//! Reverse-mode autograd: one topological sort, one match arm per primitive op, and one generic
//! arm that calls a fused op's own backward (op.rs, `CustomOp`). Gradients are written in tensor ops, so
//! every backend gets backward for free; nothing here asks which device it runs on.

use std::collections::HashSet;

use crate::op::{Backward, BackwardState};
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::tensor::{no_grad, Tensor, TensorId};

/// Nodes reachable from `root` that need gradients, each after all of its consumers
/// (reverse topological order: root first).
fn sorted_nodes(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut done: HashSet<TensorId> = HashSet::new();
    // Iterative post-order DFS: deep graphs (long sequences of ops) must not overflow the stack.
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !done.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(op) = t.op() {
            for i in op.inputs() {
                if i.track_grad() && !done.contains(&i.id()) {
                    stack.push((i.clone(), false));
                }
            }
        }
    }
    order.reverse();
    order
}

/// Sums `g` down to `shape` (the inverse of broadcasting).
pub fn sum_to(g: &Tensor, shape: &[usize]) -> Tensor {
    if g.shape() == shape {
        return g.clone();
    }
    let extra = g.rank() - shape.len();
    let mut dims: Vec<usize> = (0..extra).collect();
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 && g.dim(extra + i) != 1 {
            dims.push(extra + i);
        }
    }
    g.sum(&dims, true).reshape(shape)
}

impl Tensor {
    /// Back-propagates from this scalar, adding each variable's gradient into its `grad()` slot
    /// (so successive calls accumulate, as for gradient accumulation over micro-batches).
    pub fn backward(&self) {
        assert_eq!(self.numel(), 1, "backward from a tensor of shape {:?}; reduce it to a scalar first", self.shape());
        let grads = self.grads_seeded(&Tensor::full_on(1.0, self.shape(), self.dtype(), self.device()), true);
        for (t, g) in grads {
            t.accumulate_grad(&g);
        }
    }

    /// Gradients of this tensor (seeded with `seed`, same shape) for every variable it depends on.
    pub fn grads_wrt_graph(&self, seed: &Tensor) -> Vec<(Tensor, Tensor)> {
        self.grads_seeded(seed, false)
    }

    /// `grads_wrt_graph`, told whether the seed is known to be 1 (`backward`): then an op whose
    /// gradient was made for an upstream 1 (the fused classifier's) passes it on unscaled.
    fn grads_seeded(&self, seed: &Tensor, seed_is_one: bool) -> Vec<(Tensor, Tensor)> {
        let _ng = no_grad();
        let nodes = sorted_nodes(self);
        let mut st = BackwardState::default();
        st.grads.insert(self.id(), seed.clone());
        let root = self.id();
        let mut out = Vec::new();
        for node in nodes {
            let Some(g) = st.grads.remove(&node.id()) else { continue };
            if node.is_var() {
                out.push((node.clone(), g));
                continue;
            }
            let Some(op) = node.op() else { continue };
            if let Op::Narrow(x, dim, start) = op {
                if x.track_grad() {
                    narrow_backward(&mut st, x, &g, (*dim, *start, node.dim(*dim)));
                }
                continue;
            }
            if let Op::Custom(n) = op {
                let mut cx = Backward { node: n, g: &g, seed_is_one: seed_is_one && node.id() == root, state: &mut st };
                let dgs = n.op.backward(&mut cx);
                assert_eq!(dgs.len(), n.inputs.len(), "backward of {}: {} gradients for {} inputs", n.op.name(), dgs.len(), n.inputs.len());
                for (t, dg) in n.inputs.iter().zip(dgs) {
                    if let Some(dg) = dg {
                        debug_assert_eq!(t.shape(), dg.shape(), "backward of {}: gradient shape", n.op.name());
                        accumulate(&mut st, t, dg);
                    }
                }
                continue;
            }
            let mut add = |t: &Tensor, dg: Tensor| {
                debug_assert_eq!(t.shape(), dg.shape(), "backward of {}: gradient shape", op.name());
                accumulate(&mut st, t, dg);
            };
            match op {
                Op::Unary(x, u) => {
                    let dx = match *u {
                        UnaryOp::Neg => g.neg(),
                        UnaryOp::Exp => g.mul(&node),
                        UnaryOp::Log => g.div(x),
                        UnaryOp::Sqrt => g.div(&node.scale(2.0)),
                        UnaryOp::Tanh => g.mul(&node.sqr().affine(-1.0, 1.0)),
                        UnaryOp::Sin => g.mul(&x.cos()),
                        UnaryOp::Cos => g.mul(&x.sin().neg()),
                        UnaryOp::Abs => g.mul(&sign(x)),
                        // d/dx erf = 2/sqrt(pi) exp(-x^2)
                        UnaryOp::Erf => g.mul(&x.sqr().neg().exp().scale(std::f64::consts::FRAC_2_SQRT_PI)),
                        UnaryOp::Recip => g.mul(&node.sqr()).neg(),
                        UnaryOp::Relu => g.mul(&x.gt(&x.scalar_like(0.0)).to_dtype(x.dtype())),
                        UnaryOp::Affine(m, _) => g.scale(m),
                        UnaryOp::Powf(p) => g.mul(&x.powf(p - 1.0).scale(p)),
                    };
                    add(x, dx);
                }
                Op::Binary(a, b, bop) => match bop {
                    BinaryOp::Add => {
                        add(a, g.clone());
                        add(b, g);
                    }
                    BinaryOp::Sub => {
                        add(a, g.clone());
                        add(b, g.neg());
                    }
                    BinaryOp::Mul => {
                        add(a, g.mul(b));
                        add(b, g.mul(a));
                    }
                    BinaryOp::Div => {
                        add(a, g.div(b));
                        add(b, g.mul(&node).div(b).neg());
                    }
                    BinaryOp::Maximum | BinaryOp::Minimum => {
                        // The gradient goes to the chosen operand; on ties it is split evenly.
                        let (ma, mb) = (a.eq(&node).to_dtype(g.dtype()), b.eq(&node).to_dtype(g.dtype()));
                        let share = ma.add(&mb);
                        add(a, g.mul(&ma).div(&share.maximum(&share.scalar_like(1.0))));
                        add(b, g.mul(&mb).div(&share.maximum(&share.scalar_like(1.0))));
                    }
                },
                Op::Reduce(x, r, _) => match r {
                    ReduceOp::Sum => add(x, g.expand(x.shape()).contiguous()),
                    ReduceOp::Max | ReduceOp::Min => {
                        // Split evenly between tied extrema, as torch.amax does.
                        let mask = x.eq(&node.expand(x.shape())).to_dtype(g.dtype());
                        let dims: Vec<usize> = (0..x.rank()).filter(|&d| x.dim(d) != node.dim(d)).collect();
                        let count = mask.sum(&dims, true);
                        add(x, mask.mul(&g.div(&count)))
                    }
                },
                Op::Matmul(a, b) => {
                    add(a, g.matmul(&b.t()));
                    add(b, a.t().matmul(&g));
                }
                Op::Reshape(x) | Op::Contiguous(x) => add(x, g.reshape(x.shape())),
                Op::Permute(x, p) => {
                    let mut inv = vec![0; p.len()];
                    for (i, &d) in p.iter().enumerate() {
                        inv[d] = i;
                    }
                    // A view: a consumer that needs contiguous data copies it then (often none does:
                    // a transpose of a transpose, or a kernel taking strides).
                    add(x, g.permute(&inv))
                }
                Op::Narrow(..) | Op::Custom(_) => unreachable!("handled above"),
                Op::Expand(x) => add(x, sum_to(&g, x.shape())),
                Op::Cat(parts, dim) => {
                    let mut start = 0;
                    for p in parts {
                        add(p, g.narrow(*dim, start, p.dim(*dim)).contiguous());
                        start += p.dim(*dim);
                    }
                }
                // The rows are added into zeros, not into x's other gradient (GPT-2's tied LM
                // head's) where that is already here: on a GPU they are added by atomics, and
                // from zeros two rows of one id sum alike in either order (measured: added into
                // the head's gradient, the gpt2_parity runs stopped repeating bit for bit). The
                // zeros are this pass's own, so the rows go straight into them (no copy).
                Op::IndexSelect(x, ids, dim) => add(x, x.zeros_like().index_add_owned(ids, &g, *dim)),
                Op::IndexAdd(base, ids, src, dim) => {
                    add(base, g.clone());
                    add(src, g.index_select(ids, *dim));
                }
                Op::Gather(x, idx, dim) => add(x, x.zeros_like().scatter_add(idx, &g, *dim)),
                Op::ScatterAdd(base, idx, src, dim) => {
                    add(base, g.clone());
                    add(src, g.gather(idx, *dim));
                }
                Op::Where(c, a, b) => {
                    let z = g.scalar_like(0.0);
                    add(a, c.where_cond(&g, &z));
                    add(b, c.where_cond(&z, &g));
                }
                Op::Cast(x) => add(x, g.to_dtype(x.dtype())),
            }
        }
        out
    }
}

/// Adds `dg` into t's gradient slot (a fresh slot holds `dg` itself).
pub(crate) fn accumulate(st: &mut BackwardState, t: &Tensor, dg: Tensor) {
    if !t.track_grad() {
        return;
    }
    st.slabs.remove(&t.id());
    let sum = match st.grads.remove(&t.id()) {
        Some(prev) => add_grads(&prev, &dg),
        None => dg,
    };
    st.grads.insert(t.id(), sum);
}

/// prev + dg. A 16-bit tensor's gradient may arrive in f32 (see `linear_param_grads`): mixed
/// sums are made in the wider dtype.
fn add_grads(prev: &Tensor, dg: &Tensor) -> Tensor {
    if prev.dtype() == dg.dtype() {
        return prev.add(dg);
    }
    let wide = if prev.dtype().size_in_bytes() >= dg.dtype().size_in_bytes() { prev.dtype() } else { dg.dtype() };
    prev.to_dtype(wide).add(&dg.to_dtype(wide))
}

/// Narrow's backward: `g`, the gradient of x.narrow(r.0, r.1, r.2), into x's gradient. The
/// slices of one input (q, k, v of a fused projection) are written into one zero-filled buffer
/// of x's shape — one memset and a copy each, instead of a concatenation with zero parts and
/// an add per slice — and where an op already wrote them in place (flash attention writes q/k/v's
/// gradients into one buffer laid out like x: ops/flash.rs, `fused_qkv`) nothing is copied.
fn narrow_backward(st: &mut BackwardState, x: &Tensor, g: &Tensor, r: (usize, usize, usize)) {
    let disjoint = |w: &Vec<(usize, usize, usize)>| w.iter().all(|&(d, s, l)| d == r.0 && (s + l <= r.1 || r.1 + r.2 <= s));
    let in_place = g.dtype() == x.dtype() && g.storage_len() == x.numel() && g.layout() == &narrow_layout(x.shape(), r.0, r.1, g.shape());
    match (st.slabs.get_mut(&x.id()), st.grads.get(&x.id())) {
        (Some(w), Some(buf)) if disjoint(w) && in_place && buf.shares_storage(g) => w.push(r),
        (None, None) if in_place => {
            // The buffer becomes x's gradient; its other slices are claimed as their narrows'
            // gradients arrive (each written over, or found in place).
            st.grads.insert(x.id(), g.strided_view(crate::Layout::contiguous(x.shape())));
            st.slabs.insert(x.id(), vec![r]);
        }
        (Some(w), Some(buf)) if disjoint(w) => {
            // That slice of `buf` is still zeros: write `g` into it (one copy, no add).
            buf.write_slice(g, r.0, r.1);
            w.push(r);
        }
        _ => {
            // Overlapping a written slice, or the first slice: pad (and add). The sum is a fresh
            // buffer, zero outside the recorded ranges plus this one.
            let dg = Tensor::zeros_on(x.shape(), g.dtype(), g.device());
            dg.write_slice(g, r.0, r.1);
            match st.grads.remove(&x.id()) {
                Some(prev) => {
                    st.grads.insert(x.id(), add_grads(&prev, &dg));
                    if let Some(w) = st.slabs.get_mut(&x.id()) {
                        w.push(r);
                    }
                }
                None => {
                    st.grads.insert(x.id(), dg);
                    st.slabs.insert(x.id(), vec![r]);
                }
            }
        }
    }
}

/// The layout of `narrow(dim, start)` (of shape `sub`) of a contiguous tensor of `shape`.
fn narrow_layout(shape: &[usize], dim: usize, start: usize, sub: &[usize]) -> crate::Layout {
    let strides = crate::layout::contiguous_strides(shape);
    crate::Layout { shape: sub.to_vec(), offset: start * strides[dim], strides }
}

fn sign(x: &Tensor) -> Tensor {
    let z = x.scalar_like(0.0);
    let pos = x.gt(&z).to_dtype(x.dtype());
    let neg = x.lt(&z).to_dtype(x.dtype());
    pos.sub(&neg)
}
