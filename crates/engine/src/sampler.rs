//! The logits processor: the next token from one row of logits. Order (HF's): repetition
//! penalty, temperature, top-k, softmax, top-p, min-p, then a seeded draw; temperature 0 is
//! greedy (argmax of the penalized logits, ties to the lowest id).

use fmlab_tensor::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = all).
    pub top_p: f64,
    /// Drop tokens whose probability is below min_p times the most likely one's (0 = none).
    pub min_p: f64,
    /// > 1 discourages tokens already in the context (HF's rule: logit / p if positive, × p if
    /// not); 1 = off.
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Out-of-range values, named by their flag (the CLI's words).
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("--temperature {}: must be a finite number >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p {}: must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("--min-p {}: must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!("--repetition-penalty {}: must be a positive number", self.repetition_penalty));
        }
        Ok(())
    }
}

/// A seeded sampler: the parameters and the draw's random state.
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// The next token from `logits` (one row, V values); `seen`: the tokens in the context,
    /// for the repetition penalty (each counted once).
    pub fn next(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty as f32;
            for &t in seen {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
        }
        if p.temperature <= 0.0 {
            return logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
        }
        // (id, logit / T) sorted by descending logit; ties by id for determinism.
        let mut cand: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &v)| (i as u32, v as f64 / p.temperature)).collect();
        cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        let m = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - m).exp()).collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            // probs are sorted: the first is the largest.
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        if keep < probs.len() {
            probs.truncate(keep);
            let z: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= z);
        }
        let u = self.rng.uniform();
        let mut cum = 0.0;
        for (i, &q) in probs.iter().enumerate() {
            cum += q;
            if u < cum {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_k: usize, top_p: f64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, ..Default::default() }
    }

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut s = Sampler::new(params(0.0, 0, 1.0));
        assert_eq!(s.next(&mut logits.clone(), &[]), 1);
        // top-k 1 is greedy whatever the temperature.
        let mut s = Sampler::new(params(5.0, 1, 1.0));
        for _ in 0..50 {
            assert_eq!(s.next(&mut logits.clone(), &[]), 1);
        }
        // top-p 0.5: tokens 1 and 3 hold ~0.47 and ~0.43, so only {1, 3} can appear.
        let mut s = Sampler::new(params(1.0, 0, 0.5));
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[s.next(&mut logits.clone(), &[]) as usize] += 1;
        }
        assert!(seen[0] == 0 && seen[2] == 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
        // Plain sampling follows the softmax: token 1 ≈ e^3 / Σ ≈ 0.47.
        let mut s = Sampler::new(params(1.0, 0, 1.0));
        let ones = (0..20000).filter(|_| s.next(&mut logits.clone(), &[]) == 1).count();
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let want = 3f64.exp() / z;
        assert!((ones as f64 / 20000.0 - want).abs() < 0.02, "{} vs {want}", ones as f64 / 20000.0);
    }

    #[test]
    fn min_p_and_the_repetition_penalty() {
        // min_p 0.5: e^2.9/e^3 ≈ 0.90 stays, e^1/e^3 ≈ 0.14 and e^0 go.
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, min_p: 0.5, ..Default::default() });
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[s.next(&mut logits.clone(), &[]) as usize] += 1;
        }
        assert!(seen[0] == 0 && seen[2] == 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
        // A penalty of 2 on token 1 (3.0 → 1.5) makes token 3 the greedy choice; on a negative
        // logit it multiplies.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() });
        let mut l = logits;
        assert_eq!(s.next(&mut l, &[1]), 3);
        assert_eq!(l[1], 1.5);
        let mut l = [-1.0f32, -0.5];
        assert_eq!(s.next(&mut l, &[1]), 0, "-0.5 × 2 = -1.0 ties with token 0: the lower id");
        assert_eq!(l[1], -1.0);
    }

    #[test]
    fn bad_values_are_named_by_their_flag() {
        let bad = [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { min_p: 1.5, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
        ];
        for (p, flag) in bad.iter().zip(["--temperature", "--top-p", "--min-p", "--repetition-penalty"]) {
            assert!(p.check().unwrap_err().starts_with(flag), "{p:?}");
        }
        assert!(SamplingParams::default().check().is_ok());
    }
}
