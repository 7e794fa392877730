// The GELU MLP's backward on Hopper (sm_90a; the GEMM loop of hopper_gemm.cuh, prepended): the
// hidden layer's gradient and its bias gradient in one pass,
//   dpre = (g·w2ᵀ) ⊙ gelu'(pre)  (tanh form), written in bf16,
//   db1 partials: Σ over each warp's 32 rows of dpre (its f32 values, before the rounding), per column.
// Against cuBLASLt's DGELU epilogue (the GEMM writing dpre) followed by `colsum16` reading dpre
// again for b1's gradient, dpre is read by nobody here: the bias gradient comes from registers.
//
// Shapes: G = g [n, K] bf16 (K = the MLP's output width, 64·KA), W = w2ᵀ [hid, K] bf16 (the second
// layer's weight as hidden × output, contiguous), both through TMA tensor maps; pre [n, hid] bf16
// (GELU's input, kept by the forward), hid a multiple of LM_BN. out [np, hid] bf16 with np = n
// rounded up to LM_BM (rows past n are written, as zeros: no row test on the stores); part
// [np / 32, hid] f32, row p = the 32 rows of warp p % 8 of row tile p / 8, which
// `colsum16_final` (reduce.cu) adds in a fixed order (deterministic). Grid (1, np / LM_BM): a block walks every column tile.

