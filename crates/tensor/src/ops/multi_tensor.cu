// The optimizer step's multi-tensor kernels (ops/multi_tensor.rs): AdamW, the casts to 16-bit,
// the gradient norm and the clip coefficient.

// AdamW on f32 parameters, the same arithmetic as the CPU loop in nn/optim.rs (PyTorch's
// single-tensor AdamW): decay, m.lerp_(g, 1-b1), v = b2 v + (1-b2) g², p -= step · m / denom.
__device__ __forceinline__ void adamw_elem(float* w, float gi, float* m, float* v, float decay, float one_m_b1, float b2, float one_m_b2, float eps, float step_size, float bc2_sqrt) {
    float wi = *w * decay;
    float mi = *m + one_m_b1 * (gi - *m);
    float vi = *v * b2 + (gi * gi) * one_m_b2;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    *w = wi - step_size * (mi / denom);
    *m = mi;
    *v = vi;
}
template <typename G> __device__ void adamw_k(float* w, const G* g, float* m, float* v, u32 n, float decay, float one_m_b1, float b2, float one_m_b2, float eps, float step_size, float bc2_sqrt) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        adamw_elem(w + i, ld(g[i]), m + i, v + i, decay, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt);
    }
}
extern "C" __global__ void adamw_f32(float* w, const float* g, float* m, float* v, u32 n, float decay, float one_m_b1, float b2, float one_m_b2, float eps, float step_size, float bc2_sqrt) {
    adamw_k<float>(w, g, m, v, n, decay, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt);
}
extern "C" __global__ void adamw_bf16g(float* w, const bf16* g, float* m, float* v, u32 n, float decay, float one_m_b1, float b2, float one_m_b2, float eps, float step_size, float bc2_sqrt) {
    adamw_k<bf16>(w, g, m, v, n, decay, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt);
}

// Multi-tensor AdamW: up to ADAM_MT tensors per launch (their addresses in the kernel's
// parameters, not in device memory, so a launch needs no upload). Block b works on tensor t with
// start[t] <= b < start[t + 1], elements [(b - start[t]) · ADAM_CHUNK, +ADAM_CHUNK); each tensor has
// its own decay factor (1 for biases and norms). Same arithmetic as adamw_k (adamw_elem).
#define ADAM_MT 64
#define ADAM_CHUNK 16384
struct AdamTab { u64 w[ADAM_MT], g[ADAM_MT], m[ADAM_MT], v[ADAM_MT]; u32 n[ADAM_MT]; u32 start[ADAM_MT + 1]; float decay[ADAM_MT]; u32 count; };
// DEV: the step's scalars come from device memory — hyper = [step_size, bc2_sqrt, decay factor]
// (a tensor's decay[t] != 1 selects the factor) and every gradient is scaled by *coef (the clip
// coefficient) — so a captured CUDA graph replays with each step's values.
template <typename G, bool DEV> __device__ void adamw_mt_k(const AdamTab& tab, float one_m_b1, float b2, float one_m_b2, float eps, float step_size, float bc2_sqrt, const float* hyper, const float* coef) {
    u32 b = blockIdx.x, lo_t = 0, hi_t = tab.count - 1;
    while (lo_t < hi_t) {  // the last t with start[t] <= b
        u32 mid = (lo_t + hi_t + 1) / 2;
        if (tab.start[mid] <= b) lo_t = mid; else hi_t = mid - 1;
    }
    u32 t = lo_t;
    float* w = (float*)tab.w[t];
    const G* g = (const G*)tab.g[t];
    float* m = (float*)tab.m[t];
    float* v = (float*)tab.v[t];
    float decay = tab.decay[t], c = 1.0f;
    if (DEV) {
        step_size = hyper[0];
        bc2_sqrt = hyper[1];
        decay = decay != 1.0f ? hyper[2] : 1.0f;
        c = *coef;
    }
    u32 lo = (b - tab.start[t]) * ADAM_CHUNK, hi = min(tab.n[t], lo + ADAM_CHUNK);
    // Four elements a thread at a time by 16-byte loads and stores where the arrays allow it (a
    // chunk starts 16-byte aligned in an aligned tensor): one element at a time, the loads of the
    // next wait for the stores of this one (the compiler cannot tell w, m, v apart), and the
    // update ran at ~2.3 TB/s on the H100. Same arithmetic per element (adamw_elem).
    u32 i0 = lo;
    if ((((u64)w | (u64)m | (u64)v) & 15) == 0 && ((u64)g & (4 * sizeof(G) - 1)) == 0) {
        u32 n4 = (hi - lo) / 4;
        for (u32 q = threadIdx.x; q < n4; q += blockDim.x) {
            u32 i = lo + 4 * q;
            float4 wv = *(const float4*)(w + i), mv = *(const float4*)(m + i), vv = *(const float4*)(v + i);
            float gv[4];
            if (sizeof(G) == 4) {
                float4 x = *(const float4*)(g + i);
                gv[0] = x.x, gv[1] = x.y, gv[2] = x.z, gv[3] = x.w;
            } else {
                uint2 x = *(const uint2*)(g + i);
                gv[0] = __uint_as_float(x.x << 16), gv[1] = __uint_as_float(x.x & 0xffff0000u), gv[2] = __uint_as_float(x.y << 16), gv[3] = __uint_as_float(x.y & 0xffff0000u);
            }
            float* we[4] = {&wv.x, &wv.y, &wv.z, &wv.w};
            float* me[4] = {&mv.x, &mv.y, &mv.z, &mv.w};
            float* ve[4] = {&vv.x, &vv.y, &vv.z, &vv.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) adamw_elem(we[e], DEV ? gv[e] * c : gv[e], me[e], ve[e], decay, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt);
            *(float4*)(w + i) = wv;
            *(float4*)(m + i) = mv;
            *(float4*)(v + i) = vv;
        }
        i0 = lo + 4 * n4;
    }
    for (u32 i = i0 + threadIdx.x; i < hi; i += blockDim.x) {
        float gi = ld(g[i]);
        if (DEV) gi = gi * c;
        adamw_elem(w + i, gi, m + i, v + i, decay, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt);
    }
}
extern "C" __global__ void adamw_mt_f32(AdamTab tab, float one_m_b1, float b2, float one_m_b2, float eps, float step_size, float bc2_sqrt) {
    adamw_mt_k<float, false>(tab, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt, nullptr, nullptr);
}
extern "C" __global__ void adamw_mt_bf16g(AdamTab tab, float one_m_b1, float b2, float one_m_b2, float eps, float step_size, float bc2_sqrt) {
    adamw_mt_k<bf16, false>(tab, one_m_b1, b2, one_m_b2, eps, step_size, bc2_sqrt, nullptr, nullptr);
}
extern "C" __global__ void adamw_mtd_f32(AdamTab tab, float one_m_b1, float b2, float one_m_b2, float eps, const float* hyper, const float* coef) {
    adamw_mt_k<float, true>(tab, one_m_b1, b2, one_m_b2, eps, 0.f, 0.f, hyper, coef);
}
extern "C" __global__ void adamw_mtd_bf16g(AdamTab tab, float one_m_b1, float b2, float one_m_b2, float eps, const float* hyper, const float* coef) {
    adamw_mt_k<bf16, true>(tab, one_m_b1, b2, one_m_b2, eps, 0.f, 0.f, hyper, coef);
}

