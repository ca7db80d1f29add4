//! The decoder of Llama-architecture, Qwen2 and Qwen3 GGUF models: the layers and the two
//! forward paths (prompts as tensors, a generated token on slices). Weights are in
//! [`weights`], the key/value buffers in [`kv`].
//!
//! Why not candle-transformers' own quantized models: they run every matrix product through
//! candle's quantized vector-dot kernels, one prompt row at a time, which makes prompt
//! processing several times slower than llama.cpp; and some formats (Q4_1, Q5_x) have no SIMD
//! kernel at all. Here the weights stay quantized, and on the CPU Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
//! and Q2_K to Q6_K run on this crate's own kernels (`quant/`), which take each weight block once
//! for several rows (prompt tokens, or the sequences of a batch); Q8_1 (and, on a GPU, Q4_1 and
//! Q5_x) is repacked at load into Q8_0; the other formats run on candle's kernels. Short prompt
//! chunks (under [`SLICE_PATH_MAX_TOKENS`]) take the same slice path as generated tokens, so a
//! prompt's results do not depend on how it was split.

mod embeddings;
mod kv;
mod weights;

use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Result, Tensor};

use super::cpu_ops;
use super::kv_format::{KvFormat, Q8_BLOCK};
use embeddings::TokenEmbeddings;
pub(in crate::llm) use kv::{KvCache, SequenceCache};
use weights::{meta, meta_f32, CpuValues, Linear, Loader, Projections, RmsNorm};

/// How a GGUF lays out rotary embeddings.
#[derive(Clone, Copy)]
enum Rope {
    /// llama.cpp permutes Llama's Q/K weights so that pairs are adjacent.
    Interleaved,
    /// Qwen's halves layout (GPT-NeoX style).
    Halves,
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
}

