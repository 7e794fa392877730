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
// `colsum16_final` (linear.cu) adds in a fixed order (deterministic). Grid (1, np / LM_BM): a block walks every column tile.

// gelu'(x) of the tanh form (gelu.cu `gelu_grad_f`): with t = tanh(x·(k + kc·x²)),
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

// The same outputs with pre made again instead of read (mlp_dgelu_rc_k, the default where x's
// width equals g's): pre = x·w1ᵀ + b1 by a second wgmma product beside dh's in every tile, in
// f32 (the forward's GEMM then writes gelu(pre) only and keeps no [n, hid] pre-activation).
// What it saves: the forward's writing of pre (2·n·hid bytes) and this pass's reading it back
// (the loads mlp_dgelu_k waits on), for n·hid·K more multiply-adds here.
//
// Block: 128 rows (MLR_BM), two consumer warpgroups of 64, each with its rows of x and g in
// registers (the A operands of both products, loaded once); a stage of the ring holds w1's and
// w2's tiles of the same 64 hidden columns (lm_pipeline, NW = 2, no resident tile). One
// accumulator pair a warpgroup: the two warpgroups' turns overlap products and epilogues.
// part: [np / 16, hid] f32, row p = the 16 rows of warp p % 8 of row tile p / 8, added in order
// by `colsum16_final`.
//
// Measured on the H100 (ncu, gpt2-mini's [32768, 256] → 1024, one call each): 82.5 µs with the
// two products in two groups (gelu''s terms made from pre while dh's runs), 93.5-94 waiting for
// both (MLR_SPLIT=0), against mlp_dgelu_k's ~100 plus the forward's pre written (its GEMM 46 µs
// without pre). Also tried, all 92-101 µs before the split: x's rows in shared memory (SS) with
// two stages; two accumulator pairs with 32-column tiles (four stages); the products of 64-column
// tiles double-buffered spilled 276 bytes. With its parts left out (FMLAB_CUDA_DEFINES, since
// removed; before the split): without the products 65 µs, without gelu' 80, with only the copies
// of w1's and w2's tiles 25 (every block streams both weights, 1 MB, from L2).
#define MLR_BM 128
#define MLR_STAGES 3
// MLR_SPLIT = 0 (FMLAB_CUDA_DEFINES): wait for both products before the gelu' terms.
#ifndef MLR_SPLIT
#define MLR_SPLIT 1
#endif
#define MLR_MAX_HID 4096 // b1's copy in shared memory (linear.rs `recompute_applies` checks it)
// dpre of a pair from pre (with b1) and h = dh/2 (g comes halved: exact), in nine instructions
// against gelu' and a product's eleven: (g·w2ᵀ) ⊙ gelu'(pre) = h·(1 + A) with
// A = t + x·(1 − t²)·(k + 3kc·x²) for the tanh form's t = tanh(x·(k + kc·x²)) (mlp_gelu_grad's
// terms, the halves folded into h). A needs pre only (mlp_dgelu_a), so it is made while dh's
// product still runs; then dpre = A·h + h.
__device__ __forceinline__ float mlp_dgelu_a(float x) {
    const float k = 0.7978845608028654f, kc = 0.7978845608028654f * 0.044715f;
    float x2 = x * x, th;
    float u = x * __fmaf_rn(kc, x2, k);
    asm("tanh.approx.f32 %0, %1;" : "=f"(th) : "f"(u));
    float w = x * __fmaf_rn(3.f * kc, x2, k), s = __fmaf_rn(-th, th, 1.f);
    return __fmaf_rn(w, s, th);
}
// d (+)= A·Bᵀ of a 16-column step s of K, A from registers, B the W tile at sw read K-major
// (stored [m, K]) or N-major (MN: stored [K, m]).
template <int MN> __device__ __forceinline__ void mlr_wgmma(float* d, const u32* a, u32 sw, int s) {
    if (MN) lm_wgmma_rs_t(d, a, lm_desc_mn(sw + s * 2048), s > 0);
    else lm_wgmma_rs(d, a, lm_desc(sw + (s >> 2) * (LM_BN * 128) + (s & 3) * 32), s > 0);
}
template <int KA, int MN1, int MN2> __device__ void mlp_dgelu_rc_k(const LmTmaMap* tmw1, const LmTmaMap* tmw2, const bf16* xm, const bf16* gm, const bf16* b1, u32 n, u32 hid, bf16* out, float* part) {
    __shared__ u32 b1s[MLR_MAX_HID / 2];
    const u32 TW = 2 * KA * LM_BN * 128; // a stage: w1's tile, then w2's
    const u32 r0 = blockIdx.y * MLR_BM, nt = hid / LM_BN;
    const LmRing ring = lm_pipeline<KA, 0, MLR_STAGES, 2, MN1, MN2>(tmw1, tmw1, r0, 0, nt, tmw2); // no resident tile (BM = 0)
    if (!ring.consumer) return;
    const int t = threadIdx.x & 3, g = (threadIdx.x & 31) >> 2;
    const u32 wg = threadIdx.x >> 7, w0 = r0 + 64 * wg + 16 * ((threadIdx.x >> 5) & 3); // the warp's first row
    const u32 row = w0 + g, prow = blockIdx.y * 8 + (threadIdx.x >> 5); // row and row + 8; the warp's row of part
    // This lane's column of the column sums' final butterfly (below): ix = 2jj + e.
    const u32 ix = 4 * (g & 1) + 2 * ((g >> 1) & 1) + (g >> 2), cix = 8 * (ix >> 1) + 2 * t + (ix & 1);
    for (u32 i = threadIdx.x; i < hid / 2; i += LM_THREADS) b1s[i] = *(const u32*)(b1 + 2 * i);
    u32 af[4 * KA][4], xf[4 * KA][4];
    load_a_global<64 * KA>(af, gm, 64 * KA, w0, n);
    load_a_global<64 * KA>(xf, xm, 64 * KA, w0, n);
    // g halved (exact for bf16 but in the subnormals), so that the product is dh/2 (mlp_dgelu_a).
#pragma unroll
    for (int s = 0; s < 4 * KA; ++s)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm("mul.rn.bf16x2 %0, %0, %1;" : "+r"(af[s][e]) : "r"(0x3F003F00u));
    asm volatile("bar.sync 1, %0;" ::"n"(LM_THREADS) : "memory"); // b1s written (the consumers only)
    float dp[32], dd[32]; // pre's and dh/2's 64 × 64 tiles
    for (u32 k = 0; k < nt; ++k) {
        const u32 st = k % MLR_STAGES, sw1 = ring.sw0 + st * TW, sw2 = sw1 + KA * LM_BN * 128, c0 = k * LM_BN;
        mbar_wait(ring.full0 + 8 * st, (k / MLR_STAGES) & 1);
        // Two groups, pre's first: its gelu' terms are made while dh's product runs.
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int s = 0; s < 4 * KA; ++s) mlr_wgmma<MN1>(dp, xf[s], sw1, s);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#pragma unroll
        for (int s = 0; s < 4 * KA; ++s) mlr_wgmma<MN2>(dd, af[s], sw2, s);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        u32 bv[8]; // b1's pairs of this thread's columns 8j + 2t, +1, while the products run
#pragma unroll
        for (int j = 0; j < 8; ++j) bv[j] = b1s[(c0 >> 1) + 4 * j + t];
#if MLR_SPLIT
        lm_wgmma_wait<1>();
#else
        lm_wgmma_wait<0>();
#endif
#pragma unroll
        for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(dp[i])::"memory");
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) dp[4 * j + e] = mlp_dgelu_a(dp[4 * j + e] + __uint_as_float(e & 1 ? bv[j] & 0xffff0000u : bv[j] << 16));
        lm_wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(dd[i])::"memory");
        mbar_arrive(ring.empty0 + 8 * st); // the producer may refill the stage
