//! Q4_K and Q5_K weights re-laid eight rows to a tile, so that one 256-bit vector holds four values of
//! each of eight rows: an input's four bytes, broadcast, multiply all eight rows at once, and
//! each row's sums land in a lane of their own. A row-at-a-time kernel instead spreads one
//! row's sub-block over the lanes and must fold them back, and handles every row's scales,
//! minimums and input scale on its own; here that work is shared by eight rows. On an AVX2
//! machine that ran Llama-1B Q4_K_M prompts (many inputs per weight) 1.4 times as fast as
//! candle's repacked tiles had, and the re-laid copy replaces the stored one instead of
//! sitting beside it.
//!
//! The two formats share a super-block's head (`d`, `dmin`, and eight 6-bit scales and
//! minimums packed in twelve bytes) and its four low bits per value; Q5_K adds a fifth bit.
//! A tile is one super-block (256 values) of eight rows: their `d` and `dmin` (f16, eight
//! each), their 6-bit sub-block scales (sub-block by sub-block, then row), their 6-bit
//! minimums (by pair of sub-blocks, then row, then the pair's two), then for each sub-block of
//! 32 its four-bit values (for each run of eight values, each row's four bytes, byte `i`
//! holding value `i` in its low nibble and value `i + 4` in its high one) and, for Q5_K, its
//! fifth bits (each row's four bytes, byte `i` holding those of value `i` and `i + 4` of the
//! first run in bits 0 and 1, of the second in bits 2 and 3, and so on). 1,184 bytes against
//! the stored 1,152 for Q4_K, 1,440 against 1,408 for Q5_K. A row group's tiles follow one
//! another, so a run of rows is read front to back.

use half::f16;

use super::q4_k::{unpack_scales_mins, SUB_BLOCKS, VALUES};
use super::{EightRowTiles, QuantizedInput, ROW_GROUP as ROWS};

/// Where a tile's scales, minimums and sub-blocks start.
const MINIMUM_SCALES: usize = 16;
const SCALES: usize = 32;
const MINIMUMS: usize = SCALES + SUB_BLOCKS * ROWS;
const SUB_BLOCKS_AT: usize = MINIMUMS + SUB_BLOCKS * ROWS;

/// Runs of eight values per sub-block.
const RUNS: usize = 4;

/// A sub-block's bytes in a tile: its runs' four-bit values, and its fifth bits if any.
const fn sub_block_bytes(fifth_bit: bool) -> usize {
    (RUNS + fifth_bit as usize) * 4 * ROWS
}

/// A tile's bytes.
const fn tile_bytes(fifth_bit: bool) -> usize {
    SUB_BLOCKS_AT + SUB_BLOCKS * sub_block_bytes(fifth_bit)
}

/// Where run `run` (of eight values) of a super-block starts in a tile.
const fn run_at(run: usize, fifth_bit: bool) -> usize {
    SUB_BLOCKS_AT + run / RUNS * sub_block_bytes(fifth_bit) + run % RUNS * 4 * ROWS
}

/// Where sub-block `j`'s fifth bits start in a Q5_K tile.
const fn fifth_bits_at(j: usize) -> usize {
    run_at(RUNS * j, true) + RUNS * 4 * ROWS
}

/// A stored super-block's bytes, and where its four-bit values start.
const fn stored_layout(fifth_bit: bool) -> (usize, usize) {
    if fifth_bit {
        (176, 48)
    } else {
        (144, 16)
    }
}

