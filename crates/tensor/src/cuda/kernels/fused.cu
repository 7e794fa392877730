// Fused kernels: softmax cross-entropy (forward + backward) and the AdamW update.

// One block per row of logits [N, V]. t[row] < 0 marks an ignored row. Math in Acc<T> (f32 for
// bf16/f16/f32 logits, f64 for f64); lse stored in the same type.
template <typename T> __device__ void ce_fwd_k(const T* x, const int* t, typename Acc<T>::t* lse, typename Acc<T>::t* loss, u32 v) {
    typedef typename Acc<T>::t A;
    const T* row = x + (u64)blockIdx.x * v;
    // One pass (online softmax): each thread keeps its running max and the sum of exp relative
    // to it, rescaled when the max grows; the block then rescales every thread's sum to the row max.
    A mt = -inf_of<A>(), st_ = 0;
    for (u32 j = threadIdx.x; j < v; j += blockDim.x) {
        A a = ld(row[j]);
        if (a > mt) { st_ = st_ * m_exp(mt - a) + (A)1; mt = a; }
        else if (mt > -inf_of<A>()) st_ += m_exp(a - mt); // a −∞ before any finite value adds 0
    }
    A m = block_max<A>(mt);
    A s = block_sum<A>(mt == m ? st_ : st_ * m_exp(mt - m));
    if (threadIdx.x == 0) {
        A l = m + m_log(s);
        lse[blockIdx.x] = l;
        int ti = t[blockIdx.x];
        loss[blockIdx.x] = ti < 0 ? (A)0 : l - (A)ld(row[ti]);
    }
}
// d[row, j] = (exp(x - lse) - [j == t]) * scale; ignored rows get 0.
template <typename T> __device__ void ce_bwd_k(const T* x, const int* t, const typename Acc<T>::t* lse, T* d, u32 v, double scale) {
    typedef typename Acc<T>::t A;
    const T* row = x + (u64)blockIdx.x * v;
    T* drow = d + (u64)blockIdx.x * v;
    int ti = t[blockIdx.x];
    A l = lse[blockIdx.x], sc = (A)scale;
    for (u32 j = threadIdx.x; j < v; j += blockDim.x) {
        A r = ti < 0 ? (A)0 : (m_exp((A)ld(row[j]) - l) - (j == (u32)ti ? (A)1 : (A)0)) * sc;
        drow[j] = st<T>(r);
    }
}
// exp in the fused classifier for logits of type T: the hardware exp2 for 16-bit logits (relative
// error ~1e-7 with the argument's rounding, far below the 4e-3 of the bf16/f16 gradient it
// feeds; one multiply and one MUFU instead of expf's ~10 instructions), the accurate exp
// otherwise.
template <typename T, typename A> __device__ __forceinline__ A ce_exp(A x) { return m_exp(x); }
template <> __device__ __forceinline__ float ce_exp<bf16, float>(float x) { return exp2_approx(x * 1.4426950408889634f); }
template <> __device__ __forceinline__ float ce_exp<f16, float>(float x) { return exp2_approx(x * 1.4426950408889634f); }

