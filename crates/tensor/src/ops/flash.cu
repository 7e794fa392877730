// Flash attention (bf16, head_dim D in {32, 64, 128}) on tensor cores: mma.sync m16n8k16 with
// bf16 inputs and f32 accumulation; softmax statistics in f32. Never materializes the [T, S]
// scores: forward keeps an online softmax per query row and stores O and the row log-sum-exp;
// backward recomputes P from the LSE. Backward is two kernels, deterministic (no atomics):
// dK/dV parallel over key tiles, dQ parallel over query tiles.
//
// Layouts: q [B, H, T, D], k/v [B, H, S, D] as strided views (element strides for b, h, row; the
// last dim contiguous; the host passes strides and offsets that are multiples of 8, so every row
// starts 16-byte aligned). Outputs (O, dQ, dK, dV) are written [B, rows, H, D] contiguous. LSE
// and delta are [B·H, T] f32; the LSE is that of scale·QKᵀ in log2 units (log2 Σ_j
// exp2(s_ij·scale·log2e)), which the backward uses as it is.
// Masks: causal = query i sees keys j <= i + (S - T); pad (u8 [B, S], may be null) = 0 hides a key.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4):
//   A 16x16 row-major: reg0 = (row g, cols 2t, 2t+1), reg1 = (row g+8, same cols),
//                      reg2 = (row g, cols 2t+8, 2t+9), reg3 = (row g+8, cols 2t+8, 2t+9)
//   B 16x8 (k x n):    reg0 = (k 2t, 2t+1; n g), reg1 = (k 2t+8, 2t+9; n g)
//   C 16x8 f32:        c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, same cols)
// Two bf16 per 32-bit register, the lower index in the low half.

// Warps a block (16 rows of the block's tile each). 8, which halves the re-reads of the other
// operand's tiles from L2 (ncu: the forward's L2 at 63%), measured slower on the H100 (bench ops,
// one call, two rounds, fwd / bwd ms): 4 warps 0.135 / 0.315 and 0.131 / 0.308; 8 warps at 2
// blocks per SM 0.138 / 0.330 and 0.138 / 0.335, forward at 3 0.142 / 0.334 and 0.141 / 0.337; the
// step 19.8 / 19.9 ms vs 19.9 / 19.9. FMLAB_CUDA_DEFINES=FA_WARPS=n (flash.rs reads it too, for
// the launch) with FA_*_MINB to match.
#ifndef FA_WARPS
#define FA_WARPS 4
#endif
// The inner loops' tile (keys in forward and dQ, queries in dK/dV); a block's own rows are
// FA_WARPS·16. Measured on the H100 (bench ops, one call, fwd / bwd ms): 64: 0.135 / 0.319;
// 32 (no spills anywhere): 0.163 / 0.309; 128 failed to run in that call (not investigated:
// its head_dim-128 kernels take 68-74 KB of static shared memory, ptxas says, above the 48 KB
// a launch gets without opting in). FMLAB_CUDA_DEFINES=FA_TILE=n to try.
#ifndef FA_TILE
#define FA_TILE 64
#endif
// Query-tile kernels (forward, dQ) take their tiles last-first: under a causal mask the last
// query tile visits the most key tiles, so the grid's final blocks are light ones. Measured
// neutral on the H100 at gpt2-mini's shapes (`bench ops --only attention`, one call: forward
// 0.320 vs 0.311 ms, backward 0.712 vs 0.727 ms first-first): 4096 blocks leave little tail.
// FMLAB_CUDA_DEFINES=FA_REVERSE=0 restores first-first (for A/B timing).
#ifndef FA_REVERSE
#define FA_REVERSE 1
#endif
__device__ __forceinline__ u32 fa_query_tile() { return FA_REVERSE ? gridDim.x - 1 - blockIdx.x : blockIdx.x; }
// dK/dV kernel: query sub-tile whose S^T/dP^T fragments are live at once (register pressure).
// Measured on the H100 (bench ops, one call, bwd ms): 32: 0.330; 16: 0.325; 64 with dK/dV at 3
// blocks/SM: 0.338, at 2 (198 registers, no spills): 0.352. FMLAB_CUDA_DEFINES=FA_HALF=n to try.
#ifndef FA_HALF
#define FA_HALF 32
#endif

