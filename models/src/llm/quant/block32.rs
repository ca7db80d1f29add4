//! The kernel every 32-weight block format shares (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) for rows as the
//! GGUF stores them (matrices whose rows are not whole groups of eight; the others are re-laid
//! into [`super::block32_x8`]'s tiles), and the block formats themselves. Each format
//! only says how its block unpacks: a scale `d`, an offset `c` and 32 integers `q`, the weights
//! being `d · q + c`. Against an input block (scale `d_x`, scaled sum `s_x`), a block
//! contributes `d · d_x · Σ q q_x + c · s_x`.
//!
//! The SIMD kernels multiply a tile of `R` rows by `N` inputs: each weight block is unpacked
//! once for the `N` inputs and each input block loaded once for the `R` rows, which is what
//! makes prompts and batches fast. Every (row, input) pair has its own accumulators (even and
//! odd blocks), added to block by block in the same order whatever the tile, so a result never
//! depends on what else ran with it.

use super::{QuantizedInput, BLOCK};

/// A 32-weight block format. Formats whose offset is a fixed multiple of `d` (Q4_0's `−8d`,
/// Q5_0's `−16d`) unpack to signed integers with no offset instead: one product less per block.
pub(super) trait Block32 {
    /// Bytes per block.
    const BYTES: usize;
    /// Whether weights carry an offset `c`; when not, the kernel skips its sums.
    #[cfg_attr(not(avx2_kernels), allow(dead_code))]
    const OFFSET: bool;
    /// Bits per weight: 4, 5 or 8.
    const BITS: u32;
    /// The integer that stands for weight zero, for formats whose offset is a fixed multiple
    /// of `d`: 8 for Q4_0, 16 for Q5_0, else 0. [`Block32::weights`] gives `q` less it; the
    /// tiles keep `q` unsigned.
    const ZERO: i32;
    /// Whether `q` is signed (it is then unpacked as its magnitude and sign: the
    /// unsigned-by-signed products the instructions take).
    #[cfg_attr(not(avx2_kernels), allow(dead_code))]
    const SIGNED: bool;

    /// `d`, `c` and the 32 integers of a block: the portable form.
    fn weights(block: &[u8]) -> (f32, f32, [i32; BLOCK]);

    /// The same in registers: the 32 integers as bytes, and `d` and `c` in lanes 0 and 1.
    ///
    /// # Safety
    /// `block` points to `BYTES` readable bytes, and the CPU has AVX2, FMA and F16C.
    #[cfg(avx2_kernels)]
    unsafe fn unpack(block: *const u8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m128);
}

/// The portable kernel, and the reference for the SIMD one.
pub(super) fn dot_scalar<F: Block32>(blocks: &[u8], input: &QuantizedInput) -> f32 {
    let mut total = 0.0f32;
    for (b, block) in blocks.chunks_exact(F::BYTES).enumerate() {
        let (d, c, weights) = F::weights(block);
        let values = &input.values[b * BLOCK..(b + 1) * BLOCK];
        let products: i32 = weights
            .iter()
            .zip(values)
            .map(|(&q, &x)| q * x as i32)
            .sum();
        let [scale, sum] = input.scale_sums[b];
        total += d * scale * products as f32 + c * sum;
    }
    total
}

/// A tile: `R` rows of blocks (all the same length) against `N` inputs.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and each input has as many blocks as each row.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_avx2<F: Block32, const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&QuantizedInput; N],
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    let blocks = rows[0].len() / F::BYTES;
    // Two accumulators per pair, for even and odd blocks: with one, every block would wait on
    // the last one's add, and a lone row (generation) could not keep enough loads in flight.
    let mut scaled = [[[_mm256_setzero_ps(); N]; R]; 2];
    let mut offsets = [[[_mm_setzero_ps(); N]; R]; 2];
    for pair in 0..blocks.div_ceil(2) {
        // A counted loop with a constant bound, unrolled, so the lane is a constant and the
        // accumulators stay in registers.
        for lane in 0..2 {
            let b = 2 * pair + lane;
            if b == blocks {
                break;
            }
            // SAFETY: the caller's promise.
            unsafe { add_block::<F, R, N>(rows, inputs, b, &mut scaled[lane], &mut offsets[lane]) };
        }
    }
    // SAFETY: the CPU has AVX2 and FMA.
    unsafe { totals(scaled, offsets) }
}

