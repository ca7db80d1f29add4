//! Q6_K weights re-laid eight rows to a tile for [`sixteen_x8`]'s kernel.
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
//! need.

use super::q6_k::{stored_value, BLOCK_BYTES, SCALE, SCALES as STORED_SCALES};
use super::sixteen_x8::{self, Offset, SixteenValueTiles, SUB_BLOCK, SUB_BLOCKS, VALUES};
use super::{EightRowTiles, QuantizedInput, ROW_GROUP as ROWS};

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
    super::interleave_rows(
        blocks,
        rows,
        row_bytes,
        BLOCK_BYTES,
        TILE_BYTES,
        |tile, r, block| {
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
        },
    )
}

/// Q6_K's tiles.
pub(super) struct Q6KTiles;

impl EightRowTiles for Q6KTiles {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        sixteen_x8::dot::<Self, N>(tiles, inputs)
    }
}

impl SixteenValueTiles for Q6KTiles {
    const TILE_BYTES: usize = TILE_BYTES;

    const OFFSET: Offset = Offset::Fixed { shift: 5 };

    fn scale(tile: &[u8], r: usize, j: usize) -> i32 {
        tile[scales_at(j / 2) + 2 * r + j % 2] as i8 as i32
    }

    fn minimum(_: &[u8], _: usize, _: usize) -> i32 {
        unreachable!("Q6_K has no minimums")
    }

    fn value(tile: &[u8], r: usize, v: usize) -> i32 {
        let (run, i) = (v / 8, v % 8);
        let low = tile[low_bits_at(run) + 4 * r + i % 4] >> (4 * (i / 4)) & 0x0F;
        let (j, k) = (v / SUB_BLOCK, v % SUB_BLOCK / 4);
        let high = tile[high_bits_at(j) + 4 * r + v % 4] >> (2 * k) & 3;
        (low | high << 4) as i32
    }

    #[cfg(avx2_kernels)]
    #[inline(always)]
    unsafe fn pair_scales(tile: *const u8, pair: usize) -> [std::arch::x86_64::__m256i; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the build targets AVX2; the pair's sixteen scales lie inside the tile.
        let scales = unsafe {
            _mm256_cvtepi8_epi16(_mm_loadu_si128(tile.add(scales_at(pair)) as *const __m128i))
        };
        [scales, scales]
    }

    /// The sub-block's two runs of low bits and its high bits, put together.
    #[cfg(avx2_kernels)]
    #[inline(always)]
    unsafe fn values(tile: *const u8, j: usize) -> [std::arch::x86_64::__m256i; 4] {
        use std::arch::x86_64::*;
        // SAFETY: the build targets AVX2; the sub-block's two runs of low bits and its high
        // bits lie inside the tile.
        unsafe {
            let low_nibbles = _mm256_set1_epi8(0x0F);
            let high_pair = _mm256_set1_epi8(0x30);
            let first = _mm256_loadu_si256(tile.add(low_bits_at(2 * j)) as *const __m256i);
            let second = _mm256_loadu_si256(tile.add(low_bits_at(2 * j + 1)) as *const __m256i);
            let high = _mm256_loadu_si256(tile.add(high_bits_at(j)) as *const __m256i);
            [
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
            ]
        }
    }
}
