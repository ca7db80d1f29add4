//! Matrix products on quantized weights: generation (one token per sequence per step), batches
//! of sequences, and prompts.
//!
//! Generation reads every weight once per token, so its speed is the speed of these loops;
//! prompts and batches multiply each weight by many inputs, so theirs is how well a weight
//! block, once unpacked, serves them. As llama.cpp does, the inputs are quantized to 8 bits per
//! block of 32 (with its scale and scaled sum), each format's kernel multiplies blocks as
//! integers, and rows are shared out over candle's own spinning thread pool.
//!
//! A matrix of whole groups of eight rows is re-laid at load into tiles of eight rows by one
//! block (`block32_x8` for the 32-weight formats, `q4_k_q5_k_x8` and `q6_k_x8` for the
//! k-quants), which replace the stored copy; one kernel per layout serves generation, prompts
//! and batches. Other matrices keep the GGUF's rows: the 32-weight formats share one kernel for
//! those (`block32`), Q4_K and Q6_K have one each.

mod block32;
mod block32_x8;
mod q2_k_q3_k_x8;
mod q4_0;
mod q4_1;
mod q4_k;
mod q4_k_q5_k_x8;
mod q5_0;
mod q5_1;
mod q6_k;
mod q6_k_x8;
mod q8_0;
#[cfg(avx2_kernels)]
mod simd;
mod sixteen_x8;

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{bail, Device, Result};

use block32::Block32;
use block32_x8::Block32Tiles;

/// Weights (and input values) per block.
const BLOCK: usize = 32;

/// `R` rows' blocks against `N` quantized inputs: a format's kernel.
type Kernel<const R: usize, const N: usize> = fn([&[u8]; R], [&QuantizedInput; N]) -> [[f32; N]; R];

/// Inputs a kernel takes at once when there are that many (prompt tokens, or sequences of a
/// batch): each block of a row is unpacked once for all of them.
const GROUP: usize = 4;

/// Rows a kernel takes at once for a group of inputs: each input block is loaded once for all
/// of them. Two keep a tile's accumulators (`2 × TILE_ROWS × GROUP`, plus their offsets)
/// within AVX-512's 32 registers.
const TILE_ROWS: usize = 2;

/// Rows of a k-quant tile ([`q4_k_q5_k_x8`], [`q6_k_x8`]).
const ROW_GROUP: usize = 8;

/// A k-quant laid out in tiles of [`ROW_GROUP`] rows, and its kernel.
trait EightRowTiles {
    /// One row group's tiles against `N` inputs: for each input, the group's products.
    fn dot<const N: usize>(tiles: &[u8], inputs: [&QuantizedInput; N]) -> [[f32; ROW_GROUP]; N];
}

/// Bytes of inputs a worker runs every row group of its share against before moving on to
/// the next inputs: small enough to stay in a core's L2 cache beside a row group's tiles. A
/// long prompt's inputs otherwise streamed from memory once per row group: Llama-1B Q8_0
/// prompts of 512 tokens ran at 0.8× the speed of those of 128.
const INPUT_BLOCK_BYTES: usize = 128 * 1024;

/// Rows a generation step hands a worker at once (its pool hands out several at a time).
const RUN_ROWS: usize = 16;

/// The SIMD form the kernels run in on this CPU: `avx512-vnni`, `avx-vnni` or `avx2` (picked at
/// run time), or `portable` where the build targets no SIMD level they have a form for.
pub(super) fn kernel_level() -> &'static str {
    #[cfg(avx2_kernels)]
    return match simd::level() {
        simd::Level::Avx512 => "avx512-vnni",
        simd::Level::AvxVnni => "avx-vnni",
        simd::Level::Avx2 => "avx2",
    };
    #[cfg(not(avx2_kernels))]
    return "portable";
}