// Multi-tensor cast f32 → 16-bit: up to CAST_MT contiguous tensors in one launch (a training
// step casts every matmul weight of the model to bf16: ~100 launches of a few µs each, one here).
// Block b converts elements [(b - start[t])·CAST_CHUNK, +CAST_CHUNK) of tensor t; rounding as
// cast_k's (st<D>), so each output equals the single-tensor cast bit for bit.
#define CAST_MT 64
#define CAST_CHUNK 8192
struct CastTab { u64 src[CAST_MT], dst[CAST_MT]; u32 n[CAST_MT]; u32 start[CAST_MT + 1]; u32 count; };
template <typename D> __device__ void cast_mt_k(const CastTab& tab) {
    u32 b = blockIdx.x, lo_t = 0, hi_t = tab.count - 1;
    while (lo_t < hi_t) {  // the last t with start[t] <= b
        u32 mid = (lo_t + hi_t + 1) / 2;
        if (tab.start[mid] <= b) lo_t = mid; else hi_t = mid - 1;
    }
    const float* x = (const float*)tab.src[lo_t];
    D* y = (D*)tab.dst[lo_t];
    u32 lo = (b - tab.start[lo_t]) * CAST_CHUNK, hi = min(tab.n[lo_t], lo + CAST_CHUNK), i0 = lo;
    // Four elements a thread at a time (16-byte loads, 8-byte stores) where aligned.
    if ((((u64)x & 15) | ((u64)y & 7)) == 0) {
        u32 n4 = (hi - lo) / 4;
        for (u32 q = threadIdx.x; q < n4; q += blockDim.x) {
            float4 a = *(const float4*)(x + lo + 4 * q);
            D o[4] = {st<D>(a.x), st<D>(a.y), st<D>(a.z), st<D>(a.w)};
            *(uint2*)(y + lo + 4 * q) = make_uint2((u32)o[0].x | ((u32)o[1].x << 16), (u32)o[2].x | ((u32)o[3].x << 16));
        }
        i0 = lo + 4 * n4;
    }
    for (u32 i = i0 + threadIdx.x; i < hi; i += blockDim.x) y[i] = st<D>(x[i]);
}
extern "C" __global__ void cast_mt_f32_bf16(CastTab tab) { cast_mt_k<bf16>(tab); }
extern "C" __global__ void cast_mt_f32_f16(CastTab tab) { cast_mt_k<f16>(tab); }

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