#pragma unroll
        for (int q = 0; q < LM_BN / 32; ++q) {
            float cs[8]; // column sums of this thread's two rows: cs[2jj + e] for column 32q + 8jj + 2t + e
#pragma unroll
            for (int i = 0; i < 8; ++i) cs[i] = 0.f;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                u32 a[4], x[4];
#pragma unroll
                for (int jj = 0; jj < 4; ++jj) {
                    const int j = 4 * q + jj;
                    const float h0 = dd[4 * j + 2 * r], h1 = dd[4 * j + 2 * r + 1];
                    const float g0 = __fmaf_rn(dp[4 * j + 2 * r], h0, h0), g1 = __fmaf_rn(dp[4 * j + 2 * r + 1], h1, h1);
                    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(a[jj]) : "f"(g1), "f"(g0));
                    cs[2 * jj] += g0;
                    cs[2 * jj + 1] += g1;
                }
                lm_quad_transpose(a, t, x);
                *(uint4*)(out + (u64)(row + 8 * r) * hid + c0 + 8 * (4 * q + t)) = make_uint4(x[0], x[1], x[2], x[3]);
            }
            // The warp's 16 rows per column: a butterfly over g that halves the values a lane
            // holds at each stage (lanes g, g ^ 1, g ^ 2, g ^ 4 keep complementary halves), seven
            // shuffles for eight columns; lane g ends with the sum of column ix, in a fixed order.
            const bool b0 = g & 1, b1_ = (g >> 1) & 1, b2 = g >> 2;
            float v1[4], v2[2];