/// The block formats with a kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q5_1 => Some(Self::Q5_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Input values per scale: the k-quants' AVX2 kernels keep a super-block's products
    /// integers, which takes one input scale per super-block.
    fn input_span(self) -> usize {
        match self {
            Self::Q4K | Self::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// The portable kernel: the one where the build has no SIMD kernel, and the reference the
    /// SIMD ones are tested against.
    #[cfg_attr(avx2_kernels, allow(dead_code))]
    fn scalar_kernel<const R: usize, const N: usize>(self) -> Kernel<R, N> {
        fn each<const R: usize, const N: usize>(
            rows: [&[u8]; R],
            inputs: [&QuantizedInput; N],
            dot: fn(&[u8], &QuantizedInput) -> f32,
        ) -> [[f32; N]; R] {
            rows.map(|row| inputs.map(|input| dot(row, input)))
        }
        match self {
            Self::Q4_0 => |rows, inputs| each(rows, inputs, block32::dot_scalar::<q4_0::Q4_0>),
            Self::Q4_1 => |rows, inputs| each(rows, inputs, block32::dot_scalar::<q4_1::Q4_1>),
            Self::Q5_0 => |rows, inputs| each(rows, inputs, block32::dot_scalar::<q5_0::Q5_0>),
            Self::Q5_1 => |rows, inputs| each(rows, inputs, block32::dot_scalar::<q5_1::Q5_1>),
            Self::Q8_0 => |rows, inputs| each(rows, inputs, block32::dot_scalar::<q8_0::Q8_0>),
            Self::Q4K => |rows, inputs| each(rows, inputs, q4_k::dot_scalar),
            Self::Q6K => |rows, inputs| each(rows, inputs, q6_k::dot_scalar),
        }
    }

    /// The fastest kernel of this build and CPU (the SIMD ones where the build targets AVX2).
    #[cfg(avx2_kernels)]
    fn kernel<const R: usize, const N: usize>(self) -> Kernel<R, N> {
        match self {
            Self::Q4_0 => tiled::<q4_0::Q4_0, R, N>,
            Self::Q4_1 => tiled::<q4_1::Q4_1, R, N>,
            Self::Q5_0 => tiled::<q5_0::Q5_0, R, N>,
            Self::Q5_1 => tiled::<q5_1::Q5_1, R, N>,
            Self::Q8_0 => tiled::<q8_0::Q8_0, R, N>,
            Self::Q4K => q4_k_rows::<R, N>,
            Self::Q6K => q6_k_rows::<R, N>,
        }
    }

    #[cfg(not(avx2_kernels))]
    fn kernel<const R: usize, const N: usize>(self) -> Kernel<R, N> {
        self.scalar_kernel()
    }

    /// Generation's product: a run of consecutive rows against one input, in one call. The
    /// kernel is called directly inside the loop (inlined), not through a pointer per row,
    /// and writes its value straight out: short rows (Qwen's 896 values) spent a tenth of a
    /// step on those calls.
    #[cfg(avx2_kernels)]
    fn run_kernel(self) -> RunKernel {
        match self {
            Self::Q4_0 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, tiled::<q4_0::Q4_0, 1, 1>)
            },
            Self::Q4_1 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, tiled::<q4_1::Q4_1, 1, 1>)
            },
            Self::Q5_0 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, tiled::<q5_0::Q5_0, 1, 1>)
            },
            Self::Q5_1 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, tiled::<q5_1::Q5_1, 1, 1>)
            },
            Self::Q8_0 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, tiled::<q8_0::Q8_0, 1, 1>)
            },
            Self::Q4K => {
                |run, row_bytes, input, out| each_row(run, row_bytes, input, out, q4_k_rows::<1, 1>)
            }
            Self::Q6K => {
                |run, row_bytes, input, out| each_row(run, row_bytes, input, out, q6_k_rows::<1, 1>)
            }
        }
    }

    #[cfg(not(avx2_kernels))]
    fn run_kernel(self) -> RunKernel {
        match self {
            Self::Q4_0 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, Self::Q4_0.scalar_kernel())
            },
            Self::Q4_1 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, Self::Q4_1.scalar_kernel())
            },
            Self::Q5_0 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, Self::Q5_0.scalar_kernel())
            },
            Self::Q5_1 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, Self::Q5_1.scalar_kernel())
            },
            Self::Q8_0 => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, Self::Q8_0.scalar_kernel())
            },
            Self::Q4K => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, Self::Q4K.scalar_kernel())
            },
            Self::Q6K => |run, row_bytes, input, out| {
                each_row(run, row_bytes, input, out, Self::Q6K.scalar_kernel())
            },
        }
    }
}

/// A run of consecutive rows (`row_bytes` each) against one input, into `out` (one value per
/// row): a format's generation kernel.
type RunKernel = fn(&[u8], usize, &QuantizedInput, &mut [f32]);

/// Each row of `run` against `input` with `kernel`, which, being a type of its own rather than
/// a pointer, is inlined into the loop.
#[inline(always)]
fn each_row(
    run: &[u8],
    row_bytes: usize,
    input: &QuantizedInput,
    out: &mut [f32],
    kernel: impl Fn([&[u8]; 1], [&QuantizedInput; 1]) -> [[f32; 1]; 1],
) {
    for (row, out) in run.chunks_exact(row_bytes).zip(out) {
        *out = kernel([row], [input])[0][0];
    }
}

/// The 32-weight formats' tiled kernel for `F`.
#[cfg(avx2_kernels)]
#[inline]
fn tiled<F: Block32, const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&QuantizedInput; N],
) -> [[f32; N]; R] {
    if simd::level() == simd::Level::Avx512 {
        // SAFETY: the CPU has AVX-512 (F, BW, VL, VNNI) (`simd::level`) and the build AVX2, FMA
        // and F16C; the rows and the inputs have the same number of blocks
        // (`QuantMatrix::matmul`).
        unsafe { block32::dot_avx512::<F, R, N>(rows, inputs) }
    } else {
        // SAFETY: the build targets AVX2, FMA and F16C; blocks as above.
        unsafe { block32::dot_avx2::<F, R, N>(rows, inputs) }
    }
}

/// Q4_K's kernel, a row at a time.
#[cfg(avx2_kernels)]
#[inline]
fn q4_k_rows<const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&QuantizedInput; N],
) -> [[f32; N]; R] {
    if simd::level() == simd::Level::Avx512 {
        // SAFETY: as for the tiled kernels.
        rows.map(|row| unsafe { q4_k::dot_avx512(row, inputs) })
    } else {
        // SAFETY: as for the tiled kernels.
        rows.map(|row| unsafe { q4_k::dot_avx2(row, inputs) })
    }
}

