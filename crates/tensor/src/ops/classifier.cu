// The fused classifier's cross-entropy step over chunks of logits, in place (ops/classifier.rs);
// its Hopper GEMM kernels are in classifier_sm90.cu.

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
#define CE_FUSED(T, N) \
extern "C" __global__ void __launch_bounds__(1024) ce_fused_##N(T* x, const int* t, Acc<T>::t* loss, u32 v, u32 ldx, const double* scale, int grad) { ce_fused_k<T>(x, t, loss, v, ldx, scale, grad); } \
extern "C" __global__ void __launch_bounds__(1024, 1) ce_stream_##N(T* x, const int* t, Acc<T>::t* loss, u32 rows, u32 v, u32 ldx, const double* scale, int grad) { ce_stream_k<T>(x, t, loss, rows, v, ldx, scale, grad); }
CE_FUSED(float, f32)
CE_FUSED(double, f64)
CE_FUSED(bf16, bf16)
CE_FUSED(f16, f16)

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
