//! Model FLOPs utilization: achieved training FLOP/s over the device's dense bf16 peak.

use fmlab_tensor::Device;

/// H100 SXM dense bf16 tensor-core peak (989.4 TFLOP/s, NVIDIA datasheet); cuBLASLt reaches
/// ≈797 TFLOP/s on large GEMMs on the lent machine (GPU.md).
pub const H100_BF16_PEAK: f64 = 989.4e12;

/// `flops_per_token` × tokens/s over the peak; None on the CPU, whose peak we do not claim to know.
pub fn mfu(flops_per_token: f64, tok_s: f64, device: Device) -> Option<f64> {
    match device {
        Device::Cuda(_) => Some(flops_per_token * tok_s / H100_BF16_PEAK),
        Device::Cpu => None,
    }
}
