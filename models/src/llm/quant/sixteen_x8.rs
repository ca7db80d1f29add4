//! The kernel of the k-quants that scale every sixteen values (Q2_K, Q3_K, Q6_K), re-laid eight
//! rows to a tile: one 256-bit vector holds four values of each of eight rows, an input's four
//! bytes are broadcast against it, and each row's sums land in a lane of their own.
//!
//! The formats differ in how many bits a value has and where they sit, and in how the offset
//! of their unsigned values comes off; [`SixteenValueTiles`] says both, and the kernel here
//! (SIMD, and the portable reference) is the same for all three. A tile is one super-block
//! (256 values) of eight rows and begins with the rows' `d` (eight f16).

use half::f16;

use super::{QuantizedInput, ROW_GROUP as ROWS};

/// Values per super-block.
pub(super) const VALUES: usize = 256;

/// Values per scale.
pub(super) const SUB_BLOCK: usize = 16;

/// Scales per row and super-block.
pub(super) const SUB_BLOCKS: usize = VALUES / SUB_BLOCK;

/// How a format's unsigned values are taken back to its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Offset {
    /// Every value carries `1 << shift` (Q6_K's 32, Q3_K's 4): the weight is
    /// `d · scale · (value − (1 << shift))`.
    Fixed { shift: u32 },
    /// Each sub-block has a minimum, scaled by the row's `dmin` (eight f16 after the `d`):
    /// the weight is `d · scale · value − dmin · minimum` (Q2_K).
    Minimums,
}

/// A k-quant's tile layout.
pub(super) trait SixteenValueTiles {
    /// Bytes per tile.
    const TILE_BYTES: usize;

    /// How the values' offset comes off.
    const OFFSET: Offset;

    /// Row `r`'s scale of sub-block `j`.
    fn scale(tile: &[u8], r: usize, j: usize) -> i32;

    /// Row `r`'s minimum of sub-block `j` ([`Offset::Minimums`] only).
    fn minimum(tile: &[u8], r: usize, j: usize) -> i32;

    /// Value `v` (0..256) of row `r`, unsigned.
    fn value(tile: &[u8], r: usize, v: usize) -> i32;

    /// The scales of sub-blocks `2 · pair` and `2 · pair + 1` in sixteen 16-bit lanes (row
    /// `r`'s in lanes `2r` and `2r + 1`), and in the same lanes what the input's sums of
    /// sixteen are multiplied by to take the offset off: the scales again, or the minimums.
    ///
    /// # Safety
    /// The build targets AVX2; `tile` points at a whole tile.
    #[cfg(avx2_kernels)]
    unsafe fn pair_scales(tile: *const u8, pair: usize) -> [std::arch::x86_64::__m256i; 2];

    /// Sub-block `j`'s values in four vectors: vector `k` holds value `16j + 4k + i` of row
    /// `r` in byte `4r + i`.
    ///
    /// # Safety
    /// As for [`pair_scales`](Self::pair_scales).
    #[cfg(avx2_kernels)]
    unsafe fn values(tile: *const u8, j: usize) -> [std::arch::x86_64::__m256i; 4];
}

/// The rows' `d` (or, at byte 16, `dmin`) in a tile.
fn f16_of(tile: &[u8], at: usize, r: usize) -> f32 {
    f16::from_le_bytes([tile[at + 2 * r], tile[at + 2 * r + 1]]).to_f32()
}

/// Row `r` of a row group's tiles, dequantized as candle does, onto `out`.
pub(super) fn row_values<T: SixteenValueTiles>(tiles: &[u8], r: usize, out: &mut Vec<f32>) {
    for tile in tiles.chunks_exact(T::TILE_BYTES) {
        let d = f16_of(tile, 0, r);
        out.extend((0..VALUES).map(|v| {
            let j = v / SUB_BLOCK;
            let scale = d * T::scale(tile, r, j) as f32;
            match T::OFFSET {
                Offset::Fixed { shift } => scale * (T::value(tile, r, v) - (1 << shift)) as f32,
                Offset::Minimums => {
                    scale * T::value(tile, r, v) as f32
                        - f16_of(tile, 16, r) * T::minimum(tile, r, j) as f32
                }
            }
        }));
    }
}