/// Re-lays `rows` (a multiple of [`ROWS`]) stored Q4_K (or, with `fifth_bit`, Q5_K) rows of
/// `row_bytes` each into tiles.
pub(super) fn interleave(blocks: &[u8], rows: usize, row_bytes: usize, fifth_bit: bool) -> Vec<u8> {
    let (block_bytes, low_bits) = stored_layout(fifth_bit);
    let tile_bytes = tile_bytes(fifth_bit);
    super::interleave_rows(
        blocks,
        rows,
        row_bytes,
        block_bytes,
        tile_bytes,
        |tile, r, block| {
            tile[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
            tile[MINIMUM_SCALES + 2 * r..MINIMUM_SCALES + 2 * r + 2].copy_from_slice(&block[2..4]);
            let scales_minimums = unpack_scales_mins(&block[4..16]);
            for j in 0..SUB_BLOCKS {
                tile[SCALES + j * ROWS + r] = scales_minimums[j];
                tile[MINIMUMS + j / 2 * 2 * ROWS + 2 * r + j % 2] = scales_minimums[SUB_BLOCKS + j];
            }
            // The stored four bits: each 32 bytes hold 64 values, the first 32 in the low
            // nibbles. Q5_K's fifth bits: bit `j` of byte `v % 32` of the 32 before them
            // for value `v` of sub-block `j`.
            let low = |v: usize| {
                let byte = block[low_bits + v / 64 * 32 + v % 32];
                if v % 64 < 32 {
                    byte & 0x0F
                } else {
                    byte >> 4
                }
            };
            let fifth = |v: usize| (block[16 + v % 32] >> (v / 32)) & 1;
            for run in 0..VALUES / 8 {
                for i in 0..4 {
                    let v = 8 * run + i;
                    tile[run_at(run, fifth_bit) + 4 * r + i] = low(v) | low(v + 4) << 4;
                    if fifth_bit {
                        let k = run % RUNS;
                        tile[fifth_bits_at(run / RUNS) + 4 * r + i] |=
                            fifth(v) << (2 * k) | fifth(v + 4) << (2 * k + 1);
                    }
                }
            }
        },
    )
}

/// Q4_K's tiles.
pub(super) struct Q4KTiles;

/// Q5_K's tiles.
pub(super) struct Q5KTiles;

impl EightRowTiles for Q4KTiles {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        dot::<N, false>(tiles, inputs)
    }
}

impl EightRowTiles for Q5KTiles {
    #[inline]
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROWS]; N] {
        dot::<N, true>(tiles, inputs)
    }
}

/// The fastest kernel of this build and CPU.
#[inline]
fn dot<const N: usize, const FIFTH_BIT: bool>(
    tiles: &[u8],
    inputs: [&QuantizedInput; N],
) -> [[f32; ROWS]; N] {
    #[cfg(avx2_kernels)]
    return super::simd::with_byte_pairs!(P =>
        // SAFETY: the build targets AVX2, FMA and F16C, and `P` is this CPU's form; the matrix
        // checked that its inputs have as many values as its rows (`QuantMatrix::matmul`).
        unsafe { dot_simd::<N, FIFTH_BIT, P>(tiles, inputs) }
    );
    #[cfg(not(avx2_kernels))]
    return inputs.map(|input| dot_scalar(tiles, input, FIFTH_BIT));
}

/// Value `v` (0..256) of row `r` of a tile: four bits, or five with `fifth_bit`.
fn tile_value(tile: &[u8], r: usize, v: usize, fifth_bit: bool) -> i32 {
    let (run, i) = (v / 8, v % 8);
    let low = tile[run_at(run, fifth_bit) + 4 * r + i % 4] >> (4 * (i / 4)) & 0x0F;
    let fifth = if fifth_bit {
        let bit = 2 * (run % RUNS) + i / 4;
        tile[fifth_bits_at(run / RUNS) + 4 * r + i % 4] >> bit & 1
    } else {
        0
    };
    (low | fifth << 4) as i32
}

