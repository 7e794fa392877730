//! Data: versioned token shards and a seeded, resumable batch sampler.
//!
//! Shard format, little-endian:
//! ```text
//! magic b"FMLSHARD"  version u32 = 1  token_bytes u32 (2 or 4)  n_tokens u64
//! tokenizer id: u32 len, utf-8     then n_tokens tokens
//! ```

pub mod documents;
pub mod images;
pub mod scenes;

use std::path::Path;

use fmlab_tensor::{Rng, Tensor};

const MAGIC: &[u8; 8] = b"FMLSHARD";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{0}")]
    Other(String),
}

pub(crate) fn ferr(path: &Path, msg: impl std::fmt::Display) -> DataError {
    DataError::File { path: path.display().to_string(), msg: msg.to_string() }
}

/// Tokens of one shard and the tokenizer that made them.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub tokenizer: String,
    pub tokens: Vec<u32>,
}

impl Shard {
    /// Writes atomically; u16 tokens when every id fits.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let wide = self.tokens.iter().any(|&t| t > u16::MAX as u32);
        let mut out = Vec::with_capacity(32 + self.tokens.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(if wide { 4u32 } else { 2u32 }).to_le_bytes());
        out.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.tokenizer.len() as u32).to_le_bytes());
        out.extend_from_slice(self.tokenizer.as_bytes());
        for &t in &self.tokens {
            if wide {
                out.extend_from_slice(&t.to_le_bytes());
            } else {
                out.extend_from_slice(&(t as u16).to_le_bytes());
            }
        }
        fmlab_fs::write_atomic(path, &out).map_err(|e| ferr(path, e))
    }

    pub fn load(path: &Path) -> Result<Shard, DataError> {
        let b = std::fs::read(path).map_err(|e| ferr(path, e))?;
        let bad = |m: &str| ferr(path, format!("{m} (not an fmlab token shard, or truncated)"));
        if b.len() < 28 || &b[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(ferr(path, format!("token shard version {version}; this fmlab reads version {VERSION}")));
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            return Err(bad("bad token width"));
        }
        let n = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
        let tl = u32_at(24) as usize;
        let start = 28 + tl;
        if b.len() < start || Some(b.len() - start) != n.checked_mul(width) {
            return Err(ferr(path, format!("expected {n} tokens of {width} bytes after the header, found {} bytes (truncated?)", b.len().saturating_sub(start))));
        }
        let tokenizer = String::from_utf8(b[28..start].to_vec()).map_err(|_| bad("tokenizer id is not UTF-8"))?;
        let tokens = if width == 2 {
            b[start..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect()
        } else {
            b[start..].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        Ok(Shard { tokenizer, tokens })
    }

    /// Every id below `vocab`; the error names the file (`path`), the first bad id and its offset
    /// (in tokens) — an id past the embedding table would otherwise fail deep inside a step.
    pub fn check_ids(&self, path: &Path, vocab: usize) -> Result<(), DataError> {
        match self.tokens.iter().position(|&t| t as usize >= vocab) {
            Some(i) => Err(ferr(path, format!("token {} at offset {i} (of {}) is outside the tokenizer's vocabulary of {vocab} ids (a corrupt shard, or one made by another tokenizer)", self.tokens[i], self.tokens.len()))),
            None => Ok(()),
        }
    }
}

/// Random windows of T+1 tokens from a token stream: inputs are the first T, targets the last T.
/// The position in the data is the sampler's RNG state, so a resumed run draws the same batches.
pub struct WindowSampler {
    pub rng: Rng,
}

impl WindowSampler {
    pub fn new(seed: u64) -> WindowSampler {
        WindowSampler { rng: Rng::new(seed) }
    }

    /// (inputs [B, T], targets [B, T]) as i32.
    pub fn batch(&mut self, tokens: &[u32], b: usize, t: usize) -> (Tensor, Tensor) {
        assert!(tokens.len() > t + 1, "{} tokens cannot make a window of {}", tokens.len(), t + 1);
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        for _ in 0..b {
            let s = self.rng.below(tokens.len() - t - 1);
            x.extend(tokens[s..s + t].iter().map(|&v| v as i32));
            y.extend(tokens[s + 1..s + t + 1].iter().map(|&v| v as i32));
        }
        (Tensor::from_vec(x, &[b, t]), Tensor::from_vec(y, &[b, t]))
    }
}

/// Consecutive non-overlapping windows covering `tokens` (evaluation): each yields inputs [1, L]
/// and targets [1, L] with L ≤ t; every token after the first is predicted exactly once.
pub fn eval_windows(tokens: &[u32], t: usize) -> Vec<(Tensor, Tensor)> {
    let mut out = Vec::new();
    let mut s = 0;
    while s + 1 < tokens.len() {
        let l = t.min(tokens.len() - 1 - s);
        let x: Vec<i32> = tokens[s..s + l].iter().map(|&v| v as i32).collect();
        let y: Vec<i32> = tokens[s + 1..s + l + 1].iter().map(|&v| v as i32).collect();
        out.push((Tensor::from_vec(x, &[1, l]), Tensor::from_vec(y, &[1, l])));
        s += l;
    }
    out
}

/// Validation batches: the first `n` batches of `b` non-overlapping full windows of `t` tokens
/// (inputs [b, t], targets shifted by one), the same every time, so that validation losses
/// compare across steps and runs. The last batch may hold fewer windows.
pub fn eval_batches(tokens: &[u32], b: usize, t: usize, n: usize) -> Vec<(Tensor, Tensor)> {
    let per = t + 1;
    let windows = (tokens.len().saturating_sub(1) / t).min(n * b);
    let mut out = Vec::new();
    for chunk in (0..windows).collect::<Vec<_>>().chunks(b) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for &w in chunk {
            let s = w * t;
            if s + per > tokens.len() {
                continue;
            }
            x.extend(tokens[s..s + t].iter().map(|&v| v as i32));
            y.extend(tokens[s + 1..s + per].iter().map(|&v| v as i32));
        }
        let rows = x.len() / t;
        if rows > 0 {
            out.push((Tensor::from_vec(x, &[rows, t]), Tensor::from_vec(y, &[rows, t])));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truncated, bit-flipped and random shard files are errors naming the file, never panics.
    #[test]
    fn damaged_shards_are_errors_not_panics() {
        let d = std::env::temp_dir().join(format!("fmlab-shard-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("s.bin");
        let good = Shard { tokenizer: "gpt2".into(), tokens: (0..500).map(|i| (i * 37) % 1000).collect() };
        good.save(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let mut rng = Rng::new(5);
        for case in 0..600 {
            let mut b = bytes.clone();
            match case % 3 {
                0 => b.truncate(rng.below(bytes.len())),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
                _ => b = (0..rng.below(200)).map(|_| rng.below(256) as u8).collect(),
            }
            std::fs::write(&p, &b).unwrap();
            if let Ok(s) = Shard::load(&p) {
                // What loads is range-checked against the vocabulary before use.
                if let Err(e) = s.check_ids(&p, 1000) {
                    assert!(e.to_string().contains("outside the tokenizer's vocabulary"), "{e}");
                }
            } else {
                let e = Shard::load(&p).unwrap_err().to_string();
                assert!(e.contains("s.bin"), "{e}");
            }
        }
        // A flipped high bit of one id: named with its offset.
        let mut b = bytes.clone();
        let off = b.len() - 2 * 10; // token 490 (u16 ids)
        b[off + 1] |= 0x80;
        std::fs::write(&p, &b).unwrap();
        let e = Shard::load(&p).unwrap().check_ids(&p, 1000).unwrap_err().to_string();
        assert!(e.contains("at offset 490") && e.contains("vocabulary of 1000"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn shard_round_trip_both_widths_and_corruption() {
        let d = std::env::temp_dir().join(format!("fmlab-data-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for tokens in [vec![1u32, 2, 65535], vec![1u32, 70000, 3]] {
            let s = Shard { tokenizer: "gpt2".into(), tokens };
            let p = d.join("s.tok");
            s.save(&p).unwrap();
            assert_eq!(Shard::load(&p).unwrap(), s);
            let b = std::fs::read(&p).unwrap();
            std::fs::write(d.join("t.tok"), &b[..b.len() - 1]).unwrap();
            let e = Shard::load(&d.join("t.tok")).unwrap_err().to_string();
            assert!(e.contains("t.tok") && e.contains("truncated"), "{e}");
        }
        std::fs::write(d.join("x.tok"), b"hello world, not a shard at all").unwrap();
        assert!(Shard::load(&d.join("x.tok")).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn sampler_is_seeded_and_targets_are_shifted() {
        let tokens: Vec<u32> = (0..100).collect();
        let (x, y) = WindowSampler::new(3).batch(&tokens, 2, 5);
        let (x2, _) = WindowSampler::new(3).batch(&tokens, 2, 5);
        assert_eq!(x.to_vec_f64(), x2.to_vec_f64());
        let (xv, yv) = (x.to_vec_f64(), y.to_vec_f64());
        for i in 0..10 {
            assert_eq!(yv[i], xv[i] + 1.0);
        }
        let w = eval_windows(&tokens, 30);
        assert_eq!(w.iter().map(|(x, _)| x.numel()).sum::<usize>(), 99);
        // 100 tokens hold 3 full windows of 30 (+1 target each): batches of 2, then 1.
        let v = eval_batches(&tokens, 2, 30, 8);
        assert_eq!(v.iter().map(|(x, _)| x.dim(0)).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(v[1].1.to_vec_f64()[0], 61.0);
    }
}
