//! Converting a CTranslate2 Whisper folder (faster-whisper's format: `model.bin`, `config.json`,
//! `tokenizer.json`) into the GGML file whisper.cpp loads, following whisper.cpp's own
//! `convert-pt-to-ggml.py`: the magic, eleven hyper-parameters, the mel filter bank, the
//! vocabulary as raw bytes, then every tensor under OpenAI's names.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ct2::{f32_to_half, Ct2Model};
use super::SttError;

const GGML_MAGIC: u32 = 0x6767_6d6c;
const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The GGML file written.
    pub output: PathBuf,
    /// Encoder and decoder layers.
    pub layers: (usize, usize),
    /// Tokens written to the vocabulary.
    pub vocabulary: usize,
    /// Tensors written.
    pub tensors: usize,
}

/// Converts the CTranslate2 Whisper model in `folder` into the GGML file `output`.
pub fn import_ct2_whisper(folder: &Path, output: &Path) -> Result<ImportSummary, SttError> {
    let bad = |reason: String| SttError::Import {
        path: folder.into(),
        reason,
    };
    let model = Ct2Model::read(&folder.join("model.bin"))?;
    if model.spec != "WhisperSpec" {
        return Err(bad(format!(
            "a {} model, not a Whisper model (WhisperSpec)",
            model.spec
        )));
    }
    let tokenizer_path = folder.join("tokenizer.json");
    let tokenizer: Value = std::fs::read_to_string(&tokenizer_path)
        .map_err(|e| bad(format!("cannot read {}: {e}", tokenizer_path.display())))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| bad(format!("tokenizer.json: {e}"))))?;
    let tokens = vocabulary(&tokenizer).map_err(bad)?;
    let tensors = tensors(&model).map_err(bad)?;
    let get = |name: &str| model.get(name).map_err(&bad);
    let scalar = |name: &str| -> Result<i32, SttError> {
        get(name)?
            .scalar()
            .map(|v| v as i32)
            .ok_or_else(|| bad(format!("{name} is not a scalar")))
    };
    let layers = |prefix: &str| {
        (0..)
            .take_while(|i| {
                model
                    .variables
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    };
    let embeddings = &get("decoder/embeddings/weight")?.dims;
    let audio_positions = &get("encoder/position_encodings/encodings")?.dims;
    let text_positions = &get("decoder/position_encodings/encodings")?.dims;
    let n_mels = get("encoder/conv1/weight")?.dims[1];
    let (encoder_layers, decoder_layers) = (layers("encoder"), layers("decoder"));
    let hparams = [
        embeddings[0] as i32,
        audio_positions[0] as i32,
        audio_positions[1] as i32,
        scalar("encoder/num_heads")?,
        encoder_layers as i32,
        text_positions[0] as i32,
        text_positions[1] as i32,
        scalar("decoder/num_heads")?,
        decoder_layers as i32,
        n_mels as i32,
        1, // f16 weights
    ];
    if tokens.len() > embeddings[0] {
        return Err(bad(format!(
            "tokenizer.json has {} tokens but the model embeds {}",
            tokens.len(),
            embeddings[0]
        )));
    }

    let write_error = |e: std::io::Error| SttError::Import {
        path: output.into(),
        reason: format!("cannot write: {e}"),
    };
    let partial = output.with_extension(format!("part{}", std::process::id()));
    let mut w = BufWriter::new(std::fs::File::create(&partial).map_err(write_error)?);
    (|| -> std::io::Result<()> {
        w.write_all(&GGML_MAGIC.to_le_bytes())?;
        for h in hparams {
            w.write_all(&h.to_le_bytes())?;
        }
        let filters = mel_filters(n_mels);
        w.write_all(&(n_mels as i32).to_le_bytes())?;
        w.write_all(&((N_FFT / 2 + 1) as i32).to_le_bytes())?;
        for f in filters {
            w.write_all(&f.to_le_bytes())?;
        }
        w.write_all(&(tokens.len() as i32).to_le_bytes())?;
        for token in &tokens {
            w.write_all(&(token.len() as i32).to_le_bytes())?;
            w.write_all(token)?;
        }
        for t in &tensors {
            t.write(&mut w)?;
        }
        w.flush()
    })()
    .map_err(write_error)?;
    drop(w);
    std::fs::rename(&partial, output).map_err(write_error)?;
    Ok(ImportSummary {
        output: output.into(),
        layers: (encoder_layers, decoder_layers),
        vocabulary: tokens.len(),
        tensors: tensors.len(),
    })
}

/// One tensor for the GGML file.
struct Tensor {
    name: String,
    /// Dimensions, outermost first.
    dims: Vec<usize>,
    values: Vec<f32>,
}

impl Tensor {
    /// 1-D tensors, conv biases and positional embeddings stay f32; the rest become f16.
    fn is_f32(&self) -> bool {
        self.dims.len() < 2
            || self.name.ends_with("conv1.bias")
            || self.name.ends_with("conv2.bias")
            || self.name.ends_with("positional_embedding")
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let f32_type = self.is_f32();
        w.write_all(&(self.dims.len() as i32).to_le_bytes())?;
        w.write_all(&(self.name.len() as i32).to_le_bytes())?;
        w.write_all(&(if f32_type { 0i32 } else { 1 }).to_le_bytes())?;
        for d in self.dims.iter().rev() {
            w.write_all(&(*d as i32).to_le_bytes())?;
        }
        w.write_all(self.name.as_bytes())?;
        if f32_type {
            for v in &self.values {
                w.write_all(&v.to_le_bytes())?;
            }
        } else {
            for v in &self.values {
                w.write_all(&f32_to_half(*v).to_le_bytes())?;
            }
        }
        Ok(())
    }
}

/// Every tensor under OpenAI's names, fused CTranslate2 projections split apart.
fn tensors(model: &Ct2Model) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::new();
    let mut copy = |name: &str, from: &str, reshape: Option<Vec<usize>>| -> Result<(), String> {
        let v = model.get(from)?;
        out.push(Tensor {
            name: name.into(),
            dims: reshape.unwrap_or_else(|| v.dims.clone()),
            values: v.to_f32(),
        });
        Ok(())
    };
    for conv in ["conv1", "conv2"] {
        copy(
            &format!("encoder.{conv}.weight"),
            &format!("encoder/{conv}/weight"),
            None,
        )?;
        let bias = model.get(&format!("encoder/{conv}/bias"))?;
        copy(
            &format!("encoder.{conv}.bias"),
            &format!("encoder/{conv}/bias"),
            Some(vec![bias.dims[0], 1]),
        )?;
    }
    copy(
        "encoder.positional_embedding",
        "encoder/position_encodings/encodings",
        None,
    )?;
    copy("encoder.ln_post.weight", "encoder/layer_norm/gamma", None)?;
    copy("encoder.ln_post.bias", "encoder/layer_norm/beta", None)?;
    copy(
        "decoder.token_embedding.weight",
        "decoder/embeddings/weight",
        None,
    )?;
    copy(
        "decoder.positional_embedding",
        "decoder/position_encodings/encodings",
        None,
    )?;
    copy("decoder.ln.weight", "decoder/layer_norm/gamma", None)?;
    copy("decoder.ln.bias", "decoder/layer_norm/beta", None)?;
    for side in ["encoder", "decoder"] {
        for i in 0.. {
            let from = format!("{side}/layer_{i}");
            if !model
                .variables
                .contains_key(&format!("{from}/ffn/linear_0/weight"))
            {
                break;
            }
            let to = format!("{side}.blocks.{i}");
            let mut pairs: Vec<(String, String)> = vec![
                (
                    format!("{to}.mlp_ln.weight"),
                    format!("{from}/ffn/layer_norm/gamma"),
                ),
                (
                    format!("{to}.mlp_ln.bias"),
                    format!("{from}/ffn/layer_norm/beta"),
                ),
                (
                    format!("{to}.mlp.0.weight"),
                    format!("{from}/ffn/linear_0/weight"),
                ),
                (
                    format!("{to}.mlp.0.bias"),
                    format!("{from}/ffn/linear_0/bias"),
                ),
                (
                    format!("{to}.mlp.2.weight"),
                    format!("{from}/ffn/linear_1/weight"),
                ),
                (
                    format!("{to}.mlp.2.bias"),
                    format!("{from}/ffn/linear_1/bias"),
                ),
                (
                    format!("{to}.attn_ln.weight"),
                    format!("{from}/self_attention/layer_norm/gamma"),
                ),
                (
                    format!("{to}.attn_ln.bias"),
                    format!("{from}/self_attention/layer_norm/beta"),
                ),
                (
                    format!("{to}.attn.out.weight"),
                    format!("{from}/self_attention/linear_1/weight"),
                ),
                (
                    format!("{to}.attn.out.bias"),
                    format!("{from}/self_attention/linear_1/bias"),
                ),
            ];
            if side == "decoder" {
                pairs.extend([
                    (
                        format!("{to}.cross_attn_ln.weight"),
                        format!("{from}/attention/layer_norm/gamma"),
                    ),
                    (
                        format!("{to}.cross_attn_ln.bias"),
                        format!("{from}/attention/layer_norm/beta"),
                    ),
                    (
                        format!("{to}.cross_attn.query.weight"),
                        format!("{from}/attention/linear_0/weight"),
                    ),
                    (
                        format!("{to}.cross_attn.query.bias"),
                        format!("{from}/attention/linear_0/bias"),
                    ),
                    (
                        format!("{to}.cross_attn.out.weight"),
                        format!("{from}/attention/linear_2/weight"),
                    ),
                    (
                        format!("{to}.cross_attn.out.bias"),
                        format!("{from}/attention/linear_2/bias"),
                    ),
                ]);
            }
            for (name, source) in pairs {
                let v = model.get(&source)?;
                out.push(Tensor {
                    name,
                    dims: v.dims.clone(),
                    values: v.to_f32(),
                });
            }
            // Fused projections: self-attention Q,K,V in thirds; cross-attention K,V in halves.
            // The key projection has no bias in Whisper.
            let mut split = |fused: &str, parts: &[&str]| -> Result<(), String> {
                let w = model.get(&format!("{from}/{fused}/weight"))?;
                let b = model.get(&format!("{from}/{fused}/bias"))?;
                let (rows, cols) = (w.dims[0] / parts.len(), w.dims[1]);
                let (wv, bv) = (w.to_f32(), b.to_f32());
                for (k, part) in parts.iter().enumerate() {
                    out.push(Tensor {
                        name: format!("{to}.{part}.weight"),
                        dims: vec![rows, cols],
                        values: wv[k * rows * cols..(k + 1) * rows * cols].to_vec(),
                    });
                    if !part.ends_with("key") {
                        out.push(Tensor {
                            name: format!("{to}.{part}.bias"),
                            dims: vec![rows],
                            values: bv[k * rows..(k + 1) * rows].to_vec(),
                        });
                    }
                }
                Ok(())
            };
            split(
                "self_attention/linear_0",
                &["attn.query", "attn.key", "attn.value"],
            )?;
            if side == "decoder" {
                split(
                    "attention/linear_1",
                    &["cross_attn.key", "cross_attn.value"],
                )?;
            }
        }
    }
    Ok(out)
}