/// Row `r` of a row group's tiles, dequantized, onto `out`.
pub(super) fn row_values(tiles: &[u8], r: usize, fifth_bit: bool, out: &mut Vec<f32>) {
    for tile in tiles.chunks_exact(tile_bytes(fifth_bit)) {
        let half = |at: usize| f16::from_le_bytes([tile[at + 2 * r], tile[at + 2 * r + 1]]);
        let (d, dmin) = (half(0).to_f32(), half(MINIMUM_SCALES).to_f32());
        out.extend((0..VALUES).map(|v| {
            let j = v / 32;
            let scale = d * tile[SCALES + j * ROWS + r] as f32;
            let minimum = dmin * tile[MINIMUMS + j / 2 * 2 * ROWS + 2 * r + j % 2] as f32;
            scale * tile_value(tile, r, v, fifth_bit) as f32 - minimum
        }));
    }
}

/// The portable kernel, and the reference for the SIMD one: the same integer sums, scaled
/// per super-block.
#[cfg_attr(avx2_kernels, allow(dead_code))]
pub(super) fn dot_scalar(tiles: &[u8], input: &QuantizedInput, fifth_bit: bool) -> [f32; ROWS] {
    let mut out = [0.0f32; ROWS];
    for (s, tile) in tiles.chunks_exact(tile_bytes(fifth_bit)).enumerate() {
        let first = s * SUB_BLOCKS;
        let x = &input.values[s * VALUES..(s + 1) * VALUES];
        let input_scale = input.scale_sums[first][0];
        for (r, out) in out.iter_mut().enumerate() {
            let half = |at: usize| f16::from_le_bytes([tile[at + 2 * r], tile[at + 2 * r + 1]]);
            let (d, dmin) = (half(0).to_f32(), half(MINIMUM_SCALES).to_f32());
            let (mut scaled, mut minimums) = (0i32, 0i32);
            for j in 0..SUB_BLOCKS {
                let products: i32 = (32 * j..32 * (j + 1))
                    .map(|v| tile_value(tile, r, v, fifth_bit) * x[v] as i32)
                    .sum();
                scaled += tile[SCALES + j * ROWS + r] as i32 * products;
                minimums += tile[MINIMUMS + j / 2 * 2 * ROWS + 2 * r + j % 2] as i32
                    * input.sums[first + j] as i32;
            }
            *out += d * input_scale * scaled as f32 - dmin * input_scale * minimums as f32;
        }
    }
    out
}

