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

template <typename T> __device__ void reduce_k(const T* x, T* y, Geom go, Geom gr, int op) {
    typedef typename Acc<T>::t F;
    __shared__ double sh[32];
    const double init = op == 0 ? 0.0 : (op == 1 ? -1.0 / 0.0 : 1.0 / 0.0);
    for (u32 o = blockIdx.x; o < go.n; o += gridDim.x) {
        const T* base = x + goff(go, o, 0);
        double acc = init;
        for (u32 j = threadIdx.x; j < gr.n; j += blockDim.x) {
            double v = (double)(F)ld(base[goff(gr, j, 0)]);
            acc = comb<double>(op, acc, v);
        }
        for (int s = 16; s > 0; s >>= 1) acc = comb<double>(op, acc, __shfl_xor_sync(0xffffffffu, acc, s));
        int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
        if (lane == 0) sh[w] = acc;
        __syncthreads();
        if (threadIdx.x == 0) {
            double r = sh[0];
            for (int i = 1; i < (int)(blockDim.x >> 5); ++i) r = comb<double>(op, r, sh[i]);
            y[o] = st<T>(r);
        }
        __syncthreads();
    }
}

#define REDUCE(T, N) extern "C" __global__ void reduce_##N(const T* x, T* y, Geom go, Geom gr, int op) { reduce_k<T>(x, y, go, gr, op); }
REDUCE(float, f32)
REDUCE(double, f64)
REDUCE(bf16, bf16)
REDUCE(f16, f16)
