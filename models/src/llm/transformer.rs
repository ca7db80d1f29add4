//! The decoder of Llama-architecture, Qwen2 and Qwen3 GGUF models, in one file.
//!
//! Why not candle-transformers' own quantized models: they run every matrix product through
//! candle's quantized vector-dot kernels, one prompt row at a time, which makes prompt
//! processing several times slower than llama.cpp; and some formats (Q4_1, Q5_x) have no SIMD
//! kernel at all. Here each weight keeps two forms:
//! - a quantized one for generation (one row per step). Q4_1 and Q8_0 run on this crate's
//!   own kernels (`quant/`); Q5_x and Q8_1, which have no SIMD kernel in candle, are repacked
//!   at load into Q8_0; the rest run on candle's;
//! - a dense f32 copy for prompt processing (many rows: a compute-bound GEMM), kept while the
//!   whole dense model fits in [`DENSE_BUDGET_BYTES`].

use std::borrow::Cow;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{
    CpuStorage, DType, Device, InplaceOp1, Layout, Module, Result, Storage, StorageRef, Tensor, D,
};

use super::cpu_ops;
use super::quant::QuantMatrix;
use super::tokenizer::meta_u32;

/// Largest total size of the dense prompt-processing copies. Bigger models process prompts
/// through the quantized kernels instead.
pub const DENSE_BUDGET_BYTES: usize = 3 << 30;

/// Matrix products with at least this many rows (prompt tokens) use the dense copy.
const PROMPT_MIN_ROWS: usize = 2;

/// The same for weights on this crate's kernels, which read each weight once for several rows:
/// reading the dense copy (4 to 8 times the bytes) is slower for a short prompt.
const DENSE_MIN_ROWS_BLOCKS: usize = 32;

/// How a GGUF lays out rotary embeddings.
#[derive(Clone, Copy)]
enum Rope {
    /// llama.cpp permutes Llama's Q/K weights so that pairs are adjacent.
    Interleaved,
    /// Qwen's halves layout (GPT-NeoX style).
    Halves,
}

/// The form a weight takes for generation.
enum Quantized {
    /// candle's kernels.
    Candle(QMatMul),
    /// Blocks as stored, on this crate's CPU kernels.
    Blocks(QuantMatrix),
}

