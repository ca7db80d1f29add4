//! The Q4_K kernel. A super-block of 256 weights is a scale `d` and a minimum scale `dmin`
//! (f16 each), twelve bytes packing eight 6-bit sub-block scales and eight 6-bit minimums,
//! then 128 bytes of four-bit values: each 32 bytes hold two sub-blocks of 32, the first in
//! the low nibbles and the second in the high ones. Sub-block `j` contributes
//! `d · sc_j · d_x · Σ q q_x − dmin · m_j · s_x`, where the input block of 32 lines up with
//! the sub-block, `d_x` is its scale and `s_x` its scaled sum.

use half::f16;

use super::{QuantizedInput, BLOCK};

/// Bytes per super-block.
const BLOCK_BYTES: usize = 144;

/// Weights per super-block.
pub(super) const VALUES: usize = 256;

/// Input blocks of 32 per super-block.
pub(super) const SUB_BLOCKS: usize = VALUES / BLOCK;

/// A super-block's `d · sc_j` and `dmin · m_j` for its eight sub-blocks.
fn factors(block: &[u8]) -> ([f32; SUB_BLOCKS], [f32; SUB_BLOCKS]) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let dmin = f16::from_le_bytes([block[2], block[3]]).to_f32();
    let packed = unpack_scales_mins(&block[4..16]);
    (
        std::array::from_fn(|j| d * packed[j] as f32),
        std::array::from_fn(|j| dmin * packed[SUB_BLOCKS + j] as f32),
    )
}

/// The portable kernel.
pub(super) fn dot_scalar(blocks: &[u8], input: &QuantizedInput) -> f32 {
    let mut total = 0.0f32;
    for (s, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let (scales, mins) = factors(block);
        for (pair, quants) in block[16..].chunks_exact(BLOCK).enumerate() {
            for (half, shift) in [(0, 0), (1, 4)] {
                let j = 2 * pair + half;
                let b = s * SUB_BLOCKS + j;
                let values = &input.values[b * BLOCK..(b + 1) * BLOCK];
                let products: i32 = quants
                    .iter()
                    .zip(values)
                    .map(|(&q, &x)| ((q >> shift) & 0x0F) as i32 * x as i32)
                    .sum();
                let [scale, sum] = input.scale_sums[b];
                total += scales[j] * scale * products as f32 - mins[j] * sum;
            }
        }
    }
    total
}

/// A super-block's eight 6-bit scales (bytes 0–7) and minimums (bytes 8–15). ggml packs the
/// first four of each in the low six bits of bytes 0–3 and 4–7, and the last four in bytes
/// 8–11's nibbles with their top two bits in the spare bits of bytes 0–7; word-wide masks and
/// shifts unpack four at a time.
#[inline(always)]
pub(super) fn unpack_scales_mins(packed: &[u8]) -> [u8; 16] {
    const SIX_BITS: u32 = 0x3f3f_3f3f;
    const FOUR_BITS: u32 = 0x0f0f_0f0f;
    const TWO_BITS: u32 = 0x0303_0303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    let words = [
        w0 & SIX_BITS,
        (w2 & FOUR_BITS) | (((w0 >> 6) & TWO_BITS) << 4),
        w1 & SIX_BITS,
        ((w2 >> 4) & FOUR_BITS) | (((w1 >> 6) & TWO_BITS) << 4),
    ];
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// `N` inputs against one row at once: each super-block's scales and values are unpacked once
/// for all of them, and each input's sums are added in the same order as alone.
///
/// As llama.cpp's AVX2 kernel does, a super-block's products stay integers: each sub-block's
/// pair sums (16 bits) are multiplied by its 6-bit scale and added up in 32 bits, and only the
/// super-block's total is scaled in floats. That needs one input scale per super-block
/// ([`input_span`](super::Format::input_span) quantizes Q4_K's inputs per 256 values), and
/// saves a float multiply-add and a permute per 32 weights.
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
    let mut scaled = [_mm256_setzero_ps(); N];
    let mut offsets = [_mm256_setzero_ps(); N];
    for (s, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let scales_mins = unpack_scales_mins(&block[4..16]);
        // SAFETY: `d` and `dmin` are the block's first four bytes; `scales_mins` is 16 bytes.
        let (d_dmin, scales16, mins) = unsafe {
            let bytes = scales_mins.as_ptr();
            (
                _mm_cvtph_ps(_mm_cvtsi32_si128(
                    (block.as_ptr() as *const i32).read_unaligned(),
                )),
                // The eight scales as 16-bit lanes, in both halves.
                _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                    bytes as *const __m128i,
                ))),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    bytes.add(8) as *const __m128i
                ))),
            )
        };
        // Sub-block j's scale in every 16-bit lane: bytes 2j and 2j + 1 of each half.
        let sub_scales: [__m256i; SUB_BLOCKS] = std::array::from_fn(|j| {
            _mm256_shuffle_epi8(scales16, _mm256_set1_epi16(0x0100 + 0x0202 * j as i16))
        });
        let mins = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(d_dmin)), mins);
        // SAFETY: a super-block's values are 128 bytes from byte 16.
        let packed: [__m256i; 4] = std::array::from_fn(|pair| unsafe {
            _mm256_loadu_si256(block.as_ptr().add(16 + pair * 32) as *const __m256i)
        });
        for (k, input) in inputs.iter().enumerate() {
            let first = s * SUB_BLOCKS;
            // SAFETY: the input has a scale pair per block of 32 of the row: eight from
            // `first`, as sixteen floats (scale, scaled sum, scale, ...).
            let (pairs_low, pairs_high) = unsafe {
                let pairs = input.scale_sums.as_ptr().add(first) as *const f32;
                (_mm256_loadu_ps(pairs), _mm256_loadu_ps(pairs.add(8)))
            };
            // The odd floats (scaled sums), back in block order.
            let input_sums = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(pairs_low, pairs_high)),
            ));
            offsets[k] = _mm256_fmadd_ps(mins, input_sums, offsets[k]);
            let mut sums = _mm256_setzero_si256();
            for (pair, packed) in packed.iter().enumerate() {
                let halves = [
                    _mm256_and_si256(*packed, low_nibbles),
                    _mm256_and_si256(_mm256_srli_epi16(*packed, 4), low_nibbles),
                ];
                for (half, weights) in halves.into_iter().enumerate() {
                    let j = 2 * pair + half;
                    // SAFETY: the input has 32 values per block of 32 of the row.
                    let values = unsafe {
                        _mm256_loadu_si256(
                            input.values.as_ptr().add((first + j) * BLOCK) as *const __m256i
                        )
                    };
                    // Pair sums of four-bit weights and bytes fit 16 bits (|2 · 15 · 128|),
                    // and times a 6-bit scale, 32.
                    let pairs = _mm256_maddubs_epi16(weights, values);
                    sums = _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, sub_scales[j]));
                }
            }
            let factor = _mm_mul_ss(d_dmin, _mm_set_ss(input.scale_sums[first][0]));
            scaled[k] = _mm256_fmadd_ps(
                _mm256_broadcastss_ps(factor),
                _mm256_cvtepi32_ps(sums),
                scaled[k],
            );
        }
    }
    std::array::from_fn(|k| sum_lanes(scaled[k]) - sum_lanes(offsets[k]))
}

