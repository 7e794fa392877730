// Elementwise primitives over strided operands: unary, binary, compare, where, copy, cast, fill.
// `contig` = every operand is contiguous: index i is the offset (no div/mod per element).
// Op codes match `UnaryOp`/`BinaryOp`/`CmpOp` order in op.rs (see cuda/storage.rs).

template <typename A> __device__ __forceinline__ A unary_f(int op, A x, double p0, double p1) {
    switch (op) {
    case 0: return -x;
    case 1: return m_exp(x);
    case 2: return m_log(x);
    case 3: return m_sqrt(x);
    case 4: return m_tanh(x);
    case 5: return m_sin(x);
    case 6: return m_cos(x);
    case 7: return m_abs(x);
    case 8: return m_erf(x);
    case 9: return (A)1 / x;
    case 10: return x > (A)0 ? x : (A)0;
    case 11: return x * (A)p0 + (A)p1;
    case 12: return x * x;
    case 13: return x * x * x;
    default: return m_pow(x, (A)p0);
    }
}
template <typename A> __device__ __forceinline__ A binary_f(int op, A x, A y) {
    switch (op) {
    case 0: return x + y;
    case 1: return x - y;
    case 2: return x * y;
    case 3: return x / y;
    case 4: return (x != x || x > y) ? x : y; // NaN-propagating, like torch.maximum
    default: return (x != x || x < y) ? x : y;
    }
}
template <typename A> __device__ __forceinline__ bool cmp_f(int op, A x, A y) {
    switch (op) {
    case 0: return x == y;
    case 1: return x != y;
    case 2: return x < y;
    case 3: return x <= y;
    case 4: return x > y;
    default: return x >= y;
    }
}

#define GRID_LOOP(n) for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += gridDim.x * blockDim.x)

template <typename T> __device__ void unary_k(const T* x, T* y, Geom g, int op, double p0, double p1, int contig) {
    typedef typename Acc<T>::t A;
    GRID_LOOP(g.n) {
        u32 o = contig ? i : goff(g, i, 0);
        y[i] = st<T>(unary_f<A>(op, (A)ld(x[o]), p0, p1));
    }
}
template <typename T> __device__ void binary_k(const T* a, const T* b, T* y, Geom g, int op, int contig) {
    typedef typename Acc<T>::t A;
    GRID_LOOP(g.n) {
        u32 oa = contig ? i : goff(g, i, 0);
        u32 ob = contig ? i : goff(g, i, 1);
        y[i] = st<T>(binary_f<A>(op, (A)ld(a[oa]), (A)ld(b[ob])));
    }
}
template <typename T> __device__ void cmp_k(const T* a, const T* b, u8* y, Geom g, int op) {
    typedef typename Acc<T>::t A;
    GRID_LOOP(g.n) { y[i] = cmp_f<A>(op, (A)ld(a[goff(g, i, 0)]), (A)ld(b[goff(g, i, 1)])) ? 1 : 0; }
}
template <typename T> __device__ void where_k(const u8* c, const T* a, const T* b, T* y, Geom g) {
    GRID_LOOP(g.n) { y[i] = c[goff(g, i, 0)] ? a[goff(g, i, 1)] : b[goff(g, i, 2)]; }
}
// Strided source (operand 0) into strided destination (operand 1).
template <typename T> __device__ void copy_k(const T* x, T* y, Geom g) {
    GRID_LOOP(g.n) { y[goff(g, i, 1)] = x[goff(g, i, 0)]; }
}
template <typename S, typename D> __device__ void cast_k(const S* x, D* y, Geom g) {
    GRID_LOOP(g.n) { y[i] = st<D>(ld(x[goff(g, i, 0)])); }
}
template <typename T> __device__ void fill_k(T* y, u32 n, double v) {
    GRID_LOOP(n) { y[i] = st<T>(v); }
}

// Contiguous fast paths (Pack, VEC_LOOP in common.cuh); the host launches these only when every
// operand is contiguous and 16-byte aligned.
template <typename T> __device__ void unary_vec_k(const T* x, T* y, u32 n, int op, double p0, double p1) {
    typedef typename Acc<T>::t A;
    VEC_LOOP(T, n)
    for (u32 i = tid; i < nv; i += stride) {
        Pack<T> a = ((const Pack<T>*)x)[i], r;
#pragma unroll
        for (u32 k = 0; k < V; ++k) r.v[k] = st<T>(unary_f<A>(op, (A)ld(a.v[k]), p0, p1));
        ((Pack<T>*)y)[i] = r;
    }
    for (u32 i = nv * V + tid; i < n; i += stride) y[i] = st<T>(unary_f<A>(op, (A)ld(x[i]), p0, p1));
}
template <typename T> __device__ void binary_vec_k(const T* a, const T* b, T* y, u32 n, int op) {
    typedef typename Acc<T>::t A;
    VEC_LOOP(T, n)
    for (u32 i = tid; i < nv; i += stride) {
        Pack<T> pa = ((const Pack<T>*)a)[i], pb = ((const Pack<T>*)b)[i], r;
#pragma unroll
        for (u32 k = 0; k < V; ++k) r.v[k] = st<T>(binary_f<A>(op, (A)ld(pa.v[k]), (A)ld(pb.v[k])));
        ((Pack<T>*)y)[i] = r;
    }
    for (u32 i = nv * V + tid; i < n; i += stride) y[i] = st<T>(binary_f<A>(op, (A)ld(a[i]), (A)ld(b[i])));
}