// The forward's softmax row sums: on the tensor cores, one more mma per 16 keys against a column
// of ones (1), or one float add per score (0). The sums are then of the bf16-rounded P that P·V
// multiplies. Measured on the H100 (bench ops --only attention, one call, three rounds, forward
// ms): 0.128 / 0.125 / 0.128 against 0.130 / 0.130 / 0.135; ptxas: d32 spills 16 bytes, not 36.
// The gpt2-mini step (30 steps, interleaved): 19.9 / 19.7 ms against 20.0 / 19.9.
// FMLAB_CUDA_DEFINES=FA_ROWSUM_MMA=0 restores the adds. Also measured, not kept: rescaling the
// running sums only when a warp's row max grew (__any_sync, then skip 2 exp2 and 18 multiplies a
// tile): forward 0.131 / 0.128 / 0.128 ms against 0.126 / 0.125 / 0.125 (the vote and branch
// cost more than they save).
#ifndef FA_ROWSUM_MMA
#define FA_ROWSUM_MMA 1
#endif
__device__ __forceinline__ void mma_bf16(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two floats to a bf16 pair in one instruction (round to nearest even, as f2bf; sm_80+).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
// ldmatrix: a warp loads four 8×8 b16 matrices from shared memory, lane 8i + r giving the address
// of row r of matrix i; each lane receives the pair (row g, cols 2t, 2t+1) of every matrix, or with
// .trans the pair (rows 2t, 2t+1, col g) — exactly an mma B fragment half of a [k][n] tile.
__device__ __forceinline__ void ldsm_x4(u32* r, const void* p) {
    u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(u32* r, const void* p) {
    u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// B fragments from a shared tile stored [n][k] (keys × head dims for S = Q Kᵀ): r = {b0, b1} of
// k-slab kk, then {b0, b1} of k-slab kk + 1, for n-tile nt.
template <int D> __device__ __forceinline__ void ldsm_b(u32* r, unsigned short (*sm)[D + 8], int nt, int kk) {
    int lane = threadIdx.x & 31;
    ldsm_x4(r, &sm[nt * 8 + (lane & 7)][kk * 16 + (lane >> 3) * 8]);
}
// B fragments from a shared tile stored [k][n] (keys × head dims for O = P V): r = {b0, b1} of
// n-tile nd, then {b0, b1} of n-tile nd + 1, for k-slab kk.
template <int D> __device__ __forceinline__ void ldsm_b_t(u32* r, unsigned short (*sm)[D + 8], int kk, int nd) {
    int lane = threadIdx.x & 31, mi = lane >> 3;
    ldsm_x4_t(r, &sm[kk * 16 + (mi & 1) * 8 + (lane & 7)][(nd + (mi >> 1)) * 8]);
}
// Infinities by their bits: NVRTC does not fold a division by zero and emits a full IEEE
// division (FCHK and a slow-path call) wherever it appears, which was once per masked score.
#define FA_INF __int_as_float(0x7f800000)
#define FA_NEG_INF __int_as_float(0xff800000)
#define LOG2E 1.4426950408889634f

struct FaDims {
    u32 b, h, t, s;       // batch, heads, queries, keys
    u32 qs[3], ks[3], vs[3]; // element strides (batch, head, row) of q, k, v
    u32 gq[3], gkv[3];       // element strides (batch, head, row) of dq, and of dk and dv
    float scale;
    int causal;
};

// Asynchronous copies into shared memory (sm_80+ cp.async): a copy of `bytes` < size fills the
// rest with zeros, so rows past n cost no branch around the copy. Each thread waits for its own
// groups; a __syncthreads after the wait makes every thread's copies visible to the block.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, u32 bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"((u32)__cvta_generic_to_shared(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, u32 bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"((u32)__cvta_generic_to_shared(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Copies rows [r0, r0 + FA_TILE) of a [n, D] matrix (row stride rs elements) into shared
// [FA_TILE][D + 8], rows past n as zeros, in 16-byte copies: the host passes only 16-byte-aligned
// rows (flash.rs copies other layouts first). Thread i copies vector i % (D/8) of rows
// i / (D/8) + c·RS; every flash kernel runs FA_WARPS warps per block, so the loop has a
// compile-time length and unrolls. Issues the copies; the caller commits the group and waits.
template <int D> __device__ __forceinline__ void load_tile_async(unsigned short (*sm)[D + 8], const bf16* base, u32 rs, u32 r0, u32 n) {
    const int VECS = D / 8, RS = FA_WARPS * 32 / VECS;
    const u32 r = threadIdx.x / VECS, w = threadIdx.x % VECS;
    const bf16* p = base + (u64)(r0 + r) * rs + 8 * w;
#pragma unroll
    for (int c = 0; c < FA_TILE / RS; ++c) {
        bool ok = r0 + r + c * RS < n;
        cp_async16(&sm[r + c * RS][8 * w], ok ? p + (u64)c * RS * rs : base, ok ? 16 : 0);
    }
}

// Shared-memory stages of the key/query tile loops: two (the next tile's copies in flight while
// this one is computed on) where both fit in the 48 KB of static shared memory, else one.
template <int D> struct FaStages { static const int n = D <= 64 ? 2 : 1; };

// The tile loops: tile `it` lives in stage it % ST; `issue(it)` starts its copies (one group).
// Returns when tile `it` is in shared memory and visible to the block; with two stages the next
// tile's copies are then in flight, going into the stage the last iteration read (its readers
// passed the barrier that ends every iteration).
template <int ST, typename Issue> __device__ __forceinline__ void fa_stage_ready(u32 it, u32 ntiles, Issue& issue) {
    if (ST == 1) {
        __syncthreads(); // the last tile's readers are done
        issue(it);
        cp_async_wait<0>();
    } else if (it + 1 < ntiles) {
        issue(it + 1);
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}
// One key tile of K and V (rows k0..k0 + FA_TILE) into shared memory, as one copy group.
template <int D> __device__ __forceinline__ void fa_issue_kv(unsigned short (*ks)[D + 8], unsigned short (*vs)[D + 8], const bf16* kb, const bf16* vb, const FaDims& d, u32 k0) {
    load_tile_async<D>(ks, kb, d.ks[2], k0, d.s);
    load_tile_async<D>(vs, vb, d.vs[2], k0, d.s);
    cp_async_commit();
}

// c1 = a1 · t1[n-tile nt]ᵀ and c2 = a2 · t2[nt]ᵀ over D, into fresh accumulators: the paired
// products of the backward kernels (S and dP in dQ's, their transposes in dK/dV's).
template <int D> __device__ __forceinline__ void fa_dual_scores(float* c1, float* c2, const u32 (*a1)[4], const u32 (*a2)[4], unsigned short (*t1)[D + 8], unsigned short (*t2)[D + 8], int nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) c1[e] = c2[e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk += 2) {
        u32 b1[4], b2[4];
        ldsm_b<D>(b1, t1, nt, kk);
        ldsm_b<D>(b2, t2, nt, kk);
        mma_bf16(c1, a1[kk], b1[0], b1[1]);
        mma_bf16(c1, a1[kk + 1], b1[2], b1[3]);
        mma_bf16(c2, a2[kk], b2[0], b2[1]);
        mma_bf16(c2, a2[kk + 1], b2[2], b2[3]);
    }
}

// Key tiles the block of queries starting at q0 visits: all, or (causal) up to its last query's
// diagonal.
__device__ __forceinline__ u32 fa_key_tiles(const FaDims& d, u32 q0) {
    u32 kend = d.causal ? min(d.s, q0 + FA_WARPS * 16 + (d.s - d.t)) : d.s;
    return (kend + FA_TILE - 1) / FA_TILE;
}

// Masks (boundary tiles only; interior tiles skip them). Scores a query may not see become -inf,
// so exp2 makes their probabilities 0. Query i sees key j when j < S, pad[b, j] != 0 (no pad:
// every key) and, causal, j <= i + (S - T). Rows past T (queries) or S (keys) are never stored.
//
// Scores of a 16-query warp tile (rows r0 + g, r0 + g + 8) against keys k0.. (C fragments).
__device__ __forceinline__ void fa_mask_rows(float (*sc)[4], const FaDims& d, const u8* pad, u32 bi, u32 r0, u32 k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    u32 lim[2]; // keys below lim[r] are visible to row r (before the pad)
#pragma unroll
    for (int r = 0; r < 2; ++r) lim[r] = d.causal ? min(d.s, r0 + g + r * 8 + (d.s - d.t) + 1) : d.s;
#pragma unroll
    for (int nt = 0; nt < FA_TILE / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            u32 j = k0 + nt * 8 + 2 * t + c;
            bool kp = !pad || (j < d.s && pad[(u64)bi * d.s + j]);
#pragma unroll
            for (int r = 0; r < 2; ++r)
                if (!kp || j >= lim[r]) sc[nt][2 * r + c] = FA_NEG_INF;
        }
}
// Transposed scores of a 16-key warp tile (rows k0 + g, k0 + g + 8) against queries q0.., N/8
// n-tiles (dK/dV's S^T).
template <int N> __device__ __forceinline__ void fa_mask_keys(float (*st)[4], const FaDims& d, const u8* pad, u32 bi, u32 k0, u32 q0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        u32 j = k0 + g + r * 8;
        bool kp = j < d.s && (!pad || pad[(u64)bi * d.s + j]);
#pragma unroll
        for (int n = 0; n < N / 8; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                u32 i = q0 + n * 8 + 2 * t + c;
                if (!kp || (d.causal && i + (d.s - d.t) < j)) st[n][2 * r + c] = FA_NEG_INF;
            }
    }
}

// The forward's end for this warp's rows wq + g, wq + g + 8 (index r): O = acc / l in bf16
// ([B, T, H, D]; acc as C fragments, 8 columns an n-tile) and the row's log-sum-exp of scale·s in
// log2 units (backward's P = exp2(s·scale·log2e − lse) is one FMA and an exp2), +inf for a row
// that sees no key (P is then 0). l: the rows' whole sums, m: their maxima (scaled, log2).
template <int D> __device__ __forceinline__ void fa_store_o(const float (*acc)[4], const float* l, const float* m, bf16* o, float* lse, const FaDims& d, u32 bi, u32 hi, u32 bh, u32 wq) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 i = wq + g + r * 8;
        if (i >= d.t) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        bf16* orow = o + (((u64)bi * d.t + i) * d.h + hi) * D;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) *(u32*)(orow + nd * 8 + 2 * t) = pack_bf16(acc[nd][2 * r] * inv, acc[nd][2 * r + 1] * inv);
        if (t == 0) lse[(u64)bh * d.t + i] = l[r] > 0.f ? m[r] + log2f(l[r]) : FA_INF;
    }
}

