// LayerNorm forward/backward, with the residual add fused (ops/layer_norm.rs).
// x/y/gradients have the activation dtype T; LayerNorm's weight and bias have W (T or f32: the
// fp32 masters under mixed precision); statistics and arithmetic in Acc<T> (f32, f64 for f64).

// LayerNorm rows are read in chunks of V = 16 / sizeof(T) elements (one 16-byte load per lane)
// when c is a multiple of V and every pointer is 16-byte aligned (rows then are too), else one
// element per lane. Weights of type W load as the same V elements (W is T or wider).
template <typename T> __device__ __forceinline__ bool ln_vec_ok(u32 c, const void* const* ptrs, int n) {
    if (c % (16 / sizeof(T)) != 0) return false;
    for (int i = 0; i < n; ++i)
        if ((u64)ptrs[i] & 15) return false;
    return true;
}
template <typename T, typename A, int V> __device__ __forceinline__ void ln_ld(const T* p, A* out) {
    const int P = 16 / sizeof(T);
#pragma unroll
    for (int k = 0; k < V; k += P) {
        Pack<T> pk = *(const Pack<T>*)(p + k);
#pragma unroll
        for (int e = 0; e < P; ++e) out[k + e] = (A)ld(pk.v[e]);
    }
}
template <typename T, typename A, int V> __device__ __forceinline__ void ln_st(T* p, const A* in) {
    Pack<T> pk;
#pragma unroll
    for (int e = 0; e < V; ++e) pk.v[e] = st<T>(in[e]);
    *(Pack<T>*)p = pk;
}

// One warp per row of x [rows, c]: mean, rstd = 1/sqrt(var + eps) (biased variance), and
// y = (x - mean) · rstd · w + b. `b` may be null. With a residual `r` (else null) the row is
// first s = x + r, rounded to T and stored to `s` (the residual stream's next value), and the
// statistics are those of s: what the separate add and LayerNorm compute.
template <typename T, typename W> __device__ void ln_fwd_k(const T* x, const T* r, const W* w, const W* b, T* y, T* s, typename Acc<T>::t* mean, typename Acc<T>::t* rstd, u32 rows, u32 c, double eps) {
    typedef typename Acc<T>::t A;
    const int V = 16 / sizeof(T);
    u32 row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    const void* ptrs[6] = {x, r ? r : x, w, b ? b : w, y, s ? s : y};
    const bool vec = ln_vec_ok<T>(c, ptrs, 6);
    const T* xr = x + (u64)row * c;
    T* yr = y + (u64)row * c;
    // The row's values (after the residual add), from x or, once written, from s.
    const T* src = xr;
    A sum = 0;
    if (r) {
        const T* rr = r + (u64)row * c;
        T* sr = s + (u64)row * c;
        if (vec) {
            for (u32 j = lane * V; j < c; j += 32 * V) {
                A a[V], bb[V];
                ln_ld<T, A, V>(xr + j, a);
                ln_ld<T, A, V>(rr + j, bb);
#pragma unroll
                for (int e = 0; e < V; ++e) { a[e] = (A)ld(st<T>(a[e] + bb[e])); sum += a[e]; }
                ln_st<T, A, V>(sr + j, a);
            }
        } else {
            for (u32 j = lane; j < c; j += 32) { A v = (A)ld(st<T>((A)ld(xr[j]) + (A)ld(rr[j]))); sr[j] = st<T>(v); sum += v; }
        }
        src = sr;
    } else if (vec) {
        for (u32 j = lane * V; j < c; j += 32 * V) {
            A a[V];
            ln_ld<T, A, V>(xr + j, a);
#pragma unroll
            for (int e = 0; e < V; ++e) sum += a[e];
        }
    } else {
        for (u32 j = lane; j < c; j += 32) sum += (A)ld(xr[j]);
    }
    A m = warp_sum(sum) / (A)c;
    A var = 0;
    if (vec) {
        for (u32 j = lane * V; j < c; j += 32 * V) {
            A a[V];
            ln_ld<T, A, V>(src + j, a);
#pragma unroll
            for (int e = 0; e < V; ++e) { A d = a[e] - m; var += d * d; }
        }
    } else {
        for (u32 j = lane; j < c; j += 32) { A d = (A)ld(src[j]) - m; var += d * d; }
    }
    A rs = (A)1 / m_sqrt(warp_sum(var) / (A)c + (A)eps);
    if (vec) {
        for (u32 j = lane * V; j < c; j += 32 * V) {
            A a[V], wv[V], bv[V];
            ln_ld<T, A, V>(src + j, a);
            ln_ld<W, A, V>(w + j, wv);
            if (b) ln_ld<W, A, V>(b + j, bv);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                a[e] = (a[e] - m) * rs * wv[e];
                if (b) a[e] += bv[e];
            }
            ln_st<T, A, V>(yr + j, a);
        }
    } else {
        for (u32 j = lane; j < c; j += 32) {
            A o = ((A)ld(src[j]) - m) * rs * (A)ld(w[j]);
            if (b) o += (A)ld(b[j]);
            yr[j] = st<T>(o);
        }
    }
    if (lane == 0) { mean[row] = m; rstd[row] = rs; }
}

