// The fused classifier on Hopper (sm_90a: wgmma): the logits H·Wᵀ of an LM head are made tile by
// tile in registers and never written. Two passes over the vocabulary, each a GEMM with its
// epilogue in registers:
//   lmce_lse:  per (row, vocab split) the running max and sum of exp of the logits (online, in
//              log2 units), and the target's logit where this split holds it;
//   lmce_combine: per row the log-sum-exp (log2 units) and the loss, lse − x[target];
//   lmce_grad: the logits again, and the logits' gradient (softmax − onehot)·scale written in bf16
//              for the two cuBLASLt GEMMs that make dH and dW (the one-hot part, one value a
//              row, by lmce_patch after it); lmce_grad_dh, the default, also makes dH itself.
// Against the unfused path (a cuBLASLt GEMM writing bf16 logits, then `ce_fused` reading them
// twice and writing the gradient over them) the logits never go through memory: the classifier
// moves the gradient once instead of the logits three times. The logits are also not rounded to
// bf16 before the softmax (f32 accumulators throughout).
//
// Status: correct (cuda_ops `hopper_classifier_matches_cpu`) and the default on Hopper: with
// its operands copied by the TMA unit it is faster than the unfused path on the H100 (its two
// passes 1.16 + 1.88 ms a gpt2-mini step against 1.56 + 2.58; classifier.rs has the step). With
// the copies issued as cp.async by a producer warpgroup it had been level (1.90 + 2.53 ms);
// docs/benchmarks.md (sessions 11, 12) has each version.
//
// The GEMM loop, its shared-memory layout and accumulator layout: hopper_gemm.cuh (prepended).
//
// Shapes: H [n, K], W [vp, K] (vp a multiple of LM_BN, rows past the real vocabulary v are zeros
// and are masked), targets [n] i32 (-1: ignored row). Grid (vocabulary splits, row tiles).

// The loss pass takes its first 64-row block's A operand from registers (lm_issue): its loop is
// bound by shared-memory reads (ncu: mio_throttle), both operands of both blocks otherwise.
// Measured on the H100 (gpt2-mini, eager profile, one call): 1.26 → 1.16 ms a step. The
// gradient pass has no registers to spare for it (ptxas spills 272 bytes). LM_LSE_RS=0 (via
// FMLAB_CUDA_DEFINES) turns it off.
#ifndef LM_LSE_RS
#define LM_LSE_RS 1
#endif
#define LM_LOG2E 1.4426950408889634f
#define LM_LN2 0.6931471805599453f
#define LM_NEG_INF __int_as_float(0xff800000)

// x[target] per row: a warp a row, f32 dot products of bf16 H[row] and W[target] (0 for ignored
// rows). Separate from the GEMM passes, whose epilogues would otherwise test every logit's
// column against the target.
extern "C" __global__ void lmce_target(const bf16* h, u32 ldh, const bf16* w, u32 ldw, const int* tgt, u32 n, u32 k, float* tl) {
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= n) return;
    int ti = tgt[row];
    float acc = 0.f;
    if (ti >= 0) {
        for (u32 c = lane * 8; c < k; c += 256) {
            uint4 a = *(const uint4*)(h + (u64)row * ldh + c), b = *(const uint4*)(w + (u64)ti * ldw + c);
            const u32 av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                acc = __fmaf_rn(__uint_as_float(av[e] << 16), __uint_as_float(bv[e] << 16), acc);
                acc = __fmaf_rn(__uint_as_float(av[e] & 0xffff0000u), __uint_as_float(bv[e] & 0xffff0000u), acc);
            }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) tl[row] = acc;
}

// Pass 1: per row and split, (m, l) with m the max of x·log2e over the split's real columns and
// l = Σ exp2(x·log2e − m). Each thread keeps its own (m, l) over its columns (no shuffles per
// tile); the four threads of a row are combined once, at the end (lmce_lse_k).
template <bool EDGE> __device__ __forceinline__ void lmce_lse_tile(const float* d, u32 c0, u32 v, int t, float* m, float* l) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        // Columns past the vocabulary (padding, in the last tile only) count as -inf.
        auto x = [&](int j, int e) { return EDGE && c0 + 8 * j + 2 * t + e >= v ? LM_NEG_INF : d[4 * j + 2 * r + e]; };
        float mx = LM_NEG_INF;
