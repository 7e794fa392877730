// Reduction over any set of dims. One block per output element (grid-stride over outputs);
// `go` walks the kept dims (operand 0 = input strides), `gr` the reduced dims. Sums accumulate
// in f64 (one rounding per output, as the CPU engine does); max/min propagate NaN.

template <typename A> __device__ __forceinline__ A comb(int op, A a, A b) {
    if (op == 0) return a + b;
    if (a != a) return a;
    if (b != b) return b;
    if (op == 1) return a > b ? a : b;
    return a < b ? a : b;
}

// The identity of op (0 sum, 1 max, 2 min).
__device__ __forceinline__ double reduce_init(int op) { return op == 0 ? 0.0 : (op == 1 ? -inf_of<double>() : inf_of<double>()); }

// The block's values of acc combined in a fixed order (a warp butterfly, then the warps in
// order through `sh`, 32 doubles); the result is thread 0's. Every thread must call it.
__device__ __forceinline__ double block_comb(double acc, int op, double* sh) {
    for (int s = 16; s > 0; s >>= 1) acc = comb<double>(op, acc, __shfl_xor_sync(0xffffffffu, acc, s));
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = acc;
    __syncthreads();
    double r = sh[0];
    if (threadIdx.x == 0)
        for (int i = 1; i < (int)(blockDim.x >> 5); ++i) r = comb<double>(op, r, sh[i]);
    return r;
}

template <typename T> __device__ void reduce_k(const T* x, T* y, Geom go, Geom gr, int op) {
    typedef typename Acc<T>::t F;
    __shared__ double sh[32];
    for (u32 o = blockIdx.x; o < go.n; o += gridDim.x) {
        const T* base = x + goff(go, o, 0);
        double acc = reduce_init(op);
        for (u32 j = threadIdx.x; j < gr.n; j += blockDim.x) {
            double v = (double)(F)ld(base[goff(gr, j, 0)]);
            acc = comb<double>(op, acc, v);
        }
        double r = block_comb(acc, op, sh);
        if (threadIdx.x == 0) y[o] = st<T>(r);
        __syncthreads(); // sh is reused by the next output
    }
}

#define REDUCE(T, N) extern "C" __global__ void reduce_##N(const T* x, T* y, Geom go, Geom gr, int op) { reduce_k<T>(x, y, go, gr, op); }
REDUCE(float, f32)
REDUCE(double, f64)
REDUCE(bf16, bf16)
REDUCE(f16, f16)

// Reduction of all of a contiguous x [n] (n large): the one-block `reduce_k` walks it with 256
// threads, a chain of dependent f64 adds each (26 µs for the classifier's 32768 row losses, H100).
// Here block b reduces the contiguous run [b·chunk, (b + 1)·chunk) into part[b] (f64), and
// `reduce_cols_final` (k = 1) combines the blocks' partials in order: deterministic for a given
// n (the host derives the grid from n alone).
template <typename T> __device__ void reduce_all_part_k(const T* x, double* part, u64 n, u64 chunk, int op) {
    typedef typename Acc<T>::t F;
    __shared__ double sh[32];
    const u64 b0 = (u64)blockIdx.x * chunk, b1 = min(n, b0 + chunk);
    double acc = reduce_init(op);
    for (u64 j = b0 + threadIdx.x; j < b1; j += blockDim.x) acc = comb<double>(op, acc, (double)(F)ld(x[j]));
    double r = block_comb(acc, op, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = r;
}
#define REDUCE_ALL(T, N) extern "C" __global__ void reduce_all_part_##N(const T* x, double* part, u64 n, u64 chunk, int op) { reduce_all_part_k<T>(x, part, n, chunk, op); }
REDUCE_ALL(float, f32)
REDUCE_ALL(double, f64)
REDUCE_ALL(bf16, bf16)
REDUCE_ALL(f16, f16)

// Column reduction of a contiguous [R, K] (the reduced dims lead, the kept ones are contiguous:
// bias gradients, sum_to over a batch): the generic kernel above would read each column with a
// stride of K elements. Block (32, 8): 32 adjacent columns (coalesced reads) × 8 row lanes; grid
// (K/32, splits), each split a contiguous run of rows. Partials are f64 [splits, K]; with one split
// the result goes straight to y, otherwise `reduce_cols_final` combines the splits in order
// (deterministic).
template <typename T> __device__ void reduce_cols_k(const T* x, double* part, T* y, u32 r, u32 k, u32 rows_per_split, int op) {
    typedef typename Acc<T>::t F;
    __shared__ double sh[8][33];
    const double init = reduce_init(op);
    u32 c = blockIdx.x * 32 + threadIdx.x;
    u32 r0 = blockIdx.y * rows_per_split, r1 = min(r, r0 + rows_per_split);
    double acc = init;
    if (c < k)
        for (u32 i = r0 + threadIdx.y; i < r1; i += 8) acc = comb<double>(op, acc, (double)(F)ld(x[(u64)i * k + c]));
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < k) {
        for (int j = 1; j < 8; ++j) acc = comb<double>(op, acc, sh[j][threadIdx.x]);
        if (gridDim.y == 1) y[c] = st<T>(acc);
        else part[(u64)blockIdx.y * k + c] = acc;
    }
}
template <typename T> __device__ void reduce_cols_final_k(const double* part, T* y, u32 k, u32 splits, int op) {
    for (u32 c = blockIdx.x * blockDim.x + threadIdx.x; c < k; c += gridDim.x * blockDim.x) {
        double acc = part[c];
        for (u32 s = 1; s < splits; ++s) acc = comb<double>(op, acc, part[(u64)s * k + c]);
        y[c] = st<T>(acc);
    }
}
#define REDUCE_COLS(T, N) \
extern "C" __global__ void reduce_cols_##N(const T* x, double* part, T* y, u32 r, u32 k, u32 rps, int op) { reduce_cols_k<T>(x, part, y, r, k, rps, op); } \
extern "C" __global__ void reduce_cols_final_##N(const double* part, T* y, u32 k, u32 splits, int op) { reduce_cols_final_k<T>(part, y, k, splits, op); }
REDUCE_COLS(float, f32)
REDUCE_COLS(double, f64)
REDUCE_COLS(bf16, bf16)
REDUCE_COLS(f16, f16)

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

