// Flash attention for head_dim 32 on Hopper (sm_90a): the kernels of flash.cu (prepended, its
// helpers only: FA_HELPERS_ONLY) with every product on wgmma instead of mma.sync. Same
// arguments, grids, masks, LSE and outputs as fa_fwd_d32 / fa_bwd_q_d32 / fa_bwd_kv_d32, plus
// two TMA maps of the operands whose tiles a kernel walks (FW_MAPS; the pointers to those are
// then unread), so flash.rs launches either set.
//
// Why: at gpt2-mini's shapes the mma.sync kernels keep the tensor pipe ~35% busy and issue on
// ~50% of cycles (ncu, session 16): every product is a chain of small synchronous mmas whose
// latency the softmax waits on. wgmma multiplies a warpgroup's 64 rows against a whole 64-row
// tile in one asynchronous instruction group, reading the tile straight from shared memory
// (no ldmatrix) and the block's own rows from registers.
//
// A block is one warpgroup (128 threads, FA_WARPS = 4: warp w holds rows 16w..16w+15 of the
// block's 64, in the mma.sync fragment layout flash.cu uses, which is also wgmma's register
// layout for A and for the accumulators: d[4j + e] is the mma.sync C fragment of columns
// 8j..8j+7). Tiles of the other side (64 rows × 32 columns, 4 KB) are copied into two stages by
// the TMA unit (one thread issues a tile's copies, an mbarrier says when they landed), in the
// 64-byte swizzle: the 16-byte chunk c of row r at r·64 + 16·(c ^ ((r / 2) % 4)), the pattern
// wgmma's descriptors name as layout type 2. The same tile serves as B both K-major (scores:
// keys × head dims, D the K dimension) and N-major (P·V, dS·K and the backward's P^T·dO,
// dS^T·Q: rows the K dimension, head dims N). (Copied by every thread's cp.async instead, the
// forward took 0.113 ms against 0.099 and the backward 0.253 against 0.215: the copies'
// addressing was ~170 of the dK/dV loop's ~460 instructions a warp and tile.)
#define FW_ROWS 64
static_assert(FA_TILE == FW_ROWS && FA_WARPS * 16 == FW_ROWS, "flash_sm90.cu shares flash.cu's 64-row tiles and masks (FA_TILE = 64, FA_WARPS = 4)");
#define FW_TILE_BYTES (FW_ROWS * 64)

// Descriptor of a 64-byte-swizzled tile at shared address s: stride byte offset 512 (8 rows of
// 64 bytes; between 8-row groups along N for K-major, along K for N-major), leading byte offset
// unused by either here (K-major: K = 32 fits one swizzle row; N-major: N = 32 fits one).
__device__ __forceinline__ u64 fw_desc(u32 s) {
    return (u64)((s & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(512 >> 4) << 32) | ((u64)2 << 62);
}
// d (+)= A·B for A 64×16 from registers and B 16×32 N-major in shared memory (the output
// products: 16 accumulators a thread).
__device__ __forceinline__ void fw_wgmma_n32_t(float* d, const u32* a, u64 db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}
__device__ __forceinline__ void fw_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void fw_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// Keeps every read of N accumulators after the wait that precedes this.
template <int N> __device__ __forceinline__ void fw_fence_acc(float* d) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// S (64 rows × 64 tile rows) = A · tileᵀ over D = 32: A from registers (a[ks], ks = 16-column
// step), the tile K-major; one group, issued and waited for.
__device__ __forceinline__ void fw_scores(float* s, const u32 (*a)[4], u32 tile) {
    lm_wgmma_rs(s, a[0], fw_desc(tile), 0);
    lm_wgmma_rs(s, a[1], fw_desc(tile + 32), 1);
}
// The backward's paired scores, s1 = a1 · t1ᵀ and s2 = a2 · t2ᵀ (S and dP in dQ's kernel, their
// transposes in dK/dV's): one group, issued and waited for.
__device__ __forceinline__ void fw_dual_scores(float* s1, float* s2, const u32 (*a1)[4], const u32 (*a2)[4], u32 t1, u32 t2) {
    fw_fence();
    fw_scores(s1, a1, t1);
    fw_scores(s2, a2, t2);
    fw_commit();
    lm_wgmma_wait<0>();
    fw_fence_acc<32>(s1);
    fw_fence_acc<32>(s2);
}
// acc (64 rows × 32) += P · tile, P (64 × 64) given as its C fragments p (the scores' layout),
// rounded to bf16 here; the tile N-major, 16 of its rows (1024 bytes) a k-step.
__device__ __forceinline__ void fw_pv(float* acc, const float* p, u32 tile) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const float* x = p + 8 * kk;
        u32 pa[4] = {pack_bf16(x[0], x[1]), pack_bf16(x[2], x[3]), pack_bf16(x[4], x[5]), pack_bf16(x[6], x[7])};
        fw_wgmma_n32_t(acc, pa, fw_desc(tile + 1024 * kk), 1);
    }
}