#pragma unroll
        for (int j = 0; j < LM_BN / 8; ++j) mx = fmaxf(mx, fmaxf(x(j, 0), x(j, 1)));
        float mn = fmaxf(m[r], mx * LM_LOG2E);
        float base = mn == LM_NEG_INF ? 0.f : mn; // none of this thread's columns real yet: all terms 0
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < LM_BN / 8; ++j) {
            s += exp2_approx(__fmaf_rn(x(j, 0), LM_LOG2E, -base));
            s += exp2_approx(__fmaf_rn(x(j, 1), LM_LOG2E, -base));
        }
        l[r] = l[r] * exp2_approx(m[r] - base) + s;
        m[r] = mn;
    }
}
template <int KA> __device__ void lmce_lse_k(const LmTmaMap* tmh, const LmTmaMap* tmw, u32 n, u32 v, u32 vp, u32 tps, float* pm, float* pl) {
    int t = threadIdx.x & 3;
    u32 r0 = blockIdx.y * LM_BM, split = blockIdx.x, nsplit = gridDim.x;
    float m[4] = {LM_NEG_INF, LM_NEG_INF, LM_NEG_INF, LM_NEG_INF}, l[4] = {0.f, 0.f, 0.f, 0.f};
    auto init = [] {};
    u32 t0 = split * tps, t1 = min(t0 + tps, vp / LM_BN);
    auto epi = [&](const float* d, u32 c0) {
#pragma unroll
        for (int sub = 0; sub < 2; ++sub) {
            if (c0 + LM_BN > v) lmce_lse_tile<true>(d + sub * (LM_BN / 2), c0, v, t, m + 2 * sub, l + 2 * sub);
            else lmce_lse_tile<false>(d + sub * (LM_BN / 2), c0, v, t, m + 2 * sub, l + 2 * sub);
        }
    };
    lm_loop<KA, LM_LSE_RS>(tmh, tmw, r0, t0, t1, init, epi);
    if (threadIdx.x >= LM_THREADS) return; // the producer warpgroup
    u32 rows[4];
    lm_rows(rows, r0);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        float mq = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 1));
        mq = fmaxf(mq, __shfl_xor_sync(0xffffffffu, mq, 2)); // the row's max (finite: every tile has a real column)
        l[r] = m[r] == LM_NEG_INF ? 0.f : l[r] * exp2_approx(m[r] - mq);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        m[r] = mq;
        if (t == 0 && rows[r] < n) {
            pm[(u64)rows[r] * nsplit + split] = m[r];
            pl[(u64)rows[r] * nsplit + split] = l[r];
        }
    }
}