/// Q6_K's kernel, a row at a time.
#[cfg(avx2_kernels)]
#[inline]
fn q6_k_rows<const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&QuantizedInput; N],
) -> [[f32; N]; R] {
    if simd::level() == simd::Level::Avx512 {
        // SAFETY: as for the tiled kernels.
        rows.map(|row| unsafe { q6_k::dot_avx512(row, inputs) })
    } else {
        // SAFETY: as for the tiled kernels.
        rows.map(|row| unsafe { q6_k::dot_avx2(row, inputs) })
    }
}

/// A `rows × cols` quantized matrix, each row whole blocks.
pub(super) struct QuantMatrix {
    rows: usize,
    cols: usize,
    row_bytes: usize,
    blocks: Blocks,
}

/// Where a matrix's blocks are.
enum Blocks {
    /// As the GGUF stores them, row after row, in the tensor (which candle's kernels may
    /// share).
    Rows {
        format: Format,
        tensor: Arc<QTensor>,
    },
    /// Q4_K re-laid eight rows to a tile ([`q4_k_q5_k_x8`]); the stored copy is dropped.
    Q4KTiles(Vec<u8>),
    /// Q5_K likewise ([`q4_k_q5_k_x8`]).
    Q5KTiles(Vec<u8>),
    /// Q6_K likewise ([`q6_k_x8`]).
    Q6KTiles(Vec<u8>),
    /// Q2_K likewise ([`q2_k_q3_k_x8`]).
    Q2KTiles(Vec<u8>),
    /// Q3_K likewise ([`q2_k_q3_k_x8`]).
    Q3KTiles(Vec<u8>),
    /// A 32-weight format likewise ([`block32_x8`]), with its functions.
    Block32Tiles {
        format: Format,
        tiles: Vec<u8>,
        functions: Block32TileFunctions,
    },
}

/// A 32-weight format's tile functions, picked once when its matrix is made.
struct Block32TileFunctions {
    matmul: fn(&QuantMatrix, &[u8], &[QuantizedInput]) -> Vec<f32>,
    row_values: fn(&[u8], usize, &mut Vec<f32>),
}

impl Block32TileFunctions {
    /// `F`'s tiles from `rows` stored rows of `row_bytes`, and their functions.
    fn interleave<F: Block32>(blocks: &[u8], rows: usize, row_bytes: usize) -> (Vec<u8>, Self) {
        let functions = Self {
            matmul: QuantMatrix::tiles_matmul::<Block32Tiles<F>>,
            row_values: block32_x8::row_values::<F>,
        };
        (
            block32_x8::interleave::<F>(blocks, rows, row_bytes),
            functions,
        )
    }
}

/// An input vector quantized to 8 bits per block: values, then per block its scale and its
/// scale × sum side by side (Q4_1 multiplies both by a block's `d` and `m` at once), and its
/// sum as an integer, and its halves' (the k-quants' tiles keep their offsets' terms
/// integer).
struct QuantizedInput {
    values: Vec<i8>,
    scale_sums: Vec<[f32; 2]>,
    sums: Vec<i16>,
    half_sums: Vec<i16>,
}

