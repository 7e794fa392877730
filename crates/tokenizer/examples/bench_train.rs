//! Trainer timing: trains a byte-level BPE vocabulary on the given files and exports it as a HF
//! `tokenizer.json`, so tools/compare_bpe_trainer.py can compare it with HF `tokenizers`.
//!
//! usage: cargo run --release -p fmlab-tokenizer --example bench_train -- VOCAB OUT.json FILE...

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(args.len() >= 3, "usage: bench_train VOCAB OUT.json FILE...");
    let vocab_size: usize = args[0].parse().unwrap();
    let files: Vec<PathBuf> = args[2..].iter().map(PathBuf::from).collect();
    let cfg = fmlab_tokenizer::TrainConfig { vocab_size, ..Default::default() };
    let t = Instant::now();
    let tok = fmlab_tokenizer::train_from_files(&files, &cfg).unwrap();
    let secs = t.elapsed().as_secs_f64();
    tok.save_hf_json(args[1].as_ref()).unwrap();
    println!("fmlab train: {} files, vocab {}, {:.2} s, {} threads", files.len(), tok.vocab_size(), secs, rayon::current_num_threads());
}
