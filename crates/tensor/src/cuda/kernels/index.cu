// Index ops on contiguous tensors viewed as [outer, dim, inner]. Ids are i32 or u32 (passed as
// int; the host checked their range). Accumulating ops use atomics (order-dependent rounding).

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
// 16-bit floats: compare-and-swap on the aligned 32-bit word holding the value.
template <typename H> __device__ void atomic_add16(H* p, float v) {
    u32* w = (u32*)((size_t)p & ~(size_t)3);
    bool hi = ((size_t)p & 2) != 0;
    u32 old = *w, assumed;
    do {
        assumed = old;
        H cur; cur.x = (unsigned short)(hi ? (assumed >> 16) : (assumed & 0xffffu));
        H nw = st<H>(ld(cur) + v);
        u32 repl = hi ? ((assumed & 0xffffu) | ((u32)nw.x << 16)) : ((assumed & 0xffff0000u) | nw.x);
        old = atomicCAS(w, assumed, repl);
    } while (assumed != old);
}
__device__ __forceinline__ void atomic_add(bf16* p, float v) { atomic_add16<bf16>(p, v); }
__device__ __forceinline__ void atomic_add(f16* p, float v) { atomic_add16<f16>(p, v); }

// out[o, i, r] = src[o, ids[i], r]
template <typename T> __device__ void index_select_k(const T* src, const int* ids, T* out, u32 outer, u32 dim, u32 nids, u32 inner) {
    u32 n = outer * nids * inner;
    for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
        u32 r = t % inner, q = t / inner, i = q % nids, o = q / nids;
        out[t] = src[((u64)o * dim + (u32)ids[i]) * inner + r];
    }
}
// out[o, ids[i], r] += src[o, i, r]   (out already holds the base)
template <typename T> __device__ void index_add_k(T* out, const int* ids, const T* src, u32 outer, u32 dim, u32 nids, u32 inner) {
    u32 n = outer * nids * inner;
    for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
        u32 r = t % inner, q = t / inner, i = q % nids, o = q / nids;
        atomic_add(&out[((u64)o * dim + (u32)ids[i]) * inner + r], ld(src[t]));
    }
}
// out[o, j, r] = src[o, idx[o, j, r], r]   (idx: [outer, k, inner])
template <typename T> __device__ void gather_k(const T* src, const int* idx, T* out, u32 outer, u32 dim, u32 k, u32 inner) {
    u32 n = outer * k * inner;
    for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
        u32 r = t % inner, o = t / inner / k;
        out[t] = src[((u64)o * dim + (u32)idx[t]) * inner + r];
    }
}
// out[o, idx[o, j, r], r] += src[o, j, r]
template <typename T> __device__ void scatter_add_k(T* out, const int* idx, const T* src, u32 outer, u32 dim, u32 k, u32 inner) {
    u32 n = outer * k * inner;
    for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
        u32 r = t % inner, o = t / inner / k;
        atomic_add(&out[((u64)o * dim + (u32)idx[t]) * inner + r], ld(src[t]));
    }
}

#define INDEX(T, N) \
extern "C" __global__ void index_select_##N(const T* s, const int* ids, T* out, u32 outer, u32 dim, u32 nids, u32 inner) { index_select_k<T>(s, ids, out, outer, dim, nids, inner); } \
extern "C" __global__ void index_add_##N(T* out, const int* ids, const T* s, u32 outer, u32 dim, u32 nids, u32 inner) { index_add_k<T>(out, ids, s, outer, dim, nids, inner); } \
extern "C" __global__ void gather_##N(const T* s, const int* idx, T* out, u32 outer, u32 dim, u32 k, u32 inner) { gather_k<T>(s, idx, out, outer, dim, k, inner); } \
extern "C" __global__ void scatter_add_##N(T* out, const int* idx, const T* s, u32 outer, u32 dim, u32 k, u32 inner) { scatter_add_k<T>(out, idx, s, outer, dim, k, inner); }
INDEX(float, f32)
INDEX(double, f64)
INDEX(bf16, bf16)
INDEX(f16, f16)
