// Shared by every fmlab kernel source (prepended before NVRTC compiles it). No CUDA headers:
// bf16/f16 are raw 16-bit values converted here, so only libnvrtc is needed at run time.
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;
struct bf16 { unsigned short x; };
struct f16 { unsigned short x; };

// Infinities by their bits: NVRTC does not fold 1.0 / 0.0, it emits a full IEEE division (a
// slow-path call) wherever the expression appears, inner loops included.
template <typename A> __device__ __forceinline__ A inf_of();
template <> __device__ __forceinline__ float inf_of<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double inf_of<double>() { return __longlong_as_double(0x7ff0000000000000ll); }

// 2^x by the special-function unit (one instruction, relative error ~2^-22; subnormal results
// flush to 0): the softmax exponentials of flash attention and of the classifier's 16-bit logits.
__device__ __forceinline__ float exp2_approx(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }

// Shared-memory barriers of sm_90 and later (mbarrier: arrivals plus bytes of asynchronous copies
// to wait for), by shared address: the classifier's streamed rows (ops/classifier.cu, ce_stream) and its
// Hopper kernels' stages (hopper_gemm.cuh).
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory"); }
// Waits until the barrier's phase of this parity has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory"); }
// Arrives and announces `bytes` that asynchronous copies will complete on the barrier.
__device__ __forceinline__ void mbar_expect(u32 bar, u32 bytes) { asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory"); }
#endif

// Acc<T>: the type arithmetic runs in (f32 for 16-bit floats, as on the CPU engine).
template <typename T> struct Acc { typedef float t; };
template <> struct Acc<double> { typedef double t; };
template <> struct Acc<int> { typedef double t; };
template <> struct Acc<u32> { typedef double t; };
template <> struct Acc<u8> { typedef double t; };

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(bf16 v) { return __uint_as_float(((u32)v.x) << 16); }
__device__ __forceinline__ float ld(f16 v) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x)); return f; }
__device__ __forceinline__ double ld(int v) { return (double)v; }
__device__ __forceinline__ double ld(u32 v) { return (double)v; }
__device__ __forceinline__ double ld(u8 v) { return (double)v; }

template <typename T> __device__ __forceinline__ T st(double v);
template <typename T> __device__ __forceinline__ T st(float v);
template <> __device__ __forceinline__ float st<float>(float v) { return v; }
template <> __device__ __forceinline__ float st<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ double st<double>(double v) { return v; }
template <> __device__ __forceinline__ double st<double>(float v) { return (double)v; }
// f32 -> bf16, round to nearest even: one instruction from sm_80 on (a NaN becomes the
// canonical NaN); the integer version before.
__device__ __forceinline__ unsigned short f2bf(float f) {
#if __CUDA_ARCH__ >= 800
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even
    return (unsigned short)(u >> 16);
#endif
}
template <> __device__ __forceinline__ bf16 st<bf16>(float v) { bf16 r; r.x = f2bf(v); return r; }
template <> __device__ __forceinline__ bf16 st<bf16>(double v) { bf16 r; r.x = f2bf((float)v); return r; }
__device__ __forceinline__ unsigned short f2h(float f) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
template <> __device__ __forceinline__ f16 st<f16>(float v) { f16 r; r.x = f2h(v); return r; }
template <> __device__ __forceinline__ f16 st<f16>(double v) { f16 r; r.x = f2h((float)v); return r; }
// Float -> integer casts truncate toward zero and saturate, like Rust's `as`.
__device__ __forceinline__ int sat_i32(double v) { if (v != v) return 0; if (v >= 2147483647.0) return 2147483647; if (v <= -2147483648.0) return (-2147483647 - 1); return (int)v; }
__device__ __forceinline__ u32 sat_u32(double v) { if (!(v > 0.0)) return 0; if (v >= 4294967295.0) return 4294967295u; return (u32)v; }
__device__ __forceinline__ u8 sat_u8(double v) { if (!(v > 0.0)) return 0; if (v >= 255.0) return 255; return (u8)v; }
template <> __device__ __forceinline__ int st<int>(double v) { return sat_i32(v); }
template <> __device__ __forceinline__ int st<int>(float v) { return sat_i32((double)v); }
template <> __device__ __forceinline__ u32 st<u32>(double v) { return sat_u32(v); }
template <> __device__ __forceinline__ u32 st<u32>(float v) { return sat_u32((double)v); }
template <> __device__ __forceinline__ u8 st<u8>(double v) { return sat_u8(v); }
template <> __device__ __forceinline__ u8 st<u8>(float v) { return sat_u8((double)v); }