impl QuantMatrix {
    /// Takes a CPU tensor in a format with a kernel here; `None` for any other format.
    /// Matrices of whole groups of eight rows are re-laid into tiles, and no longer hold the
    /// tensor (Q2_K, Q3_K and Q5_K have no kernel for stored rows).
    pub(super) fn from_qtensor(tensor: Arc<QTensor>) -> Result<Option<Self>> {
        let dtype = tensor.dtype();
        let format = Format::of(dtype);
        let tiles_only = matches!(dtype, GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q5K);
        if format.is_none() && !tiles_only {
            return Ok(None);
        }
        let (rows, cols) = tensor.shape().dims2()?;
        let tiles = rows % ROW_GROUP == 0;
        if format.is_none() && !tiles {
            return Ok(None);
        }
        if cols % dtype.block_size() != 0 {
            bail!("a {dtype:?} row of {cols} values is not whole blocks");
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let bytes = match tensor.data()? {
            Cow::Borrowed(blocks) => blocks.len(),
            Cow::Owned(_) => bail!("the kernels here read blocks in CPU memory only"),
        };
        if bytes != rows * row_bytes {
            bail!("a {dtype:?} tensor of {rows}×{cols} holds {bytes} bytes");
        }
        let stored = Self::stored(&tensor);
        let blocks = match (dtype, format) {
            (GgmlDType::Q4K, _) if tiles => {
                Blocks::Q4KTiles(q4_k_q5_k_x8::interleave(stored, rows, row_bytes, false))
            }
            (GgmlDType::Q5K, _) if tiles => {
                Blocks::Q5KTiles(q4_k_q5_k_x8::interleave(stored, rows, row_bytes, true))
            }
            (GgmlDType::Q6K, _) if tiles => {
                Blocks::Q6KTiles(q6_k_x8::interleave(stored, rows, row_bytes))
            }
            (GgmlDType::Q2K, _) => {
                Blocks::Q2KTiles(q2_k_q3_k_x8::interleave(stored, rows, row_bytes, false))
            }
            (GgmlDType::Q3K, _) => {
                Blocks::Q3KTiles(q2_k_q3_k_x8::interleave(stored, rows, row_bytes, true))
            }
            (_, Some(format)) if tiles => {
                let interleave = match format {
                    Format::Q4_0 => Block32TileFunctions::interleave::<q4_0::Q4_0>,
                    Format::Q4_1 => Block32TileFunctions::interleave::<q4_1::Q4_1>,
                    Format::Q5_0 => Block32TileFunctions::interleave::<q5_0::Q5_0>,
                    Format::Q5_1 => Block32TileFunctions::interleave::<q5_1::Q5_1>,
                    Format::Q8_0 => Block32TileFunctions::interleave::<q8_0::Q8_0>,
                    Format::Q4K | Format::Q6K => unreachable!("the k-quants' tiles are above"),
                };
                let (tiles, functions) = interleave(stored, rows, row_bytes);
                Blocks::Block32Tiles {
                    format,
                    tiles,
                    functions,
                }
            }
            (_, Some(format)) => Blocks::Rows { format, tensor },
            (_, None) => unreachable!("formats with no kernel for rows returned above"),
        };
        Ok(Some(Self {
            rows,
            cols,
            row_bytes,
            blocks,
        }))
    }

    /// The blocks of a tensor checked to hold them in CPU memory.
    fn stored(tensor: &QTensor) -> &[u8] {
        match tensor.data() {
            Ok(Cow::Borrowed(blocks)) => blocks,
            _ => unreachable!("checked to be borrowed CPU memory when made"),
        }
    }

    /// The blocks, in their layout.
    #[cfg(test)]
    fn blocks(&self) -> &[u8] {
        match &self.blocks {
            Blocks::Rows { tensor, .. } => Self::stored(tensor),
            Blocks::Q4KTiles(tiles)
            | Blocks::Q5KTiles(tiles)
            | Blocks::Q6KTiles(tiles)
            | Blocks::Q2KTiles(tiles)
            | Blocks::Q3KTiles(tiles)
            | Blocks::Block32Tiles { tiles, .. } => tiles,
        }
    }

    /// Whether the blocks were re-laid (and the tensor dropped).
    pub(super) fn relaid(&self) -> bool {
        !matches!(self.blocks, Blocks::Rows { .. })
    }

    /// Row `row`, dequantized: a token's embedding, where the output layer shares the
    /// token-embedding table.
    pub(super) fn row_values(&self, row: usize) -> Result<Vec<f32>> {
        if row >= self.rows {
            bail!("row {row} is outside a matrix of {} rows", self.rows);
        }
        let mut out = Vec::with_capacity(self.cols);
        match &self.blocks {
            Blocks::Rows { tensor, .. } => return stored_row_values(tensor, row),
            Blocks::Q4KTiles(tiles) => q4_k_q5_k_x8::row_values(
                self.row_group(tiles, row),
                row % ROW_GROUP,
                false,
                &mut out,
            ),
            Blocks::Q5KTiles(tiles) => q4_k_q5_k_x8::row_values(
                self.row_group(tiles, row),
                row % ROW_GROUP,
                true,
                &mut out,
            ),
            Blocks::Q6KTiles(tiles) => sixteen_x8::row_values::<q6_k_x8::Q6KTiles>(
                self.row_group(tiles, row),
                row % ROW_GROUP,
                &mut out,
            ),
            Blocks::Q2KTiles(tiles) => sixteen_x8::row_values::<q2_k_q3_k_x8::Q2KTiles>(
                self.row_group(tiles, row),
                row % ROW_GROUP,
                &mut out,
            ),
            Blocks::Q3KTiles(tiles) => sixteen_x8::row_values::<q2_k_q3_k_x8::Q3KTiles>(
                self.row_group(tiles, row),
                row % ROW_GROUP,
                &mut out,
            ),
            Blocks::Block32Tiles {
                tiles, functions, ..
            } => (functions.row_values)(self.row_group(tiles, row), row % ROW_GROUP, &mut out),
        }
        Ok(out)
    }

    /// The tiles of the row group that holds `row`.
    fn row_group<'a>(&self, tiles: &'a [u8], row: usize) -> &'a [u8] {
        let group_bytes = tiles.len() / (self.rows / ROW_GROUP);
        let group = row / ROW_GROUP;
        &tiles[group * group_bytes..(group + 1) * group_bytes]
    }

    /// Whether prompts and batches have a kernel here that takes each weight block once for
    /// several inputs: every layout but stored Q4_K and Q6_K rows, whose kernel goes a row at
    /// a time, slower for prompts than candle's repacked tiles.
    pub(super) fn tiled(&self) -> bool {
        !matches!(
            self.blocks,
            Blocks::Rows {
                format: Format::Q4K | Format::Q6K,
                ..
            }
        )
    }

    /// Input values per scale (see [`Format::input_span`]); the k-quants' tiles take one
    /// scale per super-block.
    fn input_span(&self) -> usize {
        match &self.blocks {
            Blocks::Rows { format, .. } | Blocks::Block32Tiles { format, .. } => {
                format.input_span()
            }
            _ => 256,
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
        let span = self.input_span();
        let inputs: Vec<QuantizedInput> = x
            .chunks_exact(self.cols)
            .map(|x| quantize_input(x, span))
            .collect();
        let (format, blocks) = match &self.blocks {
            Blocks::Q4KTiles(tiles) => {
                return self.tiles_matmul::<q4_k_q5_k_x8::Q4KTiles>(tiles, &inputs)
            }
            Blocks::Q5KTiles(tiles) => {
                return self.tiles_matmul::<q4_k_q5_k_x8::Q5KTiles>(tiles, &inputs)
            }
            Blocks::Q6KTiles(tiles) => {
                return self.tiles_matmul::<q6_k_x8::Q6KTiles>(tiles, &inputs)
            }
            Blocks::Q2KTiles(tiles) => {
                return self.tiles_matmul::<q2_k_q3_k_x8::Q2KTiles>(tiles, &inputs)
            }
            Blocks::Q3KTiles(tiles) => {
                return self.tiles_matmul::<q2_k_q3_k_x8::Q3KTiles>(tiles, &inputs)
            }
            Blocks::Block32Tiles {
                tiles, functions, ..
            } => return (functions.matmul)(self, tiles, &inputs),
            Blocks::Rows { format, tensor } => (*format, Self::stored(tensor)),
        };
        let mut out = vec![0.0f32; inputs.len() * self.rows];
        let row_bytes = self.row_bytes;
        let row = |i: usize| &blocks[i * row_bytes..(i + 1) * row_bytes];
        let (tile_one, tile_group) = (
            format.kernel::<TILE_ROWS, 1>(),
            format.kernel::<TILE_ROWS, GROUP>(),
        );
        let (one, group) = (format.kernel::<1, 1>(), format.kernel::<1, GROUP>());
        // Each weight row's outputs are written by one worker only.
        let out_ptr = out.as_mut_ptr() as usize;
        let write = |i: usize, row: usize, value: f32| {
            // SAFETY: `i * rows + row < out.len()`, and no other worker has this row.
            unsafe { *(out_ptr as *mut f32).add(i * self.rows + row) = value };
        };
        if let [input] = inputs.as_slice() {
            // Generation: runs of rows streamed from memory one row at a time (the hardware
            // prefetches one stream better than two interleaved), a run per grab of a worker.
            let run_kernel = format.run_kernel();
            let runs = self.rows.div_ceil(RUN_ROWS);
            candle_core::utils::barrier_pool().execute_chunked(runs, |range| {
                let rows = range.start * RUN_ROWS..self.rows.min(range.end * RUN_ROWS);
                // SAFETY: these rows' outputs are written by this worker only, and lie inside
                // `out` (`rows.end <= self.rows`, the one input's outputs).
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add(rows.start),
                        rows.len(),
                    )
                };
                run_kernel(
                    &blocks[rows.start * row_bytes..rows.end * row_bytes],
                    row_bytes,
                    input,
                    out,
                );
            });
            return out;
        }
        let tile_rows = if inputs.len() >= GROUP { TILE_ROWS } else { 1 };
        let tiles = self.rows.div_ceil(tile_rows);
        candle_core::utils::barrier_pool().execute_chunked(tiles, |range| {
            for tile in range {
                let first = tile * tile_rows;
                if tile_rows == TILE_ROWS && first + TILE_ROWS <= self.rows {
                    let rows = std::array::from_fn(|r| row(first + r));
                    rows_against_inputs(rows, &inputs, tile_group, tile_one, |i, r, value| {
                        write(i, first + r, value)
                    });
                } else {
                    for r in first..self.rows.min(first + tile_rows) {
                        rows_against_inputs([row(r)], &inputs, group, one, |i, _, value| {
                            write(i, r, value)
                        });
                    }
                }
            }
        });
        out
    }

    /// [`matmul`](Self::matmul) on k-quant tiles: a worker takes a group of eight rows
    /// against every input, four inputs at a time, then the rest one by one (each input's
    /// sums are added in the same order either way).
    fn tiles_matmul<T: EightRowTiles>(&self, tiles: &[u8], inputs: &[QuantizedInput]) -> Vec<f32> {
        const ROWS: usize = ROW_GROUP;
        let groups = self.rows / ROWS;
        let mut out = vec![0.0f32; inputs.len() * self.rows];
        let out_ptr = out.as_mut_ptr() as usize;
        let block_inputs = (INPUT_BLOCK_BYTES / self.cols).max(GROUP) / GROUP * GROUP;
        candle_core::utils::barrier_pool().execute_chunked(groups, |range| {
            for (b, block) in inputs.chunks(block_inputs).enumerate() {
                let first = b * block_inputs;
                let grouped = block.len() / GROUP * GROUP;
                for group in range.clone() {
                    let tiles = self.row_group(tiles, group * ROWS);
                    let write = |i: usize, values: [f32; ROWS]| {
                        // SAFETY: input `i`'s outputs for this group's rows lie inside `out`
                        // (`i < inputs.len()`, `(group + 1) * ROWS <= rows`), and no other
                        // worker has this group.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                values.as_ptr(),
                                (out_ptr as *mut f32).add(i * self.rows + group * ROWS),
                                ROWS,
                            )
                        }
                    };
                    for (g, four) in block[..grouped].chunks_exact(GROUP).enumerate() {
                        let values = T::dot::<GROUP>(tiles, std::array::from_fn(|k| &four[k]));
                        for (k, values) in values.into_iter().enumerate() {
                            write(first + g * GROUP + k, values);
                        }
                    }
                    for (i, input) in block.iter().enumerate().skip(grouped) {
                        let [values] = T::dot::<1>(tiles, [input]);
                        write(first + i, values);
                    }
                }
            }
        });
        out
    }
}

