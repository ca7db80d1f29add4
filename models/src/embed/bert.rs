//! BERT's encoder on the CPU for sentence embeddings, a batch's texts packed end to end.
//!
//! candle-transformers' BERT pads every text of a batch to the longest, runs attention as
//! products batched over texts × heads with a new tensor for every step, and takes GELU's erf one
//! value at a time; on a CPU that overhead, more than the arithmetic, set its speed. Here a batch
//! is one matrix of all its texts' tokens, without padding: each layer is four matrix products
//! over it (query, key and value fused into one), attention text by text, and the norms and GELU
//! as loops over rows split over threads by rayon. The products are `gemm`'s kernels, the ones
//! candle calls. Its vectors match sentence-transformers' (`models/tests/embed.rs`); on a GPU the
//! embedder keeps candle-transformers' model.

use std::path::Path;

use candle_core::{DType, Device};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use super::EmbedError;

/// Products smaller than this many multiply-adds run on one thread: handing them to the pool
/// costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// A weight matrix (`outputs` rows of `inputs` values, as BERT stores it) and its bias.
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    outputs: usize,
    inputs: usize,
}

impl Linear {
    /// `out = x · weightᵀ + bias` for the `n` rows of `x`.
    fn forward(&self, x: &[f32], n: usize, out: &mut Vec<f32>) {
        assert_eq!(x.len(), n * self.inputs, "input rows of the wrong size");
        out.clear();
        for _ in 0..n {
            out.extend_from_slice(&self.bias);
        }
        let parallelism = if n * self.outputs * self.inputs < PARALLEL_MIN_WORK {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(0)
        };
        // SAFETY: `out` holds n × outputs values and `x` n × inputs (checked above), `weight`
        // outputs × inputs; the strides below address exactly those row-major layouts, with
        // the weight read transposed (element (k, j) at j·inputs + k). `out` does not overlap
        // the inputs.
        unsafe {
            gemm::gemm(
                n,
                self.outputs,
                self.inputs,
                out.as_mut_ptr(),
                1,
                self.outputs as isize,
                true,
                x.as_ptr(),
                1,
                self.inputs as isize,
                self.weight.as_ptr(),
                self.inputs as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// Layer normalisation over each row, with BERT's epsilon.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// `x = norm(x + residual)`, row by row (`residual` may be empty: no residual).
    fn apply(&self, x: &mut [f32], residual: &[f32]) {
        let size = self.weight.len();
        let rows = x.par_chunks_mut(size);
        let each = |row: &mut [f32]| {
            let n = size as f32;
            let mean = sum(row) / n;
            for v in row.iter_mut() {
                *v -= mean;
            }
            let variance = sum_of_squares(row) / n;
            let scale = 1.0 / (variance + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = *v * scale * w + b;
            }
        };
        if residual.is_empty() {
            rows.for_each(each);
        } else {
            rows.zip(residual.par_chunks(size)).for_each(|(row, r)| {
                for (v, r) in row.iter_mut().zip(r) {
                    *v += r;
                }
                each(row);
            });
        }
    }
}

/// One encoder layer.
struct Layer {
    /// Query, key and value in one matrix: rows 0..h the query's, h..2h the key's, then value.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// Buffers a forward pass reuses from layer to layer.
#[derive(Default)]
struct Scratch {
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// A BERT encoder's weights, as plain rows for the CPU.
pub struct PackedBert {
    words: Vec<f32>,
    positions: Vec<f32>,
    /// Token type 0's vector: sentence embedding gives every token type 0.
    type_zero: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    activation: HiddenAct,
}

impl PackedBert {
    /// Reads a BERT model's weights from its safetensors file (names with or without a
    /// `bert.` prefix, any float type).
    pub fn load(weights: &Path, config: &Config) -> Result<Self, EmbedError> {
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)?;
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, EmbedError> {
            let full = format!("{prefix}{name}");
            let tensor = tensors.get(&full).ok_or_else(|| {
                EmbedError::Load(format!(
                    "{} has no tensor {full}: it is not a BERT model's weights",
                    weights.display()
                ))
            })?;
            if tensor.dims() != shape {
                return Err(EmbedError::Load(format!(
                    "{full} has the shape {:?}, and config.json means {shape:?}",
                    tensor.dims()
                )));
            }
            Ok(tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let (h, inner) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps as f32;
        let norm = |name: &str| -> Result<Norm, EmbedError> {
            Ok(Norm {
                weight: get(&format!("{name}.weight"), &[h])?,
                bias: get(&format!("{name}.bias"), &[h])?,
                eps,
            })
        };
        let linear = |name: &str, outputs: usize, inputs: usize| -> Result<Linear, EmbedError> {
            Ok(Linear {
                weight: get(&format!("{name}.weight"), &[outputs, inputs])?,
                bias: get(&format!("{name}.bias"), &[outputs])?,
                outputs,
                inputs,
            })
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let at = |name: &str| format!("encoder.layer.{i}.{name}");
                let parts = ["query", "key", "value"]
                    .map(|part| linear(&at(&format!("attention.self.{part}")), h, h));
                let [q, k, v] = parts;
                let (q, k, v) = (q?, k?, v?);
                Ok(Layer {
                    qkv: Linear {
                        weight: [q.weight, k.weight, v.weight].concat(),
                        bias: [q.bias, k.bias, v.bias].concat(),
                        outputs: 3 * h,
                        inputs: h,
                    },
                    attention_out: linear(&at("attention.output.dense"), h, h)?,
                    attention_norm: norm(&at("attention.output.LayerNorm"))?,
                    up: linear(&at("intermediate.dense"), inner, h)?,
                    down: linear(&at("output.dense"), h, inner)?,
                    out_norm: norm(&at("output.LayerNorm"))?,
                })
            })
            .collect::<Result<_, EmbedError>>()?;
        let types = get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        if config.num_attention_heads == 0 || h % config.num_attention_heads != 0 {
            return Err(EmbedError::Load(format!(
                "config.json: {} heads do not divide the hidden size {h}",
                config.num_attention_heads
            )));
        }
        Ok(Self {
            words: get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            positions: get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            type_zero: types[..h].to_vec(),
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            activation: config.hidden_act,
        })
    }

    /// The last layer's token vectors for `texts` (each a text's token ids, special tokens
    /// included), as one row per token, the texts one after another.
    pub fn forward(&self, texts: &[&[u32]]) -> Result<Vec<f32>, EmbedError> {
        let h = self.hidden;
        let vocabulary = self.words.len() / h;
        let window = self.positions.len() / h;
        let tokens: usize = texts.iter().map(|t| t.len()).sum();
        let mut x = Vec::with_capacity(tokens * h);
        for text in texts {
            if text.len() > window {
                return Err(EmbedError::Load(format!(
                    "a text of {} tokens is longer than the model's {window} positions",
                    text.len()
                )));
            }
            for (position, &id) in text.iter().enumerate() {
                let id = id as usize;
                if id >= vocabulary {
                    return Err(EmbedError::Tokenize(format!(
                        "token id {id} is outside the model's vocabulary of {vocabulary}"
                    )));
                }
                let word = &self.words[id * h..][..h];
                let place = &self.positions[position * h..][..h];
                x.extend(
                    word.iter()
                        .zip(place)
                        .zip(&self.type_zero)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        self.embedding_norm.apply(&mut x, &[]);
        let lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        let mut scratch = Scratch::default();
        for layer in &self.layers {
            self.layer(layer, &mut x, &lengths, &mut scratch);
        }
        Ok(x)
    }

    /// One encoder layer over the packed rows `x`, in place.
    fn layer(&self, layer: &Layer, x: &mut Vec<f32>, lengths: &[usize], s: &mut Scratch) {
        let (h, n) = (self.hidden, x.len() / self.hidden);
        layer.qkv.forward(x, n, &mut s.qkv);
        s.context.clear();
        s.context.resize(n * h, 0.0);
        self.attend(&s.qkv, lengths, &mut s.context);
        layer.attention_out.forward(&s.context, n, &mut s.attended);
        layer.attention_norm.apply(&mut s.attended, x);
        layer.up.forward(&s.attended, n, &mut s.up);
        let activation = self.activation;
        s.up.par_chunks_mut(4096)
            .for_each(|chunk| activate(activation, chunk));
        layer.down.forward(&s.up, n, &mut s.down);
        layer.out_norm.apply(&mut s.down, &s.attended);
        std::mem::swap(x, &mut s.down);
    }

    /// Self-attention within each text (no text sees another's tokens), every head:
    /// `context = softmax(q · kᵀ / √d) · v`, from the fused `qkv` rows.
    fn attend(&self, qkv: &[f32], lengths: &[usize], context: &mut [f32]) {
        let h = self.hidden;
        let size = h / self.heads;
        let scale = 1.0 / (size as f32).sqrt();
        // Each text's rows of the context, with where its rows start in `qkv`.
        let mut pieces = Vec::with_capacity(lengths.len());
        let (mut rest, mut start) = (context, 0);
        for &len in lengths {
            let (piece, tail) = rest.split_at_mut(len * h);
            pieces.push((piece, start, len));
            rest = tail;
            start += len;
        }
        pieces.into_par_iter().for_each(|(out, start, len)| {
            let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
            let mut scores = vec![0f32; len * len];
            for head in 0..self.heads {
                let q = &rows[head * size..];
                let k = &rows[h + head * size..];
                let v = &rows[2 * h + head * size..];
                // SAFETY: `scores` holds len × len values; q and k address len rows of `size`
                // values, 3h apart, inside `rows` (len × 3h values, the head's columns within
                // each row); the key is read transposed (element (d, j) at j·3h + d).
                unsafe {
                    gemm::gemm(
                        len,
                        len,
                        size,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        q.as_ptr(),
                        1,
                        3 * h as isize,
                        k.as_ptr(),
                        3 * h as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for row in scores.chunks_exact_mut(len) {
                    softmax(row);
                }
                let out = &mut out[head * size..];
                // SAFETY: `out` addresses len rows of `size` values, h apart, inside this
                // text's context rows (len × h values); `scores` is len × len; v addresses len
                // rows of `size` values, 3h apart, inside `rows`. `out` overlaps neither.
                unsafe {
                    gemm::gemm(
                        len,
                        size,
                        len,
                        out.as_mut_ptr(),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v.as_ptr(),
                        1,
                        3 * h as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
    }
}

/// Applies the feed-forward activation in place, on the widest vectors the CPU has.
fn activate(activation: HiddenAct, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        unsafe { activate_avx512(activation, x) };
        return;
    }
    activate_each(activation, x);
}

/// [`activate_each`] compiled for AVX-512: the same code, vectorized 16 values wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn activate_avx512(activation: HiddenAct, x: &mut [f32]) {
    activate_each(activation, x);
}

#[inline(always)]
fn activate_each(activation: HiddenAct, x: &mut [f32]) {
    match activation {
        HiddenAct::Gelu => x.iter_mut().for_each(|v| *v = gelu(*v)),
        HiddenAct::GeluApproximate => x.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
        HiddenAct::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// GELU as BERT defines it: `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation: `x/2 · (1 + tanh(√(2/π)(x + 0.044715x³)))`.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    let inner = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    // tanh(y) = 1 − 2/(e^{2y} + 1), through the same branch-free exp.
    let tanh = 1.0 - 2.0 / (exp(2.0 * inner) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), without branches, so that
/// loops over it vectorize.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// e^x without branches (relative error about 2e-7; results below e^-87 are flushed to about
/// 1e-38, above e^88 held there).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to the nearest integer by the float trick (|value| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // r = x − n·ln2, with ln2 split in two for precision.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax of one row of scores, in place.
fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let total = sum(row);
    for v in row.iter_mut() {
        *v /= total;
    }
}

/// A sum over eight lanes, so that it vectorizes (a float sum in order cannot).
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Σx², over eight lanes like [`sum`].
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v * v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_erf_and_gelu_match_the_standard_functions() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let e = exp(x);
            let expected = (x as f64).exp() as f32;
            assert!(
                (e - expected).abs() <= 3e-7 * expected,
                "exp({x}) = {e}, not {expected}"
            );
        }
        // The standard library has no erf: known values instead.
        for (x, expected) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-1.0, -0.842_700_8),
            (2.0, 0.995_322_3),
            (4.0, 0.999_999_98),
        ] {
            assert!((erf(x) - expected).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-3.0) - -0.004_049_7).abs() < 1e-6);
        let mut wide: Vec<f32> = (-64..64).map(|i| i as f32 / 8.0).collect();
        let each: Vec<f32> = wide.iter().map(|&v| gelu(v)).collect();
        activate(HiddenAct::Gelu, &mut wide);
        assert_eq!(
            wide, each,
            "the vectorized GELU differs from the scalar one"
        );
    }

    #[test]
    fn sums_over_lanes_match_plain_sums() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        assert_eq!(sum(&x), x.iter().sum::<f32>());
        assert_eq!(sum_of_squares(&x), x.iter().map(|v| v * v).sum::<f32>());
    }
}
