//! Matrix-vector products on quantized weights kept as the GGUF stores them, for generation
//! (one token per step) and short prompts.
//!
//! Generation reads every weight once per token, so its speed is the speed of these loops.
//! candle has no SIMD kernel for Q4_1 (SmolLM2's offline format), and its Q8_0 one (the
//! output layer's) hands rows to rayon. Here, as llama.cpp does, the input vector is quantized
//! to 8 bits per block of 32 (with its scale and scaled sum), each format's kernel multiplies
//! blocks as integers, and rows are shared out over candle's own spinning thread pool.

mod q4_1;
mod q4_k;
mod q6_k;
mod q8_0;

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, Result};

/// Weights (and input values) per block.
const BLOCK: usize = 32;

/// One row's blocks against `N` quantized inputs: a format's kernel.
type Kernel<const N: usize> = fn(&[u8], [&QuantizedInput; N]) -> [f32; N];

/// Inputs a kernel takes at once when there are that many (prompt tokens): each block of a
/// row is unpacked once for all of them.
const GROUP: usize = 4;

/// The block formats with a kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// The portable kernel: the one where the build has no SIMD kernel, and the reference the
    /// SIMD ones are tested against.
    #[cfg_attr(
        all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ),
        allow(dead_code)
    )]
    fn scalar_kernel<const N: usize>(self) -> Kernel<N> {
        match self {
            Self::Q4_1 => |blocks, inputs| inputs.map(|input| q4_1::dot_scalar(blocks, input)),
            Self::Q8_0 => |blocks, inputs| inputs.map(|input| q8_0::dot_scalar(blocks, input)),
            Self::Q4K => |blocks, inputs| inputs.map(|input| q4_k::dot_scalar(blocks, input)),
            Self::Q6K => |blocks, inputs| inputs.map(|input| q6_k::dot_scalar(blocks, input)),
        }
    }

    /// The fastest kernel of this build (`target-cpu=native` picks the SIMD ones).
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    fn kernel<const N: usize>(self) -> Kernel<N> {
        match self {
            // SAFETY: the build targets AVX2, FMA and F16C, so the CPU has them; the row and
            // the inputs have the same number of blocks (`QuantMatrix::matmul`).
            Self::Q4_1 => |blocks, inputs| unsafe { q4_1::dot_avx2(blocks, inputs) },
            // SAFETY: as for Q4_1.
            Self::Q8_0 => |blocks, inputs| unsafe { q8_0::dot_avx2(blocks, inputs) },
            // SAFETY: as for Q4_1.
            Self::Q4K => |blocks, inputs| unsafe { q4_k::dot_avx2(blocks, inputs) },
            // SAFETY: as for Q4_1.
            Self::Q6K => |blocks, inputs| unsafe { q6_k::dot_avx2(blocks, inputs) },
        }
    }

    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    fn kernel<const N: usize>(self) -> Kernel<N> {
        self.scalar_kernel()
    }
}

/// A `rows × cols` quantized matrix, row-major, each row whole blocks. It reads the blocks
/// where the tensor holds them, so candle's kernels may share the one copy.
pub(super) struct QuantMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    tensor: Arc<QTensor>,
}

/// An input vector quantized to 8 bits per block: values, then per block its scale and its
/// scale × sum side by side (Q4_1 multiplies both by a block's `d` and `m` at once).
struct QuantizedInput {
    values: Vec<i8>,
    scale_sums: Vec<[f32; 2]>,
}