// dx for one row per warp: x̂ = (x - mean)·rstd, d̂ = g·w,
// dx = rstd · (d̂ - mean(d̂) - x̂ · mean(d̂ · x̂)), plus `add` (null, or another gradient of x:
// the residual stream's, summed here instead of by a separate add).
template <typename T, typename W> __device__ void ln_bwd_k(const T* x, const W* w, const T* g, const T* add, const typename Acc<T>::t* mean, const typename Acc<T>::t* rstd, T* dx, u32 rows, u32 c) {
    typedef typename Acc<T>::t A;
    const int V = 16 / sizeof(T);
    u32 row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    const void* ptrs[5] = {x, w, g, add ? add : g, dx};
    const bool vec = ln_vec_ok<T>(c, ptrs, 5);
    const T* xr = x + (u64)row * c;
    const T* gr = g + (u64)row * c;
    const T* ar = add ? add + (u64)row * c : nullptr;
    T* dr = dx + (u64)row * c;
    A m = mean[row], r = rstd[row];
    A sa = 0, sb = 0;
    if (vec) {
        for (u32 j = lane * V; j < c; j += 32 * V) {
            A xv[V], gv[V], wv[V];
            ln_ld<T, A, V>(xr + j, xv);
            ln_ld<T, A, V>(gr + j, gv);
            ln_ld<W, A, V>(w + j, wv);
#pragma unroll
            for (int e = 0; e < V; ++e) { A xh = (xv[e] - m) * r, dh = gv[e] * wv[e]; sa += dh; sb += dh * xh; }
        }
    } else {
        for (u32 j = lane; j < c; j += 32) {
            A xh = ((A)ld(xr[j]) - m) * r, dh = (A)ld(gr[j]) * (A)ld(w[j]);
            sa += dh;
            sb += dh * xh;
        }
    }
    A a = warp_sum(sa) / (A)c, bb = warp_sum(sb) / (A)c;
    if (vec) {
        for (u32 j = lane * V; j < c; j += 32 * V) {
            A xv[V], gv[V], wv[V], av[V];
            ln_ld<T, A, V>(xr + j, xv);
            ln_ld<T, A, V>(gr + j, gv);
            ln_ld<W, A, V>(w + j, wv);
            if (ar) ln_ld<T, A, V>(ar + j, av);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                A xh = (xv[e] - m) * r, dh = gv[e] * wv[e];
                // Rounded to T before the add, as a separate add of the two T gradients would be.
                xv[e] = r * (dh - a - xh * bb);
                if (ar) xv[e] = (A)ld(st<T>(xv[e])) + av[e];
            }
            ln_st<T, A, V>(dr + j, xv);
        }
    } else {
        for (u32 j = lane; j < c; j += 32) {
            A xh = ((A)ld(xr[j]) - m) * r, dh = (A)ld(gr[j]) * (A)ld(w[j]);
            A o = r * (dh - a - xh * bb);
            if (ar) o = (A)ld(st<T>(o)) + (A)ld(ar[j]);
            dr[j] = st<T>(o);
        }
    }
}

