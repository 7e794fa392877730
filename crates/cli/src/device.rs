//! `--device auto|cpu|cuda[:N]` and `--precision auto|fp32|bf16`, resolved once per command.

use anyhow::{bail, Result};
use fmlab_tensor::{DType, Device};

/// `auto` uses cuda:0 when a GPU initializes and otherwise falls back to the CPU, saying why;
/// an explicit `cuda` that cannot start is an error naming what is missing.
pub fn resolve(flag: &str) -> Result<Device> {
    if flag == "auto" {
        let (d, why) = Device::auto();
        match (d, why) {
            (Device::Cpu, Some(why)) => eprintln!("device: auto → cpu (no usable GPU: {why})"),
            (d, _) => eprintln!("device: auto → {d} ({})", describe(d)),
        }
        return Ok(d);
    }
    let Some(d) = Device::parse(flag) else { bail!("--device {flag}: expected auto, cpu, cuda or cuda:N") };
    if let Err(e) = d.init() {
        bail!("--device {flag}: {e}");
    }
    if d.is_cuda() {
        eprintln!("device: {d} ({})", describe(d));
    }
    Ok(d)
}

fn describe(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => fmlab_tensor::cuda::device(i).map(|g| format!("{}, {}", g.name, g.arch)).unwrap_or_default(),
    }
}

/// The GPU's name and arch for the ledger (None on the CPU).
pub fn gpu_name(d: Device) -> Option<String> {
    d.is_cuda().then(|| describe(d))
}

/// Activation dtype: `auto` = bf16 mixed precision on a GPU, fp32 on the CPU.
pub fn precision(flag: &str, device: Device) -> Result<DType> {
    Ok(match flag {
        "auto" if device.is_cuda() => DType::BF16,
        "auto" | "fp32" | "f32" => DType::F32,
        "bf16" => DType::BF16,
        p => bail!("--precision {p}: expected auto, fp32 or bf16"),
    })
}

pub fn precision_name(d: DType) -> &'static str {
    if d == DType::BF16 { "bf16" } else { "fp32" }
}

/// Bytes in use on the device (live tensors, reserved, peaks) for logs and the ledger.
pub fn mem_json(d: Device) -> serde_json::Value {
    match d {
        Device::Cuda(i) => match fmlab_tensor::cuda::device(i) {
            Ok(g) => {
                let s = g.mem_stats();
                serde_json::json!({"allocated": s.allocated, "reserved": s.reserved, "peak": s.peak, "peak_reserved": s.peak_reserved})
            }
            Err(_) => serde_json::Value::Null,
        },
        Device::Cpu => serde_json::Value::Null,
    }
}

/// Turns the CUDA backend's errors raised inside tensor ops (out of memory, a failed launch)
/// into a plain `error:` line and exit status 1 instead of a panic report.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<String>().cloned().or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        let ours = ["out of GPU memory", "CUDA driver error", "cuBLASLt error", "NVRTC could not compile", "CUDA library", "no CUDA device"];
        if ours.iter().any(|p| msg.starts_with(p)) {
            eprintln!("error: {msg}");
            std::process::exit(1);
        }
        default(info);
    }));
}