template <int D> __device__ void fa_fwd_k(const bf16* q, const bf16* k, const bf16* v, const u8* pad, bf16* o, float* lse, FaDims d) {
    const int ST = FaStages<D>::n;
    __shared__ __align__(16) unsigned short ks_[ST][FA_TILE][D + 8], vs_[ST][FA_TILE][D + 8];
    int warp = threadIdx.x >> 5;
    u32 bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
    u32 q0 = fa_query_tile() * (FA_WARPS * 16), wq = q0 + warp * 16;
    const bf16* qb = q + (u64)bi * d.qs[0] + (u64)hi * d.qs[1];
    const bf16* kb = k + (u64)bi * d.ks[0] + (u64)hi * d.ks[1];
    const bf16* vb = v + (u64)bi * d.vs[0] + (u64)hi * d.vs[1];
    u32 qa[D / 16][4];
    load_a_global<D>(qa, qb, d.qs[2], wq, d.t);
    float acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float m[2] = {FA_NEG_INF, FA_NEG_INF}, l[2] = {0.f, 0.f};
    // FA_ROWSUM_MMA: the row sums by the tensor cores, as one more n-tile of P·V against a column
    // of ones (la: C fragment; every column of it is the row's sum), not a float add per score.
    float la[4] = {0.f, 0.f, 0.f, 0.f};
    const float sl2 = d.scale * LOG2E;
    const u32 ntiles = fa_key_tiles(d, q0);
    auto issue = [&](u32 it) { fa_issue_kv<D>(ks_[it % ST], vs_[it % ST], kb, vb, d, it * FA_TILE); };
    if (ST == 2 && ntiles > 0) issue(0);
    for (u32 it = 0; it < ntiles; ++it) {
        const u32 k0 = it * FA_TILE;
        unsigned short (*kt)[D + 8] = ks_[it % ST];
        unsigned short (*vt)[D + 8] = vs_[it % ST];
        fa_stage_ready<ST>(it, ntiles, issue);
        float sc[FA_TILE / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_TILE / 8; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk += 2) {
                u32 b[4];
                ldsm_b<D>(b, kt, nt, kk);
                mma_bf16(sc[nt], qa[kk], b[0], b[1]);
                mma_bf16(sc[nt], qa[kk + 1], b[2], b[3]);
            }
        }
        // Mask (boundary tiles only: interior tiles have every key present and visible to every
        // row of this warp; rows past T are never stored, so they need no mask), then the row
        // maxima of the raw scores over the 4 lanes sharing a row. The scale is positive, so it
        // is applied to the maxima and folded into the exponent's FMA below.
        bool masked = k0 + FA_TILE > d.s || pad || (d.causal && k0 + FA_TILE - 1 > wq + (d.s - d.t));
        if (masked) fa_mask_rows(sc, d, pad, bi, wq, k0);
        float mx[2] = {FA_NEG_INF, FA_NEG_INF};
#pragma unroll
        for (int nt = 0; nt < FA_TILE / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
        float corr[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(m[r], mx[r] * sl2);
            base[r] = mn == FA_NEG_INF ? 0.f : mn; // a row with nothing visible yet: exp2(-inf) = 0
            corr[r] = exp2_approx(m[r] - base[r]);
            m[r] = mn;
            if (!FA_ROWSUM_MMA) l[r] *= corr[r];
        }
#pragma unroll
        for (int i = 0; i < D / 8; ++i) { acc[i][0] *= corr[0]; acc[i][1] *= corr[0]; acc[i][2] *= corr[1]; acc[i][3] *= corr[1]; }
        if (FA_ROWSUM_MMA) { la[0] *= corr[0]; la[2] *= corr[1]; } // la[1], la[3]: duplicates, unread
        // P = exp2(s - m), the row sums (FA_ROWSUM_MMA: by an mma; else this lane's part, the
        // lanes combined at the end), P·V.
#pragma unroll
        for (int kk = 0; kk < FA_TILE / 16; ++kk) {
            float p[2][4];
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = exp2_approx(__fmaf_rn(sc[2 * kk + h2][e], sl2, -base[e >> 1]));
                    p[h2][e] = x;
                    if (!FA_ROWSUM_MMA) l[e >> 1] += x;
                }
            u32 pa[4] = {pack_bf16(p[0][0], p[0][1]), pack_bf16(p[0][2], p[0][3]), pack_bf16(p[1][0], p[1][1]), pack_bf16(p[1][2], p[1][3])};
            if (FA_ROWSUM_MMA) mma_bf16(la, pa, 0x3F803F80u, 0x3F803F80u); // B = ones (bf16 1.0 pairs)
#pragma unroll
            for (int nd = 0; nd < D / 8; nd += 2) {
                u32 b[4];
                ldsm_b_t<D>(b, vt, kk, nd);
                mma_bf16(acc[nd], pa, b[0], b[1]);
                mma_bf16(acc[nd + 1], pa, b[2], b[3]);
            }
        }
        if (ST == 2) __syncthreads(); // every warp is done with this buffer before it is refilled
    }
    if (FA_ROWSUM_MMA) {
        l[0] = la[0];
        l[1] = la[2];
    } else {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        }
    }
    fa_store_o<D>(acc, l, m, o, lse, d, bi, hi, bh, wq);
}

