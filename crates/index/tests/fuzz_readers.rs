//! The index readers (HNSW files, .npy, .fvecs, IDX) against damaged files (fmlab_fs::mutations):
//! every one is an error naming the file, never a panic; an index that still loads answers a
//! search without panicking.

use std::path::Path;

use fmlab_index::vectors::{read_vectors, write_npy};
use fmlab_index::{file, Hnsw, HnswParams, Metric, Payload, Value};

fn each_mutation(name: &str, good: &[u8], cases: usize, read: impl Fn(&Path) -> Result<(), String>) {
    fmlab_fs::check_reader_survives_damage(name, good, 13, cases, read);
}

fn points(n: usize, dim: usize) -> Vec<f32> {
    (0..n * dim).map(|i| ((i * 7919) % 101) as f32 / 10.0).collect()
}

#[test]
fn hnsw_file_reader_survives_damage() {
    let d = std::env::temp_dir().join(format!("fmlab-fuzz-index-src-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let (n, dim) = (60, 4);
    let h = Hnsw::build(&points(n, dim), dim, Metric::L2, HnswParams { m: 4, ef_construction: 20, seed: 1 });
    let payloads: Vec<Payload> = (0..n).map(|i| [("year".to_string(), Value::Num(i as f64))].into_iter().collect()).collect();
    let p = d.join("i.hnsw");
    file::save(&h, Some(&payloads), &p).unwrap();
    let good = std::fs::read(&p).unwrap();
    each_mutation("i.hnsw", &good, 500, |p| {
        let (h, _) = file::load(p).map_err(|e| e.to_string())?;
        let _ = h.search(&[1.0, 2.0, 3.0, 4.0], 5, 16, None);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn vector_readers_survive_damage() {
    let d = std::env::temp_dir().join(format!("fmlab-fuzz-index-vec-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    write_npy(&d.join("v.npy"), &points(10, 3), 3).unwrap();
    let npy = std::fs::read(d.join("v.npy")).unwrap();
    each_mutation("v.npy", &npy, 400, |p| read_vectors(p).map(|_| ()).map_err(|e| e.to_string()));
    // fvecs: per row, an i32 dim then dim f32s.
    let mut fv = Vec::new();
    for r in points(5, 3).chunks(3) {
        fv.extend(3i32.to_le_bytes());
        r.iter().for_each(|x| fv.extend(x.to_le_bytes()));
    }
    each_mutation("v.fvecs", &fv, 300, |p| read_vectors(p).map(|_| ()).map_err(|e| e.to_string()));
    // IDX images: magic 0x00000803, counts n, rows, cols (big-endian), then u8 pixels.
    let mut idx = vec![0, 0, 8, 3];
    for x in [4u32, 3, 3] {
        idx.extend(x.to_be_bytes());
    }
    idx.extend((0..36).map(|i| i as u8));
    each_mutation("t10k-images-idx3-ubyte", &idx, 300, |p| read_vectors(p).map(|_| ()).map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&d);
}
