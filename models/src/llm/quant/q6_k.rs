//! The Q6_K kernel. A super-block of 256 weights is 128 bytes of low four bits, 64 bytes of
//! high two bits, sixteen signed 8-bit scales (one per 16 weights), then a scale `d` (f16).
//! A weight is `d · sc · (q − 32)` with `q` six bits. Each half of 128 weights draws on 64
//! low-bit bytes and 32 high-bit bytes: weights `32r + l` (`r` = 0..4, `l` = 0..32) take the
//! low or high nibble of byte `l` or `l + 32`, and bits `2r`–`2r+1` of high byte `l`.

use half::f16;

use super::{QuantizedInput, BLOCK};

/// Bytes per super-block.
pub(super) const BLOCK_BYTES: usize = 210;

/// Weights per super-block.
pub(super) const VALUES: usize = 256;

/// Input blocks of 32 per super-block.
const SUB_BLOCKS: usize = VALUES / BLOCK;

/// Where a super-block's parts start.
const HIGH_BITS: usize = 128;
pub(super) const SCALES: usize = 192;
pub(super) const SCALE: usize = 208;

/// Weight `32r + l` of half `h` of a super-block, as a signed value in −32..32.
fn weight(block: &[u8], h: usize, r: usize, l: usize) -> i32 {
    let low = block[h * 64 + l + 32 * (r & 1)];
    let low = if r < 2 { low & 0x0F } else { low >> 4 };
    let high = (block[HIGH_BITS + h * 32 + l] >> (2 * r)) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Weight `v` (0..256) of a super-block as stored: unsigned, in 0..64.
pub(super) fn stored_value(block: &[u8], v: usize) -> u8 {
    (weight(block, v / 128, v % 128 / 32, v % 32) + 32) as u8
}

/// The portable kernel.
pub(super) fn dot_scalar(blocks: &[u8], input: &QuantizedInput) -> f32 {
    let mut total = 0.0f32;
    for (s, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[SCALE], block[SCALE + 1]]).to_f32();
        for j in 0..SUB_BLOCKS {
            let (h, r) = (j / 4, j % 4);
            let b = s * SUB_BLOCKS + j;
            let values = &input.values[b * BLOCK..(b + 1) * BLOCK];
            // Each block of 32 has two scales, one per 16 weights.
            let mut sums = [0i32; 2];
            for (l, &x) in values.iter().enumerate() {
                sums[l / 16] += weight(block, h, r, l) * x as i32;
            }
            let scales = [2 * j, 2 * j + 1].map(|i| block[SCALES + i] as i8 as f32);
            let [scale, _] = input.scale_sums[b];
            total += d * scale * (scales[0] * sums[0] as f32 + scales[1] * sums[1] as f32);
        }
    }
    total
}