// Multi-tensor sum of squares (the global gradient norm): up to MT_MAX tensors per launch, their
// addresses and lengths in the kernel's parameters (no table upload, no host sync). Block b works
// on tensor t with start[t] <= b < start[t + 1], chunk b - start[t] of MT_CHUNK elements, and
// writes one f64 partial to part[b]; the host sums the partials (in order: deterministic).
#define MT_MAX 96
#define MT_CHUNK 8192
struct MtTab { u64 ptr[MT_MAX]; u32 n[MT_MAX]; u32 start[MT_MAX + 1]; u32 count; };
template <typename T> __device__ void sumsq_mt_k(MtTab tab, double* part) {
    __shared__ double sh[32];
    u32 b = blockIdx.x, t = 0;
    while (t + 1 < tab.count && tab.start[t + 1] <= b) ++t;
    const T* x = (const T*)tab.ptr[t];
    u32 lo = (b - tab.start[t]) * MT_CHUNK, hi = min(tab.n[t], lo + MT_CHUNK);
    double acc = 0;
    u32 i0 = lo;
    // f32 by 16-byte loads where aligned (a chunk of an aligned tensor is): one element a thread
    // at a time, the norm's two launches took 68 µs of a gpt2-mini step on the H100 for 90 MB.
    if (sizeof(T) == 4 && ((u64)x & 15) == 0) {
        u32 n4 = (hi - lo) / 4;
        for (u32 q = threadIdx.x; q < n4; q += blockDim.x) {
            float4 a = *(const float4*)((const float*)x + lo + 4 * q);
            acc += (double)a.x * a.x;
            acc += (double)a.y * a.y;
            acc += (double)a.z * a.z;
            acc += (double)a.w * a.w;
        }
        i0 = lo + 4 * n4;
    }
    for (u32 i = i0 + threadIdx.x; i < hi; i += blockDim.x) { double v = (double)ld(x[i]); acc += v * v; }
    acc = warp_sum(acc);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double r = 0;
        for (int i = 0; i < (int)(blockDim.x >> 5); ++i) r += sh[i];
        part[b] = r;
    }
}
extern "C" __global__ void sumsq_mt_f32(MtTab tab, double* part) { sumsq_mt_k<float>(tab, part); }
extern "C" __global__ void sumsq_mt_bf16(MtTab tab, double* part) { sumsq_mt_k<bf16>(tab, part); }
extern "C" __global__ void sumsq_mt_f64(MtTab tab, double* part) { sumsq_mt_k<double>(tab, part); }

// Gradient clipping on the device (PyTorch's clip_grad_norm_): norm = sqrt(sum of squares),
// coef = min(max_norm / (norm + 1e-6), 1), NaN when the norm is (so a NaN gradient stays visible).
extern "C" __global__ void clip_coef(const double* sumsq, double* norm, float* coef, double max_norm) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double n = sqrt(*sumsq);
    double c = max_norm / (n + 1e-6);
    *norm = n;
    *coef = (float)(c < 1.0 || c != c ? c : 1.0);
}
