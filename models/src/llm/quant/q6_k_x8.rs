//! Q6_K weights re-laid eight rows to a tile, as [`q4_k_x8`](super::q4_k_x8) does for Q4_K:
//! one 256-bit vector holds four six-bit values of each of eight rows, an input's four bytes
//! are broadcast against it, and each row's sums land in a lane of their own.
//!
//! A tile is one super-block (256 values) of eight rows: their `d` (f16, eight), then for
//! each pair of sub-blocks (sixteen values each) the rows' signed 8-bit scales (by row, then
//! the pair's two), and each sub-block's low four bits (for each of its two runs of eight
//! values, each row's four bytes, byte `i` holding value `i` in its low nibble and value
//! `i + 4` in its high one) and high two bits (each row's four bytes, byte `i` holding those
//! of values `i`, `i + 4`, `i + 8` and `i + 12` from its lowest bits up). 1,680 bytes, as
//! stored, read front to back: a layout that kept scales, low bits and high bits in three
//! regions had generation read three streams per tile, and run at two thirds of the stored
//! rows' speed once the matrix left the cache.
//!
//! Values are kept unsigned (`q` in 0..64 for the weight `q − 32`), as the byte products
//! need; the 32 comes off per super-block through the input's sums of sixteen.

use half::f16;

use super::q6_k::{stored_value, BLOCK_BYTES, SCALE, SCALES as STORED_SCALES, VALUES};
use super::{EightRowTiles, QuantizedInput, ROW_GROUP as ROWS};

/// Values per scale.
const SUB_BLOCK: usize = 16;

/// Scales per row and super-block.
const SUB_BLOCKS: usize = VALUES / SUB_BLOCK;

/// Where a tile's scales and values start, and its size.
/// A sub-block's bytes: its two runs of low bits, then its high bits.
const SUB_BLOCK_BYTES: usize = 3 * 4 * ROWS;
/// A pair of sub-blocks' bytes: their scales, then each sub-block's.
const PAIR_BYTES: usize = 2 * ROWS + 2 * SUB_BLOCK_BYTES;
const TILE_BYTES: usize = 2 * ROWS + SUB_BLOCKS / 2 * PAIR_BYTES;

/// Where the scales of the pair of sub-blocks `pair` start in a tile.
const fn scales_at(pair: usize) -> usize {
    2 * ROWS + pair * PAIR_BYTES
}

/// Where the low bits of run `run` (of eight values) start in a tile.
const fn low_bits_at(run: usize) -> usize {
    sub_block_at(run / 2) + run % 2 * 4 * ROWS
}

/// Where the high bits of sub-block `j` start in a tile.
const fn high_bits_at(j: usize) -> usize {
    sub_block_at(j) + 2 * 4 * ROWS
}

/// Where sub-block `j`'s bytes start in a tile.
const fn sub_block_at(j: usize) -> usize {
    scales_at(j / 2) + 2 * ROWS + j % 2 * SUB_BLOCK_BYTES
}

/// Re-lays `rows` (a multiple of [`ROWS`]) stored Q6_K rows of `row_bytes` each into tiles.
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
                tile[2 * r..2 * r + 2].copy_from_slice(&block[SCALE..SCALE + 2]);
                for j in 0..SUB_BLOCKS {
                    tile[scales_at(j / 2) + 2 * r + j % 2] = block[STORED_SCALES + j];
                }
                let value = |v: usize| stored_value(block, v);
                for run in 0..VALUES / 8 {
                    for i in 0..4 {
                        let v = 8 * run + i;
                        tile[low_bits_at(run) + 4 * r + i] =
                            value(v) & 0x0F | (value(v + 4) & 0x0F) << 4;
                    }
                }
                for j in 0..SUB_BLOCKS {
                    for i in 0..4 {
                        let v = SUB_BLOCK * j + i;
                        tile[high_bits_at(j) + 4 * r + i] = (0..4)
                            .map(|k| (value(v + 4 * k) >> 4) << (2 * k))
                            .fold(0, |byte, bits| byte | bits);
                    }
                }
            }
        }
    }
    tiles
}

/// Q6_K's tiles.
pub(super) struct Q6KTiles;

impl EightRowTiles for Q6KTiles {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        #[cfg(avx2_kernels)]
        return super::simd::with_byte_pairs!(P =>
            // SAFETY: the build targets AVX2, FMA and F16C, and `P` is this CPU's form; the
            // matrix checked that its inputs have as many values as its rows
            // (`QuantMatrix::matmul`).
            unsafe { dot_simd::<N, P>(tiles, inputs) }
        );
        #[cfg(not(avx2_kernels))]
        return inputs.map(|input| dot_scalar(tiles, input));
    }
}

