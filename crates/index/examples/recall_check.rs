//! Recall of HNSW vs brute force on a .npy base and query set.
//! usage: cargo run --release -p fmlab-index --example recall_check -- BASE.npy QUERIES.npy [EF...]
use fmlab_index::{recall, vectors::read_vectors, BruteForce, Hnsw, HnswParams, Metric};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (data, dim) = read_vectors(a[0].as_ref()).unwrap();
    let (q, _) = read_vectors(a[1].as_ref()).unwrap();
    let t = std::time::Instant::now();
    let h = Hnsw::build(&data, dim, Metric::L2, HnswParams::default());
    println!("built {} points in {:.2}s, max level {}", h.len(), t.elapsed().as_secs_f64(), h.max_level());
    let truth = BruteForce::new(&data, dim, Metric::L2).search_batch(&q, 10, None);
    let efs: Vec<usize> = if a.len() > 2 { a[2..].iter().map(|x| x.parse().unwrap()).collect() } else { vec![10, 64, 200] };
    for ef in efs {
        let got: Vec<_> = q.chunks(dim).map(|x| h.search(x, 10, ef, None)).collect();
        println!("ef {ef}: recall@10 {:.4}", recall(&got, &truth, 10));
    }
}
