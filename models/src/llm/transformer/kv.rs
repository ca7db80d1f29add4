//! Each layer's keys and values so far, in buffers that grow by doubling and take a step's
//! keys and values in place.
//!
//! f16 by default, as llama.cpp keeps them: half the memory of f32, and half the bytes that
//! attention reads per generated token, which after a long context is most of a small model's
//! step. Q8_0 blocks on request ([`KvFormat`]) halve that again.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Tensor};
use half::{f16, slice::HalfFloatSliceExt};

use super::weights::CpuValues;
use crate::llm::kv_format::{quantize_into, KvFormat, KvValues, Q8Block, Q8_BLOCK};

/// A layer's keys and values so far, and how many positions they hold.
pub(in crate::llm) struct KvBuffer {
    format: KvFormat,
    held: Option<Held>,
    pub(super) len: usize,
}

/// The buffers of a [`KvBuffer`], `capacity` positions of every key/value head.
enum Held {
    /// `[1, kv heads, capacity, head size]` f16 tensors, on any device.
    F16(Tensor, Tensor),
    /// `[kv heads][capacity][head size / 32]` blocks, on the CPU.
    Q8_0 {
        keys: Vec<Q8Block>,
        values: Vec<Q8Block>,
        heads: usize,
        capacity: usize,
        size: usize,
    },
}

/// A layer's keys and values as attention on the CPU reads them ([`KvBuffer::values`]).
pub(super) enum HeldValues<'a> {
    F16(CpuValues<'a, f16>, CpuValues<'a, f16>),
    Q8_0(&'a [Q8Block], &'a [Q8Block]),
}

impl HeldValues<'_> {
    /// Keys and values, `[heads, capacity, size]` each.
    pub(super) fn get(&self) -> (KvValues<'_>, KvValues<'_>) {
        match self {
            Self::F16(keys, values) => (KvValues::F16(keys.get()), KvValues::F16(values.get())),
            Self::Q8_0(keys, values) => (KvValues::Q8_0(keys), KvValues::Q8_0(values)),
        }
    }
}

impl KvBuffer {
    /// An empty buffer that holds values in `format`.
    pub(super) fn new(format: KvFormat) -> Self {
        Self {
            format,
            held: None,
            len: 0,
        }
    }

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
        let capacity = len.next_power_of_two().max(256);
        let grown = match self.format {
            KvFormat::F16 => {
                let shape = (1, heads, capacity, size);
                let grown = (
                    Tensor::zeros(shape, DType::F16, device)?,
                    Tensor::zeros(shape, DType::F16, device)?,
                );
                if let Some(Held::F16(old_k, old_v)) = &self.held {
                    grown
                        .0
                        .slice_set(&old_k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    grown
                        .1
                        .slice_set(&old_v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Held::F16(grown.0, grown.1)
            }
            KvFormat::Q8_0 => {
                if !size.is_multiple_of(Q8_BLOCK) || !device.is_cpu() {
                    candle_core::bail!(
                        "a q8_0 key/value cache takes heads of whole blocks of {Q8_BLOCK} on the CPU"
                    );
                }
                let row = size / Q8_BLOCK;
                let (keys, values) = match &self.held {
                    Some(Held::Q8_0 {
                        keys,
                        values,
                        capacity: old_capacity,
                        ..
                    }) => {
                        let grow = |blocks| {
                            relay_heads(blocks, heads, *old_capacity, capacity, row, self.len)
                        };
                        (grow(keys), grow(values))
                    }
                    _ => {
                        let empty = vec![Q8Block::default(); heads * capacity * row];
                        (empty.clone(), empty)
                    }
                };
                Held::Q8_0 {
                    keys,
                    values,
                    heads,
                    capacity,
                    size,
                }
            }
        };
        self.held = Some(grown);
        Ok(())
    }

    pub(super) fn capacity(&self) -> Result<usize> {
        match &self.held {
            None => Ok(0),
            Some(Held::F16(k, _)) => k.dim(2),
            Some(Held::Q8_0 { capacity, .. }) => Ok(*capacity),
        }
    }

    /// Appends `k` and `v` (`[1, heads, seq, size]`, contiguous, for `seq` new positions);
    /// returns all keys and values held (f16, or for Q8_0 their values in f32).
    pub(super) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, heads, seq, size) = k.dims4()?;
        let len = self.len + seq;
        self.reserve(len, heads, size, k.device())?;
        let start = self.len;
        self.len = len;
        match self.held.as_mut().expect("reserved above") {
            Held::F16(all_k, all_v) => {
                all_k.slice_set(&k.to_dtype(DType::F16)?, 2, start)?;
                all_v.slice_set(&v.to_dtype(DType::F16)?, 2, start)?;
                Ok((all_k.narrow(2, 0, len)?, all_v.narrow(2, 0, len)?))
            }
            Held::Q8_0 {
                keys,
                values,
                capacity,
                ..
            } => {
                let row = size / Q8_BLOCK;
                let mut all = Vec::with_capacity(2);
                for (new, held) in [(k, keys), (v, values)] {
                    let new = new.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    let mut out = vec![0.0f32; heads * len * size];
                    for head in 0..heads {
                        let first = (head * *capacity + start) * row;
                        quantize_into(
                            &new[head * seq * size..(head + 1) * seq * size],
                            &mut held[first..first + seq * row],
                        );
                        let head_blocks = &held[head * *capacity * row..][..len * row];
                        KvValues::Q8_0(head_blocks)
                            .to_f32(0, &mut out[head * len * size..(head + 1) * len * size]);
                    }
                    all.push(Tensor::from_vec(out, (1, heads, len, size), k.device())?);
                }
                let values = all.pop().expect("two");
                Ok((all.pop().expect("two"), values))
            }
        }
    }

