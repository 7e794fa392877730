//! Reverse-mode autograd: one topological sort, one match arm per primitive op. Gradients are
//! written in tensor ops, so every backend gets backward for free.

use std::collections::{HashMap, HashSet};

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
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(self.id(), seed.clone());
        let root = self.id();
        // Gradients that Narrow backward allocated on a GPU (zeros with slices written in): the
        // ranges written so far, so that the next disjoint slice of the same input is written into
        // the same buffer instead of padded to full size and added (q, k, v of a fused projection).
        let mut slabs: HashMap<TensorId, Vec<(usize, usize, usize)>> = HashMap::new();
        let mut sums = ColumnSums::default();
        let mut out = Vec::new();
        for node in nodes {
            let Some(g) = grads.remove(&node.id()) else { continue };
            if node.is_var() {
                out.push((node.clone(), g));
                continue;
            }
            let Some(op) = node.op() else { continue };
            if let (Op::Narrow(x, dim, start), true) = (&op, g.device().is_cuda()) {
                let r = (*dim, *start, node.dim(*dim));
                if !x.track_grad() {
                    continue;
                }
                let disjoint = |w: &Vec<(usize, usize, usize)>| w.iter().all(|&(d, s, l)| d == r.0 && (s + l <= r.1 || r.1 + r.2 <= s));
                // Already in place: flash attention wrote q/k/v's gradients into one buffer laid
                // out like the fused projection's output x (flash.rs, `fused_qkv`).
                let in_place = g.dtype() == x.dtype() && g.storage_len() == x.numel() && g.layout() == &narrow_layout(x.shape(), r.0, r.1, g.shape());
                match (slabs.get_mut(&x.id()), grads.get(&x.id())) {
                    (Some(w), Some(buf)) if disjoint(w) && in_place && buf.shares_storage(&g) => w.push(r),
                    (None, None) if in_place => {
                        // The buffer becomes x's gradient; its other slices are claimed as their
                        // narrows' gradients arrive (each written over, or found in place).
                        grads.insert(x.id(), g.strided_view(crate::Layout::contiguous(x.shape())));
                        slabs.insert(x.id(), vec![r]);
                    }
                    (Some(w), Some(buf)) if disjoint(w) => {
                        // That slice of `buf` is still zeros: write `g` into it (one copy, no add).
                        write_slice_cuda(&g, buf, r.0, r.1);
                        w.push(r);
                    }
                    _ => {
                        // Overlapping a written slice, or the first slice: pad (and add). The sum
                        // is a fresh buffer, zero outside the recorded ranges plus this one.
                        let dg = pad_narrow_cuda(&g, x.shape(), r.0, r.1);
                        match grads.remove(&x.id()) {
                            Some(prev) => {
                                grads.insert(x.id(), prev.add(&dg));
                                if let Some(w) = slabs.get_mut(&x.id()) {
                                    w.push(r);
                                }
                            }
                            None => {
                                grads.insert(x.id(), dg);
                                slabs.insert(x.id(), vec![r]);
                            }
                        }
                    }
                }
                continue;
            }
            if let (Op::LayerNorm(x, w, b, mean, rstd), true) = (&op, g.device().is_cuda()) {
                // A gradient of x already here (the residual stream's) is summed inside the
                // LayerNorm backward kernel rather than by a separate add.
                let prev = if x.track_grad() {
                    slabs.remove(&x.id());
                    grads.remove(&x.id())
                } else {
                    None
                };
                let (dx, dw, db, colsum) = Tensor::layer_norm_backward(x, w, mean, rstd, &g, prev.as_ref());
                if let Some(cs) = colsum {
                    sums.keep(&dx, cs);
                }
                accumulate(&mut grads, &mut slabs, x, dx);
                accumulate(&mut grads, &mut slabs, w, dw);
                if let Some(b) = b {
                    accumulate(&mut grads, &mut slabs, b, db);
                }
                continue;
            }
            let mut add = |t: &Tensor, dg: Tensor| {
                debug_assert_eq!(t.shape(), dg.shape(), "backward of {}: gradient shape", op.name());
                accumulate(&mut grads, &mut slabs, t, dg);
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
                Op::Narrow(..) if g.device().is_cuda() => unreachable!("handled above"),
                Op::Narrow(x, dim, start) => {
                    let (dim, start) = (*dim, *start);
                    let len = node.dim(dim);
                    let mut parts = Vec::new();
                    let mut sh = x.shape().to_vec();
                    if start > 0 {
                        sh[dim] = start;
                        parts.push(Tensor::zeros_on(&sh, g.dtype(), g.device()));
                    }
                    parts.push(g.clone());
                    let after = x.dim(dim) - start - len;
                    if after > 0 {
                        sh[dim] = after;
                        parts.push(Tensor::zeros_on(&sh, g.dtype(), g.device()));
                    }
                    add(x, if parts.len() == 1 { g.contiguous() } else { Tensor::cat(&parts, dim) })
                }
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
                Op::CrossEntropy(x, t, lse, kept) => add(x, Tensor::cross_entropy_backward(x, t, lse, *kept, g.item())),
                Op::LinearCrossEntropy(x, w, dx, dw) => {
                    // dx, dw were made for an upstream gradient of 1: as they are when the loss is
                    // the seed of 1 itself (no multiplies over 25 + 51 MB: ~60 µs a gpt2-mini step
                    // on the H100), else scaled on the device (dw may be f32 for a 16-bit w:
                    // classifier.rs). Gradients are never written in place once made, so sharing
                    // dx and dw with this node is safe.
                    if seed_is_one && node.id() == root {
                        add(x, dx.clone());
                        add(w, dw.clone());
                    } else {
                        add(x, dx.mul(&g.to_dtype(dx.dtype())));
                        add(w, dw.mul(&g.to_dtype(dw.dtype())));
                    }
                }
                Op::SoftmaxScaled(x, p, scale, _) => add(x, Tensor::softmax_scaled_backward(p, &g, *scale)),
                Op::LayerNorm(x, w, b, mean, rstd) => {
                    let (dx, dw, db, _) = Tensor::layer_norm_backward(x, w, mean, rstd, &g, None);
                    add(x, dx);
                    add(w, dw);
                    if let Some(b) = b {
                        add(b, db);
                    }
                }
                Op::Gelu(x, approx) => add(x, Tensor::gelu_backward(x, &g, *approx)),
                Op::Linear(x, w, b) => {
                    let (dx, dw, db) = Tensor::linear_backward(x, w, b, &g, sums.take(&g));
                    add(x, dx);
                    add(w, dw);
                    add(b, db);
                }
                Op::MlpGelu(x, w1, b1, w2, b2, h, pre) => {
                    let [dx, dw1, db1, dw2, db2] = Tensor::mlp_gelu_backward(x, w1, b1, w2, b2, h, pre.as_ref(), &g, sums.take(&g));
                    add(x, dx);
                    add(w1, dw1);
                    add(b1, db1);
                    add(w2, dw2);
                    add(b2, db2);
                }
                Op::FlashAttention(q, k, v, o, lse, pad, causal, scale) => {
                    let (dq, dk, dv) = crate::flash::flash_attention_backward(q, k, v, o, lse, pad.as_ref(), *causal, *scale, &g);
                    add(q, dq);
                    add(k, dk);
                    add(v, dv);
                }
            }
        }
        out
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
struct ColumnSums(Vec<(Tensor, Tensor)>);