// ln_bwd_k and ln_dwdb_k in one pass over x and g, for 16-bit T on the 16-byte path with c a
// multiple of 32·V up to LN_FUSED_CH·32·V (GPT-2 mini: c = 256 = one 16-byte chunk per lane).
// Blocks of 8 warps stride over the rows (warp w of block b takes rows (b·8 + w) + k·8·gridDim.x);
// each lane keeps f32 sums of g·x̂ and g for its columns over its warp's rows (a few dozen), the
// block adds its 8 warps' sums in order in f64 and writes them as split `blockIdx.x` of
// part [gridDim.x, 3, c], which ln_dwdb_final_k combines in order: deterministic for a given
// grid (the host derives it from rows alone). Saves re-reading x and g for dW/dB. The third sum
// is of dx itself (in f32, before its rounding): the column sums of the residual stream's
// gradient, which are the bias gradients of the Linear whose output was added into that stream
// (backward.rs hands them over instead of a `colsum16` pass re-reading dx).
#define LN_FUSED_CH 2
template <typename T, typename W, int CH> __device__ void ln_bwd_dwdb_k(const T* x, const W* w, const T* g, const T* add, const float* mean, const float* rstd, T* dx, double* part, u32 rows, u32 c) {
    const int V = 16 / sizeof(T);
    __shared__ float sh[8][3][CH * 32 * V];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float wv[CH][V], aw[CH][V], ab[CH][V], as[CH][V];
#pragma unroll
    for (int k = 0; k < CH; ++k) {
        ln_ld<W, float, V>(w + (k * 32 + lane) * V, wv[k]);
#pragma unroll
        for (int e = 0; e < V; ++e) aw[k][e] = ab[k][e] = as[k][e] = 0.f;
    }
    for (u32 row = blockIdx.x * 8 + warp; row < rows; row += gridDim.x * 8) {
        const T* xr = x + (u64)row * c;
        const T* gr = g + (u64)row * c;
        float m = mean[row], r = rstd[row];
        float xh[CH][V], dh[CH][V];
        float sa = 0.f, sb = 0.f;
#pragma unroll
        for (int k = 0; k < CH; ++k) {
            float gv[V];
            ln_ld<T, float, V>(xr + (k * 32 + lane) * V, xh[k]);
            ln_ld<T, float, V>(gr + (k * 32 + lane) * V, gv);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                xh[k][e] = (xh[k][e] - m) * r;
                dh[k][e] = gv[e] * wv[k][e];
                sa += dh[k][e];
                sb += dh[k][e] * xh[k][e];
                aw[k][e] += gv[e] * xh[k][e];
                ab[k][e] += gv[e];
            }
        }
        float a = warp_sum(sa) / (float)c, bb = warp_sum(sb) / (float)c;
#pragma unroll
        for (int k = 0; k < CH; ++k) {
            const u32 j = (k * 32 + lane) * V;
            float o[V], av[V];
            if (add) ln_ld<T, float, V>(add + (u64)row * c + j, av);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                o[e] = r * (dh[k][e] - a - xh[k][e] * bb);
                if (add) o[e] = (float)ld(st<T>(o[e])) + av[e];
                as[k][e] += o[e]; // dx before its rounding to T

            }
            ln_st<T, float, V>(dx + (u64)row * c + j, o);
        }
    }
#pragma unroll
    for (int k = 0; k < CH; ++k)
#pragma unroll
        for (int e = 0; e < V; ++e) {
            sh[warp][0][(k * 32 + lane) * V + e] = aw[k][e];
            sh[warp][1][(k * 32 + lane) * V + e] = ab[k][e];
            sh[warp][2][(k * 32 + lane) * V + e] = as[k][e];
        }
    __syncthreads();
    for (u32 col = threadIdx.x; col < c; col += blockDim.x) {
        double sw = 0, sb2 = 0, ss = 0;
        for (int q = 0; q < 8; ++q) { sw += (double)sh[q][0][col]; sb2 += (double)sh[q][1][col]; ss += (double)sh[q][2][col]; }
        part[(u64)blockIdx.x * 3 * c + col] = sw;
        part[(u64)blockIdx.x * 3 * c + c + col] = sb2;
        part[(u64)blockIdx.x * 3 * c + 2 * c + col] = ss;
    }
}
#define LN_FUSED(T, TN, W, WN) \
extern "C" __global__ void __launch_bounds__(256, 4) ln_bwd_dwdb1_##TN##_##WN(const T* x, const W* w, const T* g, const T* add, const float* mean, const float* rstd, T* dx, double* part, u32 rows, u32 c) { ln_bwd_dwdb_k<T, W, 1>(x, w, g, add, mean, rstd, dx, part, rows, c); } \
extern "C" __global__ void __launch_bounds__(256) ln_bwd_dwdb2_##TN##_##WN(const T* x, const W* w, const T* g, const T* add, const float* mean, const float* rstd, T* dx, double* part, u32 rows, u32 c) { ln_bwd_dwdb_k<T, W, 2>(x, w, g, add, mean, rstd, dx, part, rows, c); }
LN_FUSED(bf16, bf16, float, f32)
LN_FUSED(bf16, bf16, bf16, bf16)
LN_FUSED(f16, f16, float, f32)
LN_FUSED(f16, f16, f16, f16)