#pragma unroll
            for (int i = 0; i < 4; ++i) v1[i] = (b0 ? cs[i + 4] : cs[i]) + __shfl_xor_sync(0xffffffffu, b0 ? cs[i] : cs[i + 4], 4);
#pragma unroll
            for (int i = 0; i < 2; ++i) v2[i] = (b1_ ? v1[i + 2] : v1[i]) + __shfl_xor_sync(0xffffffffu, b1_ ? v1[i] : v1[i + 2], 8);
            const float v3 = (b2 ? v2[1] : v2[0]) + __shfl_xor_sync(0xffffffffu, b2 ? v2[0] : v2[1], 16);
            part[(u64)prow * hid + c0 + 32 * q + cix] = v3;
        }
    }
}

#define MLP(KA) \
extern "C" __global__ void __launch_bounds__(LM_THREADS + 128, 1) mlp_dgelu_k##KA(const __grid_constant__ LmTmaMap tmg, const __grid_constant__ LmTmaMap tmw, const bf16* pre, u32 n, u32 hid, bf16* out, float* part) { mlp_dgelu_k<KA>(&tmg, &tmw, pre, n, hid, out, part); }
// Suffix: KA, then whether w1's and w2's tiles are read N-major (0/1 each), as _M1_M2.
#define MLP_RC(KA, M1, M2) \
extern "C" __global__ void __launch_bounds__(LM_THREADS + 128, 1) mlp_dgelu_rc_k##KA##_##M1##_##M2(const __grid_constant__ LmTmaMap tmw1, const __grid_constant__ LmTmaMap tmw2, const bf16* x, const bf16* g, const bf16* b1, u32 n, u32 hid, bf16* out, float* part) { mlp_dgelu_rc_k<KA, M1, M2>(&tmw1, &tmw2, x, g, b1, n, hid, out, part); }
MLP(1)
MLP(2)
MLP(3)
MLP(4)
#define MLP_RC_WIDTHS(M1, M2) MLP_RC(1, M1, M2) MLP_RC(2, M1, M2) MLP_RC(3, M1, M2) MLP_RC(4, M1, M2)
MLP_RC_WIDTHS(0, 0)
MLP_RC_WIDTHS(1, 0)
MLP_RC_WIDTHS(0, 1)