// Pass 2: g[row, c] = 2^(x·log2e − lse2[row]) · scale for the real columns, 0 for the padding
// and for ignored rows; g has rows up to a multiple of LM_BM (those past n are junk). Each kept
// row's target column is then overwritten with (softmax − 1)·scale by `lmce_patch`.
//
// Stores: four column pairs at a time through the quad transpose (lm_quad_transpose), one
// 16-byte store a lane. The epilogue is bound by its instruction issue, stores above all:
// measured on the H100 (ncu, gradient pass of an 8192-row chunk, one call): 475 µs with the
// target's gradient patched in by selects here, 444 µs without them (`lmce_patch` instead;
// `bench ops --only classifier` 6.04 / 6.08 → 5.99 / 5.93 ms, the step 19.8 / 19.9 → 19.5 / 19.4
// ms, 30 steps interleaved), 850 µs with 4-byte stores of each pair as it lies (no transpose).
//
// Per row (r) the thread keeps ls, its log-sum-exp in log2 units less log2(scale), so that
// exp2(x·log2e − ls) is the scaled softmax (+∞ for an ignored row or one past n, whose gradient is
// then exp2(−∞) = 0). `row` is its first row; the other is row + 8 (r = 1), and the caller passes
// row + 64 for the second wgmma block.
template <bool EDGE> __device__ __forceinline__ void lmce_grad_tile(const float* d, u32 c0, u32 v, int t, u32 row, const float* ls, bf16* gout, u32 ldg) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int q = 0; q < LM_BN / 32; ++q) {
            u32 a[4];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
                int j = 4 * q + jj;
                float p0 = exp2_approx(__fmaf_rn(d[4 * j + 2 * r], LM_LOG2E, -ls[r]));
                float p1 = exp2_approx(__fmaf_rn(d[4 * j + 2 * r + 1], LM_LOG2E, -ls[r]));
                if (EDGE) {
                    u32 c = c0 + 8 * j + 2 * t;
                    p0 = c < v ? p0 : 0.f;
                    p1 = c + 1 < v ? p1 : 0.f;
                }
                asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(a[jj]) : "f"(p1), "f"(p0));
            }
            u32 x[4];
            lm_quad_transpose(a, t, x);
            u32 col = c0 + 8 * (4 * q + t);
            // The output has rows up to the block's LM_BM (the host pads it): no row test.
            *(uint4*)(gout + (u64)(row + 8 * r) * ldg + col) = make_uint4(x[0], x[1], x[2], x[3]);
        }
    }
}
template <int KA> __device__ void lmce_grad_k(const LmTmaMap* tmh, const LmTmaMap* tmw, const int* tgt, u32 n, u32 v, u32 vp, u32 tps, const float* lse2, const double* scale, bf16* gout, u32 ldg) {
    int t = threadIdx.x & 3;
    u32 r0 = blockIdx.y * LM_BM, split = blockIdx.x;
    float ls[4];
    u32 row0;
    auto init = [&] {
        u32 rows[4];
        lm_rows(rows, r0);
        row0 = rows[0];
        float l2s = log2f((float)*scale);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            bool kept = rows[r] < n && tgt[rows[r]] >= 0;
            ls[r] = kept ? lse2[rows[r]] - l2s : __int_as_float(0x7f800000);
        }
    };
    u32 t0 = split * tps, t1 = min(t0 + tps, vp / LM_BN);
    auto epi = [&](const float* d, u32 c0) {
#pragma unroll
        for (int sub = 0; sub < 2; ++sub) {
            const float* ds = d + sub * (LM_BN / 2);
            if (c0 + LM_BN > v) lmce_grad_tile<true>(ds, c0, v, t, row0 + 64 * sub, ls + 2 * sub, gout, ldg);
            else lmce_grad_tile<false>(ds, c0, v, t, row0 + 64 * sub, ls + 2 * sub, gout, ldg);
        }
    };
    lm_loop<KA, 0>(tmh, tmw, r0, t0, t1, init, epi);
}

