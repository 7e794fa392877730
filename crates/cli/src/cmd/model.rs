//! `fmlab model info [PRESET]`: one preset's configuration, or a table of them all.

use anyhow::{Context, Result};
use clap::Subcommand;
use fmlab_models::Gpt2Config;

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Print a preset's configuration and parameter count (no PRESET: list every preset).
    Info {
        /// gpt2-mini, cpu-small, cpu-tiny or gpt2.
        preset: Option<String>,
    },
}

pub fn run(cmd: ModelCmd) -> Result<()> {
    match cmd {
        ModelCmd::Info { preset: None } => {
            println!("| preset | d_model | layers | heads | n_ctx | parameters (GPT-2 vocabulary) |");
            println!("|---|---|---|---|---|---|");
            for p in Gpt2Config::PRESETS {
                let c = Gpt2Config::preset(p).expect("a listed preset");
                println!("| {p} | {} | {} | {} | {} | {:.2}M |", c.n_embd, c.n_layer, c.n_head, c.n_ctx, c.num_params() as f64 / 1e6);
            }
            Ok(())
        }
        ModelCmd::Info { preset: Some(preset) } => {
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