/// Re-lays `rows` (a multiple of [`ROW_GROUP`]) stored rows of `row_bytes`, blocks of
/// `block_bytes`, into tiles of `tile_bytes`, one per group of eight rows and block, a row
/// group's after another: `fill(tile, r, block)` puts row `r`'s block into its tile.
fn interleave_rows(
    blocks: &[u8],
    rows: usize,
    row_bytes: usize,
    block_bytes: usize,
    tile_bytes: usize,
    mut fill: impl FnMut(&mut [u8], usize, &[u8]),
) -> Vec<u8> {
    let per_row = row_bytes / block_bytes;
    let mut tiles = vec![0u8; rows / ROW_GROUP * per_row * tile_bytes];
    for (group, group_tiles) in tiles.chunks_exact_mut(per_row * tile_bytes).enumerate() {
        for (b, tile) in group_tiles.chunks_exact_mut(tile_bytes).enumerate() {
            for r in 0..ROW_GROUP {
                let start = (group * ROW_GROUP + r) * row_bytes + b * block_bytes;
                fill(tile, r, &blocks[start..start + block_bytes]);
            }
        }
    }
    tiles
}

/// Row `row` of a 2-D quantized tensor in any format, dequantized.
pub(super) fn stored_row_values(tensor: &QTensor, row: usize) -> Result<Vec<f32>> {
    let (rows, cols) = tensor.shape().dims2()?;
    if row >= rows {
        bail!("row {row} is outside a matrix of {rows} rows");
    }
    let dtype = tensor.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = tensor.data()?;
    let bytes = &data[row * row_bytes..(row + 1) * row_bytes];
    qtensor_from_ggml(dtype, bytes, vec![1, cols], &Device::Cpu)?
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()
}

