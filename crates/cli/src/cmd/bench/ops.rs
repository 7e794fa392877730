//! `fmlab bench ops`: the kernel benchmarks of `fmlab_tensor::bench` on a GPU, as one table.

use anyhow::Result;
use clap::Args;
use fmlab_tensor::bench::OpsBench;

#[derive(Args)]
pub struct OpsArgs {
    /// Rows (B·T) of the activation-shaped inputs.
    #[arg(long, default_value_t = 32768)]
    rows: usize,
    /// Model width C (LayerNorm width; the MLP is 4C).
    #[arg(long, default_value_t = 256)]
    width: usize,
    /// Timed calls per op (after 2 untimed).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// cuda or cuda:N (the CPU engine is the reference).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Only ops whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

impl OpsArgs {
    fn validate(self) -> Result<OpsBench> {
        let device = crate::device::resolve(&self.device)?;
        anyhow::ensure!(device.is_cuda(), "--device {}: bench ops measures a GPU (the CPU engine is its reference)", self.device);
        anyhow::ensure!(self.rows > 0 && self.width >= 8 && self.width % 8 == 0, "--rows {} --width {}: rows must be positive and the width a positive multiple of 8 (8 heads)", self.rows, self.width);
        anyhow::ensure!(self.iters > 0, "--iters must be positive");
        Ok(OpsBench { rows: self.rows, width: self.width, iters: self.iters, device, only: self.only })
    }
}

pub fn run(a: OpsArgs) -> Result<()> {
    let rows = fmlab_tensor::bench::ops(&a.validate()?);
    println!("| op | shape | ms/call | throughput | max rel. error vs CPU |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let err = if r.err.is_nan() { "(cuda_ops test)".to_string() } else { format!("{:.1e}", r.err) };
        println!("| {} | {} | {:.3} | {} | {err} |", r.name, r.shape, r.ms, r.rate);
    }
    Ok(())
}
