//! Streams and events on the GPU (crates/tensor/src/cuda/stream.rs): work on a second stream
//! gives the same values as on the device's own, events order two streams and time GPU work, a
//! block used on another stream is not reused before that stream is done with it, and a graph
//! can be captured and replayed on a side stream. Needs a GPU: `scripts/gpu-check.sh run tests`
//! runs these with `--ignored`.

use fmlab_tensor::{cuda, DType, Device, Rng, Tensor};

fn gpu() -> std::sync::Arc<cuda::CudaDevice> {
    Device::Cuda(0).init().unwrap_or_else(|e| panic!("these tests need a GPU: {e}"));
    cuda::device(0).unwrap()
}

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut Rng::new(seed))
}

/// Work long enough (tens of ms) that the host's next steps certainly happen while it runs:
/// `n` chained 2048² f32 GEMMs reading `x` (each ≈ 0.1 ms on an H100 without TF32; n = 300).
fn long_work(x: &Tensor, n: usize) -> Tensor {
    let mut y = x.clone();
    for _ in 0..n {
        y = x.matmul(&y).affine(1.0 / 64.0, 0.0);
    }
    y
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn work_on_a_side_stream_equals_the_default_stream_and_events_order_it() {
    let dev = gpu();
    let (a, b) = (rnd(&[512, 384], 1), rnd(&[384, 256], 2));
    let want = a.matmul(&b).relu().sum_all().to_vec_f64()[0];
    let (ga, gb) = (a.to_device(Device::Cuda(0)), b.to_device(Device::Cuda(0)));
    let side = dev.new_stream().unwrap();
    assert_ne!(side.id(), 0);
    // Produced on the side stream...
    let c = side.run(|| {
        assert_eq!(dev.current_stream().id(), side.id(), "run makes the stream current");
        ga.matmul(&gb)
    });
    assert_eq!(dev.current_stream().id(), 0, "the device's own stream is current again after run");
    // ...consumed on the default stream once it has waited for the side stream's event.
    dev.default_stream().wait(&side.record().unwrap()).unwrap();
    c.record_stream(&dev.default_stream());
    let got = c.relu().sum_all().to_vec_f64()[0];
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "side-stream result {got} vs CPU {want}");
    // The same op on the default stream gives the same bits (same kernels, same order).
    let d = ga.matmul(&gb);
    assert_eq!(c.to_vec_f64(), d.to_vec_f64());
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn events_time_gpu_work_and_tell_when_it_is_done() {
    let dev = gpu();
    let x = rnd(&[2048, 2048], 3).to_device(Device::Cuda(0)).affine(1.0 / 45.0, 0.0);
    let s = dev.current_stream();
    let start = s.record().unwrap();
    let y = long_work(&x, 300);
    let end = s.record().unwrap();
    // The host got here long before the GPU finished (enqueueing is asynchronous).
    assert!(!end.is_complete().unwrap(), "300 GEMMs of 2048² finished before the host could ask: the work was not asynchronous");
    let ms = start.elapsed_ms(&end).unwrap();
    assert!(end.is_complete().unwrap(), "elapsed_ms waits for both events");
    // 300 × 2·2048³ FLOP = 5.2 TFLOP; an H100 does that in f32 (no TF32) in about 100 ms.
    assert!(ms > 5.0 && ms < 5000.0, "300 GEMMs timed at {ms} ms");
    assert!(y.sum_all().to_vec_f64()[0].is_finite());
    eprintln!("events: 300 f32 GEMMs 2048³ in {ms:.1} ms of GPU time ({:.1} TFLOP/s)", 300.0 * 2.0 * 2048f64.powi(3) / (ms as f64 * 1e-3) / 1e12);
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn a_tensor_used_on_another_stream_is_not_reused_before_that_stream_is_done() {
    let dev = gpu();
    let side = dev.new_stream().unwrap();
    let x = rnd(&[2048, 2048], 4).to_device(Device::Cuda(0)).affine(1.0 / 45.0, 0.0);
    dev.synchronize().unwrap();
    let want = long_work(&x, 300).to_vec_f64();
    let before = dev.mem_stats().allocated;
    // The side stream reads x (after the default stream made it) for tens of ms...
    side.wait_stream(&dev.default_stream()).unwrap();
    let y = side.run(|| long_work(&x, 300));
    x.record_stream(&side);
    let x_bytes = 2048 * 2048 * 4;
    drop(x);
    // ...so x's block must stay out of the cache: still counted in use, and a new tensor of the
    // same size on the default stream, written at once, must land elsewhere.
    let mid = dev.mem_stats().allocated;
    let z = Tensor::full_on(7.0, &[2048, 2048], DType::F32, Device::Cuda(0));
    assert!(mid >= before + x_bytes, "x's block left the in-use count while the side stream still reads it ({before} -> {mid}; y alone adds {x_bytes})");
    let got = side.run(|| y.to_vec_f64());
    assert_eq!(got, want, "the side stream's result changed: x's memory was overwritten while it read it");
    assert_eq!(z.to_vec_f64()[0], 7.0);
    // Once the side stream has passed, the block is free again.
    side.synchronize().unwrap();
    drop((y, z));
    let _w = Tensor::zeros_on(&[4], DType::F32, Device::Cuda(0)); // an allocation collects pending blocks
    assert!(dev.mem_stats().allocated < mid, "the block was never released ({} >= {mid})", dev.mem_stats().allocated);
}

#[test]
#[ignore = "needs a GPU (scripts/gpu-check.sh)"]
fn a_graph_captured_on_a_side_stream_replays_there() {
    let dev = gpu();
    let side = dev.new_stream().unwrap();
    let inp = Tensor::zeros_on(&[64, 64], DType::F32, Device::Cuda(0));
    let w = rnd(&[64, 64], 5).to_device(Device::Cuda(0));
    dev.synchronize().unwrap();
    let (graph, out) = side.run(|| dev.capture(|| inp.matmul(&w).tanh().sum_all())).unwrap();
    for seed in [6, 7] {
        let v = rnd(&[64, 64], seed);
        let want = v.matmul(&w.to_device(Device::Cpu)).tanh().sum_all().to_vec_f64()[0];
        side.run(|| {
            inp.overwrite(&v.to_device(Device::Cuda(0)));
            graph.replay().unwrap();
        });
        let got = side.run(|| out.to_vec_f64()[0]);
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "replay on the side stream: {got} vs CPU {want}");
    }
}