/// The same on AVX-512: a pair of sub-blocks (the low and high nibbles of one 32-byte run)
/// per 512-bit register, the low one in the low half, each sub-block's products scaled in
/// floats (VNNI sums four products straight into 32 bits, past where a 16-bit scale could
/// multiply them). It agrees with the AVX2 kernel to rounding.
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
    // The low half keeps the bytes as they are, the high half takes their high nibbles.
    let nibble_shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    let mut scaled = [_mm512_setzero_ps(); N];
    let mut offsets = [_mm256_setzero_ps(); N];
    for (s, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let scales_mins = unpack_scales_mins(&block[4..16]);
        // SAFETY: `d` and `dmin` are the block's first four bytes; `scales_mins` is 16 bytes.
        let (d_dmin, scales, mins) = unsafe {
            let as_floats = |bytes: *const u8| {
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    bytes as *const __m128i,
                )))
            };
            (
                _mm_cvtph_ps(_mm_cvtsi32_si128(
                    (block.as_ptr() as *const i32).read_unaligned(),
                )),
                as_floats(scales_mins.as_ptr()),
                as_floats(scales_mins.as_ptr().add(8)),
            )
        };
        let scales = _mm256_mul_ps(_mm256_broadcastss_ps(d_dmin), scales);
        let mins = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(d_dmin)), mins);
        let weights: [__m512i; 4] = std::array::from_fn(|pair| {
            // SAFETY: a super-block's values are 128 bytes from byte 16.
            let packed = unsafe {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    block.as_ptr().add(16 + pair * 32) as *const __m256i
                ))
            };
            _mm512_and_si512(_mm512_srlv_epi64(packed, nibble_shifts), low_nibbles)
        });
        for (k, input) in inputs.iter().enumerate() {
            let first = s * SUB_BLOCKS;
            // SAFETY: the input has a scale pair per block of 32 of the row: eight from
            // `first`, as sixteen floats (scale, scaled sum, scale, ...).
            let pairs =
                unsafe { _mm512_loadu_ps(input.scale_sums.as_ptr().add(first) as *const f32) };
            let evens = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 14, 12, 10, 8, 6, 4, 2, 0);
            let odds = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 15, 13, 11, 9, 7, 5, 3, 1);
            let input_scales = _mm512_castps512_ps256(_mm512_permutexvar_ps(evens, pairs));
            let input_sums = _mm512_castps512_ps256(_mm512_permutexvar_ps(odds, pairs));
            offsets[k] = _mm256_fmadd_ps(mins, input_sums, offsets[k]);
            let factors = _mm512_castps256_ps512(_mm256_mul_ps(scales, input_scales));
            for (pair, &weights) in weights.iter().enumerate() {
                let j = 2 * pair as i32;
                // SAFETY: the input has 32 values per block of 32 of the row.
                let values = unsafe {
                    _mm512_loadu_si512(
                        input.values.as_ptr().add((first + 2 * pair) * BLOCK) as *const __m512i
                    )
                };
                let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, values);
                let pick = _mm512_set_epi32(
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                    j,
                );
                let factor = _mm512_permutexvar_ps(pick, factors);
                scaled[k] = _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(products), scaled[k]);
            }
        }
    }
    std::array::from_fn(|k| {
        let low = _mm512_castps512_ps256(scaled[k]);
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(scaled[k])));
        sum_lanes(_mm256_add_ps(low, high)) - sum_lanes(offsets[k])
    })
}
