//! A decoder's weights as loaded from a GGUF: each matrix as quantized blocks, on this
//! crate's kernels or candle's; norms; and the loader that reads them.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Storage, StorageRef, Tensor, D};

use super::super::cpu_ops;
use super::super::quant::QuantMatrix;
use super::super::tokenizer::meta_u32;

/// Matrix products with at least this many rows (prompt tokens) go to candle's tiled kernels
/// where this crate has none for the format.
pub(super) const PROMPT_MIN_ROWS: usize = 2;

/// The form a weight takes for generation.
pub(super) enum Quantized {
    /// candle's kernels.
    Candle(QMatMul),
    /// Blocks on this crate's CPU kernels. The 32-weight formats and the k-quants' tiles have
    /// kernels here for many rows; prompts on Q4_K and Q6_K matrices whose rows are not whole
    /// tiles of eight go to candle's tiled kernels, which share the tensor (and repack it on
    /// first use): they beat this crate's row-at-a-time kernels from a few rows on.
    Blocks {
        matrix: Arc<QuantMatrix>,
        prompts: Option<QMatMul>,
    },
}

/// A weight matrix, with an optional bias.
pub(super) struct Linear {
    pub(super) quantized: Quantized,
    pub(super) bias: Option<Tensor>,
}

impl Linear {
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let y = match &self.quantized {
            Quantized::Blocks {
                prompts: Some(w), ..
            } if rows >= PROMPT_MIN_ROWS => w.forward(x)?,
            Quantized::Blocks { matrix, .. } => {
                let mut shape = x.dims().to_vec();
                *shape
                    .last_mut()
                    .expect("a matrix product's input has a dimension") = matrix.rows();
                let y = matrix.matmul(&x.flatten_all()?.to_vec1::<f32>()?);
                Tensor::from_vec(y, shape, x.device())?
            }
            Quantized::Candle(w) => w.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The matrix, if its blocks were re-laid for this crate's kernels: a tied
    /// token-embedding table then looks its rows up there, instead of keeping the stored
    /// copy too.
    pub(super) fn relaid_matrix(&self) -> Option<Arc<QuantMatrix>> {
        match &self.quantized {
            Quantized::Blocks { matrix, .. } if matrix.relaid() => Some(matrix.clone()),
            _ => None,
        }
    }

    /// `x · selfᵀ (+ bias)` for `x` holding vectors one after another (the generation steps
    /// of several sequences), always on the quantized kernels, so that a sequence's result is
    /// the same whatever else runs with it: on this crate's kernels straight from the slice,
    /// on candle's through a tensor.
    pub(super) fn rows_product(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut y = match &self.quantized {
            Quantized::Blocks { matrix, .. } => matrix.matmul(x),
            Quantized::Candle(w) => w
                .forward(&Tensor::from_slice(
                    x,
                    (rows, x.len() / rows),
                    &Device::Cpu,
                )?)?
                .flatten_all()?
                .to_vec1()?,
        };
        if let Some(b) = &self.bias {
            let b = CpuValues::of(b)?;
            for row in y.chunks_exact_mut(b.get().len()) {
                cpu_ops::add(row, b.get());
            }
        }
        Ok(y)
    }
}

/// Weights that take the same input (queries, keys and values; gate and up), stacked into one
/// matrix when they share a format, so that one product (one hand-off to the thread pool, one
/// quantized input) serves them all.
pub(super) enum Projections {
    /// One matrix, the parts' rows one after another; the parts' output sizes.
    Stacked { linear: Linear, sizes: Vec<usize> },
    /// Formats differ (k-quant mixes often give values more bits).
    Separate(Vec<Linear>),
}

impl Projections {
    /// Each part's output, in order.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Projections::Stacked { linear, sizes } => {
                let y = linear.forward(x)?;
                let mut offset = 0;
                sizes
                    .iter()
                    .map(|&n| {
                        offset += n;
                        y.narrow(D::Minus1, offset - n, n)
                    })
                    .collect()
            }
            Projections::Separate(parts) => parts.iter().map(|l| l.forward(x)).collect(),
        }
    }

    /// Every part's product of each of `rows` vectors: per vector, the parts' outputs one
    /// after another; with the parts' sizes.
    pub(super) fn rows_product(
        &self,
        x: &[f32],
        rows: usize,
    ) -> Result<(Vec<f32>, Cow<'_, [usize]>)> {
        match self {
            Projections::Stacked { linear, sizes } => {
                Ok((linear.rows_product(x, rows)?, Cow::Borrowed(sizes)))
            }
            Projections::Separate(parts) => {
                let outputs = parts
                    .iter()
                    .map(|part| part.rows_product(x, rows))
                    .collect::<Result<Vec<_>>>()?;
                let sizes: Vec<usize> = outputs.iter().map(|y| y.len() / rows).collect();
                let mut all = Vec::with_capacity(outputs.iter().map(Vec::len).sum());
                for row in 0..rows {
                    for (y, &n) in outputs.iter().zip(&sizes) {
                        all.extend_from_slice(&y[row * n..(row + 1) * n]);
                    }
                }
                Ok((all, Cow::Owned(sizes)))
            }
        }
    }
}

pub(super) struct RmsNorm {
    pub(super) weight: Tensor,
    pub(super) eps: f32,
}

impl RmsNorm {
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }

    /// The same on slices: each `weight`-sized piece of `x` normalised on its own into `out`.
    pub(super) fn apply(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let weight = CpuValues::of(&self.weight)?;
        let n = weight.get().len();
        for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            cpu_ops::rms_norm(x, weight.get(), self.eps, out);
        }
        Ok(())
    }
}

