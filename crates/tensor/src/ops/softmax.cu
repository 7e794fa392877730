// Scaled, optionally causal softmax (ops/softmax.rs).

// Scaled, optionally causal softmax over the last dim of scores [rows, S], one block per row.
// Row r is query i = r % T of its head; with `causal`, keys j > i + (S - T) get probability 0.
template <typename T> __device__ void softmax_fwd_k(const T* x, T* y, u32 s, u32 t, double scale, int causal) {
    typedef typename Acc<T>::t A;
    const T* row = x + (u64)blockIdx.x * s;
    T* out = y + (u64)blockIdx.x * s;
    u32 lim = causal ? (blockIdx.x % t) + (s - t) + 1 : s;
    A m = -inf_of<A>();
    for (u32 j = threadIdx.x; j < lim; j += blockDim.x) { A a = (A)ld(row[j]) * (A)scale; m = a > m ? a : m; }
    m = block_max<A>(m);
    A sum = 0;
    for (u32 j = threadIdx.x; j < lim; j += blockDim.x) sum += m_exp((A)ld(row[j]) * (A)scale - m);
    sum = block_sum<A>(sum);
    for (u32 j = threadIdx.x; j < s; j += blockDim.x) out[j] = st<T>(j < lim ? m_exp((A)ld(row[j]) * (A)scale - m) / sum : (A)0);
}
// dx = scale · p · (g - Σ_j g_j p_j)
template <typename T> __device__ void softmax_bwd_k(const T* p, const T* g, T* dx, u32 s, double scale) {
    typedef typename Acc<T>::t A;
    const T* pr = p + (u64)blockIdx.x * s;
    const T* gr = g + (u64)blockIdx.x * s;
    T* out = dx + (u64)blockIdx.x * s;
    A dot = 0;
    for (u32 j = threadIdx.x; j < s; j += blockDim.x) dot += (A)ld(pr[j]) * (A)ld(gr[j]);
    dot = block_sum<A>(dot);
    for (u32 j = threadIdx.x; j < s; j += blockDim.x) out[j] = st<T>((A)scale * (A)ld(pr[j]) * ((A)ld(gr[j]) - dot));
}
#define SOFTMAX(T, N) \
extern "C" __global__ void softmax_fwd_##N(const T* x, T* y, u32 s, u32 t, double scale, int causal) { softmax_fwd_k<T>(x, y, s, t, scale, causal); } \
extern "C" __global__ void softmax_bwd_##N(const T* p, const T* g, T* dx, u32 s, double scale) { softmax_bwd_k<T>(p, g, dx, s, scale); }
SOFTMAX(float, f32)
SOFTMAX(double, f64)
SOFTMAX(bf16, bf16)
SOFTMAX(f16, f16)
