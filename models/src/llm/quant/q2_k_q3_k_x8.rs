//! Q2_K and Q3_K weights re-laid eight rows to a tile for [`sixteen_x8`]'s kernel.
//!
//! Both formats keep two low bits per value and a scale per sixteen values; Q3_K adds a third
//! (high) bit per value and takes 4 off every value, Q2_K has a 4-bit minimum per sixteen
//! values instead, scaled by the super-block's `dmin`. As stored, a super-block of 256 values
//! holds its two-bit values in 64 bytes, value `128n + 32k + l` in bits `2k`–`2k+1` of byte
//! `32n + l`; Q3_K's high bit of that value is bit `4n + k` of byte `l` of its 32-byte mask,
//! and its sixteen 6-bit scales (offset by 32) are packed in twelve bytes; Q2_K's scales and
//! minimums are a byte per sixteen values, scale in the low nibble.
//!
//! A tile is one super-block of eight rows: their `d` (f16, eight), for Q2_K their `dmin`
//! (eight more), then for each pair of sub-blocks (sixteen values each) the rows' scales (by
//! row, then the pair's two; Q3_K's as signed bytes, Q2_K's scale-and-minimum bytes as
//! stored), for Q3_K the pair's high bits (each row's four bytes, byte `i` holding those of
//! values `i`, `i + 4`, `i + 8` and `i + 12` of the first sub-block in bits 0–3 and of the
//! second in bits 4–7), and each sub-block's two-bit values (each row's four bytes, byte `i`
//! holding values `i`, `i + 4`, `i + 8` and `i + 12` from its lowest bits up). 672 bytes, as
//! stored, for Q2_K; 912 against the stored 880 for Q3_K, whose scales are unpacked to bytes.

use super::sixteen_x8::{self, Offset, SixteenValueTiles, SUB_BLOCK, SUB_BLOCKS, VALUES};
use super::{EightRowTiles, QuantizedInput, ROW_GROUP as ROWS};

/// A stored Q2_K super-block's bytes, and where its parts start.
const Q2_K_BLOCK_BYTES: usize = 84;
const Q2_K_SCALES: usize = 0;
const Q2_K_VALUES: usize = 16;
const Q2_K_D: usize = 80;

/// A stored Q3_K super-block's bytes, and where its parts start.
const Q3_K_BLOCK_BYTES: usize = 110;
const Q3_K_HIGH_BITS: usize = 0;
const Q3_K_VALUES: usize = 32;
const Q3_K_SCALES: usize = 96;
const Q3_K_D: usize = 108;

/// A sub-block's two-bit values in a tile.
const LOW_BITS_BYTES: usize = 4 * ROWS;

/// Bytes before a tile's first pair: `d`, and Q2_K's `dmin`.
const fn head_bytes(high_bit: bool) -> usize {
    if high_bit {
        2 * ROWS
    } else {
        4 * ROWS
    }
}

/// A pair of sub-blocks' bytes: scales, Q3_K's high bits, and the two sub-blocks' low bits.
const fn pair_bytes(high_bit: bool) -> usize {
    2 * ROWS + high_bit as usize * 4 * ROWS + 2 * LOW_BITS_BYTES
}

const fn tile_bytes(high_bit: bool) -> usize {
    head_bytes(high_bit) + SUB_BLOCKS / 2 * pair_bytes(high_bit)
}

/// Where the scales of pair `pair` start in a tile.
const fn scales_at(pair: usize, high_bit: bool) -> usize {
    head_bytes(high_bit) + pair * pair_bytes(high_bit)
}

/// Where Q3_K's high bits of pair `pair` start in a tile.
const fn high_bits_at(pair: usize) -> usize {
    scales_at(pair, true) + 2 * ROWS
}

/// Where sub-block `j`'s two-bit values start in a tile.
const fn low_bits_at(j: usize, high_bit: bool) -> usize {
    scales_at(j / 2, high_bit) + pair_bytes(high_bit) - (2 - j % 2) * LOW_BITS_BYTES
}

/// Value `v` of a stored super-block's two-bit values.
fn stored_low_bits(values: &[u8], v: usize) -> u8 {
    values[32 * (v / 128) + v % 32] >> (2 * (v % 128 / 32)) & 3
}

/// Q3_K's high bit of value `v` of a stored super-block.
fn stored_high_bit(block: &[u8], v: usize) -> u8 {
    block[Q3_K_HIGH_BITS + v % 32] >> (4 * (v / 128) + v % 128 / 32) & 1
}

