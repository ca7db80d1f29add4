//! The Q8_0 kernel: per block of 32 weights, a scale `d` (f16), then 32 signed bytes. A block
//! contributes `d · d_x · Σ q q_x`. SmolLM2's output layer (the tied embeddings) is Q8_0, and
//! at 49,152 rows it is the largest matrix of a step.

use half::f16;

use super::{QuantizedInput, BLOCK};

/// Bytes per block.
const BLOCK_BYTES: usize = 34;

/// The portable kernel.
pub(super) fn dot_scalar(blocks: &[u8], input: &QuantizedInput) -> f32 {
    let mut total = 0.0f32;
    for (b, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let values = &input.values[b * BLOCK..(b + 1) * BLOCK];
        let products: i32 = block[2..]
            .iter()
            .zip(values)
            .map(|(&w, &x)| w as i8 as i32 * x as i32)
            .sum();
        total += d * input.scale_sums[b][0] * products as f32;
    }
    total
}

/// `N` inputs against one row at once, each summed in the same order as alone (see Q4_1's).
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
    // Even and odd blocks accumulate apart, so consecutive blocks do not wait on each other.
    let mut scaled = [[_mm256_setzero_ps(); 2]; N];
    // Blocks go in pairs, even to lane 0 and odd to lane 1, as in Q4_1's kernel.
    for (pair_index, pair) in blocks.chunks(2 * BLOCK_BYTES).enumerate() {
        // A counted loop, not an iterator over the pair's blocks: its constant bound is what
        // gets it unrolled.
        #[allow(clippy::needless_range_loop)]
        for lane in 0..2 {
            let Some(block) = pair.get(lane * BLOCK_BYTES..(lane + 1) * BLOCK_BYTES) else {
                break;
            };
            let b = 2 * pair_index + lane;
            // SAFETY: a block is `d` (f16) then 32 bytes.
            let (d, weights) = unsafe {
                (
                    _mm_cvtph_ps(_mm_cvtsi32_si128(
                        (block.as_ptr() as *const u16).read_unaligned() as i32,
                    )),
                    _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i),
                )
            };
            // Signed × signed as |w| × (x with w's sign): the unsigned-by-signed form the
            // instructions take.
            let magnitudes = _mm256_sign_epi8(weights, weights);
            for (k, input) in inputs.iter().enumerate() {
                // SAFETY: each input has 32 values and one scale pair per block of the row.
                let (input_scale, values) = unsafe {
                    (
                        _mm_load_ss(input.scale_sums.as_ptr().add(b) as *const f32),
                        _mm256_loadu_si256(input.values.as_ptr().add(b * BLOCK) as *const __m256i),
                    )
                };
                // SAFETY: `dot_u8_i8` is compiled only for target features this build has.
                let products = unsafe { dot_u8_i8(magnitudes, _mm256_sign_epi8(values, weights)) };
                scaled[k][lane] = _mm256_fmadd_ps(
                    _mm256_broadcastss_ps(_mm_mul_ss(d, input_scale)),
                    _mm256_cvtepi32_ps(products),
                    scaled[k][lane],
                );
            }
        }
    }
    std::array::from_fn(|k| sum_lanes(_mm256_add_ps(scaled[k][0], scaled[k][1])))
}
