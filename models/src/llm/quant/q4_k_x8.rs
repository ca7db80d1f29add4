//! Q4_K weights re-laid eight rows to a tile, so that one 256-bit vector holds four values of
//! each of eight rows: an input's four bytes, broadcast, multiply all eight rows at once, and
//! each row's sums land in a lane of their own. A row-at-a-time kernel instead spreads one
//! row's sub-block over the lanes and must fold them back, and handles every row's scales,
//! minimums and input scale on its own; here that work is shared by eight rows, which makes
//! prompts (many inputs per weight) about a quarter faster than candle's repacked tiles, and
//! the re-laid copy replaces the stored one instead of sitting beside it.
//!
//! A tile is one super-block (256 values) of eight rows: their `d` and `dmin` (f16, eight
//! each), their 6-bit sub-block scales (sub-block by sub-block, then row), their 6-bit
//! minimums (by pair of sub-blocks, then row, then the pair's two), and their four-bit values:
//! for each run of eight values, each row's four bytes, byte `i` holding value `i` in its low
//! nibble and value `i + 4` in its high one. 1,184 bytes against the stored 1,152. A row
//! group's tiles follow one another, so a run of rows is read front to back.

use half::f16;

use super::q4_k::{unpack_scales_mins, BLOCK_BYTES, SUB_BLOCKS, VALUES};
use super::{EightRowTiles, QuantizedInput, ROW_GROUP as ROWS};

/// Where a tile's scales, minimums and values start, and its size.
const MINIMUM_SCALES: usize = 16;
const SCALES: usize = 32;
const MINIMUMS: usize = SCALES + SUB_BLOCKS * ROWS;
const QUANTS: usize = MINIMUMS + SUB_BLOCKS * ROWS;
pub(super) const TILE_BYTES: usize = QUANTS + VALUES / 2 * ROWS;

/// Re-lays `rows` (a multiple of [`ROWS`]) stored Q4_K rows of `row_bytes` each into tiles.
pub(super) fn interleave(blocks: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
    let super_blocks = row_bytes / BLOCK_BYTES;
    let mut tiles = vec![0u8; rows / ROWS * super_blocks * TILE_BYTES];
    for (group, group_tiles) in tiles
        .chunks_exact_mut(super_blocks * TILE_BYTES)
        .enumerate()
    {
        for (s, tile) in group_tiles.chunks_exact_mut(TILE_BYTES).enumerate() {
            for r in 0..ROWS {
                let start = (group * ROWS + r) * row_bytes + s * BLOCK_BYTES;
                let block = &blocks[start..start + BLOCK_BYTES];
                tile[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
                tile[MINIMUM_SCALES + 2 * r..MINIMUM_SCALES + 2 * r + 2]
                    .copy_from_slice(&block[2..4]);
                let scales_minimums = unpack_scales_mins(&block[4..16]);
                for j in 0..SUB_BLOCKS {
                    tile[SCALES + j * ROWS + r] = scales_minimums[j];
                    tile[MINIMUMS + j / 2 * 2 * ROWS + 2 * r + j % 2] =
                        scales_minimums[SUB_BLOCKS + j];
                }
                // The stored values: each 32 bytes hold 64, the first 32 in the low nibbles.
                let value = |v: usize| {
                    let byte = block[16 + v / 64 * 32 + v % 32];
                    if v % 64 < 32 {
                        byte & 0x0F
                    } else {
                        byte >> 4
                    }
                };
                for run in 0..VALUES / 8 {
                    for i in 0..4 {
                        tile[QUANTS + run * 4 * ROWS + 4 * r + i] =
                            value(8 * run + i) | value(8 * run + i + 4) << 4;
                    }
                }
            }
        }
    }
    tiles
}

/// Q4_K's tiles.
pub(super) struct Q4KTiles;

impl EightRowTiles for Q4KTiles {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        #[cfg(avx2_kernels)]
        // SAFETY: the build targets AVX2, FMA and F16C, so the CPU has them; the matrix
        // checked that its inputs have as many values as its rows (`QuantMatrix::matmul`).
        return unsafe { dot_avx2(tiles, inputs) };
        #[cfg(not(avx2_kernels))]
        return inputs.map(|input| dot_scalar(tiles, input));
    }
}

/// Row `r` of a row group's tiles, dequantized, onto `out`.
pub(super) fn row_values(tiles: &[u8], r: usize, out: &mut Vec<f32>) {
    for tile in tiles.chunks_exact(TILE_BYTES) {
        let half = |at: usize| f16::from_le_bytes([tile[at + 2 * r], tile[at + 2 * r + 1]]);
        let (d, dmin) = (half(0).to_f32(), half(MINIMUM_SCALES).to_f32());
        out.extend((0..VALUES).map(|v| {
            let j = v / 32;
            let scale = d * tile[SCALES + j * ROWS + r] as f32;
            let minimum = dmin * tile[MINIMUMS + j / 2 * 2 * ROWS + 2 * r + j % 2] as f32;
            let (run, i) = (v / 8, v % 8);
            let q = tile[QUANTS + run * 4 * ROWS + 4 * r + i % 4] >> (4 * (i / 4)) & 0x0F;
            scale * q as f32 - minimum
        }));
    }
}

