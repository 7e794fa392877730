//! `fmlab bench train`: time full training steps (forward, backward, clip, AdamW) of a preset on
//! synthetic tokens. Compare with tools/bench_gpt2_torch.py in the same run (scripts/bench-cpu.sh).


use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::VarBuilder;
use fmlab_tensor::DType;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Training-step throughput.
    Train(TrainBench),
    /// GPU kernels at a training step's shapes: ms, GB/s or TFLOP/s, error vs the CPU engine.
    Ops(crate::cmd::bench_ops::OpsBench),
    /// HNSW: recall@10 vs QPS on a real dataset, build time, memory, filter selectivity sweep.
    Ann(AnnBench),
}

#[derive(Args)]
pub struct AnnBench {
    /// fashion-mnist-784 (L2; train as base, test as queries) or glove-50 (cosine; every 40th
    /// row held out as a query).
    #[arg(long)]
    dataset: String,
    #[arg(long, value_delimiter = ',', default_value = "10,20,40,80,160,320")]
    ef: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    m: usize,
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Number of queries (the first N of the query set).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Also sweep filter selectivity (100%, 10%, 1%, 0.1%) at this ef.
    #[arg(long)]
    filter_ef: Option<usize>,
}

#[derive(Args)]
pub struct TrainBench {
    #[arg(long, default_value = "gpt2-mini")]
    preset: String,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto (bf16 mixed precision on a GPU, fp32 on the CPU), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    precision: String,
    /// auto (on for a GPU unless FMLAB_CUDA_PROFILE is set), on or off: capture the whole step
    /// (forward, backward, clip, AdamW) once as a CUDA graph and replay it.
    #[arg(long, default_value = "auto")]
    cuda_graph: String,
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Train(a) => bench_train(a),
        BenchCmd::Ann(a) => bench_ann(a),
        BenchCmd::Ops(a) => crate::cmd::bench_ops::bench_ops(a),
    }
}

/// (base, queries, dim, metric) of a benchmark dataset from the asset cache.
pub fn ann_dataset(name: &str, nq: usize) -> Result<(Vec<f32>, Vec<f32>, usize, fmlab_index::Metric)> {
    use fmlab_index::vectors::read_vectors;
    let cache = crate::assets::cache_dir();
    let need = |p: std::path::PathBuf, asset: &str| -> Result<std::path::PathBuf> {
        anyhow::ensure!(p.is_file(), "{} is missing; run `scripts/fetch-assets.sh {asset}`", p.display());
        Ok(p)
    };
    match name {
        "fashion-mnist-784" => {
            let (base, dim) = read_vectors(&need(cache.join("fashion-mnist/train-images-idx3-ubyte"), "fashion-mnist")?)?;
            let (q, _) = read_vectors(&need(cache.join("fashion-mnist/t10k-images-idx3-ubyte"), "fashion-mnist")?)?;
            let nq = nq.min(q.len() / dim);
            Ok((base, q[..nq * dim].to_vec(), dim, fmlab_index::Metric::L2))
        }
        "glove-50" => {
            let (all, dim) = read_vectors(&need(cache.join("glove/glove_6B_50d_emb.npy"), "glove")?)?;
            let (mut base, mut q) = (Vec::new(), Vec::new());
            for (i, row) in all.chunks(dim).enumerate() {
                if i % 40 == 0 { q.extend_from_slice(row) } else { base.extend_from_slice(row) }
            }
            let nq = nq.min(q.len() / dim);
            q.truncate(nq * dim);
            Ok((base, q, dim, fmlab_index::Metric::Cosine))
        }
        d => anyhow::bail!("--dataset {d}: expected fashion-mnist-784 or glove-50"),
    }
}

fn bench_ann(a: AnnBench) -> Result<()> {
    use fmlab_index::bench;
    let (base, q, dim, metric) = ann_dataset(&a.dataset, a.queries)?;
    let (n, nq) = (base.len() / dim, q.len() / dim);
    let b = bench::build(&base, &q, dim, metric, a.m, a.ef_construction);
    eprintln!("{}: {n} base × {dim}, {nq} queries, {metric:?}; exact ground truth in {:.1}s", a.dataset, b.truth_seconds);
    println!("fmlab {}: build {:.2}s ({} threads), M {} ef_construction {}, index memory {:.1} MB, kernel {}", a.dataset, b.build_seconds, rayon::current_num_threads(), a.m, a.ef_construction, b.index.memory_bytes() as f64 / 1e6, b.index.kernel());
    println!("| ef | recall@10 | QPS 1 thread | QPS {} threads |", rayon::current_num_threads());
    println!("|---|---|---|---|");
    let rows: Vec<String> = bench::ef_sweep(&b, &q, dim, &a.ef).iter().map(|r| format!("| {} | {:.4} | {:.0} | {:.0} |", r.ef, r.recall, r.qps_1, r.qps_all)).collect();
    println!("{}", rows.join("\n"));
    if let Some(ef) = a.filter_ef {
        println!("filter sweep at ef {ef}:");
        println!("| selectivity | plan | recall@10 | QPS 1 thread |");
        println!("|---|---|---|---|");
        let rows: Vec<String> = bench::filter_sweep(&b, &base, &q, dim, metric, ef).iter().map(|r| format!("| {}% | {:?} | {:.4} | {:.0} |", r.percent, r.plan, r.recall, r.qps_1)).collect();
        println!("{}", rows.join("\n"));
    }
    Ok(())
}

