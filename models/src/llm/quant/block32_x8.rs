//! The 32-weight formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) re-laid eight rows to a tile, as the
//! k-quants are ([`super::q4_k_q5_k_x8`]): one 256-bit vector holds four values of each of
//! eight rows, so an input's four bytes, broadcast, multiply all eight rows at once, each
//! row's sums land in a lane of their own, and a block's scales are applied once for the eight
//! rows. The stored-row kernel ([`super::block32`]) instead spends a vector on one row's block
//! and then folds its lanes, with the float work per row.
//!
//! A tile is one block (32 values) of eight rows: their `d` (f16, eight), their `m` (Q4_1 and
//! Q5_1, f16, eight), then the values.
//! - Four- and five-bit values as four runs of eight: for each run, each row's four bytes,
//!   byte `i` holding value `i` in its low nibble and value `i + 4` in its high one; five-bit
//!   values then their fifth bits, each row's four bytes, byte `i` holding those of values `i`
//!   and `i + 4` of run `k` in bits `2k` and `2k + 1` (the layout of a Q5_K tile's
//!   sub-block). The values are kept unsigned: Q4_0's weight is `d · (q − 8)`, Q5_0's
//!   `d · (q − 16)`, and the `− 8 · Σx` is taken off in integers with the input's block sum.
//! - Q8_0's signed bytes as eight runs of four: for each run, each row's four bytes.
//!
//! A tile is exactly its eight stored blocks' bytes, so the re-laid copy replaces the stored
//! one at no cost in memory, and a row group's tiles follow one another, read front to back.

use std::marker::PhantomData;

use half::f16;

use super::block32::Block32;
#[cfg(avx2_kernels)]
use super::simd::BytePairs;
use super::{EightRowTiles, QuantizedInput, BLOCK, ROW_GROUP as ROWS};

/// Where a tile's values start: after `d` (and `m`), eight f16 each.
const fn values_at<F: Block32>() -> usize {
    2 * ROWS * (1 + F::OFFSET as usize)
}

/// Where a five-bit tile's fifth bits start: after its four runs of four-bit values.
const fn fifth_bits_at<F: Block32>() -> usize {
    values_at::<F>() + BLOCK / 2 * ROWS
}

/// A tile's bytes: its eight stored blocks'.
const fn tile_bytes<F: Block32>() -> usize {
    ROWS * F::BYTES
}

/// Re-lays `rows` (a multiple of [`ROWS`]) stored rows of `row_bytes` each into tiles.
pub(super) fn interleave<F: Block32>(blocks: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
    let tile_bytes = tile_bytes::<F>();
    super::interleave_rows(
        blocks,
        rows,
        row_bytes,
        F::BYTES,
        tile_bytes,
        |tile, r, block| {
            let (d, m, weights) = F::weights(block);
            // `d` and `m` came from f16, so they go back exactly.
            tile[2 * r..2 * r + 2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            if F::OFFSET {
                tile[2 * ROWS + 2 * r..2 * ROWS + 2 * r + 2]
                    .copy_from_slice(&f16::from_f32(m).to_le_bytes());
            }
            let q = weights.map(|w| (w + F::ZERO) as u8);
            let values = values_at::<F>();
            if F::BITS == 8 {
                for (v, &q) in q.iter().enumerate() {
                    tile[values + v / 4 * 4 * ROWS + 4 * r + v % 4] = q;
                }
                return;
            }
            for run in 0..BLOCK / 8 {
                for i in 0..4 {
                    let v = 8 * run + i;
                    tile[values + run * 4 * ROWS + 4 * r + i] =
                        q[v] & 0x0F | (q[v + 4] & 0x0F) << 4;
                    if F::BITS == 5 {
                        let fifth = |v: usize| q[v] >> 4 & 1;
                        tile[fifth_bits_at::<F>() + 4 * r + i] |=
                            fifth(v) << (2 * run) | fifth(v + 4) << (2 * run + 1);
                    }
                }
            }
        },
    )
}

/// Value `v` (0..32) of row `r` of a tile as stored there: unsigned four or five bits, or
/// Q8_0's signed byte.
fn tile_value<F: Block32>(tile: &[u8], r: usize, v: usize) -> i32 {
    let values = &tile[values_at::<F>()..];
    if F::BITS == 8 {
        return values[v / 4 * 4 * ROWS + 4 * r + v % 4] as i8 as i32;
    }
    let (run, i) = (v / 8, v % 8);
    let low = values[run * 4 * ROWS + 4 * r + i % 4] >> (4 * (i / 4)) & 0x0F;
    let fifth = if F::BITS == 5 {
        tile[fifth_bits_at::<F>() + 4 * r + i % 4] >> (2 * run + i / 4) & 1
    } else {
        0
    };
    (low | fifth << 4) as i32
}

/// Row `r`'s `d` and `m` (zero where the format has none) in a tile.
fn scales<F: Block32>(tile: &[u8], r: usize) -> (f32, f32) {
    let half = |at: usize| f16::from_le_bytes([tile[at + 2 * r], tile[at + 2 * r + 1]]).to_f32();
    (half(0), if F::OFFSET { half(2 * ROWS) } else { 0.0 })
}

/// Row `r` of a row group's tiles, dequantized, onto `out`.
pub(super) fn row_values<F: Block32>(tiles: &[u8], r: usize, out: &mut Vec<f32>) {
    for tile in tiles.chunks_exact(tile_bytes::<F>()) {
        let (d, m) = scales::<F>(tile, r);
        out.extend((0..BLOCK).map(|v| {
            let q = (tile_value::<F>(tile, r, v) - F::ZERO) as f32;
            if F::OFFSET {
                q * d + m
            } else {
                q * d
            }
        }));
    }
}

/// A 32-weight format's tiles.
pub(super) struct Block32Tiles<F>(PhantomData<F>);

impl<F: Block32> EightRowTiles for Block32Tiles<F> {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        #[cfg(avx2_kernels)]
        return super::simd::with_byte_pairs!(P =>
            // SAFETY: the build targets AVX2, FMA and F16C, and `P` is this CPU's form; the
            // matrix checked that its inputs have as many values as its rows
            // (`QuantMatrix::matmul`).
            unsafe { dot_simd::<F, N, P>(tiles, inputs) }
        );
        #[cfg(not(avx2_kernels))]
        return inputs.map(|input| dot_scalar::<F>(tiles, input));
    }
}

