//! Each layer's keys and values so far, in f16 buffers that grow by doubling and take a
//! step's keys and values in place.
//!
//! f16, as llama.cpp keeps them by default: half the memory of f32, and half the bytes that
//! attention reads per generated token, which after a long context is most of a small model's
//! step.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Tensor};
use half::{f16, slice::HalfFloatSliceExt};

use super::weights::CpuValues;

/// A layer's keys and values so far, `[1, kv heads, positions, head size]` in f16, in buffers
/// that grow by doubling: a step writes its own keys and values instead of copying the whole past.
#[derive(Default)]
pub(super) struct KvBuffer {
    pub(super) buffers: Option<(Tensor, Tensor)>,
    pub(super) len: usize,
}

impl KvBuffer {
    /// Readies the buffer for a sequence going on at `position`: what is held from there on is
    /// dropped (0 starts a new sequence; less than the length held goes on from a prefix of
    /// it); a position past the length held is an error.
    pub(super) fn continue_at(&mut self, position: usize) -> Result<()> {
        if position > self.len {
            candle_core::bail!(
                "position {position} does not follow the cache ({})",
                self.len
            );
        }
        self.len = position;
        Ok(())
    }

    /// Makes room for `len` positions of `heads × size` values.
    pub(super) fn reserve(
        &mut self,
        len: usize,
        heads: usize,
        size: usize,
        device: &Device,
    ) -> Result<()> {
        if len <= self.capacity()? {
            return Ok(());
        }
        let shape = (1, heads, len.next_power_of_two().max(256), size);
        let grown = (
            Tensor::zeros(shape, DType::F16, device)?,
            Tensor::zeros(shape, DType::F16, device)?,
        );
        if let Some((old_k, old_v)) = &self.buffers {
            grown
                .0
                .slice_set(&old_k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            grown
                .1
                .slice_set(&old_v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
        }
        self.buffers = Some(grown);
        Ok(())
    }

    pub(super) fn capacity(&self) -> Result<usize> {
        self.buffers.as_ref().map_or(Ok(0), |(b, _)| b.dim(2))
    }

    /// Appends `k` and `v` (contiguous, for `seq` new positions); returns all keys and values
    /// (f16).
    pub(super) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, heads, seq, size) = k.dims4()?;
        let len = self.len + seq;
        self.reserve(len, heads, size, k.device())?;
        let (all_k, all_v) = self.buffers.as_ref().expect("reserved above");
        all_k.slice_set(&k.to_dtype(DType::F16)?, 2, self.len)?;
        all_v.slice_set(&v.to_dtype(DType::F16)?, 2, self.len)?;
        self.len = len;
        Ok((all_k.narrow(2, 0, len)?, all_v.narrow(2, 0, len)?))
    }

    /// Appends one position given as slices (`heads × size` values each).
    pub(super) fn push(
        &mut self,
        k: &[f32],
        v: &[f32],
        heads: usize,
        device: &Device,
    ) -> Result<()> {
        self.reserve(self.len + 1, heads, k.len() / heads, device)?;
        let (all_k, all_v) = self.buffers.as_ref().expect("reserved above");
        let position = self.len;
        all_k.inplace_op1(&WritePosition {
            values: k,
            position,
        })?;
        all_v.inplace_op1(&WritePosition {
            values: v,
            position,
        })?;
        self.len += 1;
        Ok(())
    }

    /// All keys and values, `[heads, capacity, size]` each (the first `len` positions hold
    /// data), with the capacity.
    pub(super) fn values(&self) -> Result<(CpuValues<'_, f16>, CpuValues<'_, f16>, usize)> {
        let (k, v) = self.buffers.as_ref().expect("a value was pushed first");
        Ok((CpuValues::of(k)?, CpuValues::of(v)?, k.dim(2)?))
    }

    /// A copy of what is held.
    pub(super) fn snapshot(&self) -> Result<Option<(Tensor, Tensor)>> {
        match &self.buffers {
            // `copy` for storage of its own (appends write into the buffers in place), then
            // `contiguous` for the layout `append` takes.
            Some((k, v)) if self.len > 0 => Ok(Some((
                k.narrow(2, 0, self.len)?.copy()?.contiguous()?,
                v.narrow(2, 0, self.len)?.copy()?.contiguous()?,
            ))),
            _ => Ok(None),
        }
    }
}

/// Writes one position of every head into a `[1, heads, capacity, size]` key or value buffer.
struct WritePosition<'a> {
    values: &'a [f32],
    position: usize,
}

impl InplaceOp1 for WritePosition<'_> {
    fn name(&self) -> &'static str {
        "write-kv-position"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (_, heads, capacity, size) = layout.shape().dims4()?;
        let (CpuStorage::F16(data), Some((start, _))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("the key/value cache is not a contiguous f16 buffer");
        };
        for (head, values) in self.values.chunks_exact(size).enumerate().take(heads) {
            let at = start + (head * capacity + self.position) * size;
            data[at..at + size].convert_from_f32_slice(values);
        }
        Ok(())
    }
}

/// Every layer's cached keys and values (copies): what a sequence so far leaves behind.
pub(in crate::llm) type KvCache = Vec<Option<(Tensor, Tensor)>>;

/// One sequence's keys and values in every layer: each generation running at once has its
/// own, while the weights are shared.
pub(in crate::llm) struct SequenceCache {
    pub(super) layers: Vec<KvBuffer>,
}

impl SequenceCache {
    /// An empty cache for a model of `layers` layers.
    pub(super) fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| KvBuffer::default()).collect(),
        }
    }

    /// A copy of what is held.
    pub(in crate::llm) fn snapshot(&self) -> Result<KvCache> {
        self.layers.iter().map(KvBuffer::snapshot).collect()
    }

    /// Holds `cache` (taken by [`SequenceCache::snapshot`]) instead of what it held: the
    /// next run goes on at that sequence's length.
    pub(in crate::llm) fn restore(&mut self, cache: &KvCache) -> Result<()> {
        for (layer, cache) in self.layers.iter_mut().zip(cache) {
            layer.len = 0;
            if let Some((k, v)) = cache {
                layer.append(k, v)?;
            }
        }
        Ok(())
    }

    /// Lets go of the buffers (they grow with the longest sequence run since they were made).
    pub(in crate::llm) fn release(&mut self) {
        for layer in &mut self.layers {
            *layer = KvBuffer::default();
        }
    }
}