// The gradient pass with dH = g·W made in the same loop (lmce_grad_dh_k, the default): each
// tile's softmax·scale, rounded to bf16 for g's store, is also the A operand (from registers) of
// a second wgmma against the W tile already in shared memory, so the dH GEMM, which read all of
// g back from memory, is gone. dH's accumulator (64 rows × K f32 a warpgroup: 128 registers at
// K = 256) leaves room for one 64-row block a warpgroup and one logits buffer, so a block holds
// 128 rows of H (LMD_BM). Blocks over vocabulary splits write f32 partial sums of dH
// ([splits, rows, K]); `lmce_dh_final` adds them and the one-hot part, −scale·W[target].
//
// Measured on the H100 (ncu, 8192-row chunk of gpt2-mini's head, one call): 731-735 µs against
// 448 (lmce_grad_k4) + ~333 (the dH GEMM); `bench ops --only classifier` 5.82 / 5.92 ms against
// 5.94 / 6.01 (FMLAB_CE_DH=0, interleaved). A first version that waited for the logits and the
// previous dH together (no overlap of either with the epilogue) took 6.20 ms. Shared memory is
// ~84% busy (SS wgmma reads H's and W's tiles for every logits tile); taking the first half or
// quarter of H's operand from registers brought that to 73-78% without making it faster
// (731 / 734 / 757 µs for none / a quarter / half), so it was not kept.
//
// The second product reads W's tile [64 vocabulary rows, K] with the vocabulary as its K
// dimension: N-major (transposed) B (hopper_gemm.cuh `lm_desc_mn`, `lm_wgmma_rs_t`).
#define LMD_BM 128
#ifndef LMD_STAGES
#define LMD_STAGES 4
#endif
template <int N> struct LmdC { static constexpr int value = N; }; // a compile-time flag for the lambdas below
// A 64×64 tile's softmax·scale, in place over its logits d (f32; 0 past the vocabulary).
template <bool EDGE> __device__ __forceinline__ void lmd_softmax(float* d, u32 c0, u32 v, int t, const float* ls) {
#pragma unroll
    for (int j = 0; j < LM_BN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float p = exp2_approx(__fmaf_rn(d[4 * j + e], LM_LOG2E, -ls[e >> 1]));
            d[4 * j + e] = EDGE && c0 + 8 * j + 2 * t + (e & 1) >= v ? 0.f : p;
        }
}
// The tile rounded to bf16 pairs as the dH product's A fragments: pf[4s..4s+4) for 16-column
// step s in the mma.sync m16n8k16 A layout (the accumulator's column pairs 16s + 2t and
// 16s + 8 + 2t, rows g and g + 8).
__device__ __forceinline__ void lmd_pack(const float* p, u32* pf) {
#pragma unroll
    for (int j = 0; j < LM_BN / 8; ++j)
#pragma unroll
        for (int r = 0; r < 2; ++r) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(pf[4 * (j >> 1) + 2 * (j & 1) + r]) : "f"(p[4 * j + 2 * r + 1]), "f"(p[4 * j + 2 * r]));
}
// g's 64×64 tile from the fragments: four column pairs at a time through the quad transpose,
// one 16-byte store a lane (as lmce_grad_tile).
__device__ __forceinline__ void lmd_store(const u32* pf, u32 c0, int t, u32 row, bf16* gout, u32 ldg) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int q = 0; q < LM_BN / 32; ++q) {
            u32 a[4], x[4];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
                int j = 4 * q + jj;
                a[jj] = pf[4 * (j >> 1) + 2 * (j & 1) + r];
            }
            lm_quad_transpose(a, t, x);
            *(uint4*)(gout + (u64)(row + 8 * r) * ldg + c0 + 8 * (4 * q + t)) = make_uint4(x[0], x[1], x[2], x[3]);
        }
}
// The loop, one logits buffer d a warpgroup (two did not fit: ptxas serialized the wgmmas and
// spilled): once tile k's softmax is in pf, S(k + 1) goes into d and dH(k) after it, both
// running while the warpgroup stores tile k's g; the warpgroup then waits for S(k + 1) only
// (dH(k) left pending) and for dH(k) only after tile k + 1's exponentials, before pf is
// rewritten. The other warpgroup's turns fill the tensor cores meanwhile.
template <int KA> __device__ void lmce_grad_dh_k(const LmTmaMap* tmh, const LmTmaMap* tmw, const int* tgt, u32 n, u32 v, u32 vp, u32 tps, const float* lse2, const double* scale, bf16* gout, u32 ldg, float* dhp, u32 np) {
    const u32 TW = KA * LM_BN * 128; // bytes of one W tile
    u32 r0 = blockIdx.y * LMD_BM, split = blockIdx.x;
    u32 t0 = split * tps, t1 = min(t0 + tps, vp / LM_BN);
    const u32 nt = t1 - t0;
    const LmRing ring = lm_pipeline<KA, LMD_BM, LMD_STAGES>(tmh, tmw, r0, t0, nt);
    if (!ring.consumer) return;
    const u32 base = ring.base, sw0 = ring.sw0, full0 = ring.full0, empty0 = ring.empty0;
    const int t = threadIdx.x & 3;
    const u32 wg = threadIdx.x >> 7;
    const u32 row = r0 + 64 * wg + 16 * ((threadIdx.x >> 5) & 3) + ((threadIdx.x & 31) >> 2); // and row + 8
    float ls[2];
    {
        float l2s = log2f((float)*scale);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            u32 rr = row + 8 * r;
            bool kept = rr < n && tgt[rr] >= 0;
            ls[r] = kept ? lse2[rr] - l2s : __int_as_float(0x7f800000);
        }
    }
    const u32 sa = base + wg * (64 * 128); // this warpgroup's 64 rows in each slab
    float dh[32 * KA]; // set by the first tile's product (scale-d 0)
    float d[32];
    u32 pf[16];
    auto issue_s = [&](u32 k) {
        u32 st = k % LMD_STAGES, sw = sw0 + st * TW;
        mbar_wait(full0 + 8 * st, (k / LMD_STAGES) & 1);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int s = 0; s < 4 * KA; ++s) {
            u32 in = (s & 3) * 32; // 16 columns (32 bytes) into slab s / 4
            lm_wgmma(d, lm_desc(sa + (s >> 2) * (LMD_BM * 128) + in), lm_desc(sw + (s >> 2) * (LM_BN * 128) + in), s > 0);
        }
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    };
    // Tile k, its logits in d (complete): softmax; dH(k − 1) waited for (the only group pending),
    // its stage freed; the fragments; S(k + 1) issued into d when NEXT; dH(k) issued; g's stores
    // while both run; S(k + 1) waited for (dH(k) left pending).
    auto tile = [&](u32 k, auto next) {
        u32 c0 = (t0 + k) * LM_BN, sw = sw0 + (k % LMD_STAGES) * TW;
        if (c0 + LM_BN > v) lmd_softmax<true>(d, c0, v, t, ls);
        else lmd_softmax<false>(d, c0, v, t, ls);
        lm_wgmma_wait<0>();
        if (k > 0) mbar_arrive(empty0 + 8 * ((k - 1) % LMD_STAGES));
        lmd_pack(d, pf);
        if (decltype(next)::value) issue_s(k + 1);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int s = 0; s < 4; ++s)