// The bf16 pairs' dot product a.lo·b.lo + a.hi·b.hi in f32 (delta = Σ_d dO·O, in fa_bwd_q_k).
__device__ __forceinline__ float dot_bf16x2(u32 a, u32 b) {
    return __uint_as_float(a << 16) * __uint_as_float(b << 16) + __uint_as_float(a & 0xffff0000u) * __uint_as_float(b & 0xffff0000u);
}

// dK, dV for 16 keys per warp, looping over query tiles. dout strided (do_s: batch, head, row).
template <int D> __device__ void fa_bwd_kv_k(const bf16* q, const bf16* k, const bf16* v, const u8* pad, const bf16* dout, const float* lse, const float* delta, bf16* dk, bf16* dv, FaDims d, u32 ds0, u32 ds1, u32 ds2) {
    const int ST = FaStages<D>::n;
    __shared__ __align__(16) unsigned short qs_[ST][FA_TILE][D + 8], gs_[ST][FA_TILE][D + 8];
    __shared__ float lse_b[ST][FA_TILE], del_b[ST][FA_TILE];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    u32 bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
    u32 k0 = blockIdx.x * (FA_WARPS * 16), wk = k0 + warp * 16;
    const bf16* qb = q + (u64)bi * d.qs[0] + (u64)hi * d.qs[1];
    const bf16* kb = k + (u64)bi * d.ks[0] + (u64)hi * d.ks[1];
    const bf16* vb = v + (u64)bi * d.vs[0] + (u64)hi * d.vs[1];
    const bf16* gb = dout + (u64)bi * ds0 + (u64)hi * ds1;
    const float sl2 = d.scale * LOG2E;
    u32 ka[D / 16][4], va[D / 16][4];
    load_a_global<D>(ka, kb, d.ks[2], wk, d.s);
    load_a_global<D>(va, vb, d.vs[2], wk, d.s);
    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[i][e] = dva[i][e] = 0.f;
    // Queries that can see any key of this block.
    u32 qstart = 0;
    if (d.causal) qstart = k0 > (d.s - d.t) ? k0 - (d.s - d.t) : 0;
    qstart = (qstart / FA_TILE) * FA_TILE;
    const u32 ntiles = qstart < d.t ? (d.t - qstart + FA_TILE - 1) / FA_TILE : 0;
    auto issue = [&](u32 it) {
        const u32 b = it % ST, r0 = qstart + it * FA_TILE;
        load_tile_async<D>(qs_[b], qb, d.qs[2], r0, d.t);
        load_tile_async<D>(gs_[b], gb, ds2, r0, d.t);
        for (int i = threadIdx.x; i < FA_TILE; i += blockDim.x) {
            if (r0 + i < d.t) {
                cp_async4(&lse_b[b][i], lse + (u64)bh * d.t + r0 + i, 4);
                cp_async4(&del_b[b][i], delta + (u64)bh * d.t + r0 + i, 4);
            } else {
                lse_b[b][i] = FA_INF; // P = 0 for queries past T
                del_b[b][i] = 0.f;
            }
        }
        cp_async_commit();
    };
    if (ST == 2 && ntiles > 0) issue(0);
    for (u32 it = 0; it < ntiles; ++it) {
        const u32 q0 = qstart + it * FA_TILE;
        unsigned short (*qt)[D + 8] = qs_[it % ST];
        unsigned short (*gt)[D + 8] = gs_[it % ST];
        const float* lse_s = lse_b[it % ST];
        const float* del_s = del_b[it % ST];
        fa_stage_ready<ST>(it, ntiles, issue);
        // P^T = exp2(s·scale·log2e − lse_i); dS^T = P^T ∘ (dP^T − delta_i). Interior tiles need
        // no mask: queries past T have lse = +inf (P = 0); keys past S are rows never stored.
        bool masked = pad || (d.causal && wk + 15 > q0 + (d.s - d.t));
        // The tile's queries in two halves of FA_HALF: the S^T and dP^T fragments of a half are
        // 32 registers, not 64 (at 175 registers only 2 blocks fit an SM; see FA_HALF).
#pragma unroll
        for (int h0 = 0; h0 < FA_TILE; h0 += FA_HALF) {
            // S^T = K Q^T and dP^T = V dO^T: rows = this warp's 16 keys, cols = the half's queries.
            float st[FA_HALF / 8][4], dpt[FA_HALF / 8][4];
#pragma unroll
            for (int n = 0; n < FA_HALF / 8; ++n) {
                const int nt = h0 / 8 + n;
                fa_dual_scores<D>(st[n], dpt[n], ka, va, qt, gt, nt);
            }
            if (masked) fa_mask_keys<FA_HALF>(st, d, pad, bi, wk, q0 + h0);
#pragma unroll
            for (int n = 0; n < FA_HALF / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    u32 qi = h0 + n * 8 + 2 * t + (e & 1);
                    float p = exp2_approx(__fmaf_rn(st[n][e], sl2, -lse_s[qi]));
                    st[n][e] = p;
                    dpt[n][e] = p * (dpt[n][e] - del_s[qi]);
                }
            // dV += P^T dO, dK += dS^T Q (k = query index).
#pragma unroll
            for (int c = 0; c < FA_HALF / 16; ++c) {
                const int kk = h0 / 16 + c;
                u32 pa[4] = {pack_bf16(st[2 * c][0], st[2 * c][1]), pack_bf16(st[2 * c][2], st[2 * c][3]), pack_bf16(st[2 * c + 1][0], st[2 * c + 1][1]), pack_bf16(st[2 * c + 1][2], st[2 * c + 1][3])};
                u32 sa[4] = {pack_bf16(dpt[2 * c][0], dpt[2 * c][1]), pack_bf16(dpt[2 * c][2], dpt[2 * c][3]), pack_bf16(dpt[2 * c + 1][0], dpt[2 * c + 1][1]), pack_bf16(dpt[2 * c + 1][2], dpt[2 * c + 1][3])};
#pragma unroll
                for (int nd = 0; nd < D / 8; nd += 2) {
                    u32 bg[4], bq[4];
                    ldsm_b_t<D>(bg, gt, kk, nd);
                    ldsm_b_t<D>(bq, qt, kk, nd);
                    mma_bf16(dva[nd], pa, bg[0], bg[1]);
                    mma_bf16(dva[nd + 1], pa, bg[2], bg[3]);
                    mma_bf16(dka[nd], sa, bq[0], bq[1]);
                    mma_bf16(dka[nd + 1], sa, bq[2], bq[3]);
                }
            }
        }
        if (ST == 2) __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        u32 j = wk + g + r * 8;
        if (j >= d.s) continue;
        u64 off = (u64)bi * d.gkv[0] + (u64)hi * d.gkv[1] + (u64)j * d.gkv[2];
        bf16* krow = dk + off;
        bf16* vrow = dv + off;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
            *(u32*)(krow + nd * 8 + 2 * t) = pack_bf16(dka[nd][2 * r] * d.scale, dka[nd][2 * r + 1] * d.scale);
            *(u32*)(vrow + nd * 8 + 2 * t) = pack_bf16(dva[nd][2 * r], dva[nd][2 * r + 1]);
        }
    }
}

