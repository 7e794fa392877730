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
