//! HNSW against brute force: recall, persistence, filters, deletes, corruption.

use fmlab_index::{file, plan, recall, Bitset, BruteForce, Filter, Hnsw, HnswParams, Metric, Payload, Plan, Value};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (1.0 - self.f(), self.f());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

fn uniform(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..n * dim).map(|_| r.f()).collect()
}

/// Points around 20 fixed random centres (dense clumps, empty space between); `seed` varies the
/// points, not the centres, so queries come from the same distribution as the data.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut c = Rng(1234 + dim as u64);
    let centres: Vec<f32> = (0..20 * dim).map(|_| c.f() * 10.0).collect();
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = (i * 7) % 20;
        for d in 0..dim {
            v.push(centres[c * dim + d] + 0.3 * r.normal());
        }
    }
    v
}

fn check_recall(data: &[f32], queries: &[f32], dim: usize, metric: Metric, ef: usize, min: f64) -> Hnsw {
    let h = Hnsw::build(data, dim, metric, HnswParams { m: 16, ef_construction: 200, seed: 1 });
    let bf = BruteForce::new(data, dim, metric);
    let truth = bf.search_batch(queries, 10, None);
    let got: Vec<_> = queries.chunks(dim).map(|q| h.search(q, 10, ef, None)).collect();
    let r = recall(&got, &truth, 10);
    assert!(r >= min, "{metric:?}: recall@10 {r} < {min}");
    h
}

#[test]
fn recall_on_random_and_clustered_data_for_every_metric() {
    let dim = 32;
    let q = uniform(200, dim, 9);
    check_recall(&uniform(5000, dim, 1), &q, dim, Metric::L2, 100, 0.95);
    check_recall(&clustered(5000, dim, 2), &clustered(200, dim, 3), dim, Metric::L2, 100, 0.95);
    check_recall(&clustered(5000, dim, 4), &clustered(200, dim, 5), dim, Metric::Cosine, 100, 0.95);
    let qn: Vec<f32> = q.iter().map(|x| x - 0.5).collect();
    let dn: Vec<f32> = uniform(5000, dim, 6).iter().map(|x| x - 0.5).collect();
    check_recall(&dn, &qn, dim, Metric::InnerProduct, 100, 0.95);
}