/// `N` inputs against one row at once: each super-block's six-bit values are put together
/// once for all of them, and each input's sums are added in the same order as alone.
///
/// As llama.cpp's AVX2 kernel does, a super-block's products stay integers: the pair sums of
/// `q · x` less those of `32 · x` (16 bits each) are multiplied by their 8-bit scales and added
/// up in 32 bits, and only the super-block's total is scaled in floats. That needs one input
/// scale per super-block ([`input_span`](super::Format::input_span)).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and each input has 32 values and a scale pair per block of
/// 32 of the row, the scales equal within a super-block.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_avx2<const N: usize>(
    blocks: &[u8],
    inputs: [&QuantizedInput; N],
) -> [f32; N] {
    use super::sum_lanes;
    use std::arch::x86_64::*;
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let two_bits = _mm256_set1_epi8(3);
    let offset = _mm256_set1_epi8(32);
    let mut scaled = [_mm256_setzero_ps(); N];
    for (s, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[SCALE], block[SCALE + 1]]).to_f32();
        // The sixteen scales as 32-bit lanes holding the scale in both 16-bit halves: scales
        // 0–7, then 8–15.
        let scales: [__m256i; 2] = std::array::from_fn(|i| {
            // SAFETY: the scales are 16 bytes from byte 192.
            let wide = unsafe {
                _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    block.as_ptr().add(SCALES + 8 * i) as *const __m128i
                ))
            };
            _mm256_or_si256(
                _mm256_and_si256(wide, _mm256_set1_epi32(0xFFFF)),
                _mm256_slli_epi32(wide, 16),
            )
        });
        let mut sums = [_mm256_setzero_si256(); N];
        for h in 0..2 {
            // SAFETY: each half's 64 low-bit bytes start at 64h and its 32 high-bit bytes at
            // 128 + 32h, inside the super-block's 210 bytes.
            let (low_a, low_b, high) = unsafe {
                (
                    _mm256_loadu_si256(block.as_ptr().add(h * 64) as *const __m256i),
                    _mm256_loadu_si256(block.as_ptr().add(h * 64 + 32) as *const __m256i),
                    _mm256_loadu_si256(block.as_ptr().add(HIGH_BITS + h * 32) as *const __m256i),
                )
            };
            let lows = [
                _mm256_and_si256(low_a, low_nibbles),
                _mm256_and_si256(low_b, low_nibbles),
                _mm256_and_si256(_mm256_srli_epi16(low_a, 4), low_nibbles),
                _mm256_and_si256(_mm256_srli_epi16(low_b, 4), low_nibbles),
            ];
            for (r, low) in lows.into_iter().enumerate() {
                let j = 4 * h + r;
                let high_bits = _mm256_and_si256(
                    _mm256_srl_epi16(high, _mm_cvtsi32_si128(2 * r as i32)),
                    two_bits,
                );
                // q as unsigned bytes (0..64).
                let weights = _mm256_or_si256(low, _mm256_slli_epi16(high_bits, 4));
                // 16-bit lanes 0–7 (the first 16 weights) take scale 2j, lanes 8–15 scale
                // 2j + 1.
                let at = (2 * j % 8) as i32;
                let scale = _mm256_permutevar8x32_epi32(
                    scales[j / 4],
                    _mm256_add_epi32(
                        _mm256_set1_epi32(at),
                        _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
                    ),
                );
                for (k, input) in inputs.iter().enumerate() {
                    // SAFETY: each input has 32 values per block of 32 of the row.
                    let values = unsafe {
                        _mm256_loadu_si256(input.values.as_ptr().add((s * SUB_BLOCKS + j) * BLOCK)
                            as *const __m256i)
                    };
                    // Pair sums of q · x (|2 · 63 · 128| fits 16 bits) less those of 32 · x.
                    let pairs = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(weights, values),
                        _mm256_maddubs_epi16(offset, values),
                    );
                    sums[k] = _mm256_add_epi32(sums[k], _mm256_madd_epi16(pairs, scale));
                }
            }
        }
        for (k, input) in inputs.iter().enumerate() {
            let factor = d * input.scale_sums[s * SUB_BLOCKS][0];
            scaled[k] = _mm256_fmadd_ps(
                _mm256_set1_ps(factor),
                _mm256_cvtepi32_ps(sums[k]),
                scaled[k],
            );
        }
    }
    std::array::from_fn(|k| sum_lanes(scaled[k]))
}

