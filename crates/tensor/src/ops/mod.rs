//! The fused ops, one file each: its `CustomOp` (CPU forward, CUDA launch, backward), the public
//! `Tensor` method that picks it or its `_slow` twin, and the twin itself, composed of primitives,
//! that the tests hold it to. Kernel sources are in cuda/kernels/.
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

pub use attention::{attention, attention_slow};
pub use mask::AttnMask;
pub use mlp::MlpGelu;
pub use multi_tensor::{adamw_update, adamw_update_all, adamw_update_all_dev, cast_all, clip_coef, sum_squares_all, AdamItem};