// Explicit f32/f64 overloads: the f32 path must call the f32 functions (expf, not exp).
#define MATH1(name, f32fn, f64fn) \
__device__ __forceinline__ float m_##name(float x) { return f32fn(x); } \
__device__ __forceinline__ double m_##name(double x) { return f64fn(x); }
MATH1(exp, expf, exp) MATH1(log, logf, log) MATH1(sqrt, sqrtf, sqrt) MATH1(tanh, tanhf, tanh)
MATH1(sin, sinf, sin) MATH1(cos, cosf, cos) MATH1(abs, fabsf, fabs) MATH1(erf, erff, erf)
__device__ __forceinline__ float m_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double m_pow(double x, double p) { return pow(x, p); }

// Up to 4 operands over a shape of rank <= 6 (dims coalesced on the host), element strides.
#define MAXR 6
struct Geom {
    u32 rank;
    u32 n;
    u32 shape[MAXR];
    u32 st[4][MAXR];
};
// Offset of the i-th element (row-major over `shape`) in operand k. Unrolled over MAXR with
// constant indices so the geometry stays in the kernel's parameter bank: a dynamically indexed
// by-value struct is copied to per-thread local memory, which cost more than the element work.
__device__ __forceinline__ u32 goff(const Geom& g, u32 i, int k) {
    if (g.rank == 1) return i * g.st[k][0];
    u32 o = 0;
#pragma unroll
    for (int d = MAXR - 1; d >= 0; --d) {
        if (d < (int)g.rank) {
            u32 s = g.shape[d];
            u32 q = i / s;
            o += (i - q * s) * g.st[k][d];
            i = q;
        }
    }
    return o;
}

__device__ __forceinline__ float warp_sum(float v) { for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o); return v; }
__device__ __forceinline__ double warp_sum(double v) { for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o); return v; }
__device__ __forceinline__ float warp_max(float v) { for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o)); return v; }
__device__ __forceinline__ double warp_max(double v) { for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o)); return v; }

// Block-wide reductions (blockDim.x a multiple of 32, <= 1024); every thread gets the result:
// each warp reduces by shuffles, then every thread folds the warps' results in order.
struct SumOp { template <typename A> __device__ static A warp(A v) { return warp_sum(v); } template <typename A> __device__ static A join(A a, A b) { return a + b; } };
struct MaxOp { template <typename A> __device__ static A warp(A v) { return warp_max(v); } template <typename A> __device__ static A join(A a, A b) { return a > b ? a : b; } };
template <typename Op, typename A> __device__ A block_reduce(A v) {
    __shared__ A sh[32];
    v = Op::warp(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    A r = sh[0];
    int nw = blockDim.x >> 5;
    for (int i = 1; i < nw; ++i) r = Op::join(r, sh[i]);
    return r;
}
template <typename A> __device__ A block_sum(A v) { return block_reduce<SumOp, A>(v); }
template <typename A> __device__ A block_max(A v) { return block_reduce<MaxOp, A>(v); }

// Contiguous fast paths: one 16-byte load/store per operand per step (8 bf16, 4 f32, 2 f64),
// the scalar loop for the tail.
template <typename T> struct alignas(16) Pack { T v[16 / sizeof(T)]; };
#define VEC_LOOP(T, n) \
    const u32 V = 16 / sizeof(T); \
    const u32 nv = (n) / V, tid = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;

// A 16-row fragment set of a [rows, D] bf16 matrix in global memory (rows past `n` read as 0):
// the mma.sync m16n8k16 A layout, which is also wgmma's for an A operand in registers (flash
// attention's own rows; mlp_sm90.cu's output gradient).
template <int D> __device__ __forceinline__ void load_a_global(u32 (*a)[4], const bf16* base, u32 row_stride, u32 r0, u32 n) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    u32 ra = r0 + g, rb = r0 + g + 8;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        u32 c = ks * 16 + 2 * t;
        a[ks][0] = ra < n ? *(const u32*)(base + (u64)ra * row_stride + c) : 0;
        a[ks][1] = rb < n ? *(const u32*)(base + (u64)rb * row_stride + c) : 0;
        a[ks][2] = ra < n ? *(const u32*)(base + (u64)ra * row_stride + c + 8) : 0;
        a[ks][3] = rb < n ? *(const u32*)(base + (u64)rb * row_stride + c + 8) : 0;
    }
}