// Online-softmax update of a thread's (max, sum of exp relative to it) by n values at once: one
// rescale per group instead of a branch per element.
template <typename T, typename A> __device__ __forceinline__ void online_add(A& mt, A& st, const A* a, int n) {
    A pm = a[0];
    for (int i = 1; i < n; ++i) pm = a[i] > pm ? a[i] : pm;
    if (pm == -inf_of<A>()) return; // all −∞: adds nothing
    A mn = pm > mt ? pm : mt, s = 0;
    for (int i = 0; i < n; ++i) s += ce_exp<T, A>(a[i] - mn);
    st = st * ce_exp<T, A>(mt - mn) + s; // mt = −∞ (nothing yet): exp(−∞) = 0 and st = 0
    mt = mn;
}
// The fused classifier's per-chunk step: loss of each row of logits x [rows, ld] (the first v
// columns are real, the rest pad the GEMM to an aligned width) and, with `grad`, the logits'
// gradient written over x in place: (exp(x − lse) − [j == t]) · scale for j < v, 0 in the padding
// (so the padded columns add nothing to dX = d·W and give zero rows of dW). Pass 1 reads the row
// (online softmax); pass 2 re-reads it, mostly from L2, and writes. `scale` (1 / kept rows) is
// read from device memory: inside a CUDA graph it is computed on the device (ce_targets).
template <typename T> __device__ void ce_fused_k(T* x, const int* t, typename Acc<T>::t* loss, u32 v, u32 ldx, const double* scale, int grad) {
    typedef typename Acc<T>::t A;
    const u32 VW = 16 / sizeof(T);
    T* row = x + (u64)blockIdx.x * ldx;
    // 16-byte loads and stores when every row starts 16-byte aligned (the padded width ensures it).
    bool vec = ldx % VW == 0 && ((u64)x & 15) == 0;
    u32 nv = vec ? v / VW : 0;
    A mt = -inf_of<A>(), st_ = 0;
    for (u32 p = threadIdx.x; p < nv; p += blockDim.x) {
        Pack<T> pk = ((const Pack<T>*)row)[p];
        A a[16 / sizeof(T)];
#pragma unroll
        for (u32 e = 0; e < VW; ++e) a[e] = (A)ld(pk.v[e]);
        online_add<T, A>(mt, st_, a, VW);
    }
    for (u32 j = nv * VW + threadIdx.x; j < v; j += blockDim.x) {
        A a = (A)ld(row[j]);
        online_add<T, A>(mt, st_, &a, 1);
    }
    A m = block_max<A>(mt);
    A s = block_sum<A>(mt == m ? st_ : st_ * ce_exp<T, A>(mt - m));
    A l = m + m_log(s);
    int ti = t[blockIdx.x];
    // Every thread read the target's logit before any thread overwrites the row.
    A xt = ti < 0 ? (A)0 : (A)ld(row[ti]);
    __syncthreads();
    if (threadIdx.x == 0) loss[blockIdx.x] = ti < 0 ? (A)0 : l - xt;
    if (!grad) return;
    A sc = (A)*scale;
    u32 nall = vec ? ldx / VW : 0;
    for (u32 p = threadIdx.x; p < nall; p += blockDim.x) {
        Pack<T> pk = ((const Pack<T>*)row)[p];
#pragma unroll
        for (u32 e = 0; e < VW; ++e) {
            u32 j = p * VW + e;
            A r = (ti < 0 || j >= v) ? (A)0 : (ce_exp<T, A>((A)ld(pk.v[e]) - l) - (j == (u32)ti ? (A)1 : (A)0)) * sc;
            pk.v[e] = st<T>(r);
        }
        ((Pack<T>*)row)[p] = pk;
    }
    for (u32 j = nall * VW + threadIdx.x; j < ldx; j += blockDim.x) {
        A r = (ti < 0 || j >= v) ? (A)0 : (ce_exp<T, A>((A)ld(row[j]) - l) - (j == (u32)ti ? (A)1 : (A)0)) * sc;
        row[j] = st<T>(r);
    }
}
// ce_fused_k streaming rows through shared memory (sm_90+: bulk copies, mbarriers): a persistent
// block per SM walks rows blockIdx.x, + gridDim.x, ..., with two row buffers (dynamic shared
// memory: 2·ldx elements, 201 KB for a bf16 row of GPT-2's padded 50304-way head, then two
// mbarriers). While a row is reduced and its gradient written, the next row is already being
// copied in by the copy engine (one thread issues it), so every SM keeps a whole row's load in
// flight at all times and each logit is read from global memory once, not twice. Same arithmetic
// as ce_fused_k, element for element except for which thread sums which logits. ldx·sizeof(T)
// must be a multiple of 16 and x 16-byte aligned (the host checks).
#define CE_COPY_CHUNK 16384u // bytes a bulk copy: a 100 KB row goes as several moderate copies
#if __CUDA_ARCH__ >= 900
// Thread 0: announce `bytes` to the barrier, then copy them from global `src` to shared `dst`.
__device__ __forceinline__ void ce_bulk_load(void* dst, const void* src, u32 bytes, u32 bar) {
    mbar_expect(bar, bytes);
    for (u32 o = 0; o < bytes; o += CE_COPY_CHUNK)
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr((const char*)dst + o)), "l"((const char*)src + o), "r"(min(CE_COPY_CHUNK, bytes - o)), "r"(bar) : "memory");
}
#endif
template <typename T> __device__ void ce_stream_k(T* x, const int* t, typename Acc<T>::t* loss, u32 rows, u32 v, u32 ldx, const double* scale, int grad) {
#if __CUDA_ARCH__ >= 900
    typedef typename Acc<T>::t A;
    const u32 VW = 16 / sizeof(T);
    extern __shared__ __align__(16) unsigned char ce_sm_raw[];
    const u32 bytes = ldx * sizeof(T), np = ldx / VW;
    const u32 bar = smem_addr(ce_sm_raw + 2 * bytes); // two 8-byte barriers, one per buffer
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        mbar_init(bar + 8, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x == 0 && blockIdx.x < rows) ce_bulk_load(ce_sm_raw, x + (u64)blockIdx.x * ldx, bytes, bar);
    u32 it = 0;
    for (u32 r = blockIdx.x; r < rows; r += gridDim.x, ++it) {
        const u32 b = it & 1;
        // The other buffer was last read in the previous iteration, which ended at a barrier.
        if (threadIdx.x == 0 && r + gridDim.x < rows) ce_bulk_load(ce_sm_raw + (b ^ 1) * bytes, x + (u64)(r + gridDim.x) * ldx, bytes, bar + 8 * (b ^ 1));
        mbar_wait(bar + 8 * b, (it >> 1) & 1);
        const Pack<T>* sm = (const Pack<T>*)(ce_sm_raw + b * bytes);
        A mt = -inf_of<A>(), st_ = 0;
        for (u32 p = threadIdx.x; p < np; p += blockDim.x) {
            u32 n = p * VW + VW <= v ? VW : (p * VW < v ? v - p * VW : 0);
            if (n == 0) break;
            Pack<T> pk = sm[p];
            // The padding columns of the row's last pack as −∞ (exp 0): a whole pack always,
            // so the array stays in registers.
            A a[16 / sizeof(T)];
#pragma unroll
            for (u32 e = 0; e < VW; ++e) a[e] = e < n ? (A)ld(pk.v[e]) : -inf_of<A>();
            online_add<T, A>(mt, st_, a, VW);
        }
        A m = block_max<A>(mt);
        A s = block_sum<A>(mt == m ? st_ : st_ * ce_exp<T, A>(mt - m));
        A l = m + m_log(s);
        int ti = t[r];
        A xt = ti < 0 ? (A)0 : (A)ld(((const T*)sm)[ti]);
        if (threadIdx.x == 0) loss[r] = ti < 0 ? (A)0 : l - xt;
        if (grad) {
            A sc = (A)*scale;
            Pack<T>* row = (Pack<T>*)(x + (u64)r * ldx);
            for (u32 p = threadIdx.x; p < np; p += blockDim.x) {
                Pack<T> pk = sm[p];
#pragma unroll
                for (u32 e = 0; e < VW; ++e) {
                    u32 j = p * VW + e;
                    A q = (ti < 0 || j >= v) ? (A)0 : (ce_exp<T, A>((A)ld(pk.v[e]) - l) - (j == (u32)ti ? (A)1 : (A)0)) * sc;
                    pk.v[e] = st<T>(q);
                }
                row[p] = pk;
            }
        }
        __syncthreads(); // every thread is done with buffer b before the next iteration refills it
    }
#else
    __trap(); // the host launches this kernel on sm_90 and later only
#endif
}
// The fused classifier's kernels run 1024 threads a row (classifier.rs says why).
#define CE(T, N) \
extern "C" __global__ void ce_fwd_##N(const T* x, const int* t, Acc<T>::t* lse, Acc<T>::t* loss, u32 v) { ce_fwd_k<T>(x, t, lse, loss, v); } \
extern "C" __global__ void ce_bwd_##N(const T* x, const int* t, const Acc<T>::t* lse, T* d, u32 v, double scale) { ce_bwd_k<T>(x, t, lse, d, v, scale); } \
extern "C" __global__ void __launch_bounds__(1024) ce_fused_##N(T* x, const int* t, Acc<T>::t* loss, u32 v, u32 ldx, const double* scale, int grad) { ce_fused_k<T>(x, t, loss, v, ldx, scale, grad); } \
extern "C" __global__ void __launch_bounds__(1024, 1) ce_stream_##N(T* x, const int* t, Acc<T>::t* loss, u32 rows, u32 v, u32 ldx, const double* scale, int grad) { ce_stream_k<T>(x, t, loss, rows, v, ldx, scale, grad); }
CE(float, f32)
CE(double, f64)
CE(bf16, bf16)
CE(f16, f16)

// The fused classifier's targets on the device (one block): stored[i] = t[i], or -1 for rows that
// are ignored (t == ignore when has_ignore) or out of 0..v; inv_kept = 1 / (rows kept), inf when
// none (the mean is then NaN, as in PyTorch). Used inside CUDA-graph capture, where the targets
// cannot be read on the host; they were range-checked on the host when written.
extern "C" __global__ void ce_targets(const int* t, int* stored, double* inv_kept, u32 n, u32 v, long long ignore, int has_ignore) {
    double c = 0;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        int ti = t[i];
        bool ok = !(has_ignore && (long long)ti == ignore) && ti >= 0 && (u32)ti < v;
        stored[i] = ok ? ti : -1;
        c += ok ? 1.0 : 0.0;
    }
    double kept = block_sum<double>(c);
    if (threadIdx.x == 0) *inv_kept = 1.0 / kept;
}

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