/// Block `b` of each row against each input, added to the accumulators (one lane's).
///
/// # Safety
/// As for `dot_avx2`, and `b` is a block of the rows.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn add_block<F: Block32, const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&QuantizedInput; N],
    b: usize,
    scaled: &mut [[std::arch::x86_64::__m256; N]; R],
    offsets: &mut [[std::arch::x86_64::__m128; N]; R],
) {
    use super::simd::{Avx2Pairs, BytePairs};
    use std::arch::x86_64::*;
    // Per row: the integers (their magnitudes if signed), their signs, `d` and `c`.
    let unpacked: [(__m256i, __m256i, __m128); R] = std::array::from_fn(|r| {
        // SAFETY: `b` is a block of every row; the CPU has the features.
        let (weights, dc) = unsafe { F::unpack(rows[r].as_ptr().add(b * F::BYTES)) };
        if F::SIGNED {
            (_mm256_sign_epi8(weights, weights), weights, dc)
        } else {
            (weights, weights, dc)
        }
    });
    for (k, input) in inputs.iter().enumerate() {
        // SAFETY: the input has 32 values and one scale pair per block of the row.
        let (values, input_scale, input_sum) = unsafe {
            let pair = input.scale_sums.as_ptr().add(b) as *const f32;
            (
                _mm256_loadu_si256(input.values.as_ptr().add(b * BLOCK) as *const __m256i),
                _mm256_broadcast_ss(&*pair),
                _mm_load_ss(pair.add(1)),
            )
        };
        for (r, &(weights, signs, dc)) in unpacked.iter().enumerate() {
            let values = if F::SIGNED {
                // The weight's sign moves onto the input: |w| × ±x.
                _mm256_sign_epi8(values, signs)
            } else {
                values
            };
            // SAFETY: AVX2 is the build's; a pair of |i8| or four-bit values against i8 fits
            // in i16.
            let products = unsafe { Avx2Pairs::dot(_mm256_setzero_si256(), weights, values) };
            let factor = _mm256_mul_ps(_mm256_broadcastss_ps(dc), input_scale);
            scaled[r][k] = _mm256_fmadd_ps(factor, _mm256_cvtepi32_ps(products), scaled[r][k]);
            if F::OFFSET {
                offsets[r][k] = _mm_fmadd_ss(_mm_movehdup_ps(dc), input_sum, offsets[r][k]);
            }
        }
    }
}

/// Each pair's result from its even and odd accumulators.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma")]
unsafe fn totals<const R: usize, const N: usize>(
    scaled: [[[std::arch::x86_64::__m256; N]; R]; 2],
    offsets: [[[std::arch::x86_64::__m128; N]; R]; 2],
) -> [[f32; N]; R] {
    use super::sum_lanes;
    use std::arch::x86_64::*;
    std::array::from_fn(|r| {
        std::array::from_fn(|k| {
            sum_lanes(_mm256_add_ps(scaled[0][r][k], scaled[1][r][k]))
                + _mm_cvtss_f32(_mm_add_ss(offsets[0][r][k], offsets[1][r][k]))
        })
    })
}

