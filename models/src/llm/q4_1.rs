//! Matrix-vector products on Q4_1 weights, for generation (one token per step).
//!
//! candle has no SIMD kernel for Q4_1, the format of SmolLM2's offline GGUF, and repacking it
//! into Q8_0 (which has one) makes every step read 1.7 times the bytes. Generation is bound by
//! memory bandwidth, so this module keeps the weights as the file stores them and does what
//! llama.cpp does: the input vector is quantized to 8 bits per block of 32 (with its scale and
//! its scaled sum), and each weight block contributes `d_w * d_x * Σ q_w q_x + m_w * s_x`.
//! Rows are shared out over candle's own spinning thread pool, the one its kernels use.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, Result};
use half::f16;

/// Weights (and input values) per block.
const BLOCK: usize = 32;
/// Bytes per Q4_1 block: scale `d` (f16), minimum `m` (f16), then 32 four-bit values, the
/// first 16 in the low nibbles and the last 16 in the high ones.
const BLOCK_BYTES: usize = 20;

/// A `rows × cols` Q4_1 matrix, row-major, each row `cols / 32` blocks.
pub(super) struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    blocks: Vec<u8>,
}

/// An input vector quantized to 8 bits per block: values, then per block its scale and its
/// scale × sum side by side (the kernel multiplies both by a block's `d` and `m` at once).
struct QuantizedInput {
    values: Vec<i8>,
    scale_sums: Vec<[f32; 2]>,
}

impl Q4_1Matrix {
    /// Takes a Q4_1 tensor's blocks as stored; `None` for any other format.
    pub(super) fn from_qtensor(tensor: &QTensor) -> Result<Option<Self>> {
        if tensor.dtype() != GgmlDType::Q4_1 {
            return Ok(None);
        }
        let (rows, cols) = tensor.shape().dims2()?;
        if cols % BLOCK != 0 {
            bail!("a Q4_1 row of {cols} values is not whole blocks");
        }
        let blocks = tensor.data()?.into_owned();
        if blocks.len() != rows * cols / BLOCK * BLOCK_BYTES {
            bail!(
                "a Q4_1 tensor of {rows}×{cols} holds {} bytes",
                blocks.len()
            );
        }
        Ok(Some(Self { rows, cols, blocks }))
    }

    /// Output values per input vector.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// `x · selfᵀ` for `x` holding vectors of `cols` values one after another: for each, the
    /// `rows` products. Each weight row is read once for all the vectors, so a few vectors
    /// (a short prompt) cost little more than one.
    pub(super) fn matmul(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(
            x.len() % self.cols,
            0,
            "the input does not match the matrix"
        );
        let inputs: Vec<QuantizedInput> = x.chunks_exact(self.cols).map(quantize_input).collect();
        let mut out = vec![0.0f32; inputs.len() * self.rows];
        let row_bytes = self.cols / BLOCK * BLOCK_BYTES;
        // Each weight row's outputs are written by one worker only.
        let out_ptr = out.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
            for row in range {
                let blocks = &self.blocks[row * row_bytes..(row + 1) * row_bytes];
                for (i, input) in inputs.iter().enumerate() {
                    let value = dot(blocks, input);
                    // SAFETY: `i * rows + row < out.len()`, and no other worker has this row.
                    unsafe { *(out_ptr as *mut f32).add(i * self.rows + row) = value };
                }
            }
        });
        out
    }
}

/// Quantizes `x` to 8 bits per block of 32, as llama.cpp's Q8_1 does.
fn quantize_input(x: &[f32]) -> QuantizedInput {
    let n_blocks = x.len() / BLOCK;
    let mut input = QuantizedInput {
        values: vec![0; x.len()],
        scale_sums: Vec::with_capacity(n_blocks),
    };
    for (block, values) in x
        .chunks_exact(BLOCK)
        .zip(input.values.chunks_exact_mut(BLOCK))
    {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in values.iter_mut().zip(block) {
            *q = (v * inverse).round() as i8;
            sum += *q as i32;
        }
        input.scale_sums.push([scale, scale * sum as f32]);
    }
    input
}

/// One row's blocks against the quantized input.
fn dot(blocks: &[u8], input: &QuantizedInput) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: the CPU has AVX2, FMA and F16C (compiled for them); the lengths match.
        unsafe { dot_avx2(blocks, input) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        dot_scalar(blocks, input)
    }
}