/// The portable kernel, and the reference for the SIMD one: the same integer sums, scaled
/// per super-block.
#[cfg_attr(avx2_kernels, allow(dead_code))]
pub(super) fn dot_scalar(tiles: &[u8], input: &QuantizedInput) -> [f32; ROWS] {
    let mut out = [0.0f32; ROWS];
    for (s, tile) in tiles.chunks_exact(TILE_BYTES).enumerate() {
        let first = s * SUB_BLOCKS;
        let x = &input.values[s * VALUES..(s + 1) * VALUES];
        let input_scale = input.scale_sums[first][0];
        for (r, out) in out.iter_mut().enumerate() {
            let half = |at: usize| f16::from_le_bytes([tile[at + 2 * r], tile[at + 2 * r + 1]]);
            let (d, dmin) = (half(0).to_f32(), half(MINIMUM_SCALES).to_f32());
            let (mut scaled, mut minimums) = (0i32, 0i32);
            for j in 0..SUB_BLOCKS {
                let mut products = 0i32;
                for run in 4 * j..4 * j + 4 {
                    for i in 0..4 {
                        let byte = tile[QUANTS + run * 4 * ROWS + 4 * r + i];
                        products += (byte & 0x0F) as i32 * x[8 * run + i] as i32
                            + (byte >> 4) as i32 * x[8 * run + i + 4] as i32;
                    }
                }
                scaled += tile[SCALES + j * ROWS + r] as i32 * products;
                minimums += tile[MINIMUMS + j / 2 * 2 * ROWS + 2 * r + j % 2] as i32
                    * input.sums[first + j] as i32;
            }
            *out += d * input_scale * scaled as f32 - dmin * input_scale * minimums as f32;
        }
    }
    out
}

/// The AVX2 kernel. For each run of eight values, the tile's 32 bytes are split into low and
/// high nibbles once, and each input's two four-byte pieces are broadcast against them; the
/// byte pair sums of a sub-block's four runs add up in 16 bits (at most 8 · 2 · 15 · 127 =
/// 30,480), one multiply-add by the rows' scales takes them to 32 bits, and a super-block's
/// total is scaled in floats once. The minimums' term is integer too: pairs of the input's
/// block sums against pairs of each row's minimums.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and each input has 256 values, one scale (repeated per
/// block of 32) and eight block sums per tile.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_avx2<const N: usize>(
    tiles: &[u8],
    inputs: [&QuantizedInput; N],
) -> [[f32; ROWS]; N] {
    use std::arch::x86_64::*;
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let mut totals = [_mm256_setzero_ps(); N];
    for (s, tile) in tiles.chunks_exact(TILE_BYTES).enumerate() {
        let tile = tile.as_ptr();
        let mut scaled = [_mm256_setzero_si256(); N];
        for j in 0..SUB_BLOCKS {
            // SAFETY: the eight rows' scales of sub-block `j` are eight bytes inside the tile.
            let scales = unsafe {
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    tile.add(SCALES + j * ROWS) as *const __m128i
                ))
            };
            // Row r's scale in 16-bit lanes 2r and 2r + 1, where its byte pair sums land.
            let scales = _mm256_or_si256(scales, _mm256_slli_epi32(scales, 16));
            let mut pair_sums = [_mm256_setzero_si256(); N];
            for run in 4 * j..4 * j + 4 {
                // SAFETY: a run's 32 bytes lie inside the tile.
                let packed =
                    unsafe { _mm256_loadu_si256(tile.add(QUANTS + run * 32) as *const __m256i) };
                let low = _mm256_and_si256(packed, low_nibbles);
                let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
                for (k, input) in inputs.iter().enumerate() {
                    // SAFETY: the run's eight values lie inside the input's 256 for this tile.
                    let (x_low, x_high) = unsafe {
                        let x = input.values.as_ptr().add(s * VALUES + 8 * run) as *const i32;
                        (
                            _mm256_set1_epi32(x.read_unaligned()),
                            _mm256_set1_epi32(x.add(1).read_unaligned()),
                        )
                    };
                    let products = _mm256_add_epi16(
                        _mm256_maddubs_epi16(low, x_low),
                        _mm256_maddubs_epi16(high, x_high),
                    );
                    pair_sums[k] = _mm256_add_epi16(pair_sums[k], products);
                }
            }
            for k in 0..N {
                scaled[k] = _mm256_add_epi32(scaled[k], _mm256_madd_epi16(pair_sums[k], scales));
            }
        }
        // SAFETY: `d`, `dmin` (eight f16 each) and the minimums (four runs of 16 bytes) lie
        // inside the tile.
        let (d, dmin, minimums) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(tile as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(tile.add(MINIMUM_SCALES) as *const __m128i)),
                std::array::from_fn::<_, 4, _>(|pair| {
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        tile.add(MINIMUMS + pair * 2 * ROWS) as *const __m128i
                    ))
                }),
            )
        };
        for (k, input) in inputs.iter().enumerate() {
            let first = s * SUB_BLOCKS;
            // Each row's minimums against the input's block sums, two sub-blocks per step.
            let mut minimum_sums = _mm256_setzero_si256();
            for (pair, minimums) in minimums.iter().enumerate() {
                // SAFETY: the input has eight block sums per tile, two per pair.
                let sums = unsafe {
                    (input.sums.as_ptr().add(first + 2 * pair) as *const i32).read_unaligned()
                };
                minimum_sums = _mm256_add_epi32(
                    minimum_sums,
                    _mm256_madd_epi16(*minimums, _mm256_set1_epi32(sums)),
                );
            }
            let input_scale = _mm256_set1_ps(input.scale_sums[first][0]);
            totals[k] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(scaled[k]),
                _mm256_mul_ps(d, input_scale),
                totals[k],
            );
            totals[k] = _mm256_fnmadd_ps(
                _mm256_cvtepi32_ps(minimum_sums),
                _mm256_mul_ps(dmin, input_scale),
                totals[k],
            );
        }
    }
    totals.map(|total| {
        let mut out = [0.0f32; ROWS];
        // SAFETY: `out` holds eight floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), total) };
        out
    })
}