/// Q3_K's scale of sub-block `j` of a stored super-block: six bits, less 32.
fn stored_q3_k_scale(block: &[u8], j: usize) -> i8 {
    let packed = &block[Q3_K_SCALES..Q3_K_SCALES + 12];
    let low = packed[j % 8] >> (4 * (j / 8)) & 0x0F;
    let high = packed[8 + j % 4] >> (2 * (j / 4)) & 3;
    (low | high << 4) as i8 - 32
}

/// Re-lays `rows` (a multiple of [`ROWS`]) stored Q2_K (or, with `high_bit`, Q3_K) rows of
/// `row_bytes` each into tiles.
pub(super) fn interleave(blocks: &[u8], rows: usize, row_bytes: usize, high_bit: bool) -> Vec<u8> {
    let (block_bytes, d_at, values_at) = if high_bit {
        (Q3_K_BLOCK_BYTES, Q3_K_D, Q3_K_VALUES)
    } else {
        (Q2_K_BLOCK_BYTES, Q2_K_D, Q2_K_VALUES)
    };
    let tile_bytes = tile_bytes(high_bit);
    super::interleave_rows(
        blocks,
        rows,
        row_bytes,
        block_bytes,
        tile_bytes,
        |tile, r, block| {
            // `d`, and Q2_K's `dmin` after it.
            let head = head_bytes(high_bit) / ROWS;
            for (h, half) in block[d_at..d_at + head].chunks_exact(2).enumerate() {
                tile[2 * ROWS * h + 2 * r..][..2].copy_from_slice(half);
            }
            let values = &block[values_at..values_at + VALUES / 4];
            for j in 0..SUB_BLOCKS {
                tile[scales_at(j / 2, high_bit) + 2 * r + j % 2] = if high_bit {
                    stored_q3_k_scale(block, j) as u8
                } else {
                    block[Q2_K_SCALES + j]
                };
                for i in 0..4 {
                    let v = SUB_BLOCK * j + i;
                    tile[low_bits_at(j, high_bit) + 4 * r + i] = (0..4)
                        .map(|k| stored_low_bits(values, v + 4 * k) << (2 * k))
                        .fold(0, |byte, bits| byte | bits);
                    if high_bit {
                        let bits = (0..4)
                            .map(|k| stored_high_bit(block, v + 4 * k) << k)
                            .fold(0, |byte, bits| byte | bits);
                        tile[high_bits_at(j / 2) + 4 * r + i] |= bits << (4 * (j % 2));
                    }
                }
            }
        },
    )
}

/// Value `v` of row `r` of a tile: its two low bits, and Q3_K's high bit above them.
fn tile_value(tile: &[u8], r: usize, v: usize, high_bit: bool) -> i32 {
    let (j, i, k) = (v / SUB_BLOCK, v % 4, v % SUB_BLOCK / 4);
    let low = tile[low_bits_at(j, high_bit) + 4 * r + i] >> (2 * k) & 3;
    let high = if high_bit {
        tile[high_bits_at(j / 2) + 4 * r + i] >> (4 * (j % 2) + k) & 1
    } else {
        0
    };
    (low | high << 2) as i32
}

/// Row `r`'s scale byte of sub-block `j` in a tile.
fn scale_byte(tile: &[u8], r: usize, j: usize, high_bit: bool) -> u8 {
    tile[scales_at(j / 2, high_bit) + 2 * r + j % 2]
}

/// A sub-block's two-bit values as four vectors of bytes (vector `k` holds value `4k + i` of
/// row `r` in byte `4r + i`), with `high` (the sub-block's high bits in bits 0–3 of each
/// byte, or none) in each byte's bit 2.
///
/// # Safety
/// The build targets AVX2.
#[cfg(avx2_kernels)]
#[inline(always)]
unsafe fn unpack(
    low: std::arch::x86_64::__m256i,
    high: Option<std::arch::x86_64::__m256i>,
) -> [std::arch::x86_64::__m256i; 4] {
    use std::arch::x86_64::*;
    // SAFETY: the build targets AVX2.
    unsafe {
        let two_bits = _mm256_set1_epi8(3);
        let low = [
            _mm256_and_si256(low, two_bits),
            _mm256_and_si256(_mm256_srli_epi16(low, 2), two_bits),
            _mm256_and_si256(_mm256_srli_epi16(low, 4), two_bits),
            _mm256_and_si256(_mm256_srli_epi16(low, 6), two_bits),
        ];
        let Some(high) = high else {
            return low;
        };
        let bit_2 = _mm256_set1_epi8(4);
        let high = [
            _mm256_slli_epi16(high, 2),
            _mm256_slli_epi16(high, 1),
            high,
            _mm256_srli_epi16(high, 1),
        ];
        std::array::from_fn(|k| _mm256_or_si256(low[k], _mm256_and_si256(high[k], bit_2)))
    }
}