/// The SIMD kernel, with `P`'s byte products. For each run of eight values, the tile's 32 bytes are split into low and
/// high nibbles once (and given their fifth bits), and each input's two four-byte pieces are
/// broadcast against them; the byte pair sums of a sub-block's four runs add up in 16 bits (at
/// most 8 · 2 · 15 · 127 = 30,480; with five bits, two runs at a time, 4 · 2 · 31 · 127 =
/// 31,496), a multiply-add by the rows' scales takes them to 32 bits, and a super-block's
/// total is scaled in floats once. With VNNI, each half run's products go straight into 32-bit
/// sums (one instruction), and a sub-block's sums are multiplied by the rows' scales. The
/// minimums' term is integer too: pairs of the input's block sums against pairs of each row's
/// minimums.
///
/// # Safety
/// The CPU has `P`'s features, and each input has 256 values, one scale (repeated per block
/// of 32) and eight block sums per tile.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_simd<const N: usize, const FIFTH_BIT: bool, P: super::simd::BytePairs>(
    tiles: &[u8],
    inputs: [&QuantizedInput; N],
) -> [[f32; ROWS]; N] {
    use std::arch::x86_64::*;
    // Runs whose byte pair sums add up in 16 bits.
    let runs_per_sum = if FIFTH_BIT { 2 } else { RUNS };
    let mut totals = [_mm256_setzero_ps(); N];
    for (s, tile) in tiles.chunks_exact(tile_bytes(FIFTH_BIT)).enumerate() {
        let tile = tile.as_ptr();
        let mut scaled = [_mm256_setzero_si256(); N];
        for j in 0..SUB_BLOCKS {
            // SAFETY: the eight rows' scales of sub-block `j` are eight bytes inside the tile.
            let scales = unsafe {
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    tile.add(SCALES + j * ROWS) as *const __m128i
                ))
            };
            // With VNNI, row r's scale in 32-bit lane r, where its sums land; else in 16-bit
            // lanes 2r and 2r + 1, where its byte pair sums land.
            let scales = if P::VNNI {
                scales
            } else {
                _mm256_or_si256(scales, _mm256_slli_epi32(scales, 16))
            };
            let mut pair_sums = [_mm256_setzero_si256(); N];
            // The fifth bits of the run at hand in bits 0 (first half) and 1 (second half).
            let mut fifth_bits = if FIFTH_BIT {
                // SAFETY: a Q5_K sub-block's fifth bits are 32 bytes inside the tile.
                unsafe { _mm256_loadu_si256(tile.add(fifth_bits_at(j)) as *const __m256i) }
            } else {
                _mm256_setzero_si256()
            };
            for run in RUNS * j..RUNS * (j + 1) {
                // SAFETY: a run's 32 bytes lie inside the tile.
                let packed = unsafe {
                    _mm256_loadu_si256(tile.add(run_at(run, FIFTH_BIT)) as *const __m256i)
                };
                let (low, high) = run_values::<FIFTH_BIT>(packed, &mut fifth_bits);
                for (k, input) in inputs.iter().enumerate() {
                    // SAFETY: the run's eight values lie inside the input's 256 for this tile.
                    let (x_low, x_high) = unsafe {
                        let x = input.values.as_ptr().add(s * VALUES + 8 * run) as *const i32;
                        (
                            _mm256_set1_epi32(x.read_unaligned()),
                            _mm256_set1_epi32(x.add(1).read_unaligned()),
                        )
                    };
                    if P::VNNI {
                        // Here `pair_sums` are 32-bit sums. SAFETY: the caller's promise.
                        pair_sums[k] =
                            unsafe { P::dot(P::dot(pair_sums[k], low, x_low), high, x_high) };
                        continue;
                    }
                    let products = _mm256_add_epi16(
                        _mm256_maddubs_epi16(low, x_low),
                        _mm256_maddubs_epi16(high, x_high),
                    );
                    pair_sums[k] = _mm256_add_epi16(pair_sums[k], products);
                }
                if P::VNNI && run + 1 == RUNS * (j + 1) {
                    for k in 0..N {
                        scaled[k] =
                            _mm256_add_epi32(scaled[k], _mm256_mullo_epi32(pair_sums[k], scales));
                    }
                } else if !P::VNNI && (run + 1) % runs_per_sum == 0 {
                    for k in 0..N {
                        scaled[k] =
                            _mm256_add_epi32(scaled[k], _mm256_madd_epi16(pair_sums[k], scales));
                        pair_sums[k] = _mm256_setzero_si256();
                    }
                }
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

/// A run's 32 bytes of a tile as each row's values `i` (`low`) and `i + 4` (`high`), given
/// their fifth bits with `FIFTH_BIT` (bits 0 and 1 of each byte of `fifth_bits`, which then
/// moves on to the next run's): the sub-block layout Q5_K's tiles share with Q5_0's and Q5_1's.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn run_values<const FIFTH_BIT: bool>(
    packed: std::arch::x86_64::__m256i,
    fifth_bits: &mut std::arch::x86_64::__m256i,
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let low_nibbles = _mm256_set1_epi8(0x0F);
    let fifth = _mm256_set1_epi8(0x10);
    let mut low = _mm256_and_si256(packed, low_nibbles);
    let mut high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
    if FIFTH_BIT {
        // Shifts within 16-bit lanes move no bit that the mask keeps across bytes.
        low = _mm256_or_si256(
            low,
            _mm256_and_si256(_mm256_slli_epi16(*fifth_bits, 4), fifth),
        );
        high = _mm256_or_si256(
            high,
            _mm256_and_si256(_mm256_slli_epi16(*fifth_bits, 3), fifth),
        );
        *fifth_bits = _mm256_srli_epi16(*fifth_bits, 2);
    }
    (low, high)
}
