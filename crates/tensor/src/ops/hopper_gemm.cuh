// A GEMM loop for Hopper (sm_90a: wgmma, the TMA unit, mbarriers) whose epilogue runs on the
// accumulators in registers: out = H·Wᵀ tile by tile, each tile handed to a caller's lambda and
// never written as such. Prepended to the Hopper kernel sources that use it (cuda/mod.rs):
// classifier_sm90.cu (the LM head's cross-entropy: the logits never leave registers) and
// mlp_sm90.cu (the GELU MLP's backward: gelu' applied and the bias gradient summed as the
// product is made).
//
// Shapes: H [n, K] bf16, W [m, K] bf16 (m a multiple of LM_BN), both contiguous and read through
// TMA tensor maps, K = 64·KA (KA = 1..4). Block: 384 threads = two consumer warpgroups (128 rows
// of H each, as two 64-row wgmma blocks) and a producer warpgroup (lm_loop), tiles of LM_BN
// columns of the output (rows of W); each block walks a range of tiles with its rows of H
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
#define LM_ACC LM_BN // accumulator registers a thread: two m64nN blocks of N/2 f32
#define LM_THREADS 256

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

// Descriptor of a W tile read N-major (transposed B: its rows are the product's K dimension):
// in the 128-byte swizzle, a 16-step of K is 16 consecutive 128-byte rows (two 8-row groups
// 1024 bytes apart: the stride byte offset) of one 64-column slab (the leading byte offset,
// unused by a 64-wide N).
__device__ __forceinline__ u64 lm_desc_mn(u32 s) {
    return (u64)((s & 0x3FFFF) >> 4) | ((u64)((LM_BN * 128) >> 4) << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}
// d (+)= A·B for A 64×16 from registers and B 16×64 N-major in shared memory.
__device__ __forceinline__ void lm_wgmma_rs_t(float* d, const u32* a, u64 db, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
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
// A TMA tensor map (CUtensorMap: 128 opaque bytes the host encodes, cuda/mod.rs `tma_map_bf16`):
// a [rows, 64·KA] bf16 matrix in boxes of 64 columns (128 bytes) × box rows, written to shared
// memory in the 128-byte swizzle wgmma's descriptors name. Passed by value as a
// __grid_constant__ kernel parameter, which the TMA unit reads from its parameter address.
struct __align__(64) LmTmaMap { u64 opaque[16]; };
// The box at (column c, row r) of `map` into shared address `dst`, completing on `bar`. Rows past
// the matrix's end arrive as zeros (and count in the bytes all the same).
__device__ __forceinline__ void lm_tma(u32 dst, const LmTmaMap* map, int c, int r, u32 bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst), "l"((u64)map), "r"(c), "r"(r), "r"(bar) : "memory");
}

