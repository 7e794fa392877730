//! fmlab's tensor engine: `Tensor` (Arc: storage, layout, dtype, op), a small closed set of
//! primitive ops on CPU, composite ops built from them, and reverse-mode autograd.
//!
//! Errors: misuse of shapes or dtypes is a programmer bug and panics with a report naming the op
//! and the shapes; nothing here reads files or the network.

mod backward;
mod classifier;
pub mod cuda;
mod fused;
mod fused_layers;
mod flash;
mod linear;
pub mod cpu;
pub mod dtype;
pub mod layout;
pub mod op;
pub mod ops;
mod rng;
mod switch;
mod tensor;

pub use backward::sum_to;
pub use classifier::{classifier_dh_fused, classifier_rows_in_shared_memory, classifier_sm90};
pub use flash::flash_sm90;
pub use linear::{mlp_recompute, mlp_sm90};
pub use cuda::gemm::gemm_autotune;
pub use dtype::{DType, WithDType};
pub use fused_layers::layer_norm_backward_fused;
pub use layout::Layout;
pub use ops::{attention, attention_slow, rope_tables, AttnMask};
pub use rng::Rng;
pub use fused::{adamw_update, adamw_update_all, adamw_update_all_dev, cast_all, clip_coef, sum_squares_all, AdamItem};
pub use tensor::{grad_enabled, no_grad, Device, NoGradGuard, Storage, Tensor, TensorId};