// The dQ kernels' per-row set-up for this warp's rows wq + g and wq + g + 8 (index r): dr[r] =
// delta = Σ_d dO·O from the dO fragments ga and O's (O [B, T, H, D] as the forward wrote it),
// written to `delta` by the row's first lane, and lr[r] = the row's LSE (+inf past T).
template <int D> __device__ __forceinline__ void fa_delta_lse(const u32 (*ga)[4], const bf16* o, const float* lse, float* delta, const FaDims& d, u32 bi, u32 hi, u32 bh, u32 wq, float* lr, float* dr) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    dr[0] = dr[1] = 0.f;
    {
        u32 oa[D / 16][4];
        load_a_global<D>(oa, o + ((u64)bi * d.t * d.h + hi) * D, d.h * D, wq, d.t);
        // Fragment registers 0, 2 hold row g, registers 1, 3 row g + 8; the 4 lanes t of a row
        // hold its other columns.
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            dr[0] += dot_bf16x2(oa[ks][0], ga[ks][0]) + dot_bf16x2(oa[ks][2], ga[ks][2]);
            dr[1] += dot_bf16x2(oa[ks][1], ga[ks][1]) + dot_bf16x2(oa[ks][3], ga[ks][3]);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        dr[r] += __shfl_xor_sync(0xffffffffu, dr[r], 1);
        dr[r] += __shfl_xor_sync(0xffffffffu, dr[r], 2);
        const u32 i = wq + g + r * 8;
        lr[r] = i < d.t ? lse[(u64)bh * d.t + i] : FA_INF;
        if (i < d.t && t == 0) delta[(u64)bh * d.t + i] = dr[r];
    }
}