/// The portable kernel, and the reference the SIMD one is tested against.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ),
    allow(dead_code)
)]
fn dot_scalar(blocks: &[u8], input: &QuantizedInput) -> f32 {
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

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(blocks: &[u8], input: &QuantizedInput) -> f32 {
    use std::arch::x86_64::*;
    let low_nibbles = _mm_set1_epi8(0x0F);
    // Two accumulators each, for even and odd blocks: one chain of dependent adds would hold
    // every block up for the latency of the last.
    let mut scaled = [_mm256_setzero_ps(); 2];
    let mut offsets = [_mm_setzero_ps(); 2];
    for (b, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
        // SAFETY: a block is `d` and `m` (f16 each), then 16 bytes of values; the input has
        // 32 values and one scale pair per block.
        let (dm, scale_sum, packed, values) = unsafe {
            (
                _mm_cvtph_ps(_mm_cvtsi32_si128(
                    (block.as_ptr() as *const i32).read_unaligned(),
                )),
                _mm_castsi128_ps(_mm_loadl_epi64(
                    input.scale_sums.as_ptr().add(b) as *const __m128i
                )),
                _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i),
                _mm256_loadu_si256(input.values.as_ptr().add(b * BLOCK) as *const __m256i),
            )
        };
        // Lane 0: d × the input's scale; lane 1: m × the input's scaled sum.
        let factors = _mm_mul_ps(dm, scale_sum);
        let low = _mm_and_si128(packed, low_nibbles);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let products = dot_u4_i8(_mm256_set_m128i(high, low), values);
        let lane = b & 1;
        scaled[lane] = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(factors),
            _mm256_cvtepi32_ps(products),
            scaled[lane],
        );
        offsets[lane] = _mm_add_ps(offsets[lane], factors);
    }
    let scaled = _mm256_add_ps(scaled[0], scaled[1]);
    let halves = _mm_add_ps(
        _mm256_castps256_ps128(scaled),
        _mm256_extractf128_ps(scaled, 1),
    );
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    let single = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
    let offsets = _mm_add_ps(offsets[0], offsets[1]);
    _mm_cvtss_f32(single) + _mm_cvtss_f32(_mm_shuffle_ps(offsets, offsets, 1))
}

/// Sums of four products of unsigned 4-bit weights and signed 8-bit values, in eight i32
/// lanes: one VNNI instruction where the CPU has it.
#[cfg(all(target_arch = "x86_64", target_feature = "avxvnni"))]
#[target_feature(enable = "avx2,avxvnni")]
fn dot_u4_i8(
    weights: std::arch::x86_64::__m256i,
    values: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), weights, values)
}

/// The same on plain AVX2: pairs fit i16 (2 × 15 × 127), then i32 by fours.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    not(target_feature = "avxvnni")
))]
#[target_feature(enable = "avx2")]
fn dot_u4_i8(
    weights: std::arch::x86_64::__m256i,
    values: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_madd_epi16(_mm256_maddubs_epi16(weights, values), _mm256_set1_epi16(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A deterministic spread of values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matvec_matches_the_dequantized_product() {
        let (rows, cols) = (70, 576);
        let w = Tensor::from_vec(values(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let matrix = Q4_1Matrix::from_qtensor(&q).unwrap().unwrap();
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let x = values(cols, 2);
        let expected: Vec<f32> = Tensor::from_vec(x.clone(), (cols, 1), &Device::Cpu)
            .and_then(|x| dense.matmul(&x))
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1())
            .unwrap();
        let got = matrix.matmul(&x);
        assert_eq!(got.len(), rows);
        // Only the input's 8-bit quantization separates the two: well under 1 % of the scale.
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 0.01 * scale, "{g} against {e}");
        }
        // The SIMD kernel and the portable one agree to rounding.
        let input = quantize_input(&x);
        let row_bytes = cols / BLOCK * BLOCK_BYTES;
        for (row, g) in got.iter().enumerate() {
            let scalar = dot_scalar(
                &matrix.blocks[row * row_bytes..(row + 1) * row_bytes],
                &input,
            );
            assert!((g - scalar).abs() <= 1e-4 * scale, "{g} against {scalar}");
        }
    }

    #[test]
    fn several_vectors_give_each_its_own_products() {
        let (rows, cols) = (9, 64);
        let w = Tensor::from_vec(values(rows * cols, 4), (rows, cols), &Device::Cpu).unwrap();
        let matrix = Q4_1Matrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1).unwrap())
            .unwrap()
            .unwrap();
        let (a, b) = (values(cols, 5), values(cols, 6));
        let both = matrix.matmul(&[a.clone(), b.clone()].concat());
        assert_eq!(both, [matrix.matmul(&a), matrix.matmul(&b)].concat());
    }

    #[test]
    fn other_formats_are_left_to_candle() {
        let w = Tensor::from_vec(values(64, 3), (2, 32), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(Q4_1Matrix::from_qtensor(&q).unwrap().is_none());
    }
}
