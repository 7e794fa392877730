// The fused classifier on Hopper (sm_90a: wgmma): the logits H·Wᵀ of an LM head are made tile by
// tile in registers and never written. Two passes over the vocabulary, each a GEMM with its
// epilogue in registers:
//   lmce_lse:  per (row, vocab split) the running max and sum of exp of the logits (online, in
//              log2 units), and the target's logit where this split holds it;
//   lmce_combine: per row the log-sum-exp (log2 units) and the loss, lse − x[target];
//   lmce_grad: the logits again, and the logits' gradient (softmax − onehot)·scale written in bf16
//              for the two cuBLASLt GEMMs that make dH and dW.
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
// Shapes: H [n, K] bf16, W [vp, K] bf16 (vp a multiple of LM_BN, rows past the real vocabulary
// v are zeros and are masked), both contiguous and read through TMA tensor maps, K = 64·KA (KA = 1..4),
// targets [n] i32 (-1: ignored row). Block: 384 threads = two consumer warpgroups (128 rows of H
// each, as two 64-row wgmma blocks) and a producer warpgroup (lm_loop), vocabulary tiles of LM_BN columns; grid
// (vocabulary splits, row tiles), each block walking its split's tiles with its rows of H
// resident in shared memory.
//
// Shared memory (dynamic, 1024-byte aligned): H's tile, then LM_STAGES stages of W's tile, each
// [KA][rows][128 bytes]: for each 64-column slab of K, 128-byte rows with the 16-byte chunks
// of row r stored at chunk index (c ^ (r % 8)) — the 128-byte swizzle that the TMA unit writes
// and wgmma's descriptors name (layout type 1), so wgmma's reads of 8 rows hit 8 different bank
// groups.
//
// Accumulator layout (wgmma m64nNk16, f32; PTX ISA "register fragments"): warp w of the
// warpgroup holds rows 16w..16w+15; lane (g = lane / 4, t = lane % 4) holds
// d[4j + 0, 1] = (row g, columns 8j + 2t, +1) and d[4j + 2, 3] = (row g + 8, same columns).

// Rows of H a block (two consumer warpgroups of 128, each as two 64-row wgmma blocks): every
// W tile copied from L2 serves 256 rows. Measured at 128 rows (one 64-row block a warpgroup):
// the loss pass 2.17-2.19 ms, copying W at ~3 TB/s from L2.
#define LM_BM 256
// Vocabulary columns a tile. 64 (not 128) so that W's tiles (32 KB at K = 256) fit LM_STAGES deep
// beside H's 64 KB: the copies run several tiles ahead (with two 64 KB stages the loop waited on
// them: the loss pass 2.64 ms, ncu's top stall the barrier where consumers wait for a tile).
#define LM_BN 64
#define LM_STAGES 3
// The loss pass takes its first 64-row block's A operand from registers (lm_issue): its loop is
// bound by shared-memory reads (ncu: mio_throttle), both operands of both blocks otherwise.
// Measured on the H100 (gpt2-mini, eager profile, one call): 1.26 → 1.16 ms a step. The
// gradient pass has no registers to spare for it (ptxas spills 272 bytes). LM_LSE_RS=0 (via
// FMLAB_CUDA_DEFINES) turns it off.
#ifndef LM_LSE_RS
#define LM_LSE_RS 1
#endif
#define LM_ACC LM_BN // accumulator registers a thread: two m64nN blocks of N/2 f32
#define LM_THREADS 256
#define LM_LOG2E 1.4426950408889634f
#define LM_LN2 0.6931471805599453f
#define LM_NEG_INF __int_as_float(0xff800000)