#pragma unroll
            for (int j = 0; j < KA; ++j) lm_wgmma_rs_t(dh + 32 * j, pf + 4 * s, lm_desc_mn(sw + j * (LM_BN * 128) + s * 2048), k > 0 || s > 0);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        lmd_store(pf, c0, t, row, gout, ldg);
        if (decltype(next)::value) {
            lm_wgmma_wait<1>();
            lm_fence_acc(d);
        }
    };
    issue_s(0);
    lm_wgmma_wait<0>();
    lm_fence_acc(d);
    for (u32 k = 0; k + 1 < nt; ++k) tile(k, LmdC<1>{});
    tile(nt - 1, LmdC<0>{});
    lm_wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 32 * KA; ++i) asm volatile("" : "+f"(dh[i])::"memory");
    // dH's partial sums: slab j's accumulator holds (row, 64j + 8jj + 2t, +1) in dh[32j + 4jj + 0, 1]
    // and row + 8 in [.. + 2, 3].
    float* out = dhp + ((u64)split * np) * (64 * KA);
#pragma unroll
    for (int j = 0; j < KA; ++j)
#pragma unroll
        for (int jj = 0; jj < 8; ++jj)
#pragma unroll
            for (int r = 0; r < 2; ++r)
                *(float2*)(out + (u64)(row + 8 * r) * (64 * KA) + 64 * j + 8 * jj + 2 * t) = make_float2(dh[32 * j + 4 * jj + 2 * r], dh[32 * j + 4 * jj + 2 * r + 1]);
}

// dH[row] = Σ_s part[s, row] − scale·W[target[row]] (kept rows; the one-hot part of g, which
// the fused pass leaves out), in bf16: a thread per 8 columns (k is a multiple of 64), 16-byte
// loads and stores. (A thread per pair of columns took 14.8 µs an 8192-row chunk, graph trace.)
extern "C" __global__ void lmce_dh_final(const float* part, u32 splits, u32 np, const int* tgt, u32 n, u32 k, const bf16* w, const double* scale, bf16* dh) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x, row = i / (k / 8), c = 8 * (i % (k / 8));
    if (row >= n) return;
    float s[8];
    {
        float4 a = *(const float4*)(part + (u64)row * k + c), b = *(const float4*)(part + (u64)row * k + c + 4);
        s[0] = a.x, s[1] = a.y, s[2] = a.z, s[3] = a.w, s[4] = b.x, s[5] = b.y, s[6] = b.z, s[7] = b.w;
    }
    for (u32 p = 1; p < splits; ++p) {
        const float* q = part + ((u64)p * np + row) * k + c;
        float4 a = *(const float4*)q, b = *(const float4*)(q + 4);
        s[0] += a.x, s[1] += a.y, s[2] += a.z, s[3] += a.w, s[4] += b.x, s[5] += b.y, s[6] += b.z, s[7] += b.w;
    }
    int ti = tgt[row];
    if (ti >= 0) {
        float sc = (float)*scale;
        uint4 wv = *(const uint4*)(w + (u64)ti * k + c);
        const u32 wp[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[2 * e] -= sc * __uint_as_float(wp[e] << 16);
            s[2 * e + 1] -= sc * __uint_as_float(wp[e] & 0xffff0000u);
        }
    }
    u32 o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(o[e]) : "f"(s[2 * e + 1]), "f"(s[2 * e]));
    *(uint4*)(dh + (u64)row * k + c) = make_uint4(o[0], o[1], o[2], o[3]);
}

