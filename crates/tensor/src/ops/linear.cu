// A mixed-precision Linear's bias gradient (ops/linear.rs).

// Column sums of a 16-bit [r, k] matrix into f32 (a mixed-precision Linear's bias gradient, next
// to its weight-gradient GEMM): 16-byte loads, f32 sums. Block (32, 8): a strip of 256 columns (8
// per thread) × 8 row lanes; grid (k/256 strips, splits), each split a contiguous run of rows.
// k % 8 == 0 and x 16-byte aligned (the host checks). Partials f32 [splits, k];
// `colsum16_final` adds them in a fixed order (deterministic).
template <typename T> __device__ void colsum16_k(const T* x, float* part, u32 r, u32 k, u32 rows_per_split) {
    __shared__ float sh[8][257];
    u32 c0 = blockIdx.x * 256 + threadIdx.x * 8;
    u32 r0 = blockIdx.y * rows_per_split, r1 = min(r, r0 + rows_per_split);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (c0 < k) {
        // Four rows in flight per lane (the loads issue before the adds).
        u32 i = r0 + threadIdx.y;
        for (; i + 24 < r1; i += 32) {
            Pack<T> a[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) a[q] = *(const Pack<T>*)(x + (u64)(i + 8 * q) * k + c0);
#pragma unroll
            for (int q = 0; q < 4; ++q)
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[e] += (float)ld(a[q].v[e]);
        }
        for (; i < r1; i += 8) {
            Pack<T> a = *(const Pack<T>*)(x + (u64)i * k + c0);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] += (float)ld(a.v[e]);
        }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) sh[threadIdx.y][threadIdx.x * 8 + e] = acc[e];
    __syncthreads();
    // 256 threads, one column each, add the 8 row lanes in order.
    u32 t = threadIdx.y * 32 + threadIdx.x, c = blockIdx.x * 256 + t;
    if (c < k) {
        float s = sh[0][t];
        for (int j = 1; j < 8; ++j) s += sh[j][t];
        part[(u64)blockIdx.y * k + c] = s;
    }
}
// y[c] = Σ_s part[s, c] in a fixed order: block (8, 128), grid k/8; each of a column's 128 lanes
// adds at most splits/128 partials (independent loads, in flight together), then a fixed tree over
// the lanes in shared memory (deterministic). A (32, 32) block per 32 columns, 32 lanes a column,
// was bound by each thread's chain of loads: gpt2-mini's 48 calls a step 0.47 → 0.33 ms (eager
// profile, H100), 12 of them over 1024 partial rows (the MLP kernel's).
extern "C" __global__ void __launch_bounds__(1024) colsum16_final(const float* part, float* y, u32 k, u32 splits) {
    __shared__ float sh[128][9];
    u32 c = blockIdx.x * 8 + threadIdx.x;
    float s = 0;
    if (c < k) {
#pragma unroll 8
        for (u32 j = threadIdx.y; j < splits; j += 128) s += part[(u64)j * k + c];
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
#pragma unroll
    for (u32 w = 64; w > 0; w >>= 1) {
        if (threadIdx.y < w) sh[threadIdx.y][threadIdx.x] += sh[threadIdx.y + w][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && c < k) y[c] = sh[0][threadIdx.x];
}
extern "C" __global__ void colsum16_bf16(const bf16* x, float* part, u32 r, u32 k, u32 rps) { colsum16_k<bf16>(x, part, r, k, rps); }
extern "C" __global__ void colsum16_f16(const f16* x, float* part, u32 r, u32 k, u32 rps) { colsum16_k<f16>(x, part, r, k, rps); }