// dw = Σ_rows g·x̂, db = Σ_rows g, as the column reduction in cuda/kernels/reduce.cu: block (32, 8), grid
// (c/32, splits); f64 partials [splits, 2, c] combined in order by ln_dwdb_final (deterministic).
template <typename T, typename W> __device__ void ln_dwdb_k(const T* x, const T* g, const typename Acc<T>::t* mean, const typename Acc<T>::t* rstd, double* part, W* dw, W* db, u32 rows, u32 c, u32 rps) {
    __shared__ double sw[8][33], sb[8][33];
    u32 col = blockIdx.x * 32 + threadIdx.x;
    u32 r0 = blockIdx.y * rps, r1 = min(rows, r0 + rps);
    double aw = 0, ab = 0;
    if (col < c)
        for (u32 i = r0 + threadIdx.y; i < r1; i += 8) {
            double gi = (double)ld(g[(u64)i * c + col]);
            double xh = ((double)ld(x[(u64)i * c + col]) - (double)mean[i]) * (double)rstd[i];
            aw += gi * xh;
            ab += gi;
        }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        for (int j = 1; j < 8; ++j) { aw += sw[j][threadIdx.x]; ab += sb[j][threadIdx.x]; }
        if (gridDim.y == 1) {
            dw[col] = st<W>(aw);
            if (db) db[col] = st<W>(ab);
        } else {
            part[(u64)blockIdx.y * 2 * c + col] = aw;
            part[(u64)blockIdx.y * 2 * c + c + col] = ab;
        }
    }
}
// Block (8, 128), grid c/8: thread (x, y) sums splits y, y + 128, ... of column x, then a tree
// over y in shared memory adds the 128 partial sums in a fixed order (deterministic). One thread
// per column looping over all splits took ~20 µs per LayerNorm at 256 splits (a latency-bound
// chain of loads); blocks of 32 columns (8 blocks at c = 256) ~10 µs at 512 splits (eager
// profile, H100). `nsum` sums a split (2: dW, dB; 3: also dx's column sums, into `cs` as f32).
template <typename W> __device__ void ln_dwdb_final_k(const double* part, W* dw, W* db, float* cs, u32 c, u32 splits, u32 nsum) {
    __shared__ double sw[128][9], sb[128][9], ss[128][9];
    const u32 col = blockIdx.x * 8 + threadIdx.x, y = threadIdx.y;
    double aw = 0, ab = 0, as = 0;
    if (col < c)
        for (u32 s = y; s < splits; s += 128) {
            const double* p = part + (u64)s * nsum * c + col;
            aw += p[0];
            ab += p[c];
            if (nsum == 3) as += p[2 * c];
        }
    sw[y][threadIdx.x] = aw;
    sb[y][threadIdx.x] = ab;
    ss[y][threadIdx.x] = as;
    __syncthreads();
#pragma unroll
    for (u32 h = 64; h > 0; h >>= 1) {
        if (y < h) {
            sw[y][threadIdx.x] += sw[y + h][threadIdx.x];
            sb[y][threadIdx.x] += sb[y + h][threadIdx.x];
            ss[y][threadIdx.x] += ss[y + h][threadIdx.x];
        }
        __syncthreads();
    }
    if (y == 0 && col < c) {
        dw[col] = st<W>(sw[0][threadIdx.x]);
        if (db) db[col] = st<W>(sb[0][threadIdx.x]);
        if (nsum == 3) cs[col] = (float)ss[0][threadIdx.x];
    }
}

#define LN(T, TN, W, WN) \
extern "C" __global__ void ln_fwd_##TN##_##WN(const T* x, const T* r, const W* w, const W* b, T* y, T* s, Acc<T>::t* mean, Acc<T>::t* rstd, u32 rows, u32 c, double eps) { ln_fwd_k<T, W>(x, r, w, b, y, s, mean, rstd, rows, c, eps); } \
extern "C" __global__ void ln_bwd_##TN##_##WN(const T* x, const W* w, const T* g, const T* add, const Acc<T>::t* mean, const Acc<T>::t* rstd, T* dx, u32 rows, u32 c) { ln_bwd_k<T, W>(x, w, g, add, mean, rstd, dx, rows, c); } \
extern "C" __global__ void ln_dwdb_##TN##_##WN(const T* x, const T* g, const Acc<T>::t* mean, const Acc<T>::t* rstd, double* part, W* dw, W* db, u32 rows, u32 c, u32 rps) { ln_dwdb_k<T, W>(x, g, mean, rstd, part, dw, db, rows, c, rps); }
LN(float, f32, float, f32)
LN(double, f64, double, f64)
LN(bf16, bf16, float, f32)
LN(bf16, bf16, bf16, bf16)
LN(f16, f16, float, f32)
LN(f16, f16, f16, f16)
#define LN_FINAL(W, WN) \
extern "C" __global__ void ln_dwdb_final_##WN(const double* part, W* dw, W* db, float* cs, u32 c, u32 splits, u32 nsum) { ln_dwdb_final_k<W>(part, dw, db, cs, c, splits, nsum); }
LN_FINAL(float, f32)
LN_FINAL(double, f64)
LN_FINAL(bf16, bf16)
LN_FINAL(f16, f16)