#[test]
fn save_load_round_trip_gives_identical_results_and_corruption_is_detected() {
    let dim = 16;
    let data = clustered(2000, dim, 7);
    let mut h = Hnsw::build(&data, dim, Metric::L2, HnswParams::default());
    h.delete(5);
    let payloads: Vec<Payload> = (0..2000).map(|i| [("k".to_string(), Value::Num((i % 10) as f64))].into()).collect();
    let d = std::env::temp_dir().join(format!("fmlab-idx-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("a.idx");
    file::save(&h, Some(&payloads), &p).unwrap();
    let (h2, p2) = file::load(&p).unwrap();
    assert_eq!(p2.unwrap(), payloads);
    assert!(h2.is_deleted(5) && h2.num_deleted() == 1);
    for q in clustered(50, dim, 8).chunks(dim) {
        assert_eq!(h.search(q, 10, 50, None), h2.search(q, 10, 50, None));
    }
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(d.join("t.idx"), &bytes[..bytes.len() - 100]).unwrap();
    let e = file::load(&d.join("t.idx")).err().unwrap().to_string();
    assert!(e.contains("t.idx") && e.contains("corrupted"), "{e}");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(d.join("f.idx"), &flipped).unwrap();
    assert!(file::load(&d.join("f.idx")).err().unwrap().to_string().contains("checksum"));
    let mut v = bytes.clone();
    v[8] = 7;
    std::fs::write(d.join("v.idx"), &v).unwrap();
    assert!(file::load(&d.join("v.idx")).err().unwrap().to_string().contains("version 7"));
}

#[test]
fn filtered_search_returns_only_matches_and_keeps_recall_at_one_percent() {
    let dim = 16;
    let n = 20_000;
    let data = clustered(n, dim, 11);
    let h = Hnsw::build(&data, dim, Metric::L2, HnswParams::default());
    let bf = BruteForce::new(&data, dim, Metric::L2);
    let bucket = |i: usize| (i * 7919) % 1000; // pseudo-random bucket 0..999 per point
    for (sel, ef) in [(10usize, 64usize), (100, 64), (1000, 64)] {
        // sel/1000 of the points pass: 1%, 10%, 100%.
        let allowed = Bitset::from_fn(n, |i| bucket(i) < sel);
        let queries = clustered(100, dim, 12);
        let mut got = Vec::new();
        let mut truth = Vec::new();
        for q in queries.chunks(dim) {
            let (r, _) = h.search_filtered(q, 10, ef, &allowed);
            assert!(r.iter().all(|(id, _)| bucket(*id as usize) < sel), "a non-matching id came back");
            got.push(r);
            truth.push(bf.search(q, 10, Some(&allowed)));
        }
        let rec = recall(&got, &truth, 10);
        assert!(rec >= 0.9, "selectivity {}%: recall {rec}", sel as f64 / 10.0);
    }
    // The filter-aware graph path on its own (bypassing the planner) stays correct: only
    // matching ids, and recall ≥ 0.9 at 10% and at 1% selectivity (with a wider beam).
    assert_eq!(plan(n, 10_000, 64, 32), Plan::Graph, "50% selectivity goes to the graph");
    assert_eq!(plan(n, 200, 64, 32), Plan::Exact, "1% selectivity is scanned exactly");
    for (sel, ef) in [(100usize, 64usize), (10, 400)] {
        let allowed = Bitset::from_fn(n, |i| bucket(i) < sel);
        let queries = clustered(100, dim, 14);
        let got: Vec<_> = queries.chunks(dim).map(|q| h.search(q, 10, ef, Some(&allowed))).collect();
        let truth: Vec<_> = queries.chunks(dim).map(|q| bf.search(q, 10, Some(&allowed))).collect();
        assert!(got.iter().flatten().all(|(id, _)| bucket(*id as usize) < sel));
        let rec = recall(&got, &truth, 10);
        assert!(rec >= 0.9, "graph path at {}%: recall {rec}", sel as f64 / 10.0);
    }
    let f = Filter::parse("k<3").unwrap();
    let p: Payload = [("k".to_string(), Value::Num(2.0))].into();
    assert!(f.matches(&p));
}

#[test]
fn deleted_points_never_come_back_and_compact_drops_them() {
    let dim = 8;
    let data = uniform(3000, dim, 21);
    let mut h = Hnsw::build(&data, dim, Metric::L2, HnswParams::default());
    // Delete every query's true nearest neighbours, so deletion matters for every query.
    let queries = uniform(50, dim, 22);
    let bf = BruteForce::new(&data, dim, Metric::L2);
    for q in queries.chunks(dim) {
        for (id, _) in bf.search(q, 3, None) {
            h.delete(id);
        }
    }
    for q in queries.chunks(dim) {
        let r = h.search(q, 10, 64, None);
        assert_eq!(r.len(), 10);
        assert!(r.iter().all(|(id, _)| !h.is_deleted(*id)));
    }
    let (c, old_ids) = h.compact();
    assert_eq!(c.len(), 3000 - h.num_deleted());
    for q in queries.chunks(dim) {
        assert!(c.search(q, 10, 64, None).iter().all(|(id, _)| !h.is_deleted(old_ids[*id as usize])));
    }
}

#[test]
fn incremental_add_matches_brute_force() {
    let dim = 8;
    let data = uniform(1500, dim, 31);
    let mut h = Hnsw::build(&data[..500 * dim], dim, Metric::L2, HnswParams::default());
    for v in data[500 * dim..].chunks(dim) {
        h.add(v);
    }
    let bf = BruteForce::new(&data, dim, Metric::L2);
    let q = uniform(100, dim, 32);
    let got: Vec<_> = q.chunks(dim).map(|x| h.search(x, 10, 64, None)).collect();
    let truth = bf.search_batch(&q, 10, None);
    assert!(recall(&got, &truth, 10) >= 0.95);
}
