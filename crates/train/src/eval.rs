//! Evaluation: validation over fixed batches of windows (the same every time, so losses compare
//! across steps and runs), and the sliding-window evaluation of `fmlab eval`, where every token
//! is scored once with up to a window of context before it.

use fmlab_tensor::{no_grad, Tensor};

/// Mean of `loss(x, y)` over `fmlab_data::eval_batches(tokens, batch, seq, n)`, weighted by each
/// batch's windows.
pub fn mean_loss(tokens: &[u32], batch: usize, seq: usize, n: usize, loss: &dyn Fn(&Tensor, &Tensor) -> Tensor) -> f64 {
    let _ng = no_grad();
    let (mut total, mut count) = (0.0, 0);
    for (x, y) in fmlab_data::eval_batches(tokens, batch, seq, n) {
        let b = x.dim(0);
        total += loss(&x, &y).item() * b as f64;
        count += b;
    }
    total / count.max(1) as f64
}

/// What `sliding` measured.
pub struct Scored {
    /// Σ of the scored tokens' losses (nats).
    pub nats: f64,
    /// Tokens scored: every token after the first, once.
    pub tokens: usize,
    /// The scored tokens, in order (their text's bytes make bits per byte).
    pub predicted: Vec<u32>,
}

/// Scores every token of `tokens` after the first exactly once with windows of `seq` tokens
/// starting every `stride` tokens: a window's targets already scored by an earlier window are
/// context only (ignored as -100), so with stride < seq each token sees more context.
/// `loss(x [1, L], y [1, L])` is the mean over y's kept targets.
pub fn sliding(tokens: &[u32], seq: usize, stride: usize, loss: &dyn Fn(&Tensor, &Tensor) -> Tensor) -> Scored {
    assert!(seq > 0 && (1..=seq).contains(&stride), "sliding: stride {stride} for windows of {seq}");
    let _ng = no_grad();
    let (mut nats, mut n) = (0.0, 0usize);
    let mut predicted: Vec<u32> = Vec::with_capacity(tokens.len());
    // `scored_to`: targets with absolute index < scored_to are already counted.
    let mut scored_to = 1usize;
    let mut start = 0usize;
    // Every token after the first is a target exactly once.
    let progress = fmlab_progress::bar(tokens.len().saturating_sub(1) as u64, "evaluating tokens");
    while scored_to < tokens.len() {
        let end = (start + seq + 1).min(tokens.len()); // window tokens [start, end)
        let l = end - start - 1;
        let x: Vec<i32> = tokens[start..start + l].iter().map(|&t| t as i32).collect();
        let mut y: Vec<i32> = Vec::with_capacity(l);
        for i in 0..l {
            let abs = start + 1 + i;
            if abs >= scored_to {
                y.push(tokens[abs] as i32);
                predicted.push(tokens[abs]);
            } else {
                y.push(-100); // context only
            }
        }
        let k = y.iter().filter(|&&t| t != -100).count();
        if k > 0 {
            nats += loss(&Tensor::from_vec(x, &[1, l]), &Tensor::from_vec(y, &[1, l])).item() * k as f64;
            n += k;
        }
        progress.inc(k as u64);
        scored_to = end;
        if end == tokens.len() {
            break;
        }
        start += stride;
    }
    Scored { nats, tokens: n, predicted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_after_the_first_is_scored_once() {
        let tokens: Vec<u32> = (0..50).collect();
        // A "loss" that is the mean of the kept target ids: the sum over windows is then Σ ids.
        let f = |_x: &Tensor, y: &Tensor| {
            let v: Vec<f64> = y.to_vec_f64().into_iter().filter(|&t| t != -100.0).collect();
            Tensor::scalar(v.iter().sum::<f64>() / v.len() as f64, fmlab_tensor::DType::F64)
        };
        for (seq, stride) in [(10, 10), (10, 3), (7, 7), (64, 64)] {
            let s = sliding(&tokens, seq, stride, &f);
            assert_eq!(s.tokens, 49, "seq {seq} stride {stride}");
            assert_eq!(s.predicted, (1..50).collect::<Vec<u32>>());
            assert!((s.nats - (1..50).sum::<u32>() as f64).abs() < 1e-9);
        }
    }
}
