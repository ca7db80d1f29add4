//! Which SIMD forms of the kernels this CPU runs, decided once at run time.
//!
//! The build targets AVX2, FMA and F16C (`x86-64-v3` in `.cargo/config.toml`), which every
//! kernel here may use freely. AVX-512 and VNNI are not assumed: one binary must run on the
//! AVX2-only machines beside the AVX-512 ones. The kernels that gain from them are compiled a
//! second time with those features enabled, and [`level`] picks a form per call.
//!
//! A tile kernel's body is generic over [`BytePairs`], how it sums products of unsigned and
//! signed bytes, and asks only for the build's features: [`with_byte_pairs!`] instantiates it
//! once per form, called from a function whose `#[target_feature]` holds that form's
//! features, so the body, and the form's instructions with it, inline there (the release
//! binary has no call left to an intrinsic).

use std::arch::x86_64::{__m256i, _mm256_add_epi32, _mm256_madd_epi16, _mm256_maddubs_epi16};
use std::arch::x86_64::{_mm256_dpbusd_avx_epi32, _mm256_dpbusd_epi32, _mm256_set1_epi16};

/// A SIMD level the kernels run at: the build's, or one above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    /// AVX2, FMA and F16C only.
    Avx2 = 1,
    /// Those and AVX-VNNI (256-bit VNNI without AVX-512: Intel's Alder Lake and later).
    AvxVnni,
    /// Those and AVX-512 F, BW, VL and VNNI.
    Avx512,
}

impl Level {
    /// The levels this CPU can run, lowest first.
    #[cfg(test)]
    fn all_of_this_cpu() -> Vec<Self> {
        let mut levels = vec![Self::Avx2];
        if std::arch::is_x86_feature_detected!("avxvnni") {
            levels.push(Self::AvxVnni);
        }
        if Self::detect() == Self::Avx512 {
            levels.push(Self::Avx512);
        }
        levels
    }

    fn detect() -> Self {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
            Self::Avx512
        } else if has!("avxvnni") {
            Self::AvxVnni
        } else {
            Self::Avx2
        }
    }
}

/// A level the tests run the kernels at instead of the CPU's best: 0 for none, else the
/// level's discriminant. Global, since a matrix's rows are shared out over other threads.
#[cfg(test)]
static FORCED_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Runs `check` at each level this CPU has, one test at a time.
#[cfg(test)]
pub(super) fn at_each_level(check: impl Fn(Level)) {
    use std::sync::atomic::Ordering::Relaxed;
    static ONE_TEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    /// Back to the CPU's best, even when a check fails.
    struct Unforce;
    impl Drop for Unforce {
        fn drop(&mut self) {
            FORCED_LEVEL.store(0, Relaxed);
        }
    }
    let _one = ONE_TEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let _unforce = Unforce;
    for level in Level::all_of_this_cpu() {
        FORCED_LEVEL.store(level as u8, Relaxed);
        check(level);
    }
}

/// The highest level this CPU runs.
#[inline]
pub(super) fn level() -> Level {
    #[cfg(test)]
    {
        let forced = FORCED_LEVEL.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(&level) = [Level::Avx2, Level::AvxVnni, Level::Avx512]
            .iter()
            .find(|level| **level as u8 == forced)
        {
            return level;
        }
    }
    static LEVEL: std::sync::LazyLock<Level> = std::sync::LazyLock::new(Level::detect);
    *LEVEL
}

/// How a kernel adds products of unsigned and signed bytes, four to each 32-bit lane.
pub(super) trait BytePairs {
    /// Whether [`BytePairs::dot`] is one instruction. Without it, kernels whose byte pair
    /// sums fit in 16 bits are faster adding those up first and widening them once.
    const VNNI: bool;

    /// `sums` plus the sums of four products of `unsigned` and `signed` bytes.
    ///
    /// # Safety
    /// The code this is inlined into runs with the form's features (see the implementors).
    /// Without VNNI, each pair's sum fits in i16 (four-bit values, or magnitudes of i8,
    /// against i8).
    unsafe fn dot(sums: __m256i, unsigned: __m256i, signed: __m256i) -> __m256i;
}

/// AVX2 alone: byte pairs to 16 bits, then pairs of those to 32.
pub(super) struct Avx2Pairs;

impl BytePairs for Avx2Pairs {
    const VNNI: bool = false;

    #[inline(always)]
    unsafe fn dot(sums: __m256i, unsigned: __m256i, signed: __m256i) -> __m256i {
        // SAFETY: the build targets AVX2 (`avx2_kernels`).
        unsafe {
            let pairs = _mm256_maddubs_epi16(unsigned, signed);
            _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
}

/// AVX-VNNI's `vpdpbusd`, for code inlined into [`with_avx_vnni`].
pub(super) struct AvxVnni;

impl BytePairs for AvxVnni {
    const VNNI: bool = true;

    #[inline(always)]
    unsafe fn dot(sums: __m256i, unsigned: __m256i, signed: __m256i) -> __m256i {
        // SAFETY: the caller's promise: this runs inside `with_avx_vnni`.
        unsafe { _mm256_dpbusd_avx_epi32(sums, unsigned, signed) }
    }
}

/// AVX-512 VNNI's `vpdpbusd` on 256 bits, for code inlined into [`with_avx512`].
pub(super) struct Avx512Vnni;

impl BytePairs for Avx512Vnni {
    const VNNI: bool = true;

    #[inline(always)]
    unsafe fn dot(sums: __m256i, unsigned: __m256i, signed: __m256i) -> __m256i {
        // SAFETY: the caller's promise: this runs inside `with_avx512`.
        unsafe { _mm256_dpbusd_epi32(sums, unsigned, signed) }
    }
}

/// Runs `kernel` compiled with AVX-512 F, BW, VL and VNNI: the code inlined into it takes those
/// instructions, and AVX-512's 32 vector registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn with_avx512<T>(kernel: impl FnOnce() -> T) -> T {
    kernel()
}

/// Runs `kernel` compiled with AVX-VNNI.
#[target_feature(enable = "avxvnni")]
pub(super) fn with_avx_vnni<T>(kernel: impl FnOnce() -> T) -> T {
    kernel()
}

/// `with_byte_pairs!(P => kernel)` evaluates `kernel` (an expression naming the type `P`)
/// with `P` the [`BytePairs`] form of this CPU's [`level`], compiled with its features.
macro_rules! with_byte_pairs {
    ($pairs:ident => $kernel:expr) => {{
        use $crate::llm::quant::simd;
        match simd::level() {
            simd::Level::Avx512 => {
                type $pairs = simd::Avx512Vnni;
                let kernel = || $kernel;
                // SAFETY: the CPU has AVX-512 F, BW, VL and VNNI (`simd::level`).
                unsafe { simd::with_avx512(kernel) }
            }
            simd::Level::AvxVnni => {
                type $pairs = simd::AvxVnni;
                let kernel = || $kernel;
                // SAFETY: the CPU has AVX-VNNI (`simd::level`).
                unsafe { simd::with_avx_vnni(kernel) }
            }
            simd::Level::Avx2 => {
                type $pairs = simd::Avx2Pairs;
                $kernel
            }
        }
    }};
}
pub(super) use with_byte_pairs;