/// A loaded decoder: the weights every sequence shares. Each sequence's keys and values are
/// in a [`SequenceCache`] of its own.
pub(super) struct Transformer {
    embeddings: TokenEmbeddings,
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
    /// How caches hold keys and values.
    kv_format: KvFormat,
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
        if !head_dim.is_multiple_of(2) || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            candle_core::bail!(
                "unsupported attention shape: {n_head} query heads, {n_kv_head} key/value \
                 heads of {head_dim} values (heads of an even size, and query heads a \
                 multiple of key/value heads are supported)"
            );
        }
        let eps = meta_f32(content, &key("attention.layer_norm_rms_epsilon"), 1e-6);
        let base = meta_f32(content, &key("rope.freq_base"), 10_000.0);
        let rope = if arch == "llama" {
            Rope::Interleaved
        } else {
            Rope::Halves
        };

        let mut load = Loader {
            content,
            reader,
            device,
        };
        let embedding_q = Arc::new(load.qtensor("token_embd.weight")?);
        let (embeddings, output) = if load.has("output.weight") {
            (
                TokenEmbeddings::new(embedding_q, device)?,
                load.linear("output.weight", None)?,
            )
        } else {
            // Tied: the table is the output layer's matrix. Where that is re-laid, tokens are
            // looked up in it, and the stored copy goes.
            let output = load.linear_from(embedding_q.clone(), None)?;
            let embeddings = match output.relaid_matrix() {
                Some(matrix) => TokenEmbeddings::Output {
                    matrix,
                    dim: embedding_q.shape().dims2()?.1,
                },
                None => TokenEmbeddings::new(embedding_q, device)?,
            };
            (embeddings, output)
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
            kv_format: KvFormat::F16,
        })
    }

    /// Has caches made from now on hold keys and values in `format`: Q8_0 takes the CPU and
    /// heads of whole blocks of 32 values.
    pub(in crate::llm) fn set_kv_format(&mut self, format: KvFormat) -> Result<()> {
        if format == KvFormat::Q8_0 {
            if !self.cos.device().is_cpu() {
                candle_core::bail!("a q8_0 key/value cache runs on the CPU only: use f16 on a GPU");
            }
            if !self.head_dim.is_multiple_of(Q8_BLOCK) {
                candle_core::bail!(
                    "a q8_0 key/value cache takes heads of whole blocks of {Q8_BLOCK} values, and this model's heads have {}: use f16",
                    self.head_dim
                );
            }
        }
        self.kv_format = format;
        Ok(())
    }

    /// How caches hold keys and values.
    pub(in crate::llm) fn kv_format(&self) -> KvFormat {
        self.kv_format
    }

    /// An empty cache for one sequence.
    pub(in crate::llm) fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(self.layers.len(), self.kv_format)
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

    /// Runs `tokens` (shape `[1, seq]`) of the sequence in `cache` starting at `position`, and
    /// returns the logits of the last one. Position 0 starts a new sequence (the cache is
    /// emptied); any other position must be at most the cache's length (what follows it is
    /// dropped).
    ///
    /// On the CPU it runs inside candle's thread pool: the many small parallel operations of a
    /// step then find its threads awake, instead of each waking a sleeping one from outside (a
    /// wake-up costs tens of microseconds, and a step has hundreds of operations).
    pub(super) fn forward(
        &self,
        cache: &mut SequenceCache,
        tokens: &Tensor,
        position: usize,
    ) -> Result<Tensor> {
        let device = tokens.device().clone();
        device.with_context(|| self.step(cache, tokens, position))
    }

    /// Tokens of several sequences in one pass over the weights (each weight row is read
    /// once for all of them), on the CPU: a generated token each, or a chunk of a prompt.
    /// Returns, one after another, the logits after the last token of each sequence that
    /// wants them. A sequence's results depend neither on the others in the pass nor on how
    /// its tokens were split into passes.
    pub(super) fn forward_tokens(&self, next: &mut [SequenceTokens<'_>]) -> Result<Vec<f32>> {
        if let Some(past) = next
            .iter()
            .find(|n| n.position + n.tokens.len() > self.max_positions)
        {
            candle_core::bail!(
                "position {} is past the context window",
                past.position + past.tokens.len()
            );
        }
        self.cos
            .device()
            .clone()
            .with_context(|| self.step_tokens(next))
    }

    fn step(&self, caches: &mut SequenceCache, tokens: &Tensor, position: usize) -> Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        if position + seq > self.max_positions {
            candle_core::bail!("position {} is past the context window", position + seq);
        }
        if batch == 1 && seq < SLICE_PATH_MAX_TOKENS && self.slice_path {
            let tokens = tokens.flatten_all()?.to_vec1::<u32>()?;
            let logits = self.step_tokens(&mut [SequenceTokens {
                cache: caches,
                tokens: &tokens,
                position,
                logits: true,
            }])?;
            return Tensor::from_vec(logits, (1, ()), self.cos.device());
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
            .rows(&tokens.flatten_all()?)?
            .reshape((batch, seq, ()))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (n_head, n_kv_head, head_dim) = (self.n_head, self.n_kv_head, self.head_dim);
        for (layer, cache) in self.layers.iter().zip(&mut caches.layers) {
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
            cache.continue_at(position)?;
            let (k, v) = cache.append(&k, &v)?;
            let (k, v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
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

    /// The tokens of each sequence in `next` through plain loops on slices (`cpu_ops`) and
    /// the quantized kernels: a step of a small model is hundreds of tiny operations, and as
    /// tensor operations their overhead outweighed their work. The matrix products take every
    /// token's row at once; the rest is per row, each attending to its own sequence up to its
    /// own position, so a row's result does not depend on the other rows.
    fn step_tokens(&self, next: &mut [SequenceTokens<'_>]) -> Result<Vec<f32>> {
        let (n_head, n_kv_head, head_dim) = (self.n_head, self.n_kv_head, self.head_dim);
        let groups = n_head / n_kv_head;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let device = self.cos.device().clone();
        // Each row's sequence and position.
        let rows: Vec<(usize, usize)> = next
            .iter()
            .enumerate()
            .flat_map(|(s, n)| (0..n.tokens.len()).map(move |j| (s, n.position + j)))
            .collect();
        let n_rows = rows.len();
        let dim = self.embeddings.dim()?;
        let mut x = Vec::with_capacity(n_rows * dim);
        for n in next.iter() {
            for &token in n.tokens {
                x.extend(self.embeddings.row_values(token as usize)?);
            }
        }
        let mut h = vec![0.0; n_rows * dim];
        let half = head_dim / 2;
        let (cos, sin) = (CpuValues::of(&self.cos)?, CpuValues::of(&self.sin)?);
        let (cos, sin) = (cos.get(), sin.get());
        let rotate = |values: &mut [f32], position: usize| {
            let cos = &cos[position * half..(position + 1) * half];
            let sin = &sin[position * half..(position + 1) * half];
            for head in values.chunks_exact_mut(head_dim) {
                match self.rope {
                    Rope::Interleaved => cpu_ops::rope_interleaved(head, cos, sin),
                    Rope::Halves => cpu_ops::rope_halves(head, cos, sin),
                }
            }
        };
        let width = n_head * head_dim;
        let mut attention = vec![0.0; n_rows * width];
        // Attention's pieces of work: each sequence's key/value heads, with the query heads of
        // all its rows, over spans of cached positions; a row sees its sequence up to its own
        // position. A sequence's spans are `first_span[s]..`, its key/value heads' one after
        // another; a span's parts are `parts[span.parts..]`, `span_parts` floats per row.
        let group_width = groups * head_dim;
        let span_parts = groups * cpu_ops::span_part_len(head_dim);
        let mut spans = Vec::new();
        let mut first_span = Vec::with_capacity(next.len());
        let mut first_row = 0;
        let mut parts_len = 0;
        for n in next.iter() {
            let rows = n.tokens.len();
            let end = n.position + rows;
            first_span.push(spans.len());
            for kv_head in 0..n_kv_head {
                for start in (0..end).step_by(cpu_ops::ATTENTION_SPAN) {
                    spans.push(AttentionSpan {
                        first_row,
                        rows,
                        kv_head,
                        start,
                        len: (end - start).min(cpu_ops::ATTENTION_SPAN),
                        parts: parts_len,
                    });
                    parts_len += rows * span_parts;
                }
            }
            first_row += rows;
        }
        let mut parts = vec![0.0; parts_len];
        // The queries by key/value head, then row: a span's rows' queries one after another.
        let mut queries = vec![0.0; n_rows * width];
        for (index, layer) in self.layers.iter().enumerate() {
            layer.attn_norm.apply(&x, &mut h)?;
            let (mut qkv, sizes) = layer.qkv.rows_product(&h, n_rows)?;
            let qkv_width = qkv.len() / n_rows;
            for n in next.iter_mut() {
                n.cache.layers[index].continue_at(n.position)?;
            }
            for (row, &(s, position)) in qkv.chunks_exact_mut(qkv_width).zip(&rows) {
                let (q, kv) = row.split_at_mut(sizes[0]);
                let (k, v) = kv.split_at_mut(sizes[1]);
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    let (q_in, k_in) = (q.to_vec(), k.to_vec());
                    qn.apply(&q_in, q)?;
                    kn.apply(&k_in, k)?;
                }
                rotate(q, position);
                rotate(k, position);
                next[s].cache.layers[index].push(k, v, n_kv_head, &device)?;
            }
            for (row, qkv) in qkv.chunks_exact(qkv_width).enumerate() {
                for (kv_head, group) in qkv[..width].chunks_exact(group_width).enumerate() {
                    queries[(kv_head * n_rows + row) * group_width..][..group_width]
                        .copy_from_slice(group);
                }
            }
            let caches = next
                .iter()
                .map(|n| n.cache.layers[index].values())
                .collect::<Result<Vec<_>>>()?;
            let parts_out = parts.as_mut_ptr() as usize;
            candle_core::utils::barrier_pool().execute_chunked(spans.len(), |items| {
                for item in items {
                    let span = &spans[item];
                    let (s, first_position) = rows[span.first_row];
                    let (held, capacity) = &caches[s];
                    let (keys, values) = held.get();
                    let cached = (span.kv_head * capacity + span.start) * head_dim
                        ..(span.kv_head * capacity + span.start + span.len) * head_dim;
                    let queries = &queries
                        [(span.kv_head * n_rows + span.first_row) * group_width..]
                        [..span.rows * group_width];
                    let visible: Vec<usize> = (first_position..first_position + span.rows)
                        .map(|p| (p + 1).saturating_sub(span.start).min(span.len))
                        .collect();
                    let len = span.rows * span_parts;
                    // SAFETY: each span's parts are written by one worker only, and lie
                    // inside `parts` (`span.parts + len <= parts_len`).
                    let parts = unsafe {
                        std::slice::from_raw_parts_mut((parts_out as *mut f32).add(span.parts), len)
                    };
                    cpu_ops::attend_span(
                        queries,
                        &visible,
                        keys.slice(cached.clone()),
                        values.slice(cached),
                        head_dim,
                        scale,
                        parts,
                    );
                }
            });
            drop(caches);
            for (row, &(s, position)) in rows.iter().enumerate() {
                let n = &next[s];
                let (end, local) = (n.position + n.tokens.len(), position - n.position);
                let per_head = end.div_ceil(cpu_ops::ATTENTION_SPAN);
                for kv_head in 0..n_kv_head {
                    let first = first_span[s] + kv_head * per_head;
                    let span_parts = spans[first..first + per_head]
                        .iter()
                        .map(|span| &parts[span.parts + local * span_parts..][..span_parts]);
                    let out = &mut attention[row * width + kv_head * group_width..][..group_width];
                    cpu_ops::merge_spans(span_parts, head_dim, out);
                }
            }
            let o = layer.o.rows_product(&attention, n_rows)?;
            cpu_ops::add(&mut x, &o);
            layer.ffn_norm.apply(&x, &mut h)?;
            let (mut gate_up, sizes) = layer.gate_up.rows_product(&h, n_rows)?;
            let ff = sizes[0];
            let mut gated = Vec::with_capacity(n_rows * ff);
            let row_width = gate_up.len() / n_rows;
            for row in gate_up.chunks_exact_mut(row_width) {
                let (gate, up) = row.split_at_mut(ff);
                cpu_ops::silu_mul(gate, up);
                gated.extend_from_slice(gate);
            }
            let down = layer.down.rows_product(&gated, n_rows)?;
            cpu_ops::add(&mut x, &down);
        }
        // The output layer only for each sequence's last row, where logits are wanted.
        let mut last = Vec::new();
        let mut end = 0;
        for n in next.iter() {
            end += n.tokens.len();
            if n.logits {
                last.extend_from_slice(&x[(end - 1) * dim..end * dim]);
            }
        }
        let wanted = last.len() / dim;
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let mut normed = vec![0.0; last.len()];
        self.norm.apply(&last, &mut normed)?;
        self.output.rows_product(&normed, wanted)
    }
}

/// Rows past which a sequence's tokens (a prompt run alone) take the tensor path, whose
/// whole-prompt tensor operations measured faster for long prompts than the slice path.
pub(super) const SLICE_PATH_MAX_TOKENS: usize = 32;

/// One piece of attention's work in a batched step: a key/value head of one sequence, with the
/// queries of its `rows` rows from `first_row`, over `len` cached positions from `start`; its
/// results go to `parts` (an offset into the step's parts).
struct AttentionSpan {
    first_row: usize,
    rows: usize,
    kv_head: usize,
    start: usize,
    len: usize,
    parts: usize,
}

/// One sequence's tokens in a batched step ([`Transformer::forward_tokens`]).
pub(in crate::llm) struct SequenceTokens<'a> {
    /// The sequence's keys and values.
    pub(in crate::llm) cache: &'a mut SequenceCache,
    /// The tokens to run: its last generated token, or a chunk of its prompt.
    pub(in crate::llm) tokens: &'a [u32],
    /// The first one's position: at most the cache's length (what follows is dropped).
    pub(in crate::llm) position: usize,
    /// Whether to compute the logits after its last token.
    pub(in crate::llm) logits: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::smollm2;
    use candle_core::quantized::{GgmlDType, QTensor};

    /// Logits after a 5-token prompt and then after each of 4 single tokens.
    fn run(model: &Transformer) -> Result<Vec<Vec<f32>>> {
        let mut cache = model.new_cache();
        let prompt = Tensor::new(&[[1u32, 4093, 314, 253, 5248]], &Device::Cpu)?;
        let mut logits = vec![model
            .forward(&mut cache, &prompt, 0)?
            .flatten_all()?
            .to_vec1()?];
        for (i, token) in [30u32, 216, 1030, 17].into_iter().enumerate() {
            let token = Tensor::new(&[[token]], &Device::Cpu)?;
            logits.push(
                model
                    .forward(&mut cache, &token, 5 + i)?
                    .flatten_all()?
                    .to_vec1()?,
            );
        }
        Ok(logits)
    }

    #[test]
    fn the_slice_path_computes_what_the_tensor_path_does() -> Result<()> {
        let mut file = std::fs::File::open(smollm2())?;
        let content = gguf_file::Content::read(&mut file)?;
        let mut model = Transformer::load(&content, &mut file, &Device::Cpu, "llama", 64)?;
        assert!(model.slice_path);
        let slices = run(&model)?;
        model.slice_path = false;
        let tensors = run(&model)?;

        // Sums in a different order differ in the last bits, and the 8-bit quantization of
        // each product's input can turn that into a step of 1/127: so the paths agree on the
        // choice (but for near ties) and within a few percent (up to 5.2 % seen), not bit for
        // bit. A wrong rotation, head or cache position would change the logits wholesale.
        assert_agree(&slices, &tensors, 0.08);
        Ok(())
    }

    /// Each run's choice is the other's best, or within 1 % of it (a near tie), and their
    /// logits differ by less than `tolerance` of the largest.
    fn assert_agree(runs: &[Vec<f32>], others: &[Vec<f32>], tolerance: f32) {
        let top = |l: &[f32]| {
            l.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        for (a, b) in runs.iter().zip(others) {
            let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (top_a, top_b) = (top(a).expect("logits"), top(b).expect("logits"));
            assert!(
                b[top_b] - b[top_a] < 0.01 * largest && a[top_a] - a[top_b] < 0.01 * largest,
                "the runs choose {top_a} and {top_b}"
            );
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                worst < tolerance * largest,
                "logits differ by {worst} (largest {largest})"
            );
        }
    }

    /// A Q8_0 cache on both paths against the f16 one on the slice path: keys and values
    /// within 1/254 of their block's largest moved the logits by up to 8.6 % of the largest on
    /// the slice path and 8.5 % on the tensor path (7.9 % against an f16 cache on the tensor
    /// path too: the cache's rounding, not a path's), on the second generated token of this
    /// 135M model. A snapshot restored into another cache goes on exactly as the original.
    #[test]
    fn a_q8_0_cache_computes_what_an_f16_one_does() -> Result<()> {
        let mut file = std::fs::File::open(smollm2())?;
        let content = gguf_file::Content::read(&mut file)?;
        let mut model = Transformer::load(&content, &mut file, &Device::Cpu, "llama", 64)?;
        let f16 = run(&model)?;
        model.set_kv_format(KvFormat::Q8_0)?;
        assert_agree(&run(&model)?, &f16, 0.10);
        model.slice_path = false;
        assert_agree(&run(&model)?, &f16, 0.10);

        model.slice_path = true;
        let mut cache = model.new_cache();
        let prompt = Tensor::new(&[[1u32, 4093, 314, 253, 5248]], &Device::Cpu)?;
        model.forward(&mut cache, &prompt, 0)?;
        let mut restored = model.new_cache();
        restored.restore(&cache.snapshot()?)?;
        let token = Tensor::new(&[[30u32]], &Device::Cpu)?;
        let logits = |cache: &mut SequenceCache| -> Result<Vec<f32>> {
            model.forward(cache, &token, 5)?.flatten_all()?.to_vec1()
        };
        assert_eq!(logits(&mut restored)?, logits(&mut cache)?);
        Ok(())
    }

    /// A GPU cache cannot be Q8_0, nor can heads that are not whole blocks: the error says so.
    #[test]
    fn a_q8_0_cache_needs_whole_blocks() -> Result<()> {
        let bytes = tiny_gguf("llama", GgmlDType::F32)?;
        let content = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes))?;
        let mut model = Transformer::load(
            &content,
            &mut std::io::Cursor::new(&bytes),
            &Device::Cpu,
            "llama",
            64,
        )?;
        let error = model.set_kv_format(KvFormat::Q8_0).unwrap_err().to_string();
        assert!(error.contains("heads have 16: use f16"), "{error}");
        Ok(())
    }

    /// A small random model of `arch` as a GGUF file, its matrices in `format`: 2 layers, 4
    /// query heads over 2 key/value heads. In f32 (heads of 16), only the order of sums
    /// separates two correct implementations; k-quants need rows of 256 (heads of 64).
    fn tiny_gguf(arch: &str, format: GgmlDType) -> Result<Vec<u8>> {
        use gguf_file::Value as V;
        let (heads, kv_heads, vocab) = (4usize, 2usize, 96usize);
        let (dim, head, ff) = match format {
            GgmlDType::F32 => (64usize, 16usize, 128usize),
            _ => (256, 64, 512),
        };
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
            tensors.push((name, QTensor::quantize(&t, format)?));
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

    /// f32 weights: the difference is our keys and values rounded to f16 (candle's stay
    /// f32), 2⁻¹¹ relative, which the tiny model's peaked attention magnifies (about 1e-3 of
    /// the largest logit seen).
    #[test]
    fn each_architecture_matches_candle_transformers() -> Result<()> {
        for arch in ["llama", "qwen2", "qwen3"] {
            matches_candle_transformers(arch, GgmlDType::F32, 4e-3)?;
        }
        Ok(())
    }

    /// The k-quant kernels in place. candle rounds a product's input to 8 bits per 256 values
    /// and these kernels per 32, and this model's peaked attention magnifies rounding: against
    /// the exact result (the dequantized weights in f32), each engine was up to 7–10 % of the
    /// largest logit off, so the two may differ by about twice that. A wrong layout or a
    /// misplaced scale is off by the whole logit range.
    #[test]
    fn k_quant_weights_match_candle_transformers() -> Result<()> {
        use GgmlDType::{Q2K, Q3K, Q4K, Q5K, Q6K};
        for format in [Q2K, Q3K, Q4K, Q5K, Q6K] {
            matches_candle_transformers("llama", format, 0.2)?;
        }
        Ok(())
    }

    /// Our logits after a prompt and three single tokens are within `tolerance` of the
    /// largest of candle-transformers' for the same tiny model.
    fn matches_candle_transformers(arch: &str, format: GgmlDType, tolerance: f32) -> Result<()> {
        use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
        {
            let bytes = tiny_gguf(arch, format)?;
            let content = || gguf_file::Content::read(&mut std::io::Cursor::new(&bytes));
            let mut reader = std::io::Cursor::new(&bytes);
            let ours = Transformer::load(&content()?, &mut reader, &Device::Cpu, arch, 64)?;
            let mut cache = ours.new_cache();
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
                let a: Vec<f32> = ours
                    .forward(&mut cache, &input, position)?
                    .flatten_all()?
                    .to_vec1()?;
                let b: Vec<f32> = reference(&input, position)?.flatten_all()?.to_vec1()?;
                assert_eq!(a.len(), b.len());
                let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < tolerance * largest,
                    "{arch} {format:?} at {position}: logits differ by {worst} (largest {largest})"
                );
            }
        }
        Ok(())
    }
}
