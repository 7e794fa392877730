//! Mixed precision casts the f32 master weights to the activations' dtype at every use (`like`
//! in layers.rs): on the GPU that is one small kernel launch per weight and bias, about a hundred
//! per GPT-2 step. `with_casts` makes those copies up front in one multi-tensor launch
//! (`fmlab_tensor::cast_all`) and has `cast_like` hand them out while `f` runs. The copies and
//! their gradients are exactly `to_dtype`'s (each a `Cast` of its master), so nothing changes
//! but the number of launches; outside `with_casts`, `cast_like` is `to_dtype`.

use std::cell::RefCell;
use std::collections::HashMap;

use fmlab_tensor::{DType, Tensor, TensorId};

thread_local! {
    static CACHE: RefCell<Option<(DType, HashMap<TensorId, Tensor>)>> = const { RefCell::new(None) };
}

/// Puts the previous cache back when `with_casts` ends, by return or by panic.
struct Restore(Option<(DType, HashMap<TensorId, Tensor>)>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        CACHE.with(|c| *c.borrow_mut() = prev);
    }
}

/// Runs `f` with `params` already cast to `dtype` (one batched cast; `cast_like` returns them).
pub fn with_casts<R>(params: &[Tensor], dtype: DType, f: impl FnOnce() -> R) -> R {
    let todo: Vec<Tensor> = params.iter().filter(|p| p.dtype() != dtype && p.dtype().is_float()).cloned().collect();
    if todo.is_empty() || !dtype.is_float() {
        return f();
    }
    let cast = fmlab_tensor::cast_all(&todo, dtype);
    let map = todo.iter().zip(cast).map(|(p, c)| (p.id(), c)).collect();
    let _restore = Restore(CACHE.with(|c| c.borrow_mut().replace((dtype, map))));
    f()
}

/// `p` in `x`'s dtype: the batched copy inside `with_casts`, else `p.to_dtype(x.dtype())`.
pub fn cast_like(p: &Tensor, x: &Tensor) -> Tensor {
    let dt = x.dtype();
    if p.dtype() == dt {
        return p.clone();
    }
    let hit = CACHE.with(|c| c.borrow().as_ref().filter(|(d, _)| *d == dt).and_then(|(_, m)| m.get(&p.id()).cloned()));
    hit.unwrap_or_else(|| p.to_dtype(dt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_casts_equal_to_dtype_and_carry_gradients_to_the_masters() {
        let w = Tensor::new_var(&Tensor::from_vec(vec![1.5f32, -2.25, 3.0], &[3]));
        let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).to_dtype(DType::BF16);
        let y = with_casts(std::slice::from_ref(&w), DType::BF16, || {
            let a = cast_like(&w, &x);
            let b = cast_like(&w, &x);
            assert_eq!(a.id(), b.id(), "the same cached copy both times");
            assert_eq!(a.to_vec_f64(), w.to_dtype(DType::BF16).to_vec_f64());
            a.mul(&x).add(&b).sum_all()
        });
        // Outside: a fresh cast.
        assert_ne!(cast_like(&w, &x).id(), cast_like(&w, &x).id());
        y.to_dtype(DType::F32).backward();
        // d/dw (w·x + w) summed = x + 1
        assert_eq!(w.grad().unwrap().to_vec_f64(), vec![2.0, 3.0, 4.0]);
    }
}