    /// Appends one position given as slices (`heads × size` values each).
    pub(super) fn push(
        &mut self,
        k: &[f32],
        v: &[f32],
        heads: usize,
        device: &Device,
    ) -> Result<()> {
        let size = k.len() / heads;
        self.reserve(self.len + 1, heads, size, device)?;
        let position = self.len;
        match self.held.as_mut().expect("reserved above") {
            Held::F16(all_k, all_v) => {
                all_k.inplace_op1(&WritePosition {
                    values: k,
                    position,
                })?;
                all_v.inplace_op1(&WritePosition {
                    values: v,
                    position,
                })?;
            }
            Held::Q8_0 {
                keys,
                values,
                capacity,
                ..
            } => {
                let row = size / Q8_BLOCK;
                for head in 0..heads {
                    let at = (head * *capacity + position) * row;
                    let new = head * size..(head + 1) * size;
                    quantize_into(&k[new.clone()], &mut keys[at..at + row]);
                    quantize_into(&v[new], &mut values[at..at + row]);
                }
            }
        }
        self.len += 1;
        Ok(())
    }

    /// All keys and values as attention reads them, with the capacity.
    pub(super) fn values(&self) -> Result<(HeldValues<'_>, usize)> {
        match self.held.as_ref().expect("a value was pushed first") {
            Held::F16(k, v) => Ok((
                HeldValues::F16(CpuValues::of(k)?, CpuValues::of(v)?),
                k.dim(2)?,
            )),
            Held::Q8_0 {
                keys,
                values,
                capacity,
                ..
            } => Ok((HeldValues::Q8_0(keys, values), *capacity)),
        }
    }

    /// A copy of what is held, in buffers of its own just large enough.
    pub(super) fn snapshot(&self) -> Result<Self> {
        let held = match &self.held {
            None => None,
            Some(_) if self.len == 0 => None,
            // `copy` for storage of its own (appends write into the buffers in place), then
            // `contiguous` for the layout `append` takes.
            Some(Held::F16(k, v)) => Some(Held::F16(
                k.narrow(2, 0, self.len)?.copy()?.contiguous()?,
                v.narrow(2, 0, self.len)?.copy()?.contiguous()?,
            )),
            Some(Held::Q8_0 {
                keys,
                values,
                heads,
                capacity,
                size,
            }) => {
                let shrink = |blocks| {
                    relay_heads(
                        blocks,
                        *heads,
                        *capacity,
                        self.len,
                        size / Q8_BLOCK,
                        self.len,
                    )
                };
                Some(Held::Q8_0 {
                    keys: shrink(keys),
                    values: shrink(values),
                    heads: *heads,
                    capacity: self.len,
                    size: *size,
                })
            }
        };
        Ok(Self {
            format: self.format,
            len: if held.is_some() { self.len } else { 0 },
            held,
        })
    }

    /// Holds what `snapshot` holds instead of what this held.
    fn restore(&mut self, snapshot: &Self) -> Result<()> {
        self.len = 0;
        match &snapshot.held {
            None => {}
            Some(Held::F16(k, v)) => {
                self.append(k, v)?;
            }
            // A copy just large enough: the next position grows it as any other.
            Some(Held::Q8_0 {
                keys,
                values,
                heads,
                size,
                ..
            }) => {
                self.held = Some(Held::Q8_0 {
                    keys: keys.clone(),
                    values: values.clone(),
                    heads: *heads,
                    capacity: snapshot.len,
                    size: *size,
                });
                self.len = snapshot.len;
            }
        }
        Ok(())
    }
}

/// The first `len` positions of each of `heads` heads of Q8_0 blocks laid out `capacity`
/// positions a head (`row` blocks a position), re-laid `new_capacity` positions a head.
fn relay_heads(
    blocks: &[Q8Block],
    heads: usize,
    capacity: usize,
    new_capacity: usize,
    row: usize,
    len: usize,
) -> Vec<Q8Block> {
    let mut relaid = vec![Q8Block::default(); heads * new_capacity * row];
    for head in 0..heads {
        let (from, to) = (head * capacity * row, head * new_capacity * row);
        relaid[to..to + len * row].copy_from_slice(&blocks[from..from + len * row]);
    }
    relaid
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
pub(in crate::llm) type KvCache = Vec<KvBuffer>;

/// One sequence's keys and values in every layer: each generation running at once has its
/// own, while the weights are shared.
pub(in crate::llm) struct SequenceCache {
    pub(super) layers: Vec<KvBuffer>,
}

impl SequenceCache {
    /// An empty cache for a model of `layers` layers, holding values in `format`.
    pub(super) fn new(layers: usize, format: KvFormat) -> Self {
        Self {
            layers: (0..layers).map(|_| KvBuffer::new(format)).collect(),
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
            layer.restore(cache)?;
        }
        Ok(())
    }

    /// Lets go of the buffers (they grow with the longest sequence run since they were made).
    pub(in crate::llm) fn release(&mut self) {
        for layer in &mut self.layers {
            *layer = KvBuffer::new(layer.format);
        }
    }
}
