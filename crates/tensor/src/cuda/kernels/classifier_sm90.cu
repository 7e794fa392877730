// The fused classifier on Hopper (sm_90a: wgmma): the logits H·Wᵀ of an LM head are made tile by
// tile in registers and never written. Two passes over the vocabulary, each a GEMM with its
// epilogue in registers:
//   lmce_lse:  per (row, vocab split) the running max and sum of exp of the logits (online, in
//              log2 units), and the target's logit where this split holds it;
//   lmce_combine: per row the log-sum-exp (log2 units) and the loss, lse − x[target];
//   lmce_grad: the logits again, and the logits' gradient (softmax − onehot)·scale written in bf16
//              for the two cuBLASLt GEMMs that make dH and dW (the one-hot part, one value a
//              row, by lmce_patch after it).
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
LMCE(1)
LMCE(2)
LMCE(3)
LMCE(4)