// gelu'(x) of the tanh form (layers.cu `gelu_grad_f`): with t = tanh(x·(k + kc·x²)),
// 0.5 + 0.5·t + 0.5·x·(1 − t²)·(k + 3kc·x²), k = sqrt(2/π), c = 0.044715; ten instructions, tanh
// by the special-function unit (tanh.approx.f32, relative error ~2^-11: dpre is rounded to bf16,
// 2^-8, after it).
__device__ __forceinline__ float mlp_gelu_grad(float x) {
    const float k = 0.7978845608028654f, kc = 0.7978845608028654f * 0.044715f;
    float x2 = x * x, th;
    float u = x * __fmaf_rn(kc, x2, k);
    asm("tanh.approx.f32 %0, %1;" : "=f"(th) : "f"(u));
    float w = __fmaf_rn(3.f * kc, x2, k), s = __fmaf_rn(-th, th, 1.f), hx = 0.5f * x;
    return __fmaf_rn(hx * s, w, __fmaf_rn(0.5f, th, 0.5f));
}
// Asks L2 for the 128-byte line at p (no register, no wait): pre's rows two tiles ahead, so that
// the epilogue's loads find them in L2 rather than DRAM.
__device__ __forceinline__ void mlp_prefetch(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Measured on the H100 (gpt2-mini's [32768, 256] × [1024, 256]ᵀ, ncu): ~100 µs, against cuBLASLt's
// DGELU GEMM at ~101 µs plus `colsum16`'s ~30 µs for b1's gradient. Its top stall is waiting
// for pre's loads (long_scoreboard; DRAM at ~43%): only the 8 consumer warps of a block load.
// Tried and no faster (within 5%): loads one half-tile ahead in registers (spills), pre's tiles
// copied into shared memory by cp.async a tile ahead (W's ring cut to two stages for the room),
// and a loop with three copies of the epilogue instead of five (fewer instruction-fetch stalls,
// but ptxas then serializes the wgmmas, C7514).
template <int KA> __device__ void mlp_dgelu_k(const LmTmaMap* tmg, const LmTmaMap* tmw, const bf16* pre, u32 n, u32 hid, bf16* out, float* part) {
    int t = threadIdx.x & 3, g = (threadIdx.x & 31) >> 2;
    u32 r0 = blockIdx.y * LM_BM;
    u32 row0, prow, pf; // this thread's first row; its warp's row of `part`; the row it prefetches
    auto init = [&] {
        u32 rows[4];
        lm_rows(rows, r0);
        row0 = rows[0];
        prow = blockIdx.y * 8 + (threadIdx.x >> 5);
        pf = row0 + 64 * (t >> 1) + 8 * (t & 1); // of the quad's 4 rows, the one this lane prefetches
        if (pf < n)
            for (u32 c = 0; c < 2 * LM_BN && c < hid; c += LM_BN) mlp_prefetch(pre + (u64)pf * hid + c);
    };
    auto epi = [&](const float* d, u32 c0) {
        if (pf < n && c0 + 2 * LM_BN < hid) mlp_prefetch(pre + (u64)pf * hid + c0 + 2 * LM_BN);
        // Two halves of 32 columns (q), each: pre's values for the thread's 4 rows (16 loads, all
        // issued before the math), dpre stored, and the half's column sums. Halves keep fewer
        // registers live than the whole tile: no spills.
#pragma unroll
        for (int q = 0; q < LM_BN / 32; ++q) {
            u32 pv[2][2][4]; // [sub][r][jj]: the pair (row g + 8r of block sub, columns 8(4q + jj) + 2t, +1)
#pragma unroll
            for (int sub = 0; sub < 2; ++sub)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    u32 row = row0 + 64 * sub + 8 * r;
                    const bf16* p = pre + (u64)row * hid + c0 + 32 * q + 2 * t;
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj) pv[sub][r][jj] = row < n ? *(const u32*)(p + 8 * jj) : 0u;
                }
            float cs[8]; // column sums of this thread's rows (f32, as the CPU sums them): cs[2jj + e] for column 8(4q + jj) + 2t + e
#pragma unroll
            for (int i = 0; i < 8; ++i) cs[i] = 0.f;
#pragma unroll
            for (int sub = 0; sub < 2; ++sub) {
                const float* ds = d + sub * (LM_BN / 2);
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    u32 a[4];
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj) {
                        int j = 4 * q + jj;
                        u32 x = pv[sub][r][jj];
                        float g0 = ds[4 * j + 2 * r] * mlp_gelu_grad(__uint_as_float(x << 16));
                        float g1 = ds[4 * j + 2 * r + 1] * mlp_gelu_grad(__uint_as_float(x & 0xffff0000u));
                        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(a[jj]) : "f"(g1), "f"(g0));
                        cs[2 * jj] += g0;
                        cs[2 * jj + 1] += g1;
                    }
                    u32 x[4];
                    lm_quad_transpose(a, t, x);
                    *(uint4*)(out + (u64)(row0 + 64 * sub + 8 * r) * hid + c0 + 8 * (4 * q + t)) = make_uint4(x[0], x[1], x[2], x[3]);
                }
            }
            // The warp's 32 rows per column: add over the 8 row groups g (lanes t, t + 4, ..., in
            // a fixed butterfly order), then the lanes of g = 0 write their 8 columns.
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                cs[i] += __shfl_xor_sync(0xffffffffu, cs[i], 4);
                cs[i] += __shfl_xor_sync(0xffffffffu, cs[i], 8);
                cs[i] += __shfl_xor_sync(0xffffffffu, cs[i], 16);
            }
            if (g == 0) {
                float* pp = part + (u64)prow * hid + c0 + 32 * q + 2 * t;
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) *(float2*)(pp + 8 * jj) = make_float2(cs[2 * jj], cs[2 * jj + 1]);
            }
        }
    };
    lm_loop<KA, 0>(tmg, tmw, r0, 0, hid / LM_BN, init, epi);
}

#define MLP(KA) \
extern "C" __global__ void __launch_bounds__(LM_THREADS + 128, 1) mlp_dgelu_k##KA(const __grid_constant__ LmTmaMap tmg, const __grid_constant__ LmTmaMap tmw, const bf16* pre, u32 n, u32 hid, bf16* out, float* part) { mlp_dgelu_k<KA>(&tmg, &tmw, pre, n, hid, out, part); }
MLP(1)
MLP(2)
MLP(3)
MLP(4)