// The set-up both loops share (lm_loop; classifier_sm90.cu's lmce_grad_dh_k): the shared-memory
// ring (H's tile at `base`, STAGES W tiles from `sw0`, their FULL and EMPTY mbarriers), then the
// producer warpgroup, one thread of which has the TMA unit copy H's tile (BM rows) once and W's
// tiles t0..t0 + nt into the ring, as far ahead as it allows. `consumer` is false on the
// producer's threads (done), true on the consumers', whose register budget is then raised:
// registers move from the producer (24 a thread) to the consumers (240) by setmaxnreg,
// 2·128·240 + 128·24 ≤ 65536, all that 384 threads at 168 (the launch's share) give back and take.
// With NW = 2 a stage holds two W tiles, of `tmw` and then of `tmw2`, for the same columns
// (mlp_sm90.cu's recomputing backward multiplies against two weights a tile). BM = 0: no
// resident tile (that kernel keeps its rows in registers). MN1 / MN2: that map is of the
// weight stored [K, m] (m contiguous), its tile copied as K rows of 64 columns, which wgmma
// reads N-major (`lm_desc_mn`); same bytes and layout of a slab either way.
struct LmRing { u32 base, sw0, full0, empty0; bool consumer; };
template <int KA, int BM, int STAGES, int NW = 1, int MN1 = 0, int MN2 = 0> __device__ __forceinline__ LmRing lm_pipeline(const LmTmaMap* tmh, const LmTmaMap* tmw, u32 r0, u32 t0, u32 nt, const LmTmaMap* tmw2 = nullptr) {
    extern __shared__ unsigned char lm_raw[];
    __shared__ __align__(8) u64 lm_bars[2 * STAGES];
    LmRing q;
    q.base = (smem_addr(lm_raw) + 1023) & ~1023u;
    q.sw0 = q.base + KA * BM * 128;
    q.full0 = smem_addr(&lm_bars[0]);
    q.empty0 = smem_addr(&lm_bars[STAGES]);
    const u32 base = q.base, sw0 = q.sw0, full0 = q.full0, empty0 = q.empty0;
    const u32 TA = KA * BM * 128, TW = KA * LM_BN * 128 * NW; // bytes of H's tile, of one stage's W tiles
    if (threadIdx.x == 0) {
        for (int st = 0; st < STAGES; ++st) {
            mbar_init(full0 + 8 * st, 1);
            mbar_init(empty0 + 8 * st, LM_THREADS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x >= LM_THREADS) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
        q.consumer = false;
        if (threadIdx.x != LM_THREADS) return q;
        for (u32 k = 0; k < nt; ++k) {
            u32 st = k % STAGES, full = full0 + 8 * st;
            if (k >= STAGES) mbar_wait(empty0 + 8 * st, (k / STAGES - 1) & 1); // tile k - STAGES is done with
            mbar_expect(full, TW + (k == 0 ? TA : 0));
            if (k == 0 && BM > 0)
#pragma unroll
                for (int s = 0; s < KA; ++s) lm_tma(base + s * (BM * 128), tmh, 64 * s, r0, full);
#pragma unroll
            for (int s = 0; s < KA; ++s) lm_tma(sw0 + st * TW + s * (LM_BN * 128), tmw, MN1 ? (t0 + k) * LM_BN : 64 * s, MN1 ? 64 * s : (t0 + k) * LM_BN, full);
            if (NW == 2)
#pragma unroll
                for (int s = 0; s < KA; ++s) lm_tma(sw0 + st * TW + (KA + s) * (LM_BN * 128), tmw2, MN2 ? (t0 + k) * LM_BN : 64 * s, MN2 ? 64 * s : (t0 + k) * LM_BN, full);
        }
        return q;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
    q.consumer = true;
    return q;
}

// The shared loop of both passes, warp-specialized (lm_pipeline): threads 0-255 (two
// warpgroups) multiply and run the epilogue `epi(d, c0)` on each tile's accumulators (c0: the
// tile's first vocabulary column); the producer warpgroup (threads 256-383) copies H's tile and
// W's tiles t0..t1. ptxas allocates each side within its own budget, so state the consumers'
// epilogue keeps (`init`) is made after the increase: made before it, it spilled. Consumers keep
// two register accumulators, so the tensor cores multiply tile i + 1 while the warpgroup runs
// tile i's epilogue.
template <int KA, int RS, typename Init, typename Epi> __device__ __forceinline__ void lm_loop(const LmTmaMap* tmh, const LmTmaMap* tmw, u32 r0, u32 t0, u32 t1, Init& init, Epi& epi) {
    const u32 TW = KA * LM_BN * 128; // bytes of one W tile
    const LmRing q = lm_pipeline<KA, LM_BM, LM_STAGES>(tmh, tmw, r0, t0, t1 - t0);
    if (!q.consumer) return;
    const u32 base = q.base, sw0 = q.sw0, full0 = q.full0, empty0 = q.empty0;
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

// This thread's rows of a 256-row block: warpgroup wg holds rows 128·wg.., as two 64-row wgmma
// blocks (sub), whose warps hold 16 rows each; index 2·sub + r for the rows g and g + 8.
__device__ __forceinline__ void lm_rows(u32* rows, u32 r0) {
    u32 wg = threadIdx.x >> 7, wl = (threadIdx.x >> 5) & 3, g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int sub = 0; sub < 2; ++sub)
#pragma unroll
        for (int r = 0; r < 2; ++r) rows[2 * sub + r] = r0 + 128 * wg + 64 * sub + 16 * wl + g + 8 * r;
}

// The quad transpose of the epilogues' 16-byte stores. Lane t of a quad holds, for one of its
// rows, the bf16 pairs a[jj] = columns 8(4q + jj) + 2t, +1 (jj = 0..3) of an accumulator tile;
// after two butterfly stages of shuffles it holds x[0..4) = columns 8(4q + t) .. + 7 of that row,
// in order: one 16-byte store a lane, so a warp writes 8 rows × 64 contiguous bytes (whole
// sectors), not 8 × 16 bytes.
__device__ __forceinline__ void lm_quad_transpose(const u32* a, int t, u32* x) {
    const int b0 = t & 1, b1 = (t >> 1) & 1;
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
    x[0] = b1 ? y2 : y0;
    x[1] = b1 ? y3 : y1;
    x[2] = b1 ? y0 : y2;
    x[3] = b1 ? y1 : y3;
}
