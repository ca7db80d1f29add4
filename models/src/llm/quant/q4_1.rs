//! The Q4_1 kernel: per block of 32 weights, a scale `d` (f16), a minimum `m` (f16), then 32
//! four-bit values, the first 16 in the low nibbles and the last 16 in the high ones. A block
//! contributes `d · d_x · Σ q q_x + m · s_x`, where `s_x` is the input block's scaled sum.

use half::f16;

use super::{QuantizedInput, BLOCK};

/// Bytes per block.
const BLOCK_BYTES: usize = 20;

/// The portable kernel.
pub(super) fn dot_scalar(blocks: &[u8], input: &QuantizedInput) -> f32 {
    let mut total = 0.0f32;
    for (b, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let values = &input.values[b * BLOCK..(b + 1) * BLOCK];
        let mut products = 0i32;
        for (j, &byte) in block[4..].iter().enumerate() {
            products += (byte & 0x0F) as i32 * values[j] as i32;
            products += (byte >> 4) as i32 * values[j + BLOCK / 2] as i32;
        }
        let [scale, sum] = input.scale_sums[b];
        total += d * scale * products as f32 + m * sum;
    }
    total
}

/// `N` inputs against one row at once: each block is unpacked once for all of them, and each
/// input's sums are added in the same order as alone, so grouping never changes a result.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_avx2<const N: usize>(
    blocks: &[u8],
    inputs: [&QuantizedInput; N],
) -> [f32; N] {
    use super::{dot_u8_i8, sum_lanes};
    use std::arch::x86_64::*;
    let low_nibbles = _mm_set1_epi8(0x0F);
    // Two accumulators per input, for even and odd blocks: one chain of dependent adds would
    // hold every block up for the latency of the last.
    let mut scaled = [[_mm256_setzero_ps(); 2]; N];
    let mut offsets = [[_mm_setzero_ps(); 2]; N];
    // Blocks go in pairs, the even one to lane 0 and the odd one to lane 1: with the lane a
    // constant of the unrolled inner loop, the accumulators stay in registers.
    for (pair_index, pair) in blocks.chunks(2 * BLOCK_BYTES).enumerate() {
        for lane in 0..2 {
            let Some(block) = pair.get(lane * BLOCK_BYTES..(lane + 1) * BLOCK_BYTES) else {
                break;
            };
            let b = 2 * pair_index + lane;
            // SAFETY: a block is `d` and `m` (f16 each), then 16 bytes of values.
            let (dm, packed) = unsafe {
                (
                    _mm_cvtph_ps(_mm_cvtsi32_si128(
                        (block.as_ptr() as *const i32).read_unaligned(),
                    )),
                    _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i),
                )
            };
            let low = _mm_and_si128(packed, low_nibbles);
            let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
            let weights = _mm256_set_m128i(high, low);
            for (k, input) in inputs.iter().enumerate() {
                // SAFETY: each input has 32 values and one scale pair per block of the row.
                let (scale_sum, values) = unsafe {
                    (
                        _mm_castsi128_ps(_mm_loadl_epi64(
                            input.scale_sums.as_ptr().add(b) as *const __m128i
                        )),
                        _mm256_loadu_si256(input.values.as_ptr().add(b * BLOCK) as *const __m256i),
                    )
                };
                // Lane 0: d × the input's scale; lane 1: m × the input's scaled sum.
                let factors = _mm_mul_ps(dm, scale_sum);
                // SAFETY: `dot_u8_i8` is compiled only for target features this build has.
                let products = unsafe { dot_u8_i8(weights, values) };
                scaled[k][lane] = _mm256_fmadd_ps(
                    _mm256_broadcastss_ps(factors),
                    _mm256_cvtepi32_ps(products),
                    scaled[k][lane],
                );
                offsets[k][lane] = _mm_add_ps(offsets[k][lane], factors);
            }
        }
    }
    std::array::from_fn(|k| {
        let offsets = _mm_add_ps(offsets[k][0], offsets[k][1]);
        sum_lanes(_mm256_add_ps(scaled[k][0], scaled[k][1]))
            + _mm_cvtss_f32(_mm_shuffle_ps(offsets, offsets, 1))
    })
}