/// Value `v` (0..256) of row `r` of a tile, unsigned (0..64).
fn tile_value(tile: &[u8], r: usize, v: usize) -> i32 {
    let (run, i) = (v / 8, v % 8);
    let low = tile[low_bits_at(run) + 4 * r + i % 4] >> (4 * (i / 4)) & 0x0F;
    let (j, k) = (v / SUB_BLOCK, v % SUB_BLOCK / 4);
    let high = tile[high_bits_at(j) + 4 * r + v % 4] >> (2 * k) & 3;
    (low | high << 4) as i32
}

/// Row `r` of a row group's tiles, dequantized, onto `out`.
pub(super) fn row_values(tiles: &[u8], r: usize, out: &mut Vec<f32>) {
    for tile in tiles.chunks_exact(TILE_BYTES) {
        let d = f16::from_le_bytes([tile[2 * r], tile[2 * r + 1]]).to_f32();
        out.extend((0..VALUES).map(|v| {
            let j = v / SUB_BLOCK;
            let scale = d * tile[scales_at(j / 2) + 2 * r + j % 2] as i8 as f32;
            scale * (tile_value(tile, r, v) - 32) as f32
        }));
    }
}

/// The portable kernel, and the reference for the SIMD one: the same integer sums, scaled
/// per super-block.
#[cfg_attr(avx2_kernels, allow(dead_code))]
pub(super) fn dot_scalar(tiles: &[u8], input: &QuantizedInput) -> [f32; ROWS] {
    let mut out = [0.0f32; ROWS];
    for (s, tile) in tiles.chunks_exact(TILE_BYTES).enumerate() {
        let x = &input.values[s * VALUES..(s + 1) * VALUES];
        let input_scale = input.scale_sums[s * VALUES / 32][0];
        for (r, out) in out.iter_mut().enumerate() {
            let d = f16::from_le_bytes([tile[2 * r], tile[2 * r + 1]]).to_f32();
            let mut total = 0i32;
            for j in 0..SUB_BLOCKS {
                let products: i32 = (SUB_BLOCK * j..SUB_BLOCK * (j + 1))
                    .map(|v| tile_value(tile, r, v) * x[v] as i32)
                    .sum();
                let x_sum = input.half_sums[s * SUB_BLOCKS + j] as i32;
                let scale = tile[scales_at(j / 2) + 2 * r + j % 2] as i8 as i32;
                total += scale * (products - 32 * x_sum);
            }
            *out += d * input_scale * total as f32;
        }
    }
    out
}

