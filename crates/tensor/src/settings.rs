//! The tensor engine's settings: every `FMLAB_*` variable is read through the one registry
//! (crate fmlab-settings, read once), and the kernel paths that benchmarks and tests switch from
//! code are the `Switch`es here, each with its setter. Nothing else in this crate reads the
//! environment for a setting.

pub use fmlab_settings::{enabled, on, present, string, Switch};

/// The fused classifier's Hopper kernels (FMLAB_CE_SM90).
pub(crate) static CE_SM90: Switch = Switch::new("FMLAB_CE_SM90");
/// The Hopper classifier's gradient pass makes dH in its loop (FMLAB_CE_DH).
pub(crate) static CE_DH: Switch = Switch::new("FMLAB_CE_DH");
/// The classifier's rows streamed through shared memory (`ce_stream`, FMLAB_CE_SMEM).
pub(crate) static CE_SMEM: Switch = Switch::new("FMLAB_CE_SMEM");
/// The Hopper MLP backward where it applies (FMLAB_MLP_SM90).
pub(crate) static MLP_SM90: Switch = Switch::new("FMLAB_MLP_SM90");
/// The Hopper MLP backward makes pre again instead of reading the forward's (FMLAB_MLP_RECOMPUTE).
pub(crate) static MLP_RECOMPUTE: Switch = Switch::new("FMLAB_MLP_RECOMPUTE");
/// The wgmma flash kernels for head_dim 32 on Hopper (FMLAB_FLASH_SM90).
pub(crate) static FLASH_SM90: Switch = Switch::new("FMLAB_FLASH_SM90");
/// Flash attention where its kernels take the inputs (FMLAB_FLASH; no setter).
pub(crate) static FLASH: Switch = Switch::new("FMLAB_FLASH");
/// Biases and GELU on cuBLASLt epilogues (FMLAB_EPILOGUE; no setter).
pub(crate) static EPILOGUE: Switch = Switch::new("FMLAB_EPILOGUE");
/// Mixed-precision weight gradients as f32 GEMMs, bias gradients from column sums (FMLAB_DW_SPLIT; no setter).
pub(crate) static DW_SPLIT: Switch = Switch::new("FMLAB_DW_SPLIT");
/// Bias gradients from the fused LayerNorm backward's column sums (FMLAB_LN_SUMS).
pub(crate) static LN_SUMS: Switch = Switch::new("FMLAB_LN_SUMS");

/// Whether the fused classifier uses the Hopper kernels (classifier_sm90.cu) where they apply
/// (Some(true)) or the cuBLASLt logits GEMM + a cross-entropy kernel (Some(false)); None restores
/// the default: on, unless FMLAB_CE_SM90=0. For benchmarks and tests that compare the two.
/// Process-wide.
///
/// On by default because it is faster, measured on the H100 (gpt2-mini, B=32 T=1024; eager
/// profile of the classifier per step): its two passes 1.16 + 1.88 ms against 1.56 (logits
/// GEMM) + 2.58 (`ce_stream`); the CUDA-graph step 19.8 / 20.0 ms against 20.9 / 20.9.
/// docs/benchmarks.md ("the classifier on the TMA unit" and "a stronger PyTorch baseline",
/// 2026-11-23) has the versions measured.
pub fn classifier_sm90(on: Option<bool>) {
    CE_SM90.set(on);
}

/// Whether the Hopper classifier's gradient pass also makes dH = g·W in its loop (Some(true))
/// or leaves it to a cuBLASLt GEMM that reads g back (Some(false)); None restores the default:
/// fused, unless FMLAB_CE_DH=0. Process-wide.
///
/// On by default because it is faster, measured on the H100 (gpt2-mini, B=32 T=1024, one call,
/// interleaved): the CUDA-graph step 19.2 / 19.2 ms against 19.6 / 19.6; per 8192-row chunk
/// (ncu) 731-735 µs against 448 for the gradient pass alone plus ~333 for the dH GEMM.
pub fn classifier_dh_fused(on: Option<bool>) {
    CE_DH.set(on);
}

/// Whether the fused classifier's cross-entropy kernel streams the rows of logits through
/// shared memory (Some(true): `ce_stream`, sm_90 and later, where two rows fit) or reads each
/// row twice from global memory (Some(false): `ce_fused`, the two-pass kernel); None restores the
/// default: streamed, unless FMLAB_CE_SMEM=0. For benchmarks and tests that compare the two.
/// Process-wide.
pub fn classifier_rows_in_shared_memory(on: Option<bool>) {
    CE_SMEM.set(on);
}

/// Whether `mlp_gelu`'s backward makes the hidden gradient and the first bias's gradient in one
/// Hopper kernel (mlp_sm90.cu) where it applies (Some(true)), or by cuBLASLt's DGELU epilogue and
/// a column sum (Some(false)); None restores the default: on, unless FMLAB_MLP_SM90=0. For
/// benchmarks and tests that compare the two. Process-wide.
pub fn mlp_sm90(on: Option<bool>) {
    MLP_SM90.set(on);
}

/// Whether `mlp_gelu` on Hopper keeps no pre-activation and its backward makes it again from x
/// (Some(true)), or keeps it (Some(false)); None restores the default: on, unless
/// FMLAB_MLP_RECOMPUTE=0. Applies to `mlp_gelu` calls made after it. Process-wide.
pub fn mlp_recompute(on: Option<bool>) {
    MLP_RECOMPUTE.set(on);
}

/// Whether head_dim-32 flash attention on an sm_90 GPU runs the wgmma kernels (Some(true)) or
/// flash.cu's mma.sync kernels (Some(false)); None restores the default: on, unless
/// FMLAB_FLASH_SM90=0. Both take the same arguments and write the same outputs. For benchmarks and
/// tests that compare the two.
pub fn flash_sm90(on: Option<bool>) {
    FLASH_SM90.set(on);
}

/// The GPU LayerNorm backward in one pass (`ln_bwd_dwdb`); no environment variable.
pub(crate) static LN_FUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether the GPU LayerNorm backward computes dx, dW and dB in one pass (`ln_bwd_dwdb`, the
/// default) or runs the row kernel and then the column reduction over x and g again (its twin);
/// for tests and benchmarks that compare the two. Process-wide.
pub fn layer_norm_backward_fused(on: bool) {
    LN_FUSED.store(on, std::sync::atomic::Ordering::Relaxed);
}