// g[row, target] = (softmax − 1)·scale over the gradient pass's softmax·scale (kept rows; a
// thread a row): the value made in f32 from the row's target logit and log-sum-exp.
extern "C" __global__ void lmce_patch(const int* tgt, u32 n, const float* lse2, const float* tlog, const double* scale, bf16* g, u32 ldg) {
    u32 row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n) return;
    int ti = tgt[row];
    if (ti < 0) return;
    float sc = (float)*scale;
    float tp = (exp2_approx(__fmaf_rn(tlog[row], LM_LOG2E, -lse2[row])) - 1.f) * sc;
    g[(u64)row * ldg + ti].x = f2bf(tp);
}

// Per row: lse2 = log2 Σ_j 2^(x_j·log2e) from the splits' (m, l); loss = lse2·ln2 − x[target]
// (0 for ignored rows).
extern "C" __global__ void lmce_combine(const float* pm, const float* pl, const float* tl, const int* tgt, u32 n, u32 nsplit, float* lse2, float* loss) {
    u32 row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n) return;
    float mx = LM_NEG_INF;
    for (u32 s = 0; s < nsplit; ++s) mx = fmaxf(mx, pm[(u64)row * nsplit + s]);
    float sum = 0.f;
    for (u32 s = 0; s < nsplit; ++s) sum += pl[(u64)row * nsplit + s] * exp2f(pm[(u64)row * nsplit + s] - mx);
    float l2 = mx + log2f(sum);
    lse2[row] = l2;
    int t = tgt[row];
    loss[row] = t >= 0 ? l2 * LM_LN2 - tl[row] : 0.f;
}

#define LMCE(KA) \
extern "C" __global__ void __launch_bounds__(LM_THREADS + 128, 1) lmce_lse_k##KA(const __grid_constant__ LmTmaMap tmh, const __grid_constant__ LmTmaMap tmw, u32 n, u32 v, u32 vp, u32 tps, float* pm, float* pl) { lmce_lse_k<KA>(&tmh, &tmw, n, v, vp, tps, pm, pl); } \
extern "C" __global__ void __launch_bounds__(LM_THREADS + 128, 1) lmce_grad_k##KA(const __grid_constant__ LmTmaMap tmh, const __grid_constant__ LmTmaMap tmw, const int* tgt, u32 n, u32 v, u32 vp, u32 tps, const float* lse2, const double* scale, bf16* g, u32 ldg) { lmce_grad_k<KA>(&tmh, &tmw, tgt, n, v, vp, tps, lse2, scale, g, ldg); }
#define LMCE_DH(KA) \
extern "C" __global__ void __launch_bounds__(LM_THREADS + 128, 1) lmce_grad_dh_k##KA(const __grid_constant__ LmTmaMap tmh, const __grid_constant__ LmTmaMap tmw, const int* tgt, u32 n, u32 v, u32 vp, u32 tps, const float* lse2, const double* scale, bf16* g, u32 ldg, float* dhp, u32 np) { lmce_grad_dh_k<KA>(&tmh, &tmw, tgt, n, v, vp, tps, lse2, scale, g, ldg, dhp, np); }
LMCE(1)
LMCE(2)
LMCE(3)
LMCE(4)
LMCE_DH(1)
LMCE_DH(2)
LMCE_DH(3)
LMCE_DH(4)
