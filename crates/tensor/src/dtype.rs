//! Element types.

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// For reference computations and finite-difference checks.
    F64,
    BF16,
    F16,
    I32,
    U32,
    /// Boolean masks (0/1) from comparisons.
    U8,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that can be a tensor element. Conversions go through f64, which holds every value
/// of every supported type exactly (i32/u32 included).
pub trait WithDType: Copy + Send + Sync + 'static + std::fmt::Debug + PartialOrd {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
}

macro_rules! with_dtype {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$d;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}
with_dtype!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |x: f64| x, |v: f64| v);
with_dtype!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);
with_dtype!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
with_dtype!(i32, I32, |x: i32| x as f64, |v: f64| v as i32);
with_dtype!(u32, U32, |x: u32| x as f64, |v: f64| v as u32);
with_dtype!(u8, U8, |x: u8| x as f64, |v: f64| v as u8);

/// The float types the CPU computes in natively (bf16/f16 compute through f32).
pub trait Float: WithDType + num_like::NumLike {}
impl Float for f32 {}
impl Float for f64 {}

pub mod num_like {
    /// The handful of float operations the CPU kernels need, for f32 and f64.
    pub trait NumLike: Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> + std::ops::Div<Output = Self> + std::ops::Neg<Output = Self> + PartialOrd {
        fn exp(self) -> Self;
        fn ln(self) -> Self;
        fn sqrt(self) -> Self;
        fn tanh(self) -> Self;
        fn sin(self) -> Self;
        fn cos(self) -> Self;
        fn abs(self) -> Self;
        fn powf(self, p: Self) -> Self;
        fn erf(self) -> Self;
        fn lit(v: f64) -> Self;
        fn neg_infinity() -> Self;
        fn is_nan(self) -> bool;
    }
    macro_rules! num_like {
        ($t:ty) => {
            impl NumLike for $t {
                #[inline(always)] fn exp(self) -> Self { <$t>::exp(self) }
                #[inline(always)] fn ln(self) -> Self { <$t>::ln(self) }
                #[inline(always)] fn sqrt(self) -> Self { <$t>::sqrt(self) }
                #[inline(always)] fn tanh(self) -> Self { <$t>::tanh(self) }
                #[inline(always)] fn sin(self) -> Self { <$t>::sin(self) }
                #[inline(always)] fn cos(self) -> Self { <$t>::cos(self) }
                #[inline(always)] fn abs(self) -> Self { <$t>::abs(self) }
                #[inline(always)] fn powf(self, p: Self) -> Self { <$t>::powf(self, p) }
                #[inline(always)] fn erf(self) -> Self { <$t as ErfImpl>::erf_impl(self) }
                #[inline(always)] fn lit(v: f64) -> Self { v as $t }
                #[inline(always)] fn neg_infinity() -> Self { <$t>::NEG_INFINITY }
                #[inline(always)] fn is_nan(self) -> bool { <$t>::is_nan(self) }
            }
        };
    }
    num_like!(f32);
    num_like!(f64);

    /// erf per precision: f64 to full precision (reference/gradient checks), f32 by
    /// Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7, below f32's resolution near 1): one exp and
    /// a division instead of a 100-term series.
    pub trait ErfImpl {
        fn erf_impl(self) -> Self;
    }
    impl ErfImpl for f64 {
        #[inline(always)]
        fn erf_impl(self) -> f64 {
            super::erf_f64(self)
        }
    }
    impl ErfImpl for f32 {
        #[inline(always)]
        fn erf_impl(self) -> f32 {
            let a = self.abs();
            let t = 1.0 / (1.0 + 0.327_591_1 * a);
            let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
            let y = 1.0 - poly * (-a * a).exp();
            if self < 0.0 { -y } else { y }
        }
    }
}

/// erf to full f64 precision (W. J. Cody's rational approximations, as in most libms).
pub fn erf_f64(x: f64) -> f64 {
    // For |x| < 0.5 a series; beyond, 1 - erfc via a continued-fraction-free rational fit.
    let ax = x.abs();
    if ax < 2.5 {
        // Maclaurin series: converges fast for small |x|.
        let x2 = x * x;
        let mut term = x;
        let mut sum = x;
        // |x| < 2.5: the terms peak near e^(x^2) ~ 500 and then fall factorially; 100 terms are
        // far past f64 precision (about 1e-13 absolute after the cancellation).
        for n in 1..100 {
            let n = n as f64;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        return sum * std::f64::consts::FRAC_2_SQRT_PI;
    }
    let r = erfc_pos(ax);
    if x > 0.0 { 1.0 - r } else { r - 1.0 }
}

/// erfc(x) for x >= 2.5 by the continued fraction (Lentz), accurate to ~1e-15.
fn erfc_pos(x: f64) -> f64 {
    if x > 27.0 {
        return 0.0;
    }
    // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...)))))
    let tiny = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0;
    for i in 1..300 {
        let a = i as f64 / 2.0;
        d = x + a * d;
        if d.abs() < tiny { d = tiny; }
        c = x + a / c;
        if c.abs() < tiny { c = tiny; }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

pub use half::{bf16 as BF16, f16 as F16};