/// The same on AVX-512: a pair of blocks of 32 (`r` even and odd) per 512-bit register, the
/// even one in the low half, each block's products scaled in floats (VNNI sums four products
/// straight into 32 bits, past where a 16-bit scale could multiply them); it agrees with the
/// AVX2 kernel to rounding. Signed weights multiply the
/// inputs shifted to unsigned (x + 128), their sums starting at −128 · Σ w: the same integers
/// as |w| × ±x.
///
/// # Safety
/// The CPU has AVX-512 (F, BW, VL, VNNI), FMA and F16C, and each input has a scale pair and
/// 32 values per block of 32 of the row.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_avx512<const N: usize>(
    blocks: &[u8],
    inputs: [&QuantizedInput; N],
) -> [f32; N] {
    use super::sum_lanes;
    use std::arch::x86_64::*;
    let low_nibbles = _mm512_set1_epi8(0x0F);
    let two_bits = _mm512_set1_epi8(3);
    let offset = _mm512_set1_epi8(32);
    let sign_bit = _mm512_set1_epi8(-128);
    let mut scaled = [_mm512_setzero_ps(); N];
    for (s, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[SCALE], block[SCALE + 1]]).to_f32();
        for h in 0..2 {
            // SAFETY: each half's 64 low-bit bytes start at 64h and its 32 high-bit bytes at
            // 128 + 32h, inside the super-block's 210 bytes.
            let (low, high) = unsafe {
                (
                    _mm512_loadu_si512(block.as_ptr().add(h * 64) as *const __m512i),
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        block.as_ptr().add(HIGH_BITS + h * 32) as *const __m256i,
                    )),
                )
            };
            // Blocks r = 0, 1 take the low nibbles of bytes 0–31 and 32–63; r = 2, 3 their
            // high nibbles. The high bits of block r are bits 2r–2r+1 of the high-bit bytes.
            for (pair, low) in [
                _mm512_and_si512(low, low_nibbles),
                _mm512_and_si512(_mm512_srli_epi16(low, 4), low_nibbles),
            ]
            .into_iter()
            .enumerate()
            {
                let r = 2 * pair;
                // Low half: bits 2r–2r+1; high half: bits 2r+2–2r+3.
                let shifts = _mm512_set_epi64(
                    2 * r as i64 + 2,
                    2 * r as i64 + 2,
                    2 * r as i64 + 2,
                    2 * r as i64 + 2,
                    2 * r as i64,
                    2 * r as i64,
                    2 * r as i64,
                    2 * r as i64,
                );
                let high_bits = _mm512_and_si512(_mm512_srlv_epi64(high, shifts), two_bits);
                let weights = _mm512_sub_epi8(
                    _mm512_or_si512(low, _mm512_slli_epi16(high_bits, 4)),
                    offset,
                );
                let start = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), sign_bit, weights),
                );
                let j = 4 * h + r;
                let b = s * SUB_BLOCKS + j;
                // Per 16 weights, its scale: four lanes each.
                let scale = |i: usize| block[SCALES + i] as i8 as f32 * d;
                let quarter_scales = _mm512_set_ps(
                    scale(2 * j + 3),
                    scale(2 * j + 3),
                    scale(2 * j + 3),
                    scale(2 * j + 3),
                    scale(2 * j + 2),
                    scale(2 * j + 2),
                    scale(2 * j + 2),
                    scale(2 * j + 2),
                    scale(2 * j + 1),
                    scale(2 * j + 1),
                    scale(2 * j + 1),
                    scale(2 * j + 1),
                    scale(2 * j),
                    scale(2 * j),
                    scale(2 * j),
                    scale(2 * j),
                );
                for (k, input) in inputs.iter().enumerate() {
                    // SAFETY: each input has 32 values and one scale pair per block of 32 of
                    // the row: blocks b and b + 1 here.
                    let values = unsafe {
                        _mm512_loadu_si512(input.values.as_ptr().add(b * BLOCK) as *const __m512i)
                    };
                    let [even_scale, _] = input.scale_sums[b];
                    let [odd_scale, _] = input.scale_sums[b + 1];
                    let input_scales = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                        _mm512_castps_pd(_mm512_set1_ps(even_scale)),
                        _mm256_castps_pd(_mm256_set1_ps(odd_scale)),
                    ));
                    let products =
                        _mm512_dpbusd_epi32(start, _mm512_xor_si512(values, sign_bit), weights);
                    scaled[k] = _mm512_fmadd_ps(
                        _mm512_mul_ps(quarter_scales, input_scales),
                        _mm512_cvtepi32_ps(products),
                        scaled[k],
                    );
                }
            }
        }
    }
    std::array::from_fn(|k| {
        let low = _mm512_castps512_ps256(scaled[k]);
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(scaled[k])));
        sum_lanes(_mm256_add_ps(low, high))
    })
}