// The box (head dims 0..31, rows r0..r0 + 63, head h, batch b) of a [B, H, rows,
// 32] view (`map`: 4-D, strided, 64-byte swizzle; rows past the end arrive as zeros) into `dst`,
// completing on `bar`.
__device__ __forceinline__ void fw_tma4(u32 dst, const LmTmaMap* map, u32 r0, u32 h, u32 b, u32 bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];" ::"r"(dst), "l"((u64)map), "r"(0), "r"(r0), "r"(h), "r"(b), "r"(bar) : "memory");
}
// A stage: tiles A and B (K and V, or Q and dO) of the same 64 rows, at dst and dst + 4 KB.
// Thread 0 has the TMA unit copy them, completing on the stage's mbarrier.
__device__ __forceinline__ void fw_issue_pair(u32 dst, u32 bar, const LmTmaMap* ma, const LmTmaMap* mb, u32 r0, u32 h, u32 b) {
    if (threadIdx.x == 0) {
        mbar_expect(bar, 2 * FW_TILE_BYTES);
        fw_tma4(dst, ma, r0, h, b, bar);
        fw_tma4(dst + FW_TILE_BYTES, mb, r0, h, b, bar);
    }
}
// The two stages' mbarriers, made before any copy.
__device__ __forceinline__ void fw_bars_init(u32 bars) {
    if (threadIdx.x == 0) {
        mbar_init(bars, 1);
        mbar_init(bars + 8, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
}
// Tile `it`'s copies (stage it % 2) landed and are visible to every warp, and every warp is done
// with tile it − 1, whose stage the next copies refill. The cp.async wait is for the dK/dV
// kernel's LSE and delta copies (none in flight elsewhere).
__device__ __forceinline__ void fw_tile_ready(u32 bars, u32 it) {
    mbar_wait(bars + 8 * (it & 1), (it >> 1) & 1);
    cp_async_wait<0>();
    __syncthreads();
}

// Blocks per SM each kernel is compiled for (FMLAB_CUDA_DEFINES to try others). Measured on the
// H100 (bench ops --only attention, one call each): forward 5 (94 registers) 0.109 ms against
// 4: 0.113 (cp.async version); dQ 4 (128 registers) and dK/dV 4 (64 bytes spilled) gave
// backward 0.213 and 0.229 against 0.211-0.213 at 3 / 3.
#ifndef FW_FWD_MINB
#define FW_FWD_MINB 5
#endif
#ifndef FW_Q_MINB
#define FW_Q_MINB 3
#endif
#ifndef FW_KV_MINB
#define FW_KV_MINB 3
#endif
// The TMA maps (flash.rs `tma_rows`) follow flash.cu's arguments: of k and v (forward, dQ), of
// q and dO (dK/dV).
#define FW_MAPS const __grid_constant__ LmTmaMap ma, const __grid_constant__ LmTmaMap mb

extern "C" __global__ void __launch_bounds__(128, FW_FWD_MINB) fa_fwd_sm90_d32(const bf16* q, const bf16* k, const bf16* v, const u8* pad, bf16* o, float* lse, FaDims d, FW_MAPS) {
    __shared__ __align__(1024) unsigned char kv_[2][2][FW_TILE_BYTES];
    __shared__ __align__(8) u64 bars_[2];
    const int warp = threadIdx.x >> 5;
    const u32 bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
    const u32 q0 = fa_query_tile() * FW_ROWS, wq = q0 + warp * 16, bars = smem_addr(bars_);
    const bf16* qb = q + (u64)bi * d.qs[0] + (u64)hi * d.qs[1];
    fw_bars_init(bars);
    const u32 ntiles = fa_key_tiles(d, q0);
    auto issue = [&](u32 it) { fw_issue_pair(smem_addr(kv_[it & 1][0]), bars + 8 * (it & 1), &ma, &mb, it * FW_ROWS, hi, bi); };
    if (ntiles > 0) issue(0);
    u32 qa[2][4];
    load_a_global<32>(qa, qb, d.qs[2], wq, d.t);
    float acc[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i] = 0.f;
    float m[2] = {FA_NEG_INF, FA_NEG_INF}, l[2] = {0.f, 0.f};
    const float sl2 = d.scale * LOG2E;
    for (u32 it = 0; it < ntiles; ++it) {
        const u32 k0 = it * FW_ROWS, kt = smem_addr(kv_[it & 1][0]), vt = kt + FW_TILE_BYTES;
        fw_tile_ready(bars, it);
        if (it + 1 < ntiles) issue(it + 1);
        float s[32];
        fw_fence();
        fw_scores(s, qa, kt);
        fw_commit();
        lm_wgmma_wait<0>();
        fw_fence_acc<32>(s);
        float (*sc)[4] = (float (*)[4])s;
        // Mask, row maxima, rescale and exponentials as fa_fwd_k (flash.cu) does them, the row
        // sums by float adds (as 8 more columns of P·V against a tile of ones, the forward took
        // 0.119 / 0.121 ms against 0.117: not kept).
        const bool masked = k0 + FW_ROWS > d.s || pad || (d.causal && k0 + FW_ROWS - 1 > wq + (d.s - d.t));
        if (masked) fa_mask_rows(sc, d, pad, bi, wq, k0);
        float mx[2] = {FA_NEG_INF, FA_NEG_INF};
#pragma unroll
        for (int i = 0; i < 32; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
        float corr[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r] * sl2);
            base[r] = mn == FA_NEG_INF ? 0.f : mn;
            corr[r] = exp2_approx(m[r] - base[r]);
            m[r] = mn;
            l[r] *= corr[r];
        }
#pragma unroll
        for (int i = 0; i < 16; ++i) acc[i] *= corr[(i >> 1) & 1];
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            const int r = (i >> 1) & 1;
            s[i] = exp2_approx(__fmaf_rn(s[i], sl2, -base[r]));
            l[r] += s[i];
        }
        fw_fence();
        fw_pv(acc, s, vt);
        fw_commit();
        lm_wgmma_wait<0>();
        fw_fence_acc<16>(acc);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    fa_store_o<32>((const float (*)[4])acc, l, m, o, lse, d, bi, hi, bh, wq);
}

// dQ for the block's 64 queries (and delta, as fa_bwd_q_k), looping over key tiles.
extern "C" __global__ void __launch_bounds__(128, FW_Q_MINB) fa_bwd_q_sm90_d32(const bf16* q, const bf16* k, const bf16* v, const u8* pad, const bf16* dout, const float* lse, float* delta, bf16* dq, const bf16* o, FaDims d, u32 ds0, u32 ds1, u32 ds2, FW_MAPS) {
    __shared__ __align__(1024) unsigned char kv_[2][2][FW_TILE_BYTES];
    __shared__ __align__(8) u64 bars_[2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u32 bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
    const u32 q0 = fa_query_tile() * FW_ROWS, wq = q0 + warp * 16, bars = smem_addr(bars_);
    const bf16* qb = q + (u64)bi * d.qs[0] + (u64)hi * d.qs[1];
    const bf16* gb = dout + (u64)bi * ds0 + (u64)hi * ds1;
    fw_bars_init(bars);
    const u32 ntiles = fa_key_tiles(d, q0);
    auto issue = [&](u32 it) { fw_issue_pair(smem_addr(kv_[it & 1][0]), bars + 8 * (it & 1), &ma, &mb, it * FW_ROWS, hi, bi); };
    if (ntiles > 0) issue(0);
    const float sl2 = d.scale * LOG2E;
    u32 qa[2][4], ga[2][4];
    load_a_global<32>(qa, qb, d.qs[2], wq, d.t);
    load_a_global<32>(ga, gb, ds2, wq, d.t);
    float lr[2], dr[2];
    fa_delta_lse<32>(ga, o, lse, delta, d, bi, hi, bh, wq, lr, dr);
    float dqa[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) dqa[i] = 0.f;
    for (u32 it = 0; it < ntiles; ++it) {
        const u32 k0 = it * FW_ROWS, kt = smem_addr(kv_[it & 1][0]), vt = kt + FW_TILE_BYTES;
        fw_tile_ready(bars, it);
        if (it + 1 < ntiles) issue(it + 1);
        float s[32], dp[32];
        fw_dual_scores(s, dp, qa, ga, kt, vt);
        const bool masked = k0 + FW_ROWS > d.s || pad || (d.causal && k0 + FW_ROWS - 1 > wq + (d.s - d.t));
        if (masked) fa_mask_rows((float (*)[4])s, d, pad, bi, wq, k0);
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            const int r = (i >> 1) & 1;
            const float p = exp2_approx(__fmaf_rn(s[i], sl2, -lr[r]));
            s[i] = p * (dp[i] - dr[r]);
        }
        // dQ += dS K (k = key index: the K tile N-major).
        fw_fence();
        fw_pv(dqa, s, kt);
        fw_commit();
        lm_wgmma_wait<0>();
        fw_fence_acc<16>(dqa);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 i = wq + g + r * 8;
        if (i >= d.t) continue;
        bf16* row = dq + (u64)bi * d.gq[0] + (u64)hi * d.gq[1] + (u64)i * d.gq[2];
#pragma unroll
        for (int j = 0; j < 4; ++j) *(u32*)(row + j * 8 + 2 * t) = pack_bf16(dqa[4 * j + 2 * r] * d.scale, dqa[4 * j + 2 * r + 1] * d.scale);
    }
}

// dK, dV for the block's 64 keys, looping over query tiles (as fa_bwd_kv_k).
extern "C" __global__ void __launch_bounds__(128, FW_KV_MINB) fa_bwd_kv_sm90_d32(const bf16* q, const bf16* k, const bf16* v, const u8* pad, const bf16* dout, const float* lse, const float* delta, bf16* dk, bf16* dv, FaDims d, u32 ds0, u32 ds1, u32 ds2, FW_MAPS) {
    __shared__ __align__(1024) unsigned char qg_[2][2][FW_TILE_BYTES];
    __shared__ float lse_b[2][FW_ROWS], del_b[2][FW_ROWS];
    __shared__ __align__(8) u64 bars_[2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u32 bh = blockIdx.y, bi = bh / d.h, hi = bh % d.h;
    const u32 k0 = blockIdx.x * FW_ROWS, wk = k0 + warp * 16, bars = smem_addr(bars_);
    const bf16* kb = k + (u64)bi * d.ks[0] + (u64)hi * d.ks[1];
    const bf16* vb = v + (u64)bi * d.vs[0] + (u64)hi * d.vs[1];
    fw_bars_init(bars);
    u32 qstart = 0;
    if (d.causal) qstart = k0 > (d.s - d.t) ? k0 - (d.s - d.t) : 0;
    qstart = (qstart / FW_ROWS) * FW_ROWS;
    const u32 ntiles = qstart < d.t ? (d.t - qstart + FW_ROWS - 1) / FW_ROWS : 0;
    // Tile it's Q and dO, and its 64 queries' LSE (threads 0-63) and delta (64-127) by cp.async;
    // queries past T get LSE +inf (P = 0) and delta 0.
    auto issue = [&](u32 it) {
        const u32 b = it & 1, r0 = qstart + it * FW_ROWS, i = threadIdx.x & (FW_ROWS - 1);
        fw_issue_pair(smem_addr(qg_[b][0]), bars + 8 * b, &ma, &mb, r0, hi, bi);
        float* dst = threadIdx.x < FW_ROWS ? &lse_b[b][i] : &del_b[b][i];
        if (r0 + i < d.t) cp_async4(dst, (threadIdx.x < FW_ROWS ? lse : delta) + (u64)bh * d.t + r0 + i, 4);
        else *dst = threadIdx.x < FW_ROWS ? FA_INF : 0.f;
        cp_async_commit();
    };
    if (ntiles > 0) issue(0);
    const float sl2 = d.scale * LOG2E;
    u32 ka[2][4], va[2][4];
    load_a_global<32>(ka, kb, d.ks[2], wk, d.s);
    load_a_global<32>(va, vb, d.vs[2], wk, d.s);
    float dka[16], dva[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) dka[i] = dva[i] = 0.f;
    for (u32 it = 0; it < ntiles; ++it) {
        const u32 q0 = qstart + it * FW_ROWS, qt = smem_addr(qg_[it & 1][0]), gt = qt + FW_TILE_BYTES;
        const float* lse_s = lse_b[it & 1];
        const float* del_s = del_b[it & 1];
        fw_tile_ready(bars, it);
        if (it + 1 < ntiles) issue(it + 1);
        // S^T = K Q^T and dP^T = V dO^T: rows = this warp's 16 keys, columns = the tile's queries.
        float st[32], dpt[32];
        fw_dual_scores(st, dpt, ka, va, qt, gt);
        const bool masked = pad || (d.causal && wk + 15 > q0 + (d.s - d.t));
        if (masked) fa_mask_keys<FW_ROWS>((float (*)[4])st, d, pad, bi, wk, q0);
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            const u32 qi = (i >> 2) * 8 + 2 * t + (i & 1);
            const float p = exp2_approx(__fmaf_rn(st[i], sl2, -lse_s[qi]));
            st[i] = p;
            dpt[i] = p * (dpt[i] - del_s[qi]);
        }
        // dV += P^T dO, dK += dS^T Q (k = query index: the tiles N-major).
        fw_fence();
        fw_pv(dva, st, gt);
        fw_pv(dka, dpt, qt);
        fw_commit();
        lm_wgmma_wait<0>();
        fw_fence_acc<16>(dva);
        fw_fence_acc<16>(dka);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 j = wk + g + r * 8;
        if (j >= d.s) continue;
        const u64 off = (u64)bi * d.gkv[0] + (u64)hi * d.gkv[1] + (u64)j * d.gkv[2];
        bf16* krow = dk + off;
        bf16* vrow = dv + off;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            *(u32*)(krow + jj * 8 + 2 * t) = pack_bf16(dka[4 * jj + 2 * r] * d.scale, dka[4 * jj + 2 * r + 1] * d.scale);
            *(u32*)(vrow + jj * 8 + 2 * t) = pack_bf16(dva[4 * jj + 2 * r], dva[4 * jj + 2 * r + 1]);
        }
    }
}
