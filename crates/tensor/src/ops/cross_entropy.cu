// Softmax cross-entropy over rows of logits, forward and backward (ops/cross_entropy.rs).

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
#define CE(T, N) \
extern "C" __global__ void ce_fwd_##N(const T* x, const int* t, Acc<T>::t* lse, Acc<T>::t* loss, u32 v) { ce_fwd_k<T>(x, t, lse, loss, v); } \
extern "C" __global__ void ce_bwd_##N(const T* x, const int* t, const Acc<T>::t* lse, T* d, u32 v, double scale) { ce_bwd_k<T>(x, t, lse, d, v, scale); }
CE(float, f32)
CE(double, f64)
CE(bf16, bf16)
CE(f16, f16)
