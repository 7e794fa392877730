//! Which keys each query may attend to: the mask that `attention` and its kernels share.

use crate::Tensor;

/// Which keys each query may attend to.
#[derive(Clone, Debug)]
pub enum AttnMask {
    None,
    /// Query i (of T) sees keys j <= i + (S - T): the usual causal mask, also right for a query
    /// block appended after S - T cached keys.
    Causal,
    /// u8 [B, S]: 1 = a real key, 0 = padding.
    KeyPadding(Tensor),
    /// u8 broadcastable to [B, H, T, S]: 1 = may attend.
    Custom(Tensor),
}
