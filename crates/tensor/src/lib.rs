//! fmlab's tensor engine: `Tensor` (Arc: storage, layout, dtype, op), a small closed set of
//! primitive ops on CPU and CUDA, composite ops built from them, reverse-mode autograd, and the
//! fused ops, each a `CustomOp` (op.rs) in its own file under ops/.
//!
//! Errors: misuse of shapes or dtypes is a programmer bug and panics with a report naming the op
//! and the shapes; nothing here reads files or the network.

pub mod bench;
pub mod backend;
mod backward;
mod composite;
pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod layout;
pub mod op;
pub mod ops;
mod rng;
pub mod settings;
mod tensor;

pub use backend::BackendStorage;
pub use backward::sum_to;
pub use composite::rope_tables;
pub use cuda::gemm::gemm_autotune;
pub use op::{Backward, CustomNode, CustomOp, Fwd};
pub use dtype::{DType, WithDType};
pub use layout::Layout;
pub use ops::{adamw_update, adamw_update_all, adamw_update_all_dev, attention, attention_slow, cast_all, clip_coef, sum_squares_all, AdamItem, AttnMask};
pub use rng::Rng;
pub use tensor::{grad_enabled, no_grad, Device, NoGradGuard, Storage, Tensor, TensorId};
