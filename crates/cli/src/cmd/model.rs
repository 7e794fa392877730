//! `fmlab model info PRESET`.

use anyhow::{Context, Result};
use clap::Subcommand;
use fmlab_models::Gpt2Config;

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Print a preset's configuration and parameter count.
    Info { preset: String },
}

pub fn run(cmd: ModelCmd) -> Result<()> {
    match cmd {
        ModelCmd::Info { preset } => {
            let c = Gpt2Config::preset(&preset).with_context(|| format!("unknown preset `{preset}` (known: {})", Gpt2Config::PRESETS.join(", ")))?;
            let (v, t, d, l) = (c.vocab_size, c.n_ctx, c.n_embd, c.n_layer);
            let block = c.num_params() - v * d - t * d - 2 * d;
            println!("preset       {preset} (GPT-2: learned positions, pre-LN, GELU-tanh, tied embeddings)");
            println!("config       d_model {d}, layers {l}, heads {}, n_ctx {t}, vocab {v}", c.n_head);
            println!("parameters   {} ({:.2}M)", c.num_params(), c.num_params() as f64 / 1e6);
            println!("  wte        {} (tied with the LM head)", v * d);
            println!("  wpe        {}", t * d);
            println!("  blocks     {} ({} each)", block, block / l);
            println!("  ln_f       {}", 2 * d);
            println!("flops/token  {:.1}M (training, at T = n_ctx: 6·N_matmul + 12·L·d·T)", c.flops_per_token(t) / 1e6);
            Ok(())
        }
    }
}