/// The portable kernel, and the reference for the SIMD one: the same integer sums, scaled per
/// block.
#[cfg_attr(avx2_kernels, allow(dead_code))]
pub(super) fn dot_scalar<F: Block32>(tiles: &[u8], input: &QuantizedInput) -> [f32; ROWS] {
    let (mut scaled, mut offsets) = ([0.0f32; ROWS], [0.0f32; ROWS]);
    for (b, tile) in tiles.chunks_exact(tile_bytes::<F>()).enumerate() {
        let x = &input.values[b * BLOCK..(b + 1) * BLOCK];
        let [input_scale, input_scaled_sum] = input.scale_sums[b];
        for r in 0..ROWS {
            let products: i32 = (0..BLOCK)
                .map(|v| tile_value::<F>(tile, r, v) * x[v] as i32)
                .sum();
            let products = products - F::ZERO * input.sums[b] as i32;
            let (d, m) = scales::<F>(tile, r);
            scaled[r] += products as f32 * (d * input_scale);
            offsets[r] += m * input_scaled_sum;
        }
    }
    std::array::from_fn(|r| scaled[r] + offsets[r])
}

/// The SIMD kernel, with `P`'s byte products. Four- and five-bit tiles: for each run of eight
/// values, the tile's 32 bytes are split into low and high nibbles once (and given their fifth
/// bits), and each input's two four-byte pieces are broadcast against them; byte pair sums add
/// up in 16 bits (a block's four runs, at most 8 · 2 · 15 · 127 = 30,480; with five bits, two
/// runs, 4 · 2 · 31 · 127 = 31,496) before a multiply-add takes them to 32; with VNNI, each
/// half run's products go straight into 32-bit sums, one instruction each. Q8_0 tiles: the
/// weights' magnitudes against the input bytes given the weights' signs, each run's pair sums
/// taken to 32 bits at once (`BytePairs::dot`, one instruction with VNNI). Then each block is
/// scaled in floats once for the eight rows.
///
/// # Safety
/// The CPU has `P`'s features, and each input has 32 values, a scale pair and a sum per tile.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_simd<F: Block32, const N: usize, P: BytePairs>(
    tiles: &[u8],
    inputs: [&QuantizedInput; N],
) -> [[f32; ROWS]; N] {
    use super::q4_k_q5_k_x8::run_values;
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    // Runs whose byte pair sums add up in 16 bits.
    let runs_per_sum = if F::BITS == 5 { 2 } else { 4 };
    let mut scaled = [_mm256_setzero_ps(); N];
    let mut offsets = [_mm256_setzero_ps(); N];
    for (b, tile) in tiles.chunks_exact(tile_bytes::<F>()).enumerate() {
        let tile = tile.as_ptr();
        prefetch_ahead(tile, tile_bytes::<F>());
        // SAFETY: the run's values lie inside the input's 32 for this tile.
        let x = |input: &QuantizedInput, at: usize| unsafe {
            _mm256_set1_epi32(
                (input.values.as_ptr().add(b * BLOCK + at) as *const i32).read_unaligned(),
            )
        };
        let mut sums = [_mm256_setzero_si256(); N];
        if F::BITS == 8 {
            for run in 0..BLOCK / 4 {
                // SAFETY: a run's 32 bytes lie inside the tile.
                let weights = unsafe {
                    _mm256_loadu_si256(tile.add(values_at::<F>() + run * 32) as *const __m256i)
                };
                let magnitudes = _mm256_abs_epi8(weights);
                for (k, input) in inputs.iter().enumerate() {
                    let signed = _mm256_sign_epi8(x(input, 4 * run), weights);
                    // SAFETY: the caller's promise; |i8| against i8 fits a pair in i16.
                    sums[k] = unsafe { P::dot(sums[k], magnitudes, signed) };
                }
            }
        } else {
            let mut pair_sums = [_mm256_setzero_si256(); N];
            // The fifth bits of the run at hand in bits 0 (first half) and 1 (second half).
            let mut fifth_bits = if F::BITS == 5 {
                // SAFETY: a five-bit tile's fifth bits are 32 bytes inside it.
                unsafe { _mm256_loadu_si256(tile.add(fifth_bits_at::<F>()) as *const __m256i) }
            } else {
                _mm256_setzero_si256()
            };
            for run in 0..BLOCK / 8 {
                // SAFETY: a run's 32 bytes lie inside the tile.
                let packed = unsafe {
                    _mm256_loadu_si256(tile.add(values_at::<F>() + run * 32) as *const __m256i)
                };
                let (low, high) = if F::BITS == 5 {
                    run_values::<true>(packed, &mut fifth_bits)
                } else {
                    run_values::<false>(packed, &mut fifth_bits)
                };
                for (k, input) in inputs.iter().enumerate() {
                    let (x_low, x_high) = (x(input, 8 * run), x(input, 8 * run + 4));
                    if P::VNNI {
                        // SAFETY: the caller's promise.
                        sums[k] = unsafe { P::dot(P::dot(sums[k], low, x_low), high, x_high) };
                        continue;
                    }
                    let products = _mm256_add_epi16(
                        _mm256_maddubs_epi16(low, x_low),
                        _mm256_maddubs_epi16(high, x_high),
                    );
                    pair_sums[k] = _mm256_add_epi16(pair_sums[k], products);
                }
                if !P::VNNI && (run + 1) % runs_per_sum == 0 {
                    for k in 0..N {
                        sums[k] = _mm256_add_epi32(sums[k], _mm256_madd_epi16(pair_sums[k], ones));
                        pair_sums[k] = _mm256_setzero_si256();
                    }
                }
            }
        }
        // SAFETY: `d` (and `m`), eight f16 each, open the tile.
        let d = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(tile as *const __m128i)) };
        for (k, input) in inputs.iter().enumerate() {
            let [input_scale, input_scaled_sum] = input.scale_sums[b];
            let products = if F::ZERO != 0 {
                _mm256_sub_epi32(sums[k], _mm256_set1_epi32(F::ZERO * input.sums[b] as i32))
            } else {
                sums[k]
            };
            scaled[k] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(products),
                _mm256_mul_ps(d, _mm256_set1_ps(input_scale)),
                scaled[k],
            );
            if F::OFFSET {
                // SAFETY: as for `d`.
                let m = unsafe {
                    _mm256_cvtph_ps(_mm_loadu_si128(tile.add(2 * ROWS) as *const __m128i))
                };
                offsets[k] = _mm256_fmadd_ps(m, _mm256_set1_ps(input_scaled_sum), offsets[k]);
            }
        }
    }
    std::array::from_fn(|k| {
        let mut out = [0.0f32; ROWS];
        // SAFETY: `out` holds eight floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(scaled[k], offsets[k])) };
        out
    })
}

/// Asks for the `bytes` of memory that lie a little ahead of `tile`, line by line. The
/// 32-weight tiles' loads issue in whatever order the compiler picks (it began one from the
/// tile's end), and generation, which reads each tile once, then waited on memory: Llama-1B
/// Q8_0 generated 8.8 tokens/s without this and 17.1 with it (llama.cpp 14.4, same run). The
/// k-quants' larger tiles were slower with it (22.5 tokens/s against 17–20 on Q4_K_M).
#[cfg(avx2_kernels)]
#[inline(always)]
fn prefetch_ahead(tile: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    const AHEAD: usize = 1024;
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults, and `wrapping_add` makes no claim on the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(tile.wrapping_add(AHEAD + line) as *const i8) };
    }
}