/// The vocabulary's regular tokens (those before the first special token), as raw bytes, in
/// id order. whisper.cpp adds the special tokens itself.
fn vocabulary(tokenizer: &Value) -> Result<Vec<Vec<u8>>, String> {
    let vocab = tokenizer
        .pointer("/model/vocab")
        .and_then(Value::as_object)
        .ok_or("tokenizer.json has no model.vocab")?;
    let first_special = tokenizer
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("id")?.as_u64())
        .min()
        .unwrap_or(u64::MAX);
    let mut by_id: Vec<(u64, &str)> = vocab
        .iter()
        .filter_map(|(token, id)| Some((id.as_u64()?, token.as_str())))
        .filter(|(id, _)| *id < first_special)
        .collect();
    by_id.sort_unstable();
    let decoder = byte_decoder();
    by_id
        .iter()
        .enumerate()
        .map(|(i, (id, token))| {
            if *id != i as u64 {
                return Err(format!("tokenizer.json skips token id {i}"));
            }
            token
                .chars()
                .map(|c| {
                    decoder
                        .get(&c)
                        .copied()
                        .ok_or(format!("token {token:?} is not byte-level"))
                })
                .collect()
        })
        .collect()
}

/// GPT-2's byte-level alphabet, reversed: the printable character standing for each byte.
fn byte_decoder() -> HashMap<char, u8> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut map = HashMap::new();
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(char::from_u32(c).expect("valid code point"), b as u8);
    }
    map
}

