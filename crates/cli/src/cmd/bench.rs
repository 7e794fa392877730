//! `fmlab bench train`: time full training steps (forward, backward, clip, AdamW) of a preset on
//! synthetic tokens. Compare with tools/bench_gpt2_torch.py in the same run (scripts/bench-cpu.sh).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use fmlab_models::{Gpt2, Gpt2Config};
use fmlab_nn::optim::default_decay;
use fmlab_nn::{clip_grad_norm, AdamW, AdamWConfig, VarBuilder};
use fmlab_tensor::{DType, Rng, Tensor};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Training-step throughput.
    Train(TrainBench),
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
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    let BenchCmd::Train(a) = cmd;
    let cfg = Gpt2Config::preset(&a.preset).with_context(|| format!("--preset {}: unknown", a.preset))?;
    anyhow::ensure!(a.seq <= cfg.n_ctx, "--seq {} exceeds n_ctx {}", a.seq, cfg.n_ctx);
    let vb = VarBuilder::new(DType::F32, 0);
    let model = Gpt2::load(&vb, &cfg)?;
    let vars = vb.vars();
    let vt: Vec<Tensor> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(vars, AdamWConfig { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }, default_decay);
    let mut rng = Rng::new(1);
    let mut ids = || -> Tensor {
        let v: Vec<i32> = (0..a.batch * a.seq).map(|_| rng.below(cfg.vocab_size) as i32).collect();
        Tensor::from_vec(v, &[a.batch, a.seq])
    };
    let mut times = Vec::new();
    let mut last_loss = 0.0;
    for i in 0..a.warmup + a.steps {
        let (x, y) = (ids(), ids());
        let t = Instant::now();
        let loss = model.loss(&x, &y, None);
        loss.backward();
        clip_grad_norm(&vt, 1.0);
        opt.step();
        opt.zero_grad();
        last_loss = loss.item();
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let tokens = (a.batch * a.seq) as f64;
    println!(
        "fmlab  preset {} B={} T={} threads={}: step median {:.1} ms (min {:.1}), {:.0} tok/s, {:.2} GFLOP/s (6N+12LdT formula), loss {:.3}",
        a.preset,
        a.batch,
        a.seq,
        rayon::current_num_threads(),
        median * 1e3,
        times[0] * 1e3,
        tokens / median,
        cfg.flops_per_token(a.seq) * tokens / median / 1e9,
        last_loss
    );
    Ok(())
}
