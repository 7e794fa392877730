//! The file readers of nn against damaged files (truncated, bit-flipped, lengths set to 0xff…,
//! random bytes; fmlab_fs::mutations): every one is an error naming the file, never a panic.

use std::path::Path;

use fmlab_nn::gguf::Gguf;
use fmlab_nn::safetensors_io;
use fmlab_tensor::{DType, Rng, Tensor};

const CASES: usize = 400;

fn each_mutation(name: &str, good: &[u8], read: impl Fn(&Path) -> Result<(), String>) {
    fmlab_fs::check_reader_survives_damage(name, good, 7, CASES, read);
}

#[test]
fn safetensors_reader_survives_damage() {
    let mut r = Rng::new(1);
    let ts = vec![("a.weight".to_string(), Tensor::randn(&[4, 3], 0.0, 1.0, DType::F32, &mut r)), ("b".to_string(), Tensor::randn(&[5], 0.0, 1.0, DType::F32, &mut r).to_dtype(DType::BF16))];
    let good = safetensors_io::serialize(&ts, None).unwrap();
    each_mutation("m.safetensors", &good, |p| safetensors_io::load(p).map(|_| ()).map_err(|e| e.to_string()));
}

/// A small GGUF v3: two metadata keys (a string, an array of strings) and two f32 tensors.
fn tiny_gguf() -> Vec<u8> {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes()); // tensors
    b.extend(2u64.to_le_bytes()); // metadata
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    for t in ["a", "b", "c"] {
        s(&mut b, t);
    }
    for (name, dims, off) in [("t0", vec![4u64, 2], 0u64), ("t1", vec![3], 32)] {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for i in 0..16 {
        b.extend((i as f32).to_le_bytes());
    }
    b
}

#[test]
fn gguf_reader_survives_damage() {
    each_mutation("m.gguf", &tiny_gguf(), |p| {
        let g = Gguf::open(p).map_err(|e| e.to_string())?;
        g.all_tensors().map(|_| ()).map_err(|e| e.to_string())
    });
}
