// GELU forward/backward (ops/gelu.rs).

// GELU. approx = 1: tanh form 0.5·x·(1 + tanh(k·(x + 0.044715·x³))), k = sqrt(2/π) (GPT-2);
// approx = 0: erf form 0.5·x·(1 + erf(x/√2)) (BERT, ViT). Same expression order as the
// composite twins in gelu.rs.
template <typename A> __device__ __forceinline__ A gelu_f(A x, int approx) {
    if (approx) {
        A inner = (x + x * x * x * (A)0.044715) * (A)0.7978845608028654;
        return x * (m_tanh(inner) + (A)1) * (A)0.5;
    }
    return x * (m_erf(x * (A)0.7071067811865476) + (A)1) * (A)0.5;
}
template <typename A> __device__ __forceinline__ A gelu_grad_f(A x, int approx) {
    if (approx) {
        A k = (A)0.7978845608028654, c = (A)0.044715;
        A t = m_tanh((x + c * x * x * x) * k);
        return (A)0.5 * ((A)1 + t) + (A)0.5 * x * ((A)1 - t * t) * k * ((A)1 + (A)3 * c * x * x);
    }
    // Φ(x) + x·φ(x)
    return (A)0.5 * ((A)1 + m_erf(x * (A)0.7071067811865476)) + x * m_exp((A)-0.5 * x * x) * (A)0.3989422804014327;
}
// Contiguous operands; vec = all 16-byte aligned (16-byte loads, scalar tail).
template <typename T> __device__ void gelu_fwd_k(const T* x, T* y, u32 n, int approx, int vec) {
    typedef typename Acc<T>::t A;
    VEC_LOOP(T, n)
    u32 start = 0;
    if (vec) {
        for (u32 i = tid; i < nv; i += stride) {
            Pack<T> a = ((const Pack<T>*)x)[i], r;
#pragma unroll
            for (u32 k = 0; k < V; ++k) r.v[k] = st<T>(gelu_f<A>((A)ld(a.v[k]), approx));
            ((Pack<T>*)y)[i] = r;
        }
        start = nv * V;
    }
    for (u32 i = start + tid; i < n; i += stride) y[i] = st<T>(gelu_f<A>((A)ld(x[i]), approx));
}
template <typename T> __device__ void gelu_bwd_k(const T* x, const T* g, T* dx, u32 n, int approx, int vec) {
    typedef typename Acc<T>::t A;
    VEC_LOOP(T, n)
    u32 start = 0;
    if (vec) {
        for (u32 i = tid; i < nv; i += stride) {
            Pack<T> a = ((const Pack<T>*)x)[i], b = ((const Pack<T>*)g)[i], r;
#pragma unroll
            for (u32 k = 0; k < V; ++k) r.v[k] = st<T>((A)ld(b.v[k]) * gelu_grad_f<A>((A)ld(a.v[k]), approx));
            ((Pack<T>*)dx)[i] = r;
        }
        start = nv * V;
    }
    for (u32 i = start + tid; i < n; i += stride) dx[i] = st<T>((A)ld(g[i]) * gelu_grad_f<A>((A)ld(x[i]), approx));
}
#define GELU(T, N) \
extern "C" __global__ void gelu_fwd_##N(const T* x, T* y, u32 n, int approx, int vec) { gelu_fwd_k<T>(x, y, n, approx, vec); } \
extern "C" __global__ void gelu_bwd_##N(const T* x, const T* g, T* dx, u32 n, int approx, int vec) { gelu_bwd_k<T>(x, g, dx, n, approx, vec); }
GELU(float, f32)
GELU(double, f64)
GELU(bf16, bf16)
GELU(f16, f16)