fn bench_train(a: TrainBench) -> Result<()> {
    let cfg = Gpt2Config::preset(&a.preset).with_context(|| format!("--preset {}: unknown", a.preset))?;
    anyhow::ensure!(a.seq <= cfg.n_ctx, "--seq {} exceeds n_ctx {}", a.seq, cfg.n_ctx);
    let device = crate::device::resolve(&a.device)?;
    let precision = crate::device::precision(&a.precision, device)?;
    let vb = VarBuilder::new(DType::F32, 0);
    let mut model = Gpt2::load(&vb, &cfg)?;
    vb.to_device(device);
    model.compute_dtype = precision;
    let vars = vb.vars();
    let use_graph = match a.cuda_graph.as_str() {
        "auto" => device.is_cuda() && !fmlab_tensor::cuda::profile::enabled(),
        "on" => {
            anyhow::ensure!(device.is_cuda(), "--cuda-graph on needs a GPU (device is {device})");
            true
        }
        "off" => false,
        o => anyhow::bail!("--cuda-graph {o}: expected auto, on or off"),
    };
    let t = fmlab_train::bench::time_gpt2_steps(&model, vars, cfg.vocab_size, a.batch, a.seq, a.steps, a.warmup, use_graph, device)?;
    let (mut times, mut host, mut gpu, last_loss) = (t.times, t.host, t.gpu, t.last_loss);
    gpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let gpu_median = gpu.get(gpu.len() / 2).copied();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    host.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let host_median = host[host.len() / 2];
    let tokens = (a.batch * a.seq) as f64;
    // Ledger: runs/bench-<preset>-<time>/ with provenance and the result.
    let dir = std::path::PathBuf::from("runs").join(format!("bench-{}-{}", a.preset, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)));
    std::fs::create_dir_all(&dir)?;
    let cfg_json = serde_json::to_string_pretty(&serde_json::json!({"preset": a.preset, "model": cfg, "batch": a.batch, "seq": a.seq, "steps": a.steps, "warmup": a.warmup}))?;
    fmlab_train::ledger::write_file(&dir.join("config.json"), &cfg_json)?;
    fmlab_train::ledger::write_run_info(&dir, "bench train", &cfg_json, 0, device, crate::checkpoint::git_commit(), crate::device::gpu_name(device))?;
    let mem = crate::device::mem_json(device);
    let mfu = fmlab_train::mfu::mfu(cfg.flops_per_token(a.seq), tokens / median, device);
    fmlab_train::ledger::write_final(&dir, serde_json::json!({"cuda_graph": use_graph, "step_median_s": median, "step_min_s": times[0], "host_enqueue_median_s": host_median, "gpu_step_median_s": gpu_median, "tok_s": tokens / median, "flops_per_token": cfg.flops_per_token(a.seq), "device": device.to_string(), "precision": crate::device::precision_name(precision), "mfu": mfu, "memory": mem}))?;
    let peak = mem.get("peak").and_then(|v| v.as_u64()).map(|b| format!(", peak GPU memory {:.2} GiB (in use: live tensors and CUDA-graph memory; reserved {:.2} GiB)", b as f64 / (1u64 << 30) as f64, mem["peak_reserved"].as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64)).unwrap_or_default();
    println!(
        "fmlab  preset {} on {device} {}{} B={} T={} threads={}: step median {:.1} ms (min {:.1}; host enqueue {:.1} ms{}), {:.0} tok/s, {:.2} GFLOP/s (6N+12LdT formula){}{peak}, loss {:.3}",
        a.preset,
        crate::device::precision_name(precision),
        if use_graph { " cuda-graph" } else { "" },
        a.batch,
        a.seq,
        rayon::current_num_threads(),
        median * 1e3,
        times[0] * 1e3,
        host_median * 1e3,
        gpu_median.map(|g| format!("; GPU span {:.1} ms", g * 1e3)).unwrap_or_default(),
        tokens / median,
        cfg.flops_per_token(a.seq) * tokens / median / 1e9,
        mfu.map(|m| format!(", MFU {:.1}% of 989 TFLOP/s", m * 100.0)).unwrap_or_default(),
        last_loss
    );
    let prof = fmlab_tensor::cuda::profile::report();
    if !prof.is_empty() {
        let total: f64 = prof.iter().map(|r| r.2).sum();
        println!("per-kernel time over {} timed steps (FMLAB_CUDA_PROFILE: GPU time between events around each launch):", a.steps);
        println!("| kernel | calls/step | ms/step | share |");
        println!("|---|---|---|---|");
        for (k, n, t) in prof.iter().take(60) {
            println!("| {k} | {:.0} | {:.2} | {:.1}% |", *n as f64 / a.steps as f64, t * 1e3 / a.steps as f64, 100.0 * t / total);
        }
        if let fmlab_tensor::Device::Cuda(d) = device {
            println!("allocator: {:?}", fmlab_tensor::cuda::device(d)?.mem_stats());
        }
    }
    Ok(())
}