/// Q2_K's tiles.
pub(super) struct Q2KTiles;

impl EightRowTiles for Q2KTiles {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        sixteen_x8::dot::<Self, N>(tiles, inputs)
    }
}

impl SixteenValueTiles for Q2KTiles {
    const TILE_BYTES: usize = tile_bytes(false);

    const OFFSET: Offset = Offset::Minimums;

    fn scale(tile: &[u8], r: usize, j: usize) -> i32 {
        (scale_byte(tile, r, j, false) & 0x0F) as i32
    }

    fn minimum(tile: &[u8], r: usize, j: usize) -> i32 {
        (scale_byte(tile, r, j, false) >> 4) as i32
    }

    fn value(tile: &[u8], r: usize, v: usize) -> i32 {
        tile_value(tile, r, v, false)
    }

    #[cfg(avx2_kernels)]
    #[inline(always)]
    unsafe fn pair_scales(tile: *const u8, pair: usize) -> [std::arch::x86_64::__m256i; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the build targets AVX2; the pair's sixteen scale bytes lie inside the tile.
        unsafe {
            let bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                tile.add(scales_at(pair, false)) as *const __m128i
            ));
            [
                _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F)),
                _mm256_srli_epi16(bytes, 4),
            ]
        }
    }

    #[cfg(avx2_kernels)]
    #[inline(always)]
    unsafe fn values(tile: *const u8, j: usize) -> [std::arch::x86_64::__m256i; 4] {
        use std::arch::x86_64::*;
        // SAFETY: the build targets AVX2; the sub-block's values lie inside the tile.
        unsafe {
            let low = _mm256_loadu_si256(tile.add(low_bits_at(j, false)) as *const __m256i);
            unpack(low, None)
        }
    }
}

/// Q3_K's tiles.
pub(super) struct Q3KTiles;

impl EightRowTiles for Q3KTiles {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        sixteen_x8::dot::<Self, N>(tiles, inputs)
    }
}

impl SixteenValueTiles for Q3KTiles {
    const TILE_BYTES: usize = tile_bytes(true);

    const OFFSET: Offset = Offset::Fixed { shift: 2 };

    fn scale(tile: &[u8], r: usize, j: usize) -> i32 {
        scale_byte(tile, r, j, true) as i8 as i32
    }

    fn minimum(_: &[u8], _: usize, _: usize) -> i32 {
        unreachable!("Q3_K has no minimums")
    }

    fn value(tile: &[u8], r: usize, v: usize) -> i32 {
        tile_value(tile, r, v, true)
    }

    #[cfg(avx2_kernels)]
    #[inline(always)]
    unsafe fn pair_scales(tile: *const u8, pair: usize) -> [std::arch::x86_64::__m256i; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the build targets AVX2; the pair's sixteen scales lie inside the tile.
        let scales = unsafe {
            _mm256_cvtepi8_epi16(_mm_loadu_si128(
                tile.add(scales_at(pair, true)) as *const __m128i
            ))
        };
        [scales, scales]
    }

    #[cfg(avx2_kernels)]
    #[inline(always)]
    unsafe fn values(tile: *const u8, j: usize) -> [std::arch::x86_64::__m256i; 4] {
        use std::arch::x86_64::*;
        // SAFETY: the build targets AVX2; the sub-block's values and its pair's high bits lie
        // inside the tile.
        unsafe {
            let low = _mm256_loadu_si256(tile.add(low_bits_at(j, true)) as *const __m256i);
            let high = _mm256_loadu_si256(tile.add(high_bits_at(j / 2)) as *const __m256i);
            let high = if j.is_multiple_of(2) {
                high
            } else {
                _mm256_srli_epi16(high, 4)
            };
            unpack(low, Some(high))
        }
    }
}