// a [rows, cols] contiguous op b [cols] broadcast over rows (bias adds): cols a multiple of the
// vector width, operands 16-byte aligned.
template <typename T> __device__ void binary_rowbc_k(const T* a, const T* b, T* y, u32 n, u32 cols, int op) {
    typedef typename Acc<T>::t A;
    VEC_LOOP(T, n)
    const u32 cv = cols / V;
    for (u32 i = tid; i < nv; i += stride) {
        Pack<T> pa = ((const Pack<T>*)a)[i], pb = ((const Pack<T>*)b)[i % cv], r;
#pragma unroll
        for (u32 k = 0; k < V; ++k) r.v[k] = st<T>(binary_f<A>(op, (A)ld(pa.v[k]), (A)ld(pb.v[k])));
        ((Pack<T>*)y)[i] = r;
    }
}

#define FLOAT_KERNELS(T, N) \
extern "C" __global__ void binary_rowbc_##N(const T* a, const T* b, T* y, u32 n, u32 cols, int op) { binary_rowbc_k<T>(a, b, y, n, cols, op); } \
extern "C" __global__ void unary_vec_##N(const T* x, T* y, u32 n, int op, double p0, double p1) { unary_vec_k<T>(x, y, n, op, p0, p1); } \
extern "C" __global__ void binary_vec_##N(const T* a, const T* b, T* y, u32 n, int op) { binary_vec_k<T>(a, b, y, n, op); } \
extern "C" __global__ void unary_##N(const T* x, T* y, Geom g, int op, double p0, double p1, int contig) { unary_k<T>(x, y, g, op, p0, p1, contig); } \
extern "C" __global__ void binary_##N(const T* a, const T* b, T* y, Geom g, int op, int contig) { binary_k<T>(a, b, y, g, op, contig); }
FLOAT_KERNELS(float, f32)
FLOAT_KERNELS(double, f64)
FLOAT_KERNELS(bf16, bf16)
FLOAT_KERNELS(f16, f16)

// copy in 16-byte words (host: `words16`): any dtype, innermost dim contiguous on both sides.
extern "C" __global__ void copy_w16(const uint4* x, uint4* y, Geom g) { copy_k<uint4>(x, y, g); }

#define ALL_KERNELS(T, N) \
extern "C" __global__ void cmp_##N(const T* a, const T* b, u8* y, Geom g, int op) { cmp_k<T>(a, b, y, g, op); } \
extern "C" __global__ void where_##N(const u8* c, const T* a, const T* b, T* y, Geom g) { where_k<T>(c, a, b, y, g); } \
extern "C" __global__ void copy_##N(const T* x, T* y, Geom g) { copy_k<T>(x, y, g); } \
extern "C" __global__ void fill_##N(T* y, u32 n, double v) { fill_k<T>(y, n, v); }
ALL_KERNELS(float, f32)
ALL_KERNELS(double, f64)
ALL_KERNELS(bf16, bf16)
ALL_KERNELS(f16, f16)
ALL_KERNELS(int, i32)
ALL_KERNELS(u32, u32)
ALL_KERNELS(u8, u8)

#define CAST_FROM(S, SN) \
extern "C" __global__ void cast_##SN##_f32(const S* x, float* y, Geom g) { cast_k<S, float>(x, y, g); } \
extern "C" __global__ void cast_##SN##_f64(const S* x, double* y, Geom g) { cast_k<S, double>(x, y, g); } \
extern "C" __global__ void cast_##SN##_bf16(const S* x, bf16* y, Geom g) { cast_k<S, bf16>(x, y, g); } \
extern "C" __global__ void cast_##SN##_f16(const S* x, f16* y, Geom g) { cast_k<S, f16>(x, y, g); } \
extern "C" __global__ void cast_##SN##_i32(const S* x, int* y, Geom g) { cast_k<S, int>(x, y, g); } \
extern "C" __global__ void cast_##SN##_u32(const S* x, u32* y, Geom g) { cast_k<S, u32>(x, y, g); } \
extern "C" __global__ void cast_##SN##_u8(const S* x, u8* y, Geom g) { cast_k<S, u8>(x, y, g); }
CAST_FROM(float, f32)
CAST_FROM(double, f64)
CAST_FROM(bf16, bf16)
CAST_FROM(f16, f16)
CAST_FROM(int, i32)
CAST_FROM(u32, u32)
CAST_FROM(u8, u8)

// A small memset node of a captured graph, run as a kernel instead (graph.rs `memsets_to_kernels`):
// n elements of `size` bytes (1, 2 or 4) at dst set to value's low bytes. In a graph a memset
// node is followed by a gap of a few µs before the next kernel; a kernel node is not.
extern "C" __global__ void memset_elems(u64 dst, u32 value, u32 size, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        if (size == 4) ((u32*)dst)[i] = value;
        else if (size == 2) ((unsigned short*)dst)[i] = (unsigned short)value;
        else ((u8*)dst)[i] = (u8)value;
    }
}