/// librosa's mel filter bank (Slaney mel scale, Slaney area normalisation) for 16 kHz audio
/// and a 400-point FFT: `n_mels` rows of 201 weights.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let n_freqs = N_FFT / 2 + 1;
    let hz_to_mel = |f: f64| {
        let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
        let min_log_mel = min_log_hz / f_sp;
        let logstep = (6.4f64).ln() / 27.0;
        if f >= min_log_hz {
            min_log_mel + (f / min_log_hz).ln() / logstep
        } else {
            f / f_sp
        }
    };
    let mel_to_hz = |m: f64| {
        let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
        let min_log_mel = min_log_hz / f_sp;
        let logstep = (6.4f64).ln() / 27.0;
        if m >= min_log_mel {
            min_log_hz * (logstep * (m - min_log_mel)).exp()
        } else {
            f_sp * m
        }
    };
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|i| i as f64 * SAMPLE_RATE / N_FFT as f64)
        .collect();
    let (min_mel, max_mel) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(min_mel + (max_mel - min_mel) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut weights = Vec::with_capacity(n_mels * n_freqs);
    for i in 0..n_mels {
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for &f in &fft_freqs {
            let lower = (f - mel_f[i]) / (mel_f[i + 1] - mel_f[i]);
            let upper = (mel_f[i + 2] - f) / (mel_f[i + 2] - mel_f[i + 1]);
            weights.push((lower.min(upper).max(0.0) * enorm) as f32);
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_covers_every_byte_once() {
        let decoder = byte_decoder();
        assert_eq!(decoder.len(), 256);
        assert_eq!(decoder[&'Ġ'], b' ');
        assert_eq!(decoder[&'a'], b'a');
        assert_eq!(decoder[&'Ċ'], b'\n');
    }

    #[test]
    fn mel_filters_match_librosa() {
        let f = mel_filters(80);
        assert_eq!(f.len(), 80 * 201);
        // Values printed by faster-whisper 1.2.1's FeatureExtractor(feature_size=80).mel_filters
        // (librosa's formula in numpy) for 16 kHz, n_fft 400.
        let expected = [
            (0, 1, 0.024_862_595),
            (1, 2, 0.022_871_772),
            (1, 3, 0.0),
            (5, 6, 0.014_908_484),
            (40, 43, 0.014_735_566),
            (60, 90, 0.001_434_534_3),
            (79, 190, 0.002_232_055),
            (79, 200, 0.0),
        ];
        for (row, col, value) in expected {
            let got = f[row * 201 + col];
            assert!(
                (got - value).abs() < 1e-6,
                "filter[{row}][{col}] = {got}, expected {value}"
            );
        }
        let sum: f32 = f.iter().sum();
        assert!((sum - 1.999_024_2).abs() < 1e-4, "sum {sum}");
    }
}
