//! `fmlab bench train`: time full training steps (forward, backward, clip, AdamW) of a preset on
//! synthetic tokens (fmlab_train::bench), recorded as a ledger run. Compare with
//! tools/bench_gpt2_torch.py in the same call (scripts/bench-cpu.sh, scripts/gpu-check.sh).

use anyhow::{Context, Result};
use clap::Args;
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::VarBuilder;
use fmlab_tensor::DType;

#[derive(Args)]
pub struct TrainArgs {
    /// Model preset (`fmlab model info`).
    #[arg(long, default_value = "gpt2-mini")]
    preset: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence (at most the preset's n_ctx).
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first (at least 2 with a CUDA graph: one eager, one captured).
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

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = Gpt2Config::preset(&a.preset).with_context(|| format!("--preset {}: unknown", a.preset))?;
    anyhow::ensure!(a.seq >= 1 && a.seq <= cfg.n_ctx, "--seq {}: must be in 1..={} (the preset's n_ctx)", a.seq, cfg.n_ctx);
    anyhow::ensure!(a.batch >= 1 && a.steps >= 1, "--batch {} --steps {}: both must be at least 1", a.batch, a.steps);
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