/// The values of a contiguous tensor on the CPU (f32 unless said), borrowed from its storage.
pub(super) struct CpuValues<'a, T = f32> {
    pub(super) storage: StorageRef<'a>,
    pub(super) range: std::ops::Range<usize>,
    dtype: std::marker::PhantomData<T>,
}

impl<'a, T: candle_core::WithDType> CpuValues<'a, T> {
    pub(super) fn of(tensor: &'a Tensor) -> Result<Self> {
        let (storage, layout) = tensor.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("expected a contiguous tensor");
        };
        match &*storage {
            Storage::Cpu(cpu) => {
                cpu.as_slice::<T>()?;
            }
            _ => candle_core::bail!("expected a tensor on the CPU"),
        }
        Ok(Self {
            storage,
            range: start..end,
            dtype: std::marker::PhantomData,
        })
    }

    pub(super) fn get(&self) -> &[T] {
        match &*self.storage {
            Storage::Cpu(cpu) => &cpu.as_slice::<T>().expect("checked in `of`")[self.range.clone()],
            _ => unreachable!("checked in `of`"),
        }
    }
}

/// Reads tensors from the file.
pub(super) struct Loader<'a, R> {
    pub(super) content: &'a gguf_file::Content,
    pub(super) reader: &'a mut R,
    pub(super) device: &'a Device,
}

impl<R: std::io::Read + std::io::Seek> Loader<'_, R> {
    pub(super) fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content.tensor(self.reader, name, self.device)
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub(super) fn vector(&mut self, name: &str) -> Result<Tensor> {
        self.qtensor(name)?.dequantize(self.device)
    }

    pub(super) fn norm(&mut self, name: &str, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.vector(name)?,
            eps,
        })
    }

    pub(super) fn linear_from(&mut self, q: Arc<QTensor>, bias: Option<Tensor>) -> Result<Linear> {
        let own_kernels = matches!(self.device, Device::Cpu);
        // Formats with no SIMD kernel, in candle or here, are repacked into Q8_0.
        let repack = match q.dtype() {
            GgmlDType::Q8_1 => true,
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => !own_kernels,
            _ => false,
        };
        let q = if repack {
            Arc::new(QTensor::quantize(
                &q.dequantize(self.device)?,
                GgmlDType::Q8_0,
            )?)
        } else {
            q
        };
        if own_kernels {
            if let Some(matrix) = QuantMatrix::from_qtensor(q.clone())? {
                let prompts = if matrix.tiled() {
                    None
                } else {
                    Some(QMatMul::from_arc(q)?)
                };
                return Ok(Linear {
                    quantized: Quantized::Blocks {
                        matrix: Arc::new(matrix),
                        prompts,
                    },
                    bias,
                });
            }
        }
        Ok(Linear {
            quantized: Quantized::Candle(QMatMul::from_arc(q)?),
            bias,
        })
    }

    pub(super) fn bias(&mut self, name: Option<&str>) -> Result<Option<Tensor>> {
        match name {
            Some(name) if self.has(name) => Ok(Some(self.vector(name)?)),
            _ => Ok(None),
        }
    }

    pub(super) fn linear(&mut self, name: &str, bias: Option<&str>) -> Result<Linear> {
        let q = self.qtensor(name)?;
        let bias = self.bias(bias)?;
        self.linear_from(Arc::new(q), bias)
    }

    /// The weights `parts` (names, with their bias's name), stacked when they share a format.
    pub(super) fn projections(&mut self, parts: &[(String, String)]) -> Result<Projections> {
        let mut weights = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(parts.len());
        for (name, bias) in parts {
            weights.push(self.qtensor(name)?);
            biases.push(self.bias(Some(bias))?);
        }
        let dtype = weights[0].dtype();
        let cols = weights[0].shape().dims2()?.1;
        let stackable = weights
            .iter()
            .all(|w| w.dtype() == dtype && w.shape().dims2().is_ok_and(|(_, c)| c == cols));
        if !stackable {
            return Ok(Projections::Separate(
                weights
                    .into_iter()
                    .zip(biases)
                    .map(|(w, b)| self.linear_from(Arc::new(w), b))
                    .collect::<Result<_>>()?,
            ));
        }
        // Rows are whole blocks, so the stacked matrix is the parts' bytes one after another.
        let sizes: Vec<usize> = weights.iter().map(|w| w.shape().dims()[0]).collect();
        let mut bytes = Vec::new();
        for w in &weights {
            bytes.extend_from_slice(&w.data()?);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), self.device, dtype)?;
        let stacked = QTensor::new(storage, (sizes.iter().sum::<usize>(), cols))?;
        let bias = if biases.iter().all(Option::is_none) {
            None
        } else {
            let parts = biases
                .into_iter()
                .zip(&sizes)
                .map(|(b, &n)| match b {
                    Some(b) => Ok(b),
                    None => Tensor::zeros(n, DType::F32, self.device),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        };
        Ok(Projections::Stacked {
            linear: self.linear_from(Arc::new(stacked), bias)?,
            sizes,
        })
    }
}

pub(super) fn meta(content: &gguf_file::Content, key: &str) -> Result<usize> {
    match meta_u32(content, key) {
        Some(n) => Ok(n as usize),
        None => candle_core::bail!("the GGUF lacks {key}"),
    }
}

pub(super) fn meta_f32(content: &gguf_file::Content, key: &str, default: f32) -> f32 {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(default)
}