/// `R` rows against every input: groups of `GROUP` inputs, then the rest one by one;
/// `write(input, row of the R, value)`.
fn rows_against_inputs<const R: usize>(
    rows: [&[u8]; R],
    inputs: &[QuantizedInput],
    group: Kernel<R, GROUP>,
    one: Kernel<R, 1>,
    mut write: impl FnMut(usize, usize, f32),
) {
    let grouped = inputs.len() / GROUP * GROUP;
    for (g, group_inputs) in inputs[..grouped].chunks_exact(GROUP).enumerate() {
        let values = group(rows, std::array::from_fn(|k| &group_inputs[k]));
        for (r, values) in values.into_iter().enumerate() {
            for (k, value) in values.into_iter().enumerate() {
                write(g * GROUP + k, r, value);
            }
        }
    }
    for (i, input) in inputs.iter().enumerate().skip(grouped) {
        for (r, [value]) in one(rows, [input]).into_iter().enumerate() {
            write(i, r, value);
        }
    }
}

/// Quantizes `x` to 8 bits with one scale per `span` values (32, as llama.cpp's Q8_1, or a
/// k-quant super-block's 256, as its Q8_K), and per block of 32 that scale and its scaled sum.
fn quantize_input(x: &[f32], span: usize) -> QuantizedInput {
    let n_blocks = x.len() / BLOCK;
    let mut input = QuantizedInput {
        values: vec![0; x.len()],
        scale_sums: Vec::with_capacity(n_blocks),
        sums: Vec::with_capacity(n_blocks),
        half_sums: Vec::with_capacity(2 * n_blocks),
    };
    for (span, values) in x
        .chunks_exact(span)
        .zip(input.values.chunks_exact_mut(span))
    {
        let max = span.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (block, values) in span.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK)) {
            let mut halves = [0i32; 2];
            for (i, (q, v)) in values.iter_mut().zip(block).enumerate() {
                *q = (v * inverse).round() as i8;
                halves[i / (BLOCK / 2)] += *q as i32;
            }
            let sum = halves[0] + halves[1];
            // At most 16 · 127 in magnitude.
            input.half_sums.extend(halves.map(|half| half as i16));
            input.scale_sums.push([scale, scale * sum as f32]);
            // At most 32 · 127 in magnitude.
            input.sums.push(sum as i16);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The formats with a kernel here.
    const FORMATS: [GgmlDType; 7] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ];

    /// The formats with a kernel for tiles only.
    const TILES_ONLY: [GgmlDType; 3] = [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q5K];

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

    /// Runs `check` at each SIMD level this CPU has (once where the build has no SIMD kernel).
    fn at_each_level(check: impl Fn()) {
        #[cfg(avx2_kernels)]
        simd::at_each_level(|level| {
            eprintln!("at {level:?}");
            check()
        });
        #[cfg(not(avx2_kernels))]
        check();
    }

    /// The format of a matrix kept in stored rows.
    fn row_format(matrix: &QuantMatrix) -> Format {
        match &matrix.blocks {
            Blocks::Rows { format, .. } => *format,
            _ => panic!("the matrix was re-laid"),
        }
    }

    #[test]
    fn products_match_the_dequantized_ones() {
        at_each_level(|| {
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
                let input = quantize_input(&x, matrix.input_span());
                let row_bytes = matrix.blocks().len() / rows;
                for (row, g) in got.iter().enumerate() {
                    let blocks = &matrix.blocks()[row * row_bytes..(row + 1) * row_bytes];
                    let [[scalar]] = row_format(&matrix).scalar_kernel()([blocks], [&input]);
                    assert!(
                        (g - scalar).abs() <= 1e-4 * scale,
                        "{dtype:?}: {g} against {scalar}"
                    );
                }
            }
        });
    }

    /// Six vectors take a group of four and two alone, and nine rows four tiles and one
    /// alone: each vector gets exactly the products it gets alone, so how a prompt is split,
    /// or what else runs in a batch, never changes its logits.
    #[test]
    fn several_vectors_give_each_its_own_products() {
        at_each_level(|| {
            for dtype in FORMATS {
                let cols = 512;
                let (_, matrix) = matrix(9, cols, dtype, 4);
                let vectors: Vec<Vec<f32>> = (5..11).map(|seed| values(cols, seed)).collect();
                let together = matrix.matmul(&vectors.concat());
                let alone: Vec<f32> = vectors.iter().flat_map(|v| matrix.matmul(v)).collect();
                assert_eq!(together, alone, "{dtype:?}");
            }
        });
    }

    /// On AVX-512 CPUs, the AVX-512 tile and the AVX2 one give the same bits, for odd and even
    /// numbers of blocks, alone and in tiles.
    #[cfg(avx2_kernels)]
    #[test]
    fn the_avx512_tile_equals_the_avx2_one() {
        if !std::arch::is_x86_feature_detected!("avx512vnni") {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        fn both<F: block32::Block32>(rows: [&[u8]; 2], inputs: [&QuantizedInput; 4]) {
            // SAFETY: the CPU has these features; rows and inputs have the same blocks.
            let (wide, narrow) = unsafe {
                (
                    block32::dot_avx512::<F, 2, 4>(rows, inputs),
                    block32::dot_avx2::<F, 2, 4>(rows, inputs),
                )
            };
            assert_eq!(wide, narrow);
            // SAFETY: as above.
            let (wide, narrow) = unsafe {
                (
                    block32::dot_avx512::<F, 1, 1>([rows[1]], [inputs[2]]),
                    block32::dot_avx2::<F, 1, 1>([rows[1]], [inputs[2]]),
                )
            };
            assert_eq!(wide, narrow);
        }
        for cols in [7 * BLOCK, 8 * BLOCK] {
            for dtype in &FORMATS[..5] {
                let (_, matrix) = matrix(2, cols, *dtype, 9);
                let inputs: Vec<QuantizedInput> = (20..24)
                    .map(|seed| quantize_input(&values(cols, seed), BLOCK))
                    .collect();
                let rows = [0, 1]
                    .map(|r| &matrix.blocks()[r * matrix.row_bytes..(r + 1) * matrix.row_bytes]);
                let inputs = std::array::from_fn(|k| &inputs[k]);
                match row_format(&matrix) {
                    Format::Q4_0 => both::<q4_0::Q4_0>(rows, inputs),
                    Format::Q4_1 => both::<q4_1::Q4_1>(rows, inputs),
                    Format::Q5_0 => both::<q5_0::Q5_0>(rows, inputs),
                    Format::Q5_1 => both::<q5_1::Q5_1>(rows, inputs),
                    Format::Q8_0 => both::<q8_0::Q8_0>(rows, inputs),
                    other => unreachable!("{other:?} is not a 32-weight format"),
                }
            }
        }
    }

    /// The same for the k-quants, to rounding: their AVX2 kernels scale sums per super-block
    /// (in integers before that), the AVX-512 ones per block of 32.
    #[cfg(avx2_kernels)]
    #[test]
    fn the_avx512_k_quant_kernels_agree_with_the_avx2_ones() {
        if !std::arch::is_x86_feature_detected!("avx512vnni") {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let cols = 3 * 256;
        let inputs: Vec<QuantizedInput> = (30..34)
            .map(|seed| quantize_input(&values(cols, seed), 256))
            .collect();
        let inputs: [&QuantizedInput; 4] = std::array::from_fn(|k| &inputs[k]);
        let (_, q4k) = matrix(1, cols, GgmlDType::Q4K, 11);
        let (_, q6k) = matrix(1, cols, GgmlDType::Q6K, 12);
        // SAFETY: the CPU has these features; the rows and the inputs have the same blocks.
        unsafe {
            let (wide, narrow) = (
                q4_k::dot_avx512(q4k.blocks(), inputs),
                q4_k::dot_avx2(q4k.blocks(), inputs),
            );
            let largest = narrow.iter().fold(1.0f32, |m, n| m.max(n.abs()));
            for (w, n) in wide.iter().zip(narrow) {
                assert!((w - n).abs() <= 1e-4 * largest, "{w} against {n}");
            }
            let (wide, narrow) = (
                q6_k::dot_avx512(q6k.blocks(), inputs),
                q6_k::dot_avx2(q6k.blocks(), inputs),
            );
            let largest = narrow.iter().fold(1.0f32, |m, n| m.max(n.abs()));
            for (w, n) in wide.iter().zip(narrow) {
                assert!((w - n).abs() <= 1e-4 * largest, "{w} against {n}");
            }
        }
    }

    /// Matrices of whole groups of eight rows are re-laid into tiles; their products match
    /// the dequantized ones, the stored-row kernel's (every format with one), and the portable
    /// tile kernel's, and six vectors together get each its own products.
    #[test]
    fn tiles_match_the_stored_rows() {
        at_each_level(|| {
            type Scalar = fn(&[u8], &QuantizedInput) -> [f32; ROW_GROUP];
            let formats: [(GgmlDType, Scalar); 10] = [
                (GgmlDType::Q4_0, block32_x8::dot_scalar::<q4_0::Q4_0>),
                (GgmlDType::Q4_1, block32_x8::dot_scalar::<q4_1::Q4_1>),
                (GgmlDType::Q5_0, block32_x8::dot_scalar::<q5_0::Q5_0>),
                (GgmlDType::Q5_1, block32_x8::dot_scalar::<q5_1::Q5_1>),
                (GgmlDType::Q8_0, block32_x8::dot_scalar::<q8_0::Q8_0>),
                (GgmlDType::Q4K, |t, x| q4_k_q5_k_x8::dot_scalar(t, x, false)),
                (GgmlDType::Q5K, |t, x| q4_k_q5_k_x8::dot_scalar(t, x, true)),
                (GgmlDType::Q6K, sixteen_x8::dot_scalar::<q6_k_x8::Q6KTiles>),
                (
                    GgmlDType::Q2K,
                    sixteen_x8::dot_scalar::<q2_k_q3_k_x8::Q2KTiles>,
                ),
                (
                    GgmlDType::Q3K,
                    sixteen_x8::dot_scalar::<q2_k_q3_k_x8::Q3KTiles>,
                ),
            ];
            for (dtype, scalar_tiles) in formats {
                let (rows, cols) = (24, 3 * 256);
                let (q, tiles) = matrix(rows, cols, dtype, 13);
                assert!(tiles.relaid() && tiles.tiled(), "{dtype:?}");
                let stored = Format::of(dtype).map(|format| QuantMatrix {
                    blocks: Blocks::Rows {
                        format,
                        tensor: q.clone(),
                    },
                    ..QuantMatrix::from_qtensor(q.clone()).unwrap().unwrap()
                });
                // Stored k-quant rows have a kernel a row at a time only.
                let k_quant = dtype.block_size() == 256;
                assert!(stored
                    .as_ref()
                    .is_none_or(|stored| stored.tiled() != k_quant));
                let dense = q.dequantize(&Device::Cpu).unwrap();
                let vectors: Vec<Vec<f32>> = (40..46).map(|seed| values(cols, seed)).collect();
                let together = tiles.matmul(&vectors.concat());
                for (i, x) in vectors.iter().enumerate() {
                    let alone = tiles.matmul(x);
                    assert_eq!(alone, together[i * rows..(i + 1) * rows], "{dtype:?} {i}");
                    let expected: Vec<f32> = Tensor::from_vec(x.clone(), (cols, 1), &Device::Cpu)
                        .and_then(|x| dense.matmul(&x))
                        .and_then(|y| y.flatten_all())
                        .and_then(|y| y.to_vec1())
                        .unwrap();
                    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let input = quantize_input(x, tiles.input_span());
                    let by_rows = stored.as_ref().map(|stored| stored.matmul(x));
                    let group = tiles.blocks().len() / (rows / ROW_GROUP);
                    for (row, got) in alone.iter().enumerate() {
                        // Only the input's 8-bit quantization separates it from the f32 product.
                        let e = expected[row];
                        assert!(
                            (got - e).abs() < 0.01 * scale,
                            "{dtype:?}: {got} against {e}"
                        );
                        // The row kernel and the portable tile kernel sum the same integers.
                        if let Some(by_rows) = &by_rows {
                            let r = by_rows[row];
                            assert!(
                                (got - r).abs() <= 1e-4 * scale,
                                "{dtype:?}: {got} against {r}"
                            );
                        }
                        let g = row / ROW_GROUP;
                        let scalar =
                            scalar_tiles(&tiles.blocks()[g * group..(g + 1) * group], &input)
                                [row % ROW_GROUP];
                        assert!(
                            (got - scalar).abs() <= 1e-4 * scale,
                            "{dtype:?}: {got} against {scalar}"
                        );
                    }
                }
            }
        });
    }

    /// A token looked up in a tied output layer's tiles gets the values candle dequantizes
    /// from the stored row.
    #[test]
    fn rows_looked_up_in_tiles_are_the_stored_rows() {
        for dtype in FORMATS.into_iter().chain(TILES_ONLY) {
            let (q, tiles) = matrix(16, 512, dtype, 17);
            assert!(tiles.relaid());
            for row in [0, 5, 8, 15] {
                assert_eq!(
                    tiles.row_values(row).unwrap(),
                    stored_row_values(&q, row).unwrap(),
                    "{dtype:?} row {row}"
                );
            }
            assert!(tiles.row_values(16).is_err());
        }
    }

    #[test]
    fn other_formats_are_left_to_candle() {
        let w = Tensor::from_vec(values(256, 3), (1, 256), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8K).unwrap();
        assert!(QuantMatrix::from_qtensor(Arc::new(q)).unwrap().is_none());
        // The formats with tiles only: a matrix whose rows are not whole tiles stays with
        // candle.
        for dtype in TILES_ONLY {
            let q = QTensor::quantize(&w, dtype).unwrap();
            assert!(QuantMatrix::from_qtensor(Arc::new(q)).unwrap().is_none());
        }
    }
}