/// The same tile on AVX-512: a pair of blocks per 512-bit register, the even block in the low
/// half and the odd one in the high half. Those halves are the AVX2 kernel's two accumulators,
/// added to with the same operations, so the two kernels' results are equal bit for bit; this
/// one issues half the instructions per block.
///
/// # Safety
/// The CPU has AVX-512 (F, BW, VL, VNNI), FMA and F16C, and each input has as many blocks as
/// each row.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_avx512<F: Block32, const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&QuantizedInput; N],
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    let blocks = rows[0].len() / F::BYTES;
    let mut scaled = [[_mm512_setzero_ps(); N]; R];
    let mut offsets = [[[_mm_setzero_ps(); N]; R]; 2];
    // Lanes 0–7 take float 0 of a register, lanes 8–15 float 1 (or 2, for scale pairs).
    let first_two = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let first_and_third = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    for pair in 0..blocks / 2 {
        let b = 2 * pair;
        // Per row: the two blocks' integers, what their sums start from, `d` of each over its
        // half, and `c` of each.
        let unpacked: [(__m512i, __m512i, __m512, __m128, __m128); R] = std::array::from_fn(|r| {
            // SAFETY: blocks `b` and `b + 1` are in every row; the CPU has the features.
            let ((even, even_dc), (odd, odd_dc)) = unsafe {
                let block = rows[r].as_ptr().add(b * F::BYTES);
                (F::unpack(block), F::unpack(block.add(F::BYTES)))
            };
            let weights = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(even), odd);
            let d = _mm512_permutexvar_ps(
                first_two,
                _mm512_castps128_ps512(_mm_unpacklo_ps(even_dc, odd_dc)),
            );
            // Signed weights multiply the inputs shifted to unsigned (x + 128), and their
            // sums start at −128 · Σ w to take the shift back: the same integers as
            // |w| × ±x, with one instruction per product instead of two.
            let start = if F::SIGNED {
                _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), weights),
                )
            } else {
                _mm512_setzero_si512()
            };
            (
                weights,
                start,
                d,
                _mm_movehdup_ps(even_dc),
                _mm_movehdup_ps(odd_dc),
            )
        });
        for (k, input) in inputs.iter().enumerate() {
            // SAFETY: the input has 32 values and one scale pair per block of the row.
            let (values, scale_sums) = unsafe {
                (
                    _mm512_loadu_si512(input.values.as_ptr().add(b * BLOCK) as *const __m512i),
                    _mm_loadu_ps(input.scale_sums.as_ptr().add(b) as *const f32),
                )
            };
            let input_scales =
                _mm512_permutexvar_ps(first_and_third, _mm512_castps128_ps512(scale_sums));
            let shifted = _mm512_xor_si512(values, _mm512_set1_epi8(-128));
            for (r, &(weights, start, d, even_c, odd_c)) in unpacked.iter().enumerate() {
                let products = if F::SIGNED {
                    _mm512_dpbusd_epi32(start, shifted, weights)
                } else {
                    _mm512_dpbusd_epi32(start, weights, values)
                };
                let factor = _mm512_mul_ps(d, input_scales);
                scaled[r][k] = _mm512_fmadd_ps(factor, _mm512_cvtepi32_ps(products), scaled[r][k]);
                if F::OFFSET {
                    let [even, odd] = &mut offsets;
                    even[r][k] = _mm_fmadd_ss(even_c, _mm_movehdup_ps(scale_sums), even[r][k]);
                    let odd_sum = _mm_shuffle_ps::<0b11_11_11_11>(scale_sums, scale_sums);
                    odd[r][k] = _mm_fmadd_ss(odd_c, odd_sum, odd[r][k]);
                }
            }
        }
    }
    // The halves, as the AVX2 kernel's even and odd accumulators.
    let mut halves = [[[_mm256_setzero_ps(); N]; R]; 2];
    for r in 0..R {
        for k in 0..N {
            halves[0][r][k] = _mm512_castps512_ps256(scaled[r][k]);
            halves[1][r][k] =
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(scaled[r][k])));
        }
    }
    if blocks % 2 == 1 {
        let [even, _] = &mut halves;
        let [even_offsets, _] = &mut offsets;
        // SAFETY: the caller's promise; the last block is one of the rows'.
        unsafe { add_block::<F, R, N>(rows, inputs, blocks - 1, even, even_offsets) };
    }
    // SAFETY: the CPU has AVX2 and FMA.
    unsafe { totals(halves, offsets) }
}

/// Four-bit values packed two to a byte, the first 16 weights in the low nibbles and the
/// last 16 in the high ones, as 32 bytes.
///
/// # Safety
/// `packed` points to 16 readable bytes.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn nibbles(packed: *const u8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promise.
    let packed = unsafe { _mm_loadu_si128(packed as *const __m128i) };
    let low_nibbles = _mm_set1_epi8(0x0F);
    let low = _mm_and_si128(packed, low_nibbles);
    let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
    _mm256_set_m128i(high, low)
}

/// Which of 32 five-bit weights have their fifth bit set (bit `j` of `bits` for weight `j`): all
/// ones in byte `j` where it is, zero where not.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2")]
pub(super) fn fifth_bits(bits: u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // Byte `j` takes the byte of `bits` that holds bit `j`...
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    // ...and all its other bits are set: it is all ones exactly when bit `j` is.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
}

/// A block's `d` (and `m`) from its first two (four) bytes, in lanes 0 (and 1).
///
/// # Safety
/// `block` points to four readable bytes.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn halves(block: *const u8) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promise.
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
        (block as *const i32).read_unaligned()
    }))
}