/// The SIMD kernel, with `P`'s byte products. For each sub-block of sixteen values, the tile's
/// two runs of low bits and one of high bits are put together into four vectors of six-bit values once, and each
/// input's four four-byte pieces are broadcast against them; byte pair sums of two runs add
/// up in 16 bits (at most 2 · 2 · 63 · 127 = 32,004), one multiply-add each by the rows'
/// scales takes them to 32 bits (with VNNI, a sub-block's products go straight into 32-bit
/// sums, multiplied by the rows' scales), and the 32 every value carries comes off once per
/// super-block (the rows' scales against the input's sums of sixteen, also integer), before
/// one float multiply-add.
///
/// # Safety
/// The CPU has `P`'s features, and each input has 256 values, one scale (repeated per block
/// of 32) and sixteen sums of sixteen per tile.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_simd<const N: usize, P: super::simd::BytePairs>(
    tiles: &[u8],
    inputs: [&QuantizedInput; N],
) -> [[f32; ROWS]; N] {
    use std::arch::x86_64::*;
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let high_pair = _mm256_set1_epi8(0x30);
    let mut totals = [_mm256_setzero_ps(); N];
    for (s, tile) in tiles.chunks_exact(TILE_BYTES).enumerate() {
        let tile = tile.as_ptr();
        let mut products = [_mm256_setzero_si256(); N];
        let mut corrections = [_mm256_setzero_si256(); N];
        for pair in 0..SUB_BLOCKS / 2 {
            // SAFETY: the pair's sixteen scales lie inside the tile.
            let pair_scales = unsafe {
                _mm256_cvtepi8_epi16(_mm_loadu_si128(tile.add(scales_at(pair)) as *const __m128i))
            };
            for (k, input) in inputs.iter().enumerate() {
                // SAFETY: the input has sixteen sums of sixteen per tile, two per pair.
                let sums = unsafe {
                    (input.half_sums.as_ptr().add(s * SUB_BLOCKS + 2 * pair) as *const i32)
                        .read_unaligned()
                };
                corrections[k] = _mm256_add_epi32(
                    corrections[k],
                    _mm256_madd_epi16(pair_scales, _mm256_set1_epi32(sums)),
                );
            }
            // Each row's scale for the pair's first sub-block, then its second: with VNNI in
            // its 32-bit lane, where its sums land; else in both 16-bit lanes where its byte
            // pair sums land.
            let low_halves = _mm256_set1_epi32(0xFFFF);
            let scales = if P::VNNI {
                [
                    _mm256_srai_epi32(_mm256_slli_epi32(pair_scales, 16), 16),
                    _mm256_srai_epi32(pair_scales, 16),
                ]
            } else {
                [
                    _mm256_or_si256(
                        _mm256_and_si256(pair_scales, low_halves),
                        _mm256_slli_epi32(pair_scales, 16),
                    ),
                    _mm256_or_si256(
                        _mm256_andnot_si256(low_halves, pair_scales),
                        _mm256_srli_epi32(pair_scales, 16),
                    ),
                ]
            };
            for (half, scales) in scales.into_iter().enumerate() {
                let j = 2 * pair + half;
                // SAFETY: the sub-block's two runs of low bits and its high bits lie inside
                // the tile.
                let (first, second, high) = unsafe {
                    (
                        _mm256_loadu_si256(tile.add(low_bits_at(2 * j)) as *const __m256i),
                        _mm256_loadu_si256(tile.add(low_bits_at(2 * j + 1)) as *const __m256i),
                        _mm256_loadu_si256(tile.add(high_bits_at(j)) as *const __m256i),
                    )
                };
                let weights = [
                    _mm256_or_si256(
                        _mm256_and_si256(first, low_nibbles),
                        _mm256_and_si256(_mm256_slli_epi16(high, 4), high_pair),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(first, 4), low_nibbles),
                        _mm256_and_si256(_mm256_slli_epi16(high, 2), high_pair),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(second, low_nibbles),
                        _mm256_and_si256(high, high_pair),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(second, 4), low_nibbles),
                        _mm256_and_si256(_mm256_srli_epi16(high, 2), high_pair),
                    ),
                ];
                for (k, input) in inputs.iter().enumerate() {
                    // SAFETY: the sub-block's sixteen values lie inside the input's 256 for
                    // this tile.
                    let x: [__m256i; 4] = unsafe {
                        let x = input.values.as_ptr().add(s * VALUES + SUB_BLOCK * j) as *const i32;
                        std::array::from_fn(|q| _mm256_set1_epi32(x.add(q).read_unaligned()))
                    };
                    if P::VNNI {
                        // SAFETY: the caller's promise.
                        let sums = (0..4).fold(_mm256_setzero_si256(), |sums, q| unsafe {
                            P::dot(sums, weights[q], x[q])
                        });
                        products[k] =
                            _mm256_add_epi32(products[k], _mm256_mullo_epi32(sums, scales));
                        continue;
                    }
                    let runs = [
                        _mm256_add_epi16(
                            _mm256_maddubs_epi16(weights[0], x[0]),
                            _mm256_maddubs_epi16(weights[1], x[1]),
                        ),
                        _mm256_add_epi16(
                            _mm256_maddubs_epi16(weights[2], x[2]),
                            _mm256_maddubs_epi16(weights[3], x[3]),
                        ),
                    ];
                    products[k] = _mm256_add_epi32(
                        products[k],
                        _mm256_add_epi32(
                            _mm256_madd_epi16(runs[0], scales),
                            _mm256_madd_epi16(runs[1], scales),
                        ),
                    );
                }
            }
        }
        // SAFETY: the rows' `d` (eight f16) are the tile's first sixteen bytes.
        let d = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(tile as *const __m128i)) };
        for (k, input) in inputs.iter().enumerate() {
            let total = _mm256_sub_epi32(products[k], _mm256_slli_epi32(corrections[k], 5));
            let input_scale = _mm256_set1_ps(input.scale_sums[s * VALUES / 32][0]);
            totals[k] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(total),
                _mm256_mul_ps(d, input_scale),
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
