//! Encode throughput, fmlab vs tiktoken-rs (r50k_base = GPT-2), on the same text in one run.
//!
//! usage: cargo run --release -p fmlab-tokenizer --example bench_encode -- FILE...
//! Prints MB/s single-thread (whole corpus, each file encoded in one call, best of 5 rounds) and
//! all-cores (files in parallel on the rayon pool), after checking both produce identical ids.

use std::time::Instant;

use fmlab_tokenizer::Tokenizer;
use rayon::prelude::*;

fn best_of<F: FnMut() -> usize>(rounds: usize, mut f: F) -> (f64, usize) {
    let mut best = f64::INFINITY;
    let mut n = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        n = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, n)
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    assert!(!files.is_empty(), "usage: bench_encode FILE...");
    let texts: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{f}: {e}"))).collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let cache = std::env::var("FMLAB_CACHE").unwrap_or_else(|_| ".cache/fmlab".into());
    let ours = Tokenizer::from_gpt2_files(format!("{cache}/gpt2/encoder.json").as_ref(), format!("{cache}/gpt2/vocab.bpe").as_ref()).unwrap();
    let tt = tiktoken_rs::r50k_base().unwrap();

    // Same ids, or the comparison means nothing.
    for t in &texts {
        assert_eq!(ours.encode_ordinary(t), tt.encode_ordinary(t), "outputs differ");
    }
    let mb = bytes as f64 / 1e6;
    let rounds = 5;
    let (t_ours, n) = best_of(rounds, || texts.iter().map(|t| ours.encode_ordinary(t).len()).sum());
    let (t_tt, _) = best_of(rounds, || texts.iter().map(|t| tt.encode_ordinary(t).len()).sum());
    let (p_ours, _) = best_of(rounds, || texts.par_iter().map(|t| ours.encode_ordinary(t).len()).sum());
    let (p_tt, _) = best_of(rounds, || texts.par_iter().map(|t| tt.encode_ordinary(t).len()).sum());
    println!("corpus: {} files, {:.2} MB, {} tokens, {} threads in the pool", texts.len(), mb, n, rayon::current_num_threads());
    println!("| mode | fmlab MB/s | tiktoken-rs MB/s | ratio |");
    println!("|---|---|---|---|");
    println!("| 1 thread | {:.1} | {:.1} | {:.2}x |", mb / t_ours, mb / t_tt, t_tt / t_ours);
    println!("| all cores | {:.1} | {:.1} | {:.2}x |", mb / p_ours, mb / p_tt, p_tt / p_ours);
}
