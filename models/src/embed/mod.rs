//! Sentence embeddings with BERT-family models (all-MiniLM, BGE, ...) in sentence-transformers'
//! layout, on candle-transformers' BERT: the model's own tokenizer, truncation length, pooling
//! and normalisation, read from its files; texts embedded in batches of similar length.
//!
//! Truncation, the documented rule: a text is cut to the model's window (`max_seq_length` of
//! `sentence_bert_config.json`, else the position embeddings' length), counting the special
//! tokens, exactly as sentence-transformers cuts it; every [`Embedding`] says whether its text
//! was cut and how many tokens it had, so nothing is cut silently.

pub mod bert;
pub mod pooling;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::source::{ModelSource, SourceError};
use bert::PackedBert;
pub use pooling::{Pooling, PoolingMode};

/// Texts embedded in one forward pass.
const BATCH: usize = 32;

/// Where a model's folder is: on disk, or a Hugging Face hub repository (`owner/name`), whose
/// files are fetched one by one into the hub cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFolder {
    /// A sentence-transformers folder on disk.
    Local(PathBuf),
    /// A hub repository, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    Hub(String),
}

impl ModelFolder {
    /// Reads what the user wrote: an existing folder, else `owner/name` on the hub.
    pub fn parse(text: &str) -> Result<Self, EmbedError> {
        let path = Path::new(text);
        if path.is_dir() {
            return Ok(Self::Local(path.into()));
        }
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) && !path.exists() {
            return Ok(Self::Hub(text.into()));
        }
        Err(EmbedError::Load(format!(
            "'{text}' is neither a model folder nor a hub repository (owner/name, e.g. \
             sentence-transformers/all-MiniLM-L6-v2)"
        )))
    }

    /// The local path of one of the model's files; `None` for an optional file it lacks.
    fn file(&self, name: &str, required: bool) -> Result<Option<PathBuf>, EmbedError> {
        match self {
            Self::Local(dir) => {
                let path = dir.join(name);
                match (path.is_file(), required) {
                    (true, _) => Ok(Some(path)),
                    (false, false) => Ok(None),
                    (false, true) => Err(EmbedError::Load(format!(
                        "{} is missing: a sentence-transformers folder has config.json, \
                         tokenizer.json and model.safetensors",
                        path.display()
                    ))),
                }
            }
            Self::Hub(repo) => {
                let source = ModelSource::Hub {
                    repo: repo.clone(),
                    file: name.into(),
                };
                match source.resolve() {
                    Ok(path) => Ok(Some(path)),
                    Err(e) if !required => {
                        tracing::debug!("{repo} has no {name} ({e}): using the default");
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

impl std::fmt::Display for ModelFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::Hub(repo) => f.write_str(repo),
        }
    }
}

/// Why a model could not load or a text could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A file could not be had.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The model's files are missing or not what a BERT sentence model has.
    #[error("{0}")]
    Load(String),
    /// A text is empty (or only whitespace): it has no meaning to embed.
    #[error("text {0} is empty; give each text some words")]
    EmptyText(usize),
    /// The tokenizer failed.
    #[error("tokenizing failed: {0}")]
    Tokenize(String),
    /// The model failed.
    #[error("the embedding model failed: {0}")]
    Model(#[from] candle_core::Error),
}

/// One text's vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The vector (unit length when the model normalises).
    pub vector: Vec<f32>,
    /// Tokens the text had, special tokens included, before any truncation.
    pub tokens: usize,
    /// The text was longer than the model's window and was cut to it.
    pub truncated: bool,
}

/// The encoder, by device.
enum Encoder {
    /// This crate's packed encoder, on the CPU.
    Packed(PackedBert),
    /// candle-transformers' BERT, on a GPU.
    Candle(BertModel),
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    encoder: Encoder,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation: counts a cut text's tokens.
    counter: Tokenizer,
    pooling: Pooling,
    max_tokens: usize,
    dimension: usize,
    name: String,
}

impl Embedder {
    /// Loads a sentence-transformers BERT model onto `device`.
    pub fn load(folder: &ModelFolder, device: &Device) -> Result<Self, EmbedError> {
        let read = |name: &str, required: bool| -> Result<Option<String>, EmbedError> {
            folder
                .file(name, required)?
                .map(|path| {
                    std::fs::read_to_string(&path).map_err(|e| {
                        EmbedError::Load(format!("cannot read {}: {e}", path.display()))
                    })
                })
                .transpose()
        };
        let config_text = read("config.json", true)?.unwrap_or_default();
        let config: Config = serde_json::from_str(&config_text).map_err(|e| {
            EmbedError::Load(format!(
                "{folder}/config.json is not a BERT configuration ({e}); only BERT-family \
                 models are supported"
            ))
        })?;
        let pooling = Pooling::from_configs(
            read("1_Pooling/config.json", false)?.as_deref(),
            read("modules.json", false)?.as_deref(),
        )
        .map_err(EmbedError::Load)?;
        let max_tokens = read("sentence_bert_config.json", false)?
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v.get("max_seq_length")?.as_u64())
            .map_or(config.max_position_embeddings, |n| n as usize)
            .min(config.max_position_embeddings);
        let tokenizer_path = folder.file("tokenizer.json", true)?.unwrap_or_default();
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| EmbedError::Load(format!("{}: {e}", tokenizer_path.display())))?;
        let mut counter = tokenizer.clone();
        counter
            .with_truncation(None)
            .map_err(|e| EmbedError::Load(format!("tokenizer: {e}")))?;
        counter.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Load(format!("tokenizer: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..PaddingParams::default()
        }));
        let weights = folder.file("model.safetensors", true)?.unwrap_or_default();
        let encoder = if device.is_cpu() {
            Encoder::Packed(PackedBert::load(&weights, &config)?)
        } else {
            // SAFETY: the weights file is mapped read-only and not changed while the model
            // lives (candle's documented requirement for mmapped safetensors).
            let vb =
                unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
            Encoder::Candle(BertModel::load(vb, &config)?)
        };
        let name = match folder {
            ModelFolder::Local(path) => path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            ModelFolder::Hub(repo) => repo.clone(),
        };
        Ok(Self {
            encoder,
            tokenizer,
            counter,
            pooling,
            max_tokens,
            dimension: config.hidden_size,
            name,
        })
    }

    /// The vectors' length.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The model's window in tokens: longer texts are truncated to it.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The model's name (its folder or repository).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pooling read from the model's files.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Embeds `texts`, in order. Texts are grouped by length into batches so that little
    /// padding is computed; `progress` hears how many are done after each batch.
    pub fn embed(
        &self,
        texts: &[&str],
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<Embedding>, EmbedError> {
        if let Some(empty) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(EmbedError::EmptyText(empty));
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out: Vec<Option<Embedding>> = vec![None; texts.len()];
        let mut done = 0;
        for batch in order.chunks(BATCH) {
            let inputs: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
            for (slot, embedding) in batch.iter().zip(self.embed_batch(&inputs)?) {
                out[*slot] = Some(embedding);
            }
            done += batch.len();
            progress(done);
        }
        Ok(out
            .into_iter()
            .map(|e| e.expect("every slot filled"))
            .collect())
    }

    /// One forward pass over texts of similar length.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let vectors = match &self.encoder {
            Encoder::Packed(model) => {
                // The tokenizer pads on the right: a text's own tokens come first.
                let texts: Vec<&[u32]> = encodings
                    .iter()
                    .map(|e| {
                        let own = e.get_attention_mask().iter().filter(|&&m| m == 1).count();
                        &e.get_ids()[..own]
                    })
                    .collect();
                let rows = model.forward(&texts)?;
                let mut start = 0;
                texts
                    .iter()
                    .map(|text| {
                        let end = start + text.len() * self.dimension;
                        let vector = self.pooling.pool_rows(&rows[start..end], self.dimension);
                        start = end;
                        vector
                    })
                    .collect()
            }
            Encoder::Candle(model) => {
                let device = &model.device;
                let rows =
                    |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> candle_core::Result<Tensor> {
                        let rows: Vec<Tensor> = encodings
                            .iter()
                            .map(|e| Tensor::new(f(e), device))
                            .collect::<candle_core::Result<_>>()?;
                        Tensor::stack(&rows, 0)
                    };
                let ids = rows(&|e| e.get_ids())?;
                let mask = rows(&|e| e.get_attention_mask())?;
                let types = ids.zeros_like()?;
                let hidden = model.forward(&ids, &types, Some(&mask))?;
                self.pooling.apply(&hidden, &mask)?.to_vec2::<f32>()?
            }
        };
        vectors
            .into_iter()
            .zip(&encodings)
            .zip(texts)
            .map(|((vector, encoding), text)| {
                let truncated = !encoding.get_overflowing().is_empty();
                let tokens = if truncated {
                    self.counter
                        .encode(*text, true)
                        .map_err(|e| EmbedError::Tokenize(e.to_string()))?
                        .len()
                } else {
                    encoding
                        .get_attention_mask()
                        .iter()
                        .filter(|&&m| m == 1)
                        .count()
                };
                Ok(Embedding {
                    vector,
                    tokens,
                    truncated,
                })
            })
            .collect()
    }
}