impl QuantMatrix {
    /// Takes a CPU tensor in a format with a kernel here; `None` for any other format.
    pub(super) fn from_qtensor(tensor: Arc<QTensor>) -> Result<Option<Self>> {
        let Some(format) = Format::of(tensor.dtype()) else {
            return Ok(None);
        };
        let (rows, cols) = tensor.shape().dims2()?;
        let dtype = tensor.dtype();
        if cols % dtype.block_size() != 0 {
            bail!("a {format:?} row of {cols} values is not whole blocks");
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let bytes = match tensor.data()? {
            Cow::Borrowed(blocks) => blocks.len(),
            Cow::Owned(_) => bail!("the kernels here read blocks in CPU memory only"),
        };
        if bytes != rows * row_bytes {
            bail!("a {format:?} tensor of {rows}×{cols} holds {bytes} bytes");
        }
        Ok(Some(Self {
            format,
            rows,
            cols,
            row_bytes,
            tensor,
        }))
    }

    /// The blocks, where the tensor holds them.
    fn blocks(&self) -> &[u8] {
        match self.tensor.data() {
            Ok(Cow::Borrowed(blocks)) => blocks,
            _ => unreachable!("checked to be borrowed CPU memory when made"),
        }
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
        let blocks = self.blocks();
        let mut out = vec![0.0f32; inputs.len() * self.rows];
        let row_bytes = self.row_bytes;
        let (one, group) = (self.format.kernel::<1>(), self.format.kernel::<GROUP>());
        let grouped = inputs.len() / GROUP * GROUP;
        // Each weight row's outputs are written by one worker only.
        let out_ptr = out.as_mut_ptr() as usize;
        let write = |i: usize, row: usize, value: f32| {
            // SAFETY: `i * rows + row < out.len()`, and no other worker has this row.
            unsafe { *(out_ptr as *mut f32).add(i * self.rows + row) = value };
        };
        candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
            for row in range {
                let blocks = &blocks[row * row_bytes..(row + 1) * row_bytes];
                for (g, inputs) in inputs[..grouped].chunks_exact(GROUP).enumerate() {
                    let values = group(blocks, std::array::from_fn(|k| &inputs[k]));
                    for (k, value) in values.into_iter().enumerate() {
                        write(g * GROUP + k, row, value);
                    }
                }
                for (i, input) in inputs.iter().enumerate().skip(grouped) {
                    write(i, row, one(blocks, [input])[0]);
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

/// The sum of a vector's eight lanes.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx2")]
fn sum_lanes(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
}

/// Sums of four products of unsigned and signed bytes, in eight i32 lanes: one VNNI
/// instruction where the CPU has it.
#[cfg(all(target_arch = "x86_64", target_feature = "avxvnni"))]
#[target_feature(enable = "avx2,avxvnni")]
fn dot_u8_i8(
    unsigned: std::arch::x86_64::__m256i,
    signed: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), unsigned, signed)
}

/// The same on plain AVX2, through i16 pairs: callers keep each pair's sum within i16 (four-bit
/// values, or magnitudes of i8, against i8).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    not(target_feature = "avxvnni")
))]
#[target_feature(enable = "avx2")]
fn dot_u8_i8(
    unsigned: std::arch::x86_64::__m256i,
    signed: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned, signed), _mm256_set1_epi16(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The formats with a kernel here.
    const FORMATS: [GgmlDType; 4] = [
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ];

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

    fn matrix(
        rows: usize,
        cols: usize,
        dtype: GgmlDType,
        seed: u32,
    ) -> (Arc<QTensor>, QuantMatrix) {
        let w = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let matrix = QuantMatrix::from_qtensor(q.clone()).unwrap().unwrap();
        (q, matrix)
    }

    #[test]
    fn products_match_the_dequantized_ones() {
        for dtype in FORMATS {
            let (rows, cols) = (70, 768);
            let (q, matrix) = matrix(rows, cols, dtype, 1);
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let x = values(cols, 2);
            let expected: Vec<f32> = Tensor::from_vec(x.clone(), (cols, 1), &Device::Cpu)
                .and_then(|x| dense.matmul(&x))
                .and_then(|y| y.flatten_all())
                .and_then(|y| y.to_vec1())
                .unwrap();
            let got = matrix.matmul(&x);
            assert_eq!(got.len(), rows);
            // Only the input's 8-bit quantization separates the two: under 1 % of the scale.
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() < 0.01 * scale, "{dtype:?}: {g} against {e}");
            }
            // The SIMD kernel and the portable one agree to rounding.
            let input = quantize_input(&x);
            let row_bytes = matrix.blocks().len() / rows;
            for (row, g) in got.iter().enumerate() {
                let blocks = &matrix.blocks()[row * row_bytes..(row + 1) * row_bytes];
                let [scalar] = matrix.format.scalar_kernel()(blocks, [&input]);
                assert!(
                    (g - scalar).abs() <= 1e-4 * scale,
                    "{dtype:?}: {g} against {scalar}"
                );
            }
        }
    }

    /// Six vectors take a group of four and two alone: each gets exactly the products it
    /// gets alone, so how a prompt is split never changes its logits.
    #[test]
    fn several_vectors_give_each_its_own_products() {
        for dtype in FORMATS {
            let cols = 512;
            let (_, matrix) = matrix(9, cols, dtype, 4);
            let vectors: Vec<Vec<f32>> = (5..11).map(|seed| values(cols, seed)).collect();
            let together = matrix.matmul(&vectors.concat());
            let alone: Vec<f32> = vectors.iter().flat_map(|v| matrix.matmul(v)).collect();
            assert_eq!(together, alone, "{dtype:?}");
        }
    }

    #[test]
    fn other_formats_are_left_to_candle() {
        let w = Tensor::from_vec(values(256, 3), (1, 256), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q5K).unwrap();
        assert!(QuantMatrix::from_qtensor(Arc::new(q)).unwrap().is_none());
    }
}
