//! The token-embedding table. On the CPU it stays quantized, as the GGUF stores it or, where
//! the output layer shares it, in that layer's re-laid tiles, and only the rows looked up are
//! dequantized: in f32 the table of a 1B model with a 49k vocabulary takes 400 MB, for a few
//! rows per step. On a GPU it is dense, for `index_select`.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Result, Tensor};

use super::super::quant::{stored_row_values, QuantMatrix};

/// The table, `vocab × dim`.
pub(super) enum TokenEmbeddings {
    /// Blocks as stored (CPU).
    Quantized { table: Arc<QTensor>, dim: usize },
    /// The output layer's re-laid matrix, where the model ties the two (CPU).
    Output {
        matrix: Arc<QuantMatrix>,
        dim: usize,
    },
    /// Dequantized whole (GPU).
    Dense(Tensor),
}

impl TokenEmbeddings {
    /// The table of `table`, kept quantized on the CPU.
    pub(super) fn new(table: Arc<QTensor>, device: &Device) -> Result<Self> {
        let (_, dim) = table.shape().dims2()?;
        Ok(match device {
            Device::Cpu => Self::Quantized { table, dim },
            _ => Self::Dense(table.dequantize(device)?),
        })
    }

    /// Values per token.
    pub(super) fn dim(&self) -> Result<usize> {
        match self {
            Self::Quantized { dim, .. } | Self::Output { dim, .. } => Ok(*dim),
            Self::Dense(table) => table.dim(1),
        }
    }

    /// The rows of `tokens`, `tokens.len() × dim`, on the table's device.
    pub(super) fn rows(&self, tokens: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(table) => table.index_select(tokens, 0),
            Self::Quantized { dim, .. } | Self::Output { dim, .. } => {
                let ids = tokens.to_vec1::<u32>()?;
                let mut values = Vec::with_capacity(ids.len() * dim);
                for &id in &ids {
                    values.extend(self.row_values(id as usize)?);
                }
                Tensor::from_vec(values, (ids.len(), *dim), &Device::Cpu)
            }
        }
    }

    /// Row `token` as values (CPU).
    pub(super) fn row_values(&self, token: usize) -> Result<Vec<f32>> {
        let vocab = match self {
            Self::Quantized { table, .. } => table.shape().dims()[0],
            Self::Output { matrix, .. } => matrix.rows(),
            Self::Dense(table) => table.dim(0)?,
        };
        if token >= vocab {
            candle_core::bail!("token {token} is outside the vocabulary of {vocab}");
        }
        match self {
            Self::Quantized { table, .. } => stored_row_values(table, token),
            Self::Output { matrix, .. } => matrix.row_values(token),
            Self::Dense(table) => table.get(token)?.to_vec1(),
        }
    }
}