/// FMLAB_LN_SUMS=0: the bias gradients from `colsum16` passes even where the LayerNorm made them.
static LN_SUMS: crate::switch::Switch = crate::switch::Switch::new("FMLAB_LN_SUMS");

impl ColumnSums {
    const KEEP: usize = 4;

    fn keep(&mut self, g: &Tensor, sums: Tensor) {
        if !LN_SUMS.on() {
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

/// Adds `dg` into t's gradient slot (a fresh slot holds `dg` itself).
fn accumulate(grads: &mut HashMap<TensorId, Tensor>, slabs: &mut HashMap<TensorId, Vec<(usize, usize, usize)>>, t: &Tensor, dg: Tensor) {
    if !t.track_grad() {
        return;
    }
    slabs.remove(&t.id());
    let sum = match grads.remove(&t.id()) {
        // A 16-bit tensor's gradient may arrive in f32 (see `linear_param_grads`): sums are f32.
        Some(prev) if prev.dtype() != dg.dtype() => {
            let wide = if prev.dtype().size_in_bytes() >= dg.dtype().size_in_bytes() { prev.dtype() } else { dg.dtype() };
            prev.to_dtype(wide).add(&dg.to_dtype(wide))
        }
        Some(prev) => prev.add(&dg),
        None => dg,
    };
    grads.insert(t.id(), sum);
}

/// Narrow's gradient on a GPU: zeros of the input's shape (a memset) with `g` copied into the
/// narrowed slice — one copy kernel instead of a concatenation that also copies the zero parts.
fn pad_narrow_cuda(g: &Tensor, shape: &[usize], dim: usize, start: usize) -> Tensor {
    use crate::tensor::Storage;
    let n: usize = shape.iter().product();
    let st = g.with_storage(|s| {
        let Storage::Cuda(c) = s else { unreachable!() };
        Storage::Cuda(crate::cuda::CudaStorage::zeros(c.device(), g.dtype(), n))
    });
    let out = Tensor::from_any(st, shape, None);
    write_slice_cuda(g, &out, dim, start);
    out
}

/// The layout of `narrow(dim, start)` (of shape `sub`) of a contiguous tensor of `shape`.
fn narrow_layout(shape: &[usize], dim: usize, start: usize, sub: &[usize]) -> crate::Layout {
    let strides = crate::layout::contiguous_strides(shape);
    crate::Layout { shape: sub.to_vec(), offset: start * strides[dim], strides }
}

/// Copies `g` into the slice of the contiguous CUDA tensor `buf` that starts at `start` along
/// `dim` (in place: `buf` is a gradient buffer that backward allocated and nothing else holds).
fn write_slice_cuda(g: &Tensor, buf: &Tensor, dim: usize, start: usize) {
    use crate::tensor::Storage;
    if g.numel() == 0 {
        return;
    }
    let ost = crate::layout::contiguous_strides(buf.shape());
    let dl = crate::Layout { shape: g.shape().to_vec(), strides: ost.clone(), offset: start * ost[dim] };
    let g = if g.dtype() == buf.dtype() { g.clone() } else { g.to_dtype(buf.dtype()) };
    g.with_storage(|s| {
        buf.with_storage(|d| {
            let (Storage::Cuda(c), Storage::Cuda(out)) = (s, d) else { unreachable!() };
            c.copy_into(g.layout(), out, &dl);
        })
    });
}

fn sign(x: &Tensor) -> Tensor {
    let z = x.scalar_like(0.0);
    let pos = x.gt(&z).to_dtype(x.dtype());
    let neg = x.lt(&z).to_dtype(x.dtype());
    pos.sub(&neg)
}