// dQ for 16 queries per warp, looping over key tiles. It runs before fa_bwd_kv_k and makes the
// delta both use, delta[bh, i] = Σ_d dO[i, d] · O[i, d], for its own rows from the dO fragments it
// holds anyway and O's (O [B, T, H, D] as the forward wrote it): no separate delta kernel.
// Measured on the H100 (one call, two binaries interleaved): backward 0.322 / 0.316 → 0.305 /
// 0.310 ms (bench ops --only attention), the gpt2-mini step 21.0 / 21.2 / 21.0 → 20.9 / 21.0 / 20.9.
template <int D> __device__ void fa_bwd_q_k(const bf16* q, const bf16* k, const bf16* v, const u8* pad, const bf16* dout, const float* lse, float* delta, bf16* dq, const bf16* o, FaDims d, u32 ds0, u32 ds1, u32 ds2) {
    const int ST = FaStages<D>::n;
    __shared__ __align__(16) unsigned short ks_[ST][FA_TILE][D + 8], vs_[ST][FA_TILE][D + 8];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    u32 bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
    u32 q0 = fa_query_tile() * (FA_WARPS * 16), wq = q0 + warp * 16;
    const bf16* qb = q + (u64)bi * d.qs[0] + (u64)hi * d.qs[1];
    const bf16* kb = k + (u64)bi * d.ks[0] + (u64)hi * d.ks[1];
    const bf16* vb = v + (u64)bi * d.vs[0] + (u64)hi * d.vs[1];
    const bf16* gb = dout + (u64)bi * ds0 + (u64)hi * ds1;
    const float sl2 = d.scale * LOG2E;
    u32 qa[D / 16][4], ga[D / 16][4];
    load_a_global<D>(qa, qb, d.qs[2], wq, d.t);
    load_a_global<D>(ga, gb, ds2, wq, d.t);
    float lr[2], dr[2];
    fa_delta_lse<D>(ga, o, lse, delta, d, bi, hi, bh, wq, lr, dr);
    float dqa[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;
    const u32 ntiles = fa_key_tiles(d, q0);
    auto issue = [&](u32 it) { fa_issue_kv<D>(ks_[it % ST], vs_[it % ST], kb, vb, d, it * FA_TILE); };
    if (ST == 2 && ntiles > 0) issue(0);
    for (u32 it = 0; it < ntiles; ++it) {
        const u32 k0 = it * FA_TILE;
        unsigned short (*kt)[D + 8] = ks_[it % ST];
        unsigned short (*vt)[D + 8] = vs_[it % ST];
        fa_stage_ready<ST>(it, ntiles, issue);
        float sc[FA_TILE / 8][4], dp[FA_TILE / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_TILE / 8; ++nt) {
            fa_dual_scores<D>(sc[nt], dp[nt], qa, ga, kt, vt, nt);
        }
        bool masked = k0 + FA_TILE > d.s || pad || (d.causal && k0 + FA_TILE - 1 > wq + (d.s - d.t));
        if (masked) fa_mask_rows(sc, d, pad, bi, wq, k0);
#pragma unroll
        for (int nt = 0; nt < FA_TILE / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p = exp2_approx(__fmaf_rn(sc[nt][e], sl2, -lr[e >> 1]));
                sc[nt][e] = p * (dp[nt][e] - dr[e >> 1]);
            }
        // dQ += dS K (k = key index).
#pragma unroll
        for (int kk = 0; kk < FA_TILE / 16; ++kk) {
            u32 sa[4] = {pack_bf16(sc[2 * kk][0], sc[2 * kk][1]), pack_bf16(sc[2 * kk][2], sc[2 * kk][3]), pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]), pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < D / 8; nd += 2) {
                u32 b[4];
                ldsm_b_t<D>(b, kt, kk, nd);
                mma_bf16(dqa[nd], sa, b[0], b[1]);
                mma_bf16(dqa[nd + 1], sa, b[2], b[3]);
            }
        }
        if (ST == 2) __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        u32 i = wq + g + r * 8;
        if (i >= d.t) continue;
        bf16* row = dq + (u64)bi * d.gq[0] + (u64)hi * d.gq[1] + (u64)i * d.gq[2];
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) *(u32*)(row + nd * 8 + 2 * t) = pack_bf16(dqa[nd][2 * r] * d.scale, dqa[nd][2 * r + 1] * d.scale);
    }
}