// wgmma shared-memory descriptor: start address, leading byte offset (unused by the swizzled
// K-major layout: 1), stride byte offset 1024 (8 rows of 128 bytes), layout type 1 (128-byte swizzle).
__device__ __forceinline__ u64 lm_desc(u32 s) {
    return (u64)((s & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

// d (+)= A·Bᵀ for A 64×16 and B 64×16, both K-major in shared memory (descriptors).
__device__ __forceinline__ void lm_wgmma(float* d, u64 da, u64 db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(accumulate));
}

// d (+)= A·Bᵀ for A 64×16 from registers (a: this thread's fragment, laid out as an mma.sync
// m16n8k16 A fragment of its warp's 16 rows) and B 64×16 K-major in shared memory.
__device__ __forceinline__ void lm_wgmma_rs(float* d, const u32* a, u64 db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(0), "r"(accumulate));
}

// Issues (does not wait for) the LM_BN-column logits tile of this warpgroup's 128 rows (two
// 64-row blocks at sa and sa + 64 rows: d[0..N/2) and d[N/2..N)) against W's tile at `sw`, as
// one wgmma group. With RS the first block's A comes from registers (af: 4 per 16-column step),
// which takes a quarter of the shared-memory reads off the loop.
template <int KA, int RS> __device__ __forceinline__ void lm_issue(float* d, u32 sa, u32 sw, const u32* af) {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
    for (int s = 0; s < 4 * KA; ++s) {
        u32 in = (s & 3) * 32; // 16 columns (32 bytes) into slab s / 4
        u64 db = lm_desc(sw + (s >> 2) * (LM_BN * 128) + in);
        u32 a = sa + (s >> 2) * (LM_BM * 128) + in;
        if (RS) lm_wgmma_rs(d, af + 4 * s, db, s > 0);
        else lm_wgmma(d, lm_desc(a), db, s > 0);
        lm_wgmma(d + LM_BN / 2, lm_desc(a + 64 * 128), db, s > 0);
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
// This warp's A fragments (mma.sync m16n8k16 layout) of the 64-row block at shared address sa
// (H's swizzled tile: 16-byte chunk c of row r at chunk c ^ (r % 8) of its 128-byte row), for every
// 16-column step s of K: four ldmatrix 8×8 matrices, rows 0-7 / 8-15 × chunks 2s', 2s' + 1.
template <int KA> __device__ __forceinline__ void lm_load_af(u32* af, u32 sa) {
    u32 lane = threadIdx.x & 31, m = lane >> 3, row = 16 * ((threadIdx.x >> 5) & 3) + 8 * (m & 1) + (lane & 7);
#pragma unroll
    for (int s = 0; s < 4 * KA; ++s) {
        u32 c = 2 * (s & 3) + (m >> 1);
        u32 addr = sa + (s >> 2) * (LM_BM * 128) + row * 128 + ((c ^ (row & 7)) << 4);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(af[4 * s]), "=r"(af[4 * s + 1]), "=r"(af[4 * s + 2]), "=r"(af[4 * s + 3]) : "r"(addr));
    }
}
// Keeps every read of the accumulators after the wait that precedes this.
__device__ __forceinline__ void lm_fence_acc(float* d) {
#pragma unroll
    for (int i = 0; i < LM_ACC; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N> __device__ __forceinline__ void lm_wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
// lm_loop's stages are handed over by mbarriers (common.cuh's mbar_*; lm_bars in shared memory):
// FULL[st] completes when the tensor-memory-access unit (TMA) has written the stage's bytes (one
// arrival, the producer's, plus the bytes announced); EMPTY[st] when all 256 consumer threads
// have arrived after their wgmma reads of the stage completed.
// A TMA tensor map (CUtensorMap: 128 opaque bytes the host encodes, classifier.rs `tma_map`):
// a [rows, 64·KA] bf16 matrix in boxes of 64 columns (128 bytes) × box rows, written to shared
// memory in the 128-byte swizzle wgmma's descriptors name. Passed by value as a
// __grid_constant__ kernel parameter, which the TMA unit reads from its parameter address.
struct __align__(64) LmTmaMap { u64 opaque[16]; };
// The box at (column c, row r) of `map` into shared address `dst`, completing on `bar`. Rows past
// the matrix's end arrive as zeros (and count in the bytes all the same).
__device__ __forceinline__ void lm_tma(u32 dst, const LmTmaMap* map, int c, int r, u32 bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst), "l"((u64)map), "r"(c), "r"(r), "r"(bar) : "memory");
}

// The shared loop of both passes, warp-specialized: threads 0-255 (two warpgroups) multiply and
// run the epilogue `epi(d, c0)` on each tile's accumulators (c0: the tile's first vocabulary
// column); one thread of the producer warpgroup (threads 256-383) has the TMA unit copy H's
// tile once and W's tiles t0..t1 into a ring of LM_STAGES shared-memory stages, as far ahead as
// the ring allows. Registers move from the producer (24 a thread) to the consumers (240) by
// setmaxnreg: 2·128·240 + 128·24 ≤ 65536, all that 384 threads at 168 (the launch's share) give
// back and take. ptxas allocates each side within its own budget, so state the consumers' epilogue
// keeps (`init`) is made after the increase: made before it, it spilled. Consumers keep two register accumulators, so the tensor cores multiply tile
// i + 1 while the warpgroup runs tile i's epilogue.
template <int KA, int RS, typename Init, typename Epi> __device__ __forceinline__ void lm_loop(const LmTmaMap* tmh, const LmTmaMap* tmw, u32 r0, u32 t0, u32 t1, Init& init, Epi& epi) {
    extern __shared__ unsigned char lm_raw[];
    __shared__ __align__(8) u64 lm_bars[2 * LM_STAGES];
    const u32 TA = KA * LM_BM * 128, TW = KA * LM_BN * 128; // bytes of H's tile, of one W tile
    u32 base = (smem_addr(lm_raw) + 1023) & ~1023u;
    u32 sw0 = base + TA;
    const u32 full0 = smem_addr(&lm_bars[0]), empty0 = smem_addr(&lm_bars[LM_STAGES]);
    const u32 nt = t1 - t0;
    if (threadIdx.x == 0) {
        for (int st = 0; st < LM_STAGES; ++st) {
            mbar_init(full0 + 8 * st, 1);
            mbar_init(empty0 + 8 * st, LM_THREADS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x >= LM_THREADS) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
        if (threadIdx.x != LM_THREADS) return;
        for (u32 k = 0; k < nt; ++k) {
            u32 st = k % LM_STAGES, full = full0 + 8 * st;
            if (k >= LM_STAGES) mbar_wait(empty0 + 8 * st, (k / LM_STAGES - 1) & 1); // tile k - LM_STAGES is multiplied
            mbar_expect(full, TW + (k == 0 ? TA : 0));
            if (k == 0)
#pragma unroll
                for (int s = 0; s < KA; ++s) lm_tma(base + s * (LM_BM * 128), tmh, 64 * s, r0, full);
#pragma unroll
            for (int s = 0; s < KA; ++s) lm_tma(sw0 + st * TW + s * (LM_BN * 128), tmw, 64 * s, (t0 + k) * LM_BN, full);
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
    init(); // the epilogue's per-row state, made only here, inside the consumers' larger register budget
    u32 sa = base + (threadIdx.x >> 7) * (128 * 128); // this warpgroup's 128 rows
    float d0[LM_ACC], d1[LM_ACC];
    u32 af[RS ? 16 * KA : 1];
    mbar_wait(full0, 0);
    if (RS) lm_load_af<KA>(af, sa);
    lm_issue<KA, RS>(d0, sa, sw0, af);
    // Tile i (k = i - t0), whose wgmma group is in flight in `cur`, when a tile i + 1 follows
    // (its group goes into `nxt`) or not. The loop below keeps every path straight-line in which
    // registers hold which group: where an accumulator's contents depend on a branch, ptxas
    // serializes every wgmma of the kernel (C7514/C7515).
    auto step = [&](float* cur, float* nxt, u32 i) {
        u32 k = i - t0, sn = (k + 1) % LM_STAGES;
        mbar_wait(full0 + 8 * sn, ((k + 1) / LM_STAGES) & 1);
        lm_issue<KA, RS>(nxt, sa, sw0 + sn * TW, af);
        lm_wgmma_wait<1>();
        lm_fence_acc(cur);
        mbar_arrive(empty0 + 8 * (k % LM_STAGES)); // the producer may refill it
        epi(cur, i * LM_BN);
    };
    auto last = [&](float* cur, u32 i) {
        lm_wgmma_wait<0>();
        lm_fence_acc(cur);
        epi(cur, i * LM_BN);
    };
    u32 i = t0;
    for (; i + 2 < t1; i += 2) {
        step(d0, d1, i);
        step(d1, d0, i + 1);
    }
    if (i + 1 < t1) {
        step(d0, d1, i);
        last(d1, i + 1);
    } else {
        last(d0, i);
    }
}

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
// This thread's rows of a 256-row block: warpgroup wg holds rows 128·wg.., as two 64-row wgmma
// blocks (sub), whose warps hold 16 rows each; index 2·sub + r for the rows g and g + 8.
__device__ __forceinline__ void lm_rows(u32* rows, u32 r0) {
    u32 wg = threadIdx.x >> 7, wl = (threadIdx.x >> 5) & 3, g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int sub = 0; sub < 2; ++sub)
#pragma unroll
        for (int r = 0; r < 2; ++r) rows[2 * sub + r] = r0 + 128 * wg + 64 * sub + 16 * wl + g + 8 * r;
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

// Pass 2: g[row, c] = (2^(x·log2e − lse2[row]) − [c == target]) · scale for the real columns, 0 for
// the padding and for ignored rows; g has rows up to a multiple of LM_BM (those past n are junk).
//
// Stores: lane t holds the pairs (columns 8j + 2t, +1) of its rows; four j at a time the quad
// transposes them (two butterfly stages of shuffles) so that lane t holds columns 8j..8j+7 of
// j = 4q + t and writes them as one 16-byte store: a warp writes 8 rows × 64 contiguous bytes,
// whole sectors, not 8 × 16 bytes.
//
// Per row (r) the thread keeps: tg, its target (-1: none); ls, its log-sum-exp in log2 units less
// log2(scale), so that exp2(x·log2e − ls) is the scaled softmax (+∞ for an ignored row or one past
// n, whose gradient is then exp2(−∞) = 0); tp, its target's gradient, softmax − 1, scaled. `row` is its first row; the others are row + 8 (r = 1), and the
// caller passes row + 64 for the second wgmma block.
template <bool EDGE> __device__ __forceinline__ void lmce_grad_tile(const float* d, u32 c0, u32 v, int t, u32 row, const int* tg, const float* ls, const float* tp, bf16* gout, u32 ldg) {
    const int b0 = t & 1, b1 = (t >> 1) & 1;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        u32 rel = (u32)(tg[r] - (int)c0); // the target's column in this tile (huge when not in it)
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
            // M[lane][jj] = a[jj] of that lane; lane t wants column t: M[0..3][t].
            // Stage 1 (lanes t, t^2): keep the columns of half b1, send the other half's.
            u32 s0 = b1 ? a[0] : a[2], s1 = b1 ? a[1] : a[3];
            u32 k0 = b1 ? a[2] : a[0], k1 = b1 ? a[3] : a[1]; // M[t][2b1], M[t][2b1+1]
            u32 r0_ = __shfl_xor_sync(0xffffffffu, s0, 2), r1_ = __shfl_xor_sync(0xffffffffu, s1, 2); // M[t^2][2b1], M[t^2][2b1+1]
            // Stage 2 (lanes t, t^1): keep column 2b1 + b0, send the other.
            u32 own_t = b0 ? k1 : k0, own_t2 = b0 ? r1_ : r0_;      // M[t][t], M[t^2][t]
            u32 snd_a = b0 ? k0 : k1, snd_b = b0 ? r0_ : r1_;       // M[t][t^1], M[t^2][t^1]
            u32 got_t1 = __shfl_xor_sync(0xffffffffu, snd_a, 1);    // M[t^1][t]
            u32 got_t3 = __shfl_xor_sync(0xffffffffu, snd_b, 1);    // M[t^3][t]
            // o[k] = M[k][t]: X[k ^ t] with X = {M[t], M[t^1], M[t^2], M[t^3]} (rows of column t).
            // (Selects, not branches: b0 and b1 differ between the lanes of a warp.)
            u32 y0 = b0 ? got_t1 : own_t, y1 = b0 ? own_t : got_t1, y2 = b0 ? got_t3 : own_t2, y3 = b0 ? own_t2 : got_t3;
            u32 x0 = b1 ? y2 : y0, x1 = b1 ? y3 : y1, x2 = b1 ? y0 : y2, x3 = b1 ? y1 : y3;
            u32 col = c0 + 8 * (4 * q + t);
            // The target's own logit: tp, patched into the pack that holds it (rare: one tile in
            // Vp / 64 per row). Selects throughout, no branch: a branch here costs every lane its
            // reconvergence.
            {
                bool hit = rel - 8 * (4 * q + t) < 8;
                u32 e = rel & 7, shift = (e & 1) * 16, keep = ~(0xffffu << shift), hv = (u32)f2bf(tp[r]) << shift;
                x0 = hit && (e >> 1) == 0 ? (x0 & keep) | hv : x0;
                x1 = hit && (e >> 1) == 1 ? (x1 & keep) | hv : x1;
                x2 = hit && (e >> 1) == 2 ? (x2 & keep) | hv : x2;
                x3 = hit && (e >> 1) == 3 ? (x3 & keep) | hv : x3;
            }
            // The output has rows up to the block's LM_BM (the host pads it): no row test.
            *(uint4*)(gout + (u64)(row + 8 * r) * ldg + col) = make_uint4(x0, x1, x2, x3);
        }
    }
}
template <int KA> __device__ void lmce_grad_k(const LmTmaMap* tmh, const LmTmaMap* tmw, const int* tgt, u32 n, u32 v, u32 vp, u32 tps, const float* lse2, const float* tlog, const double* scale, bf16* gout, u32 ldg) {
    int t = threadIdx.x & 3;
    u32 r0 = blockIdx.y * LM_BM, split = blockIdx.x;
    int tg[4];
    float ls[4], tp[4];
    u32 row0;
    auto init = [&] {
        u32 rows[4];
        lm_rows(rows, r0);
        row0 = rows[0];
        float sc = (float)*scale;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            bool ok = rows[r] < n;
            tg[r] = ok ? tgt[rows[r]] : -1;
            float l = ok ? lse2[rows[r]] : 0.f;
            ls[r] = tg[r] >= 0 ? l - log2f(sc) : __int_as_float(0x7f800000);
            tp[r] = tg[r] >= 0 ? (exp2_approx(__fmaf_rn(ok ? tlog[rows[r]] : 0.f, LM_LOG2E, -l)) - 1.f) * sc : 0.f;
        }
    };
    u32 t0 = split * tps, t1 = min(t0 + tps, vp / LM_BN);
    auto epi = [&](const float* d, u32 c0) {
#pragma unroll
        for (int sub = 0; sub < 2; ++sub) {
            const float* ds = d + sub * (LM_BN / 2);
            int o = 2 * sub;
            if (c0 + LM_BN > v) lmce_grad_tile<true>(ds, c0, v, t, row0 + 64 * sub, tg + o, ls + o, tp + o, gout, ldg);
            else lmce_grad_tile<false>(ds, c0, v, t, row0 + 64 * sub, tg + o, ls + o, tp + o, gout, ldg);
        }
    };
    lm_loop<KA, 0>(tmh, tmw, r0, t0, t1, init, epi);
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
extern "C" __global__ void __launch_bounds__(LM_THREADS + 128, 1) lmce_grad_k##KA(const __grid_constant__ LmTmaMap tmh, const __grid_constant__ LmTmaMap tmw, const int* tgt, u32 n, u32 v, u32 vp, u32 tps, const float* lse2, const float* tl, const double* scale, bf16* g, u32 ldg) { lmce_grad_k<KA>(&tmh, &tmw, tgt, n, v, vp, tps, lse2, tl, scale, g, ldg); }
LMCE(1)
LMCE(2)
LMCE(3)
LMCE(4)
