//! The fused ops, one file each: its `CustomOp` (CPU forward, CUDA launch, backward), the public
//! `Tensor` method that picks it or its `_slow` twin, and the twin itself, composed of primitives,
//! that the tests hold it to. Each op's CUDA source sits beside it (gelu.rs, gelu.cu) as a kernel
//! `Module` (cuda/kernel.rs), listed in `MODULES`.
//!
//! - `cross_entropy`, `softmax` (scaled, causal), `layer_norm` (+ the residual add), `gelu`
//! - `linear` and `mlp` (bias and GELU on cuBLASLt epilogues, the Hopper MLP backward)
//! - `classifier` (LM head + cross-entropy in row chunks), `flash` (flash attention) behind
//!   `attention`, whose mask is `mask`
//! - `multi_tensor`: the optimizer step's kernels (AdamW, gradient norm, casts); no backward
//!
//! Files here import the core and each other downwards only (classifier → linear,
//! cross_entropy; mlp → linear, gelu, sm90; attention → flash → mask).

pub(crate) mod attention;
pub(crate) mod classifier;
pub(crate) mod cross_entropy;
pub(crate) mod flash;
pub(crate) mod gelu;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod mask;
pub(crate) mod mlp;
pub(crate) mod multi_tensor;
pub(crate) mod sm90;
pub(crate) mod softmax;

/// The fused ops' kernel modules, compiled with the core's when a device starts.
pub(crate) const MODULES: &[&crate::cuda::kernel::Module] = &[
    &cross_entropy::KERNELS,
    &classifier::KERNELS,
    &classifier::KERNELS_SM90,
    &softmax::KERNELS,
    &layer_norm::KERNELS,
    &gelu::KERNELS,
    &linear::KERNELS,
    &mlp::KERNELS_SM90,
    &flash::KERNELS,
    &flash::KERNELS_SM90,
    &multi_tensor::KERNELS,
];

pub use attention::{attention, attention_slow};
pub use mask::AttnMask;
pub use mlp::MlpGelu;
pub use multi_tensor::{adamw_update, adamw_update_all, adamw_update_all_dev, cast_all, clip_coef, sum_squares_all, AdamItem};
