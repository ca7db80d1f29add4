//! A `tokenizers` tokenizer rebuilt from a GGUF file's own metadata, so a single `.gguf` is
//! all a model needs. Byte-level BPE (`tokenizer.ggml.model = gpt2`: Llama 3, SmolLM, Qwen,
//! Mistral Nemo...) is supported; SentencePiece vocabularies need a `tokenizer.json`.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::LlmError;

/// The pre-tokenizer regex of Qwen2/2.5/3.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The pre-tokenizer regex of Llama 3.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types that are not ordinary text.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

fn strings(content: &Content, key: &str) -> Result<Vec<String>, LlmError> {
    match content.metadata.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.to_string().cloned().map_err(|_| bad(key)))
            .collect(),
        _ => Err(bad(key)),
    }
}

fn bad(key: &str) -> LlmError {
    LlmError::Tokenizer(format!("the GGUF has no usable {key}"))
}

/// A metadata string, if present.
pub(super) fn meta_str<'a>(content: &'a Content, key: &str) -> Option<&'a str> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

/// A metadata integer, if present.
pub(super) fn meta_u32(content: &Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Builds the tokenizer described by the GGUF metadata.
pub(super) fn from_gguf(content: &Content) -> Result<Tokenizer, LlmError> {
    let kind = meta_str(content, "tokenizer.ggml.model").unwrap_or("(none)");
    if kind != "gpt2" {
        return Err(LlmError::Tokenizer(format!(
            "the GGUF's tokenizer is '{kind}'; only byte-level BPE ('gpt2') can be rebuilt from \
             GGUF metadata, so pass the model's tokenizer.json with --tokenizer"
        )));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let merges = strings(content, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LlmError::Tokenizer(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let add_prefix_space = content
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, LlmError> {
        Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(PreTokenizerWrapper::Split)
        .map_err(|e| LlmError::Tokenizer(format!("bad pre-tokenizer pattern: {e}")))
    };
    let pre = meta_str(content, "tokenizer.ggml.pre").unwrap_or("default");
    let pre_tokenizer = match pre {
        "qwen2" => Sequence::new(vec![
            split(QWEN2_PATTERN)?,
            ByteLevel::new(add_prefix_space, false, false).into(),
        ]),
        "llama-bpe" | "llama3" => Sequence::new(vec![
            split(LLAMA3_PATTERN)?,
            ByteLevel::new(add_prefix_space, false, false).into(),
        ]),
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(add_prefix_space, false, true).into(),
        ]),
        other => {
            if other != "default" && other != "gpt2" {
                tracing::warn!(
                    "unknown pre-tokenizer '{other}'; using GPT-2's, which may split some text differently"
                );
            }
            Sequence::new(vec![ByteLevel::new(add_prefix_space, false, true).into()])
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}
