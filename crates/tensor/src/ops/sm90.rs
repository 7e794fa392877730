//! The Hopper (sm_90) wgmma kernels' tile shapes that the classifier's and the MLP's kernels
//! share (hopper_gemm.cuh's loop): rows a block, the vocabulary tile and its stages.

/// The Hopper kernels' rows a block, vocabulary tile and its stages in shared memory (LM_BM,
/// LM_BN, LM_STAGES).
pub(crate) const SM90_ROWS: usize = 256;
pub(crate) const SM90_TILE_N: usize = 64;
pub(crate) const SM90_STAGES: usize = 3;

/// Dynamic shared memory of the Hopper classifier kernels at width c: H's tile (SM90_ROWS × c
/// bf16) and SM90_STAGES of W's (SM90_TILE_N rows), plus 1 KB to align them to the 128-byte
/// swizzle's 1024 bytes (225 KB at c = 256, of the 227 a block may have).
pub(crate) fn sm90_smem(c: usize) -> u32 {
    hopper_smem(SM90_ROWS, SM90_STAGES, c)
}

/// Dynamic shared memory of a Hopper loop (hopper_gemm.cuh) with `rows` rows of H and `stages`
/// W tiles at width c, plus 1 KB for the swizzle's alignment.
pub(crate) fn hopper_smem(rows: usize, stages: usize, c: usize) -> u32 {
    ((rows + stages * SM90_TILE_N) * c * 2 + 1024) as u32
}