// Blocks per SM each kernel is compiled for (__launch_bounds__' second argument: a register cap
// of 65536 / (128 · n)), per head dim. For d32, measured on the H100 (bench ops, one call):
// forward 1 → 5 blocks (126 → 96 registers, 16 bytes spilled) 0.375 → 0.311 ms; dQ 1 → 5
// (128 → 96) and dK/dV 1 → 4 (135 → 128) backward 0.947 → 0.819 / 0.893 ms; the gpt2-mini step
// 35.5 → 32.6 ms with all three. After the masks moved off the interior tiles (one call, fwd /
// bwd ms, FMLAB_CUDA_DEFINES): as 5, 4, 5: 0.132 / 0.372; forward 4: 0.130 / 0.359, 3: 0.127 /
// 0.377; dK/dV 3: 0.132 / 0.363; dQ 4 (128 registers, 36 bytes spilled instead of 240): 0.130 /
// 0.331, taken. d64/d128 are not tuned (0: the compiler's own choice; an explicit 1 lets it
// take up to 255 registers, more than it does unasked). FMLAB_CUDA_DEFINES can set
// FA_FWD_MINB, FA_KV_MINB, FA_Q_MINB for every head dim to try others (cuda/mod.rs).
#ifdef FA_FWD_MINB
#define FA_FWD_B(d) FA_FWD_MINB
#else
#define FA_FWD_B(d) d
#endif
#ifdef FA_KV_MINB
#define FA_KV_B(d) FA_KV_MINB
#else
#define FA_KV_B(d) d
#endif
#ifdef FA_Q_MINB
#define FA_Q_B(d) FA_Q_MINB
#else
#define FA_Q_B(d) d
#endif
#define FA(DIM, FWDB, KVB, QB) \
extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, FA_FWD_B(FWDB)) fa_fwd_d##DIM(const bf16* q, const bf16* k, const bf16* v, const u8* pad, bf16* o, float* lse, FaDims d) { fa_fwd_k<DIM>(q, k, v, pad, o, lse, d); } \
extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, FA_KV_B(KVB)) fa_bwd_kv_d##DIM(const bf16* q, const bf16* k, const bf16* v, const u8* pad, const bf16* dout, const float* lse, const float* delta, bf16* dk, bf16* dv, FaDims d, u32 s0, u32 s1, u32 s2) { fa_bwd_kv_k<DIM>(q, k, v, pad, dout, lse, delta, dk, dv, d, s0, s1, s2); } \
extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, FA_Q_B(QB)) fa_bwd_q_d##DIM(const bf16* q, const bf16* k, const bf16* v, const u8* pad, const bf16* dout, const float* lse, float* delta, bf16* dq, const bf16* o, FaDims d, u32 s0, u32 s1, u32 s2) { fa_bwd_q_k<DIM>(q, k, v, pad, dout, lse, delta, dq, o, d, s0, s1, s2); }
// flash_sm90.cu includes this file for its helpers only (FA_HELPERS_ONLY): these kernels live in
// the `flash` module.
#ifndef FA_HELPERS_ONLY
FA(32, 5, 4, 4)
FA(64, 0, 0, 0)
FA(128, 0, 0, 0)
#endif