/// A weight matrix in its generation and prompt-processing forms, with an optional bias.
struct Linear {
    quantized: Quantized,
    dense: Option<Tensor>,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let y = match (&self.dense, &self.quantized) {
            (_, Quantized::Blocks(w)) if rows < DENSE_MIN_ROWS_BLOCKS => {
                let mut shape = x.dims().to_vec();
                *shape
                    .last_mut()
                    .expect("a matrix product's input has a dimension") = w.rows();
                let y = w.matmul(&x.flatten_all()?.to_vec1::<f32>()?);
                Tensor::from_vec(y, shape, x.device())?
            }
            (Some(w), _) if rows >= PROMPT_MIN_ROWS => x.broadcast_matmul(&w.t()?)?,
            (_, Quantized::Candle(w)) => w.forward(x)?,
            (_, Quantized::Blocks(_)) => candle_core::bail!(
                "a block weight without its dense copy takes at most {} rows at a time",
                DENSE_MIN_ROWS_BLOCKS - 1
            ),
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x · selfᵀ (+ bias)` for one vector: on this crate's kernels straight from the slice,
    /// on candle's through a one-row tensor.
    fn vector_product(&self, x: &[f32]) -> Result<Vec<f32>> {
        match &self.quantized {
            Quantized::Blocks(w) => {
                let mut y = w.matmul(x);
                if let Some(b) = &self.bias {
                    cpu_ops::add(&mut y, CpuValues::of(b)?.get());
                }
                Ok(y)
            }
            Quantized::Candle(_) => self
                .forward(&Tensor::from_slice(x, (1, x.len()), &Device::Cpu)?)?
                .flatten_all()?
                .to_vec1(),
        }
    }
}

/// Weights that take the same input (queries, keys and values; gate and up), stacked into one
/// matrix when they share a format, so that one product (one hand-off to the thread pool, one
/// quantized input) serves them all.
enum Projections {
    /// One matrix, the parts' rows one after another; the parts' output sizes.
    Stacked { linear: Linear, sizes: Vec<usize> },
    /// Formats differ (k-quant mixes often give values more bits).
    Separate(Vec<Linear>),
}

impl Projections {
    /// Each part's output, in order.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
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

    /// Every part's product of one vector, one after another, with the parts' sizes.
    fn vector_product(&self, x: &[f32]) -> Result<(Vec<f32>, Cow<'_, [usize]>)> {
        match self {
            Projections::Stacked { linear, sizes } => {
                Ok((linear.vector_product(x)?, Cow::Borrowed(sizes)))
            }
            Projections::Separate(parts) => {
                let mut all = Vec::new();
                let mut sizes = Vec::with_capacity(parts.len());
                for part in parts {
                    let y = part.vector_product(x)?;
                    sizes.push(y.len());
                    all.extend(y);
                }
                Ok((all, Cow::Owned(sizes)))
            }
        }
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }

    /// The same on slices: each `weight`-sized piece of `x` normalised on its own into `out`.
    fn apply(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let weight = CpuValues::of(&self.weight)?;
        let n = weight.get().len();
        for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            cpu_ops::rms_norm(x, weight.get(), self.eps, out);
        }
        Ok(())
    }
}

/// The values of a contiguous f32 tensor on the CPU, borrowed from its storage.
struct CpuValues<'a> {
    storage: StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> CpuValues<'a> {
    fn of(tensor: &'a Tensor) -> Result<Self> {
        let (storage, layout) = tensor.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("expected a contiguous tensor");
        };
        match &*storage {
            Storage::Cpu(cpu) => {
                cpu.as_slice::<f32>()?;
            }
            _ => candle_core::bail!("expected a tensor on the CPU"),
        }
        Ok(Self {
            storage,
            range: start..end,
        })
    }

    fn get(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(cpu) => {
                &cpu.as_slice::<f32>().expect("checked in `of`")[self.range.clone()]
            }
            _ => unreachable!("checked in `of`"),
        }
    }
}

struct Layer {
    attn_norm: RmsNorm,
    /// Queries, keys, values.
    qkv: Projections,
    o: Linear,
    /// Qwen3 normalises queries and keys per head.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    /// Gate, up.
    gate_up: Projections,
    down: Linear,
    cache: KvBuffer,
}

/// A layer's keys and values so far, `[1, kv heads, positions, head size]`, in buffers that
/// grow by doubling: a step writes its own keys and values instead of copying the whole past.
#[derive(Default)]
struct KvBuffer {
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl KvBuffer {
    /// Readies the buffer for a sequence going on at `position`: 0 starts a new one (what is
    /// held is dropped); any other position must be the length held.
    fn continue_at(&mut self, position: usize) -> Result<()> {
        if position == 0 {
            self.len = 0;
        } else if self.len != position {
            candle_core::bail!(
                "position {position} does not follow the cache ({})",
                self.len
            );
        }
        Ok(())
    }

    /// Makes room for `len` positions of `heads × size` values.
    fn reserve(&mut self, len: usize, heads: usize, size: usize, device: &Device) -> Result<()> {
        if len <= self.capacity()? {
            return Ok(());
        }
        let shape = (1, heads, len.next_power_of_two().max(256), size);
        let grown = (
            Tensor::zeros(shape, DType::F32, device)?,
            Tensor::zeros(shape, DType::F32, device)?,
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

    fn capacity(&self) -> Result<usize> {
        self.buffers.as_ref().map_or(Ok(0), |(b, _)| b.dim(2))
    }

    /// Appends `k` and `v` (contiguous, for `seq` new positions); returns all keys and values.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, heads, seq, size) = k.dims4()?;
        let len = self.len + seq;
        self.reserve(len, heads, size, k.device())?;
        let (all_k, all_v) = self.buffers.as_ref().expect("reserved above");
        all_k.slice_set(k, 2, self.len)?;
        all_v.slice_set(v, 2, self.len)?;
        self.len = len;
        Ok((all_k.narrow(2, 0, len)?, all_v.narrow(2, 0, len)?))
    }

    /// Appends one position given as slices (`heads × size` values each).
    fn push(&mut self, k: &[f32], v: &[f32], heads: usize, device: &Device) -> Result<()> {
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
    fn values(&self) -> Result<(CpuValues<'_>, CpuValues<'_>, usize)> {
        let (k, v) = self.buffers.as_ref().expect("a value was pushed first");
        Ok((CpuValues::of(k)?, CpuValues::of(v)?, k.dim(2)?))
    }

    /// A copy of what is held.
    fn snapshot(&self) -> Result<Option<(Tensor, Tensor)>> {
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
        let (CpuStorage::F32(data), Some((start, _))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("the key/value cache is not a contiguous f32 buffer");
        };
        for (head, values) in self.values.chunks_exact(size).enumerate().take(heads) {
            let at = start + (head * capacity + self.position) * size;
            data[at..at + size].copy_from_slice(values);
        }
        Ok(())
    }
}

/// Every layer's cached keys and values (copies): what a sequence so far leaves behind.
pub(super) type KvCache = Vec<Option<(Tensor, Tensor)>>;

/// A loaded decoder with its key/value cache.
pub(super) struct Transformer {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    rope: Rope,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    /// Positions the rotary tables cover.
    pub(super) max_positions: usize,
    /// A generated token takes the slice path ([`Transformer::step_token`]): on the CPU.
    slice_path: bool,
}

/// Reads tensors from the file, tracking how much dense memory is handed out.
struct Loader<'a, R> {
    content: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
    dense: bool,
}

impl<R: std::io::Read + std::io::Seek> Loader<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.content.tensor(self.reader, name, self.device)
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn vector(&mut self, name: &str) -> Result<Tensor> {
        self.qtensor(name)?.dequantize(self.device)
    }

    fn norm(&mut self, name: &str, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.vector(name)?,
            eps,
        })
    }

    fn linear_from(&mut self, q: QTensor, bias: Option<Tensor>) -> Result<Linear> {
        let dense = if self.dense {
            Some(q.dequantize(self.device)?)
        } else {
            None
        };
        // This crate's kernels serve at most short prompts, so they need the dense copy.
        let own_kernels = matches!(self.device, Device::Cpu) && dense.is_some();
        // Formats with no SIMD kernel, in candle or here, are repacked into Q8_0.
        let repack = match q.dtype() {
            GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1 => true,
            GgmlDType::Q4_1 => !own_kernels,
            _ => false,
        };
        let q = if repack {
            let values = match &dense {
                Some(d) => d.clone(),
                None => q.dequantize(self.device)?,
            };
            QTensor::quantize(&values, GgmlDType::Q8_0)?
        } else {
            q
        };
        if own_kernels {
            if let Some(blocks) = QuantMatrix::from_qtensor(&q)? {
                return Ok(Linear {
                    quantized: Quantized::Blocks(blocks),
                    dense,
                    bias,
                });
            }
        }
        Ok(Linear {
            quantized: Quantized::Candle(QMatMul::from_qtensor(q)?),
            dense,
            bias,
        })
    }

    fn bias(&mut self, name: Option<&str>) -> Result<Option<Tensor>> {
        match name {
            Some(name) if self.has(name) => Ok(Some(self.vector(name)?)),
            _ => Ok(None),
        }
    }

    fn linear(&mut self, name: &str, bias: Option<&str>) -> Result<Linear> {
        let q = self.qtensor(name)?;
        let bias = self.bias(bias)?;
        self.linear_from(q, bias)
    }

    /// The weights `parts` (names, with their bias's name), stacked when they share a format.
    fn projections(&mut self, parts: &[(String, String)]) -> Result<Projections> {
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
                    .map(|(w, b)| self.linear_from(w, b))
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
            linear: self.linear_from(stacked, bias)?,
            sizes,
        })
    }
}

fn meta(content: &gguf_file::Content, key: &str) -> Result<usize> {
    match meta_u32(content, key) {
        Some(n) => Ok(n as usize),
        None => candle_core::bail!("the GGUF lacks {key}"),
    }
}

fn meta_f32(content: &gguf_file::Content, key: &str, default: f32) -> f32 {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(default)
}

impl Transformer {
    /// Loads a `llama`, `qwen2` or `qwen3` GGUF; `max_positions` bounds the context.
    pub(super) fn load<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        arch: &str,
        max_positions: usize,
    ) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let dim = meta(content, &key("embedding_length"))?;
        let n_layer = meta(content, &key("block_count"))?;
        let n_head = meta(content, &key("attention.head_count"))?;
        let n_kv_head = meta(content, &key("attention.head_count_kv")).unwrap_or(n_head);
        let head_dim = meta(content, &key("attention.key_length")).unwrap_or(dim / n_head);
        let eps = meta_f32(content, &key("attention.layer_norm_rms_epsilon"), 1e-6);
        let base = meta_f32(content, &key("rope.freq_base"), 10_000.0);
        let rope = if arch == "llama" {
            Rope::Interleaved
        } else {
            Rope::Halves
        };

        let dense_bytes: usize = content
            .tensor_infos
            .values()
            .filter(|t| t.shape.dims().len() == 2)
            .map(|t| t.shape.elem_count() * 4)
            .sum();
        let dense = matches!(device, Device::Cpu) && dense_bytes <= DENSE_BUDGET_BYTES;
        if !dense {
            tracing::info!(
                "prompts run on the quantized kernels (a dense copy would take {} MiB)",
                dense_bytes >> 20
            );
        }
        let mut load = Loader {
            content,
            reader,
            device,
            dense,
        };
        let embedding_q = load.qtensor("token_embd.weight")?;
        let embeddings = embedding_q.dequantize(device)?;
        let output = if load.has("output.weight") {
            load.linear("output.weight", None)?
        } else {
            load.linear_from(embedding_q, None)?
        };
        let norm = load.norm("output_norm.weight", eps)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = |name: &str| format!("blk.{i}.{name}");
            let q_norm_name = p("attn_q_norm.weight");
            let (q_norm, k_norm) = if load.has(&q_norm_name) {
                (
                    Some(load.norm(&q_norm_name, eps)?),
                    Some(load.norm(&p("attn_k_norm.weight"), eps)?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: load.norm(&p("attn_norm.weight"), eps)?,
                qkv: load.projections(
                    &["q", "k", "v"]
                        .map(|x| (p(&format!("attn_{x}.weight")), p(&format!("attn_{x}.bias")))),
                )?,
                o: load.linear(&p("attn_output.weight"), None)?,
                q_norm,
                k_norm,
                ffn_norm: load.norm(&p("ffn_norm.weight"), eps)?,
                gate_up: load.projections(
                    &["gate", "up"]
                        .map(|x| (p(&format!("ffn_{x}.weight")), p(&format!("ffn_{x}.bias")))),
                )?,
                down: load.linear(&p("ffn_down.weight"), None)?,
                cache: KvBuffer::default(),
            });
        }

        let theta: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        let theta = Tensor::new(theta.as_slice(), device)?.reshape((1, head_dim / 2))?;
        let positions = Tensor::arange(0, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = positions.matmul(&theta)?;
        Ok(Self {
            slice_path: matches!(device, Device::Cpu),
            embeddings,
            layers,
            norm,
            output,
            cos: angles.cos()?,
            sin: angles.sin()?,
            rope,
            n_head,
            n_kv_head,
            head_dim,
            max_positions,
        })
    }

    /// A copy of the cached keys and values.
    pub(super) fn kv_cache(&self) -> Result<KvCache> {
        self.layers.iter().map(|l| l.cache.snapshot()).collect()
    }

    /// Continues from a sequence whose cache [`Transformer::kv_cache`] took: the next
    /// [`Transformer::forward`] goes on at that sequence's length.
    pub(super) fn set_kv_cache(&mut self, cache: &KvCache) -> Result<()> {
        for (layer, cache) in self.layers.iter_mut().zip(cache) {
            layer.cache.len = 0;
            if let Some((k, v)) = cache {
                layer.cache.append(k, v)?;
            }
        }
        Ok(())
    }

    fn rotate(&self, x: &Tensor, position: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, position, seq)?;
        let sin = self.sin.narrow(0, position, seq)?;
        match self.rope {
            Rope::Interleaved => candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin),
            Rope::Halves => candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin),
        }
    }

    /// Runs `tokens` (shape `[1, seq]`) starting at `position`, and returns the logits of the
    /// last one. Position 0 starts a new sequence (the cache is emptied); any other position
    /// must be the cache's length.
    ///
    /// On the CPU it runs inside candle's thread pool: the many small parallel operations of a
    /// step then find its threads awake, instead of each waking a sleeping one from outside (a
    /// wake-up costs tens of microseconds, and a step has hundreds of operations).
    pub(super) fn forward(&mut self, tokens: &Tensor, position: usize) -> Result<Tensor> {
        let device = tokens.device().clone();
        device.with_context(|| self.step(tokens, position))
    }

    fn step(&mut self, tokens: &Tensor, position: usize) -> Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        if position + seq > self.max_positions {
            candle_core::bail!("position {} is past the context window", position + seq);
        }
        if (batch, seq) == (1, 1) && self.slice_path {
            let token = tokens.flatten_all()?.to_vec1::<u32>()?[0];
            return self.step_token(token as usize, position);
        }
        let groups = self.n_head / self.n_kv_head;
        let mask = if seq > 1 {
            // Row i may attend to cached positions and to new positions up to i. Each key/value
            // head answers its group of query heads in one product, so the rows repeat per head.
            let total = position + seq;
            let values: Vec<f32> = (0..groups * seq)
                .map(|row| row % seq)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > position + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(
                values,
                (groups * seq, total),
                tokens.device(),
            )?)
        } else {
            None
        };
        let mut x = self
            .embeddings
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((batch, seq, ()))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (n_head, n_kv_head, head_dim) = (self.n_head, self.n_kv_head, self.head_dim);
        for layer_index in 0..self.layers.len() {
            let layer = &self.layers[layer_index];
            let h = layer.attn_norm.forward(&x)?;
            let heads = |t: Tensor, n: usize| -> Result<Tensor> {
                t.reshape((batch, seq, n, head_dim))?.transpose(1, 2)
            };
            let [q, k, v]: [Tensor; 3] = layer
                .qkv
                .forward(&h)?
                .try_into()
                .expect("queries, keys and values");
            let mut q = heads(q, n_head)?;
            let mut k = heads(k, n_kv_head)?;
            let v = heads(v, n_kv_head)?.contiguous()?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = qn.forward(&q)?;
                k = kn.forward(&k)?;
            }
            let q = self.rotate(&q, position)?;
            let k = self.rotate(&k, position)?;
            let cache = &mut self.layers[layer_index].cache;
            cache.continue_at(position)?;
            let (k, v) = cache.append(&k, &v)?;
            // Query heads share key/value heads in groups (head h uses h / groups): each
            // key/value head takes its group's queries as one matrix, with no copies of itself.
            let q = q.reshape((batch, n_kv_head, groups * seq, head_dim))?;
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            if let Some(mask) = &mask {
                scores = scores.broadcast_add(mask)?;
            }
            let attention = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let attention = attention
                .reshape((batch, n_head, seq, head_dim))?
                .transpose(1, 2)?
                .reshape((batch, seq, n_head * head_dim))?;
            let layer = &self.layers[layer_index];
            x = (x + layer.o.forward(&attention)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            let [gate, up]: [Tensor; 2] =
                layer.gate_up.forward(&h)?.try_into().expect("gate and up");
            let gated = (candle_nn::ops::silu(&gate)? * up)?;
            x = (x + layer.down.forward(&gated)?)?;
        }
        let last = self.norm.forward(&x.narrow(1, seq - 1, 1)?)?;
        self.output.forward(&last)?.squeeze(1)
    }

    /// One generated token through plain loops on slices (`cpu_ops`) and this crate's kernels
    /// (candle's for other formats), with the same arithmetic as [`Transformer::step`]: a step
    /// of a small model is hundreds of tiny operations, and as tensor operations their overhead
    /// outweighed their work.
    fn step_token(&mut self, token: usize, position: usize) -> Result<Tensor> {
        let (n_head, n_kv_head, head_dim) = (self.n_head, self.n_kv_head, self.head_dim);
        let groups = n_head / n_kv_head;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let device = self.embeddings.device().clone();
        let dim = self.embeddings.dim(1)?;
        let mut x = CpuValues::of(&self.embeddings)?.get()[token * dim..(token + 1) * dim].to_vec();
        let mut h = vec![0.0; dim];
        let half = head_dim / 2;
        let (cos, sin) = (CpuValues::of(&self.cos)?, CpuValues::of(&self.sin)?);
        let cos = &cos.get()[position * half..(position + 1) * half];
        let sin = &sin.get()[position * half..(position + 1) * half];
        let rotate = |values: &mut [f32]| {
            for head in values.chunks_exact_mut(head_dim) {
                match self.rope {
                    Rope::Interleaved => cpu_ops::rope_interleaved(head, cos, sin),
                    Rope::Halves => cpu_ops::rope_halves(head, cos, sin),
                }
            }
        };
        let mut attention = vec![0.0; n_head * head_dim];
        for layer in &mut self.layers {
            layer.cache.continue_at(position)?;
            layer.attn_norm.apply(&x, &mut h)?;
            let (mut qkv, sizes) = layer.qkv.vector_product(&h)?;
            let (q, kv) = qkv.split_at_mut(sizes[0]);
            let (k, v) = kv.split_at_mut(sizes[1]);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                let (q_in, k_in) = (q.to_vec(), k.to_vec());
                qn.apply(&q_in, q)?;
                kn.apply(&k_in, k)?;
            }
            rotate(q);
            rotate(k);
            layer.cache.push(k, v, n_kv_head, &device)?;
            let len = layer.cache.len;
            let (keys, values, capacity) = layer.cache.values()?;
            let (keys, values) = (keys.get(), values.get());
            let q: &[f32] = q;
            let out = attention.as_mut_ptr() as usize;
            candle_core::utils::barrier_pool().execute_chunked(n_head, |heads| {
                for head in heads {
                    let base = head / groups * capacity * head_dim;
                    // SAFETY: each head's output slice is written by one worker only.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            (out as *mut f32).add(head * head_dim),
                            head_dim,
                        )
                    };
                    cpu_ops::attend(
                        &q[head * head_dim..(head + 1) * head_dim],
                        &keys[base..],
                        &values[base..],
                        len,
                        scale,
                        out,
                    );
                }
            });
            let o = layer.o.vector_product(&attention)?;
            cpu_ops::add(&mut x, &o);
            layer.ffn_norm.apply(&x, &mut h)?;
            let (mut gate_up, sizes) = layer.gate_up.vector_product(&h)?;
            let (gate, up) = gate_up.split_at_mut(sizes[0]);
            cpu_ops::silu_mul(gate, up);
            let down = layer.down.vector_product(gate)?;
            cpu_ops::add(&mut x, &down);
        }
        self.norm.apply(&x, &mut h)?;
        let last = Tensor::from_vec(h, (1, 1, dim), &device)?;
        self.output.forward(&last)?.squeeze(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offline default model, as `tests/llm.rs` finds it.
    fn smollm2() -> std::path::PathBuf {
        let path = std::env::var_os("CPIPE_CHAT_MODEL")
            .map(Into::into)
            .unwrap_or_else(|| {
                crate::source::offline_models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
            });
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-models.sh",
            path.display()
        );
        path
    }

    /// Logits after a 5-token prompt and then after each of 4 single tokens.
    fn run(model: &mut Transformer) -> Result<Vec<Vec<f32>>> {
        let prompt = Tensor::new(&[[1u32, 4093, 314, 253, 5248]], &Device::Cpu)?;
        let mut logits = vec![model.forward(&prompt, 0)?.flatten_all()?.to_vec1()?];
        for (i, token) in [30u32, 216, 1030, 17].into_iter().enumerate() {
            let token = Tensor::new(&[[token]], &Device::Cpu)?;
            logits.push(model.forward(&token, 5 + i)?.flatten_all()?.to_vec1()?);
        }
        Ok(logits)
    }

    #[test]
    fn the_slice_path_computes_what_the_tensor_path_does() -> Result<()> {
        let mut file = std::fs::File::open(smollm2())?;
        let content = gguf_file::Content::read(&mut file)?;
        let mut model = Transformer::load(&content, &mut file, &Device::Cpu, "llama", 64)?;
        assert!(model.slice_path);
        let slices = run(&mut model)?;
        model.slice_path = false;
        let tensors = run(&mut model)?;

        // Sums in a different order differ in the last bits, and the 8-bit quantization of
        // each product's input can turn that into a step of 1/127: so the paths agree on the
        // choice and within a few percent, not bit for bit. A wrong rotation, head or cache
        // position would change the logits wholesale.
        let top = |l: &[f32]| {
            l.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        for (a, b) in slices.iter().zip(&tensors) {
            assert_eq!(top(a), top(b));
            let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                worst < 0.05 * largest,
                "logits differ by {worst} (largest {largest})"
            );
        }
        Ok(())
    }

    /// A small random model of `arch` as a GGUF file: 2 layers, 4 query heads over 2 key/value
    /// heads of 16. Weights are f32, so that only the order of sums separates two correct
    /// implementations (the quantized kernels have tests of their own).
    fn tiny_gguf(arch: &str) -> Result<Vec<u8>> {
        use gguf_file::Value as V;
        let (dim, heads, kv_heads, head, ff, vocab) =
            (64usize, 4usize, 2usize, 16usize, 128usize, 96usize);
        let mut state = 0x9e37_79b9u32 ^ arch.len() as u32;
        let mut random = |n: usize, scale: f32, offset: f32| -> Result<Tensor> {
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    offset + scale * ((state as f32 / u32::MAX as f32) * 2.0 - 1.0)
                })
                .collect();
            Tensor::from_vec(values, n, &Device::Cpu)
        };
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let mut matrix = |name: String, rows: usize, cols: usize, scale: f32| -> Result<()> {
            let t = random(rows * cols, scale, 0.0)?.reshape((rows, cols))?;
            tensors.push((name, QTensor::quantize(&t, GgmlDType::F32)?));
            Ok(())
        };
        matrix("token_embd.weight".into(), vocab, dim, 1.0)?;
        for i in 0..2 {
            // Large query and key weights make attention peaked, so a wrong rotation or head
            // mapping moves the logits a lot.
            matrix(format!("blk.{i}.attn_q.weight"), heads * head, dim, 0.6)?;
            matrix(format!("blk.{i}.attn_k.weight"), kv_heads * head, dim, 0.6)?;
            matrix(format!("blk.{i}.attn_v.weight"), kv_heads * head, dim, 0.3)?;
            matrix(
                format!("blk.{i}.attn_output.weight"),
                dim,
                heads * head,
                0.3,
            )?;
            matrix(format!("blk.{i}.ffn_gate.weight"), ff, dim, 0.3)?;
            matrix(format!("blk.{i}.ffn_up.weight"), ff, dim, 0.3)?;
            matrix(format!("blk.{i}.ffn_down.weight"), dim, ff, 0.3)?;
        }
        let mut vector = |name: String, n: usize, scale: f32, offset: f32| -> Result<()> {
            let t = random(n, scale, offset)?;
            tensors.push((name, QTensor::quantize(&t, GgmlDType::F32)?));
            Ok(())
        };
        vector("output_norm.weight".into(), dim, 0.2, 1.0)?;
        for i in 0..2 {
            vector(format!("blk.{i}.attn_norm.weight"), dim, 0.2, 1.0)?;
            vector(format!("blk.{i}.ffn_norm.weight"), dim, 0.2, 1.0)?;
            if arch == "qwen2" {
                vector(format!("blk.{i}.attn_q.bias"), heads * head, 0.5, 0.0)?;
                vector(format!("blk.{i}.attn_k.bias"), kv_heads * head, 0.5, 0.0)?;
                vector(format!("blk.{i}.attn_v.bias"), kv_heads * head, 0.5, 0.0)?;
            }
            if arch == "qwen3" {
                vector(format!("blk.{i}.attn_q_norm.weight"), head, 0.2, 1.0)?;
                vector(format!("blk.{i}.attn_k_norm.weight"), head, 0.2, 1.0)?;
            }
        }
        let key = |k: &str| format!("{arch}.{k}");
        let metadata = [
            ("general.architecture".to_string(), V::String(arch.into())),
            // F32 activations in candle-transformers' Qwen3, as here.
            ("general.dtype".to_string(), V::U32(0)),
            (key("embedding_length"), V::U32(dim as u32)),
            (key("block_count"), V::U32(2)),
            (key("attention.head_count"), V::U32(heads as u32)),
            (key("attention.head_count_kv"), V::U32(kv_heads as u32)),
            (key("attention.key_length"), V::U32(head as u32)),
            (key("rope.dimension_count"), V::U32(head as u32)),
            (key("context_length"), V::U32(64)),
            (key("feed_forward_length"), V::U32(ff as u32)),
            (key("attention.layer_norm_rms_epsilon"), V::F32(1e-6)),
            (key("rope.freq_base"), V::F32(10_000.0)),
        ];
        let metadata: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut file = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut file, &metadata, &tensors)?;
        Ok(file.into_inner())
    }

    /// A model's forward pass: tokens at a position to the last token's logits.
    type Forward = Box<dyn FnMut(&Tensor, usize) -> Result<Tensor>>;

    #[test]
    fn each_architecture_matches_candle_transformers() -> Result<()> {
        use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
        for arch in ["llama", "qwen2", "qwen3"] {
            let bytes = tiny_gguf(arch)?;
            let content = || gguf_file::Content::read(&mut std::io::Cursor::new(&bytes));
            let mut reader = std::io::Cursor::new(&bytes);
            let mut ours = Transformer::load(&content()?, &mut reader, &Device::Cpu, arch, 64)?;
            let mut reference: Forward = match arch {
                "llama" => {
                    let mut m = quantized_llama::ModelWeights::from_gguf(
                        content()?,
                        &mut reader,
                        &Device::Cpu,
                    )?;
                    Box::new(move |x, p| m.forward(x, p))
                }
                "qwen2" => {
                    let mut m = quantized_qwen2::ModelWeights::from_gguf(
                        content()?,
                        &mut reader,
                        &Device::Cpu,
                    )?;
                    Box::new(move |x, p| m.forward(x, p))
                }
                _ => {
                    let mut m = quantized_qwen3::ModelWeights::from_gguf(
                        content()?,
                        &mut reader,
                        &Device::Cpu,
                    )?;
                    Box::new(move |x, p| m.forward(x, p))
                }
            };
            // A prompt (the tensor path), then single tokens (the slice path).
            let steps: [(&[u32], usize); 4] =
                [(&[1, 5, 9, 13, 2], 0), (&[7], 5), (&[3], 6), (&[11], 7)];
            for (tokens, position) in steps {
                let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
                let a: Vec<f32> = ours.forward(&input, position)?.flatten_all()?.to_vec1()?;
                let b: Vec<f32> = reference(&input, position)?.flatten_all()?.to_vec1()?;
                assert_eq!(a.len(), b.len());
                let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-3 * largest,
                    "{arch} at {position}: logits differ by {worst} (largest {largest})"
                );
            }
        }
        Ok(())
    }
}
