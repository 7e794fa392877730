//! Distance kernels. The implementation is chosen once, when an index is created (AVX-512, else
//! AVX2+FMA, where the CPU has them; a portable loop otherwise), and kept as a field — no global
//! dispatch.
//!
//! All metrics are "smaller is closer": L2 is the squared Euclidean distance, inner product and
//! cosine are `1 - <a, b>` (cosine vectors are normalized on insert and on query), as in hnswlib.

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Metric {
    L2,
    InnerProduct,
    Cosine,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "l2" => Metric::L2,
            "ip" => Metric::InnerProduct,
            "cosine" => Metric::Cosine,
            _ => return None,
        })
    }
    pub fn code(self) -> u32 {
        match self {
            Metric::L2 => 0,
            Metric::InnerProduct => 1,
            Metric::Cosine => 2,
        }
    }
    pub fn from_code(c: u32) -> Option<Metric> {
        [Metric::L2, Metric::InnerProduct, Metric::Cosine].get(c as usize).copied()
    }
}

pub type DistFn = fn(&[f32], &[f32]) -> f32;

/// The kernel for `metric` on this CPU, and its name (for logs and benchmarks).
pub fn select(metric: Metric) -> (DistFn, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return match metric {
                Metric::L2 => (l2_avx512_safe, "l2/avx512"),
                _ => (ip_avx512_safe, "ip/avx512"),
            };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return match metric {
                Metric::L2 => (l2_avx2_safe, "l2/avx2+fma"),
                _ => (ip_avx2_safe, "ip/avx2+fma"),
            };
        }
    }
    match metric {
        Metric::L2 => (l2_portable, "l2/portable"),
        _ => (ip_portable, "ip/portable"),
    }
}

pub fn l2_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators: lets the compiler vectorize without reassociation rules.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

pub fn ip_portable(a: &[f32], b: &[f32]) -> f32 {
    1.0 - dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
fn l2_avx2_safe(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only selected when the CPU reports avx2 and fma.
    unsafe { l2_avx2(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn ip_avx2_safe(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: as above.
    1.0 - unsafe { dot_avx2(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn l2_avx512_safe(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only selected when the CPU reports avx512f.
    unsafe { l2_avx512(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn ip_avx512_safe(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: as above.
    1.0 - unsafe { dot_avx512(a, b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn l2_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i + 32 <= n {
        let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
        let d1 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        i += 32;
    }
    if i < n {
        // Masked tail: at most two partial 16-lane steps, no scalar loop.
        while i < n {
            let k = (n - i).min(16);
            let m: __mmask16 = if k == 16 { 0xffff } else { (1u16 << k) - 1 };
            let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)));
            s0 = _mm512_fmadd_ps(d, d, s0);
            i += k;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i + 32 <= n {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + 16)), _mm512_loadu_ps(pb.add(i + 16)), s1);
        i += 32;
    }
    while i < n {
        let k = (n - i).min(16);
        let m: __mmask16 = if k == 16 { 0xffff } else { (1u16 << k) - 1 };
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), s0);
        i += k;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
        let d1 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        i += 16;
    }
    if i + 8 <= n {
        let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
        s0 = _mm256_fmadd_ps(d, d, s0);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(s0, s1));
    while i < n {
        let d = *pa.add(i) - *pb.add(i);
        s += d * d;
        i += 1;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
        i += 16;
    }
    if i + 8 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(s0, s1));
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

/// Normalizes to unit length in place (zero vectors stay zero).
pub fn normalize(v: &mut [f32]) {
    let n = dot_portable(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_kernels_match_portable_ones_at_every_length() {
        for n in [1usize, 7, 8, 15, 16, 17, 50, 784] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            for m in [Metric::L2, Metric::InnerProduct] {
                let (f, _) = select(m);
                let want = if m == Metric::L2 { l2_portable(&a, &b) } else { ip_portable(&a, &b) };
                assert!((f(&a, &b) - want).abs() <= 1e-4 * want.abs().max(1.0), "{m:?} n={n}");
            }
        }
    }
}