/// The portable kernel, and the reference for the SIMD one: the same integer sums, scaled per
/// super-block.
#[cfg_attr(avx2_kernels, allow(dead_code))]
pub(super) fn dot_scalar<T: SixteenValueTiles>(
    tiles: &[u8],
    input: &QuantizedInput,
) -> [f32; ROWS] {
    let mut out = [0.0f32; ROWS];
    for (s, tile) in tiles.chunks_exact(T::TILE_BYTES).enumerate() {
        let x = &input.values[s * VALUES..(s + 1) * VALUES];
        let input_scale = input.scale_sums[s * VALUES / 32][0];
        for (r, out) in out.iter_mut().enumerate() {
            let (mut products, mut corrections) = (0i32, 0i32);
            for j in 0..SUB_BLOCKS {
                let sum: i32 = (SUB_BLOCK * j..SUB_BLOCK * (j + 1))
                    .map(|v| T::value(tile, r, v) * x[v] as i32)
                    .sum();
                let x_sum = input.half_sums[s * SUB_BLOCKS + j] as i32;
                products += T::scale(tile, r, j) * sum;
                corrections += x_sum
                    * match T::OFFSET {
                        Offset::Fixed { .. } => T::scale(tile, r, j),
                        Offset::Minimums => T::minimum(tile, r, j),
                    };
            }
            let d = f16_of(tile, 0, r);
            *out += match T::OFFSET {
                Offset::Fixed { shift } => {
                    d * input_scale * (products - (corrections << shift)) as f32
                }
                Offset::Minimums => {
                    d * input_scale * products as f32
                        - f16_of(tile, 16, r) * input_scale * corrections as f32
                }
            };
        }
    }
    out
}

/// The SIMD kernel, with `P`'s byte products. For each sub-block of sixteen values, the tile's
/// values are unpacked into four vectors once, and each input's four four-byte pieces are
/// broadcast against them. Without VNNI, byte pair sums of two runs add up in 16 bits (at most
/// 2 · 2 · 63 · 127 = 32,004 for Q6_K's six bits), and one multiply-add each by the rows'
/// scales takes them to 32 bits; with VNNI, a sub-block's products go straight into 32-bit
/// sums, multiplied by the rows' scales. The offset comes off once per super-block, from the
/// input's sums of sixteen against the rows' scales (or minimums), also in integers, before
/// the float multiply-adds.
///
/// # Safety
/// The CPU has `P`'s features, and each input has 256 values, one scale (repeated per block of
/// 32) and sixteen sums of sixteen per tile.
#[cfg(avx2_kernels)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dot_simd<T: SixteenValueTiles, const N: usize, P: super::simd::BytePairs>(
    tiles: &[u8],
    inputs: [&QuantizedInput; N],
) -> [[f32; ROWS]; N] {
    use std::arch::x86_64::*;
    let mut totals = [_mm256_setzero_ps(); N];
    for (s, tile) in tiles.chunks_exact(T::TILE_BYTES).enumerate() {
        let tile = tile.as_ptr();
        let mut products = [_mm256_setzero_si256(); N];
        let mut corrections = [_mm256_setzero_si256(); N];
        for pair in 0..SUB_BLOCKS / 2 {
            // SAFETY: the caller's promise.
            let [pair_scales, offsets] = unsafe { T::pair_scales(tile, pair) };
            for (k, input) in inputs.iter().enumerate() {
                // SAFETY: the input has sixteen sums of sixteen per tile, two per pair.
                let sums = unsafe {
                    (input.half_sums.as_ptr().add(s * SUB_BLOCKS + 2 * pair) as *const i32)
                        .read_unaligned()
                };
                corrections[k] = _mm256_add_epi32(
                    corrections[k],
                    _mm256_madd_epi16(offsets, _mm256_set1_epi32(sums)),
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
                // SAFETY: the caller's promise.
                let weights = unsafe { T::values(tile, j) };
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
            let input_scale = _mm256_set1_ps(input.scale_sums[s * VALUES / 32][0]);
            totals[k] = match T::OFFSET {
                Offset::Fixed { shift } => {
                    let shift = _mm256_set1_epi32(shift as i32);
                    let total =
                        _mm256_sub_epi32(products[k], _mm256_sllv_epi32(corrections[k], shift));
                    _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(total),
                        _mm256_mul_ps(d, input_scale),
                        totals[k],
                    )
                }
                Offset::Minimums => {
                    // SAFETY: a tile with minimums has the rows' `dmin` in its next sixteen
                    // bytes.
                    let dmin =
                        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(tile.add(16) as *const __m128i)) };
                    let total = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(products[k]),
                        _mm256_mul_ps(d, input_scale),
                        totals[k],
                    );
                    _mm256_fnmadd_ps(
                        _mm256_cvtepi32_ps(corrections[k]),
                        _mm256_mul_ps(dmin, input_scale),
                        total,
                    )
                }
            };
        }
    }
    totals.map(|total| {
        let mut out = [0.0f32; ROWS];
        // SAFETY: `out` holds eight floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), total) };
        out
    })
}

/// The fastest form of the kernel for this build and CPU.
#[inline]
pub(super) fn dot<T: SixteenValueTiles, const N: usize>(
    tiles: &[u8],
    inputs: [&QuantizedInput; N],
) -> [[f32; ROWS]; N] {
    #[cfg(avx2_kernels)]
    return super::simd::with_byte_pairs!(P =>
        // SAFETY: the build targets AVX2, FMA and F16C, and `P` is this CPU's form; the
        // matrix checked that its inputs have as many values as its rows
        // (`QuantMatrix::matmul`).
        unsafe { dot_simd::<T, N, P>(tiles, inputs) }
    );
    #[cfg(not(avx2_kernels))]
    return inputs.map(|input| dot_scalar::<T>(tiles, input));
}
