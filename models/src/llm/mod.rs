//! Chat models in quantized GGUF files, on candle: Llama-architecture models (Llama, SmolLM2,
//! Mistral), Qwen2/2.5 and Qwen3, picked from the file's own `general.architecture`.
//!
//! ```no_run
//! use models::llm::{ChatMessage, GenerationParams, Llm, Role};
//! let mut llm = Llm::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &models::device::best_device())?;
//! let messages = [ChatMessage { role: Role::User, content: "What is the capital of France?".into() }];
//! let usage = llm.chat(&messages, &GenerationParams::default(), |text| {
//!     print!("{text}");
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! println!("\n{} tokens at {:.0} tokens/s", usage.completion_tokens, usage.tokens_per_second);
//! # Ok::<(), models::llm::LlmError>(())
//! ```

mod cpu_ops;
mod generation;
mod kv_format;
mod quant;
mod stream;
mod template;
mod tokenizer;
mod transformer;

use std::fs::File;
use std::ops::ControlFlow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::Sampling;
use tokenizers::Tokenizer;

pub use generation::Generation;
use generation::{Pace, Slot};
pub use kv_format::KvFormat;
use template::ChatTemplate;
use tokenizer::{meta_str, meta_u32};

/// The kernels a model's weights run with on `device`: on the CPU, the SIMD form this CPU
/// takes (`avx512-vnni`, `avx-vnni`, `avx2` or `portable`), picked at run time; on a GPU, the
/// GPU's own (`cuda`, `metal`).
pub fn kernels(device: &Device) -> &'static str {
    if device.is_cpu() {
        quant::kernel_level()
    } else {
        crate::device::describe(device)
    }
}

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The model file could not be read.
    #[error("cannot read the model file {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The GGUF holds an architecture this engine does not run.
    #[error("the model's architecture '{0}' is not supported; use a GGUF of llama (Llama, SmolLM2, Mistral), qwen2 or qwen3")]
    UnsupportedArchitecture(String),
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed.
    #[error("chat template: {0}")]
    Template(String),
    /// The request does not fit the model.
    #[error("{0}")]
    InvalidRequest(String),
    /// candle failed while running the model.
    #[error("inference failed: {0}")]
    Inference(String),
}

impl From<candle_core::Error> for LlmError {
    fn from(e: candle_core::Error) -> Self {
        Self::Inference(e.to_string())
    }
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "system" => Ok(Self::System),
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            other => Err(format!(
                "unknown role '{other}'; use system, user or assistant"
            )),
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
}

/// How to sample a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 is greedy (always the most likely token).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: Option<f64>,
    /// Keep only the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Penalty (> 1 discourages) for tokens among the last `repeat_last_n`.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the sampler, for reproducible replies.
    pub seed: u64,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// Keep generating past end-of-turn tokens (for benchmarks that need a fixed length).
    pub ignore_eos: bool,
    /// Start from the keys and values the last request left where the prompt begins like it
    /// (llama-server's `cache_prompt`). Off, the prompt runs cold but for the shared start, and
    /// the reply is the same whatever came before.
    pub cache_prompt: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 299792458,
            stop: Vec::new(),
            ignore_eos: false,
            cache_prompt: true,
        }
    }
}

impl GenerationParams {
    /// The highest temperature accepted.
    pub const MAX_TEMPERATURE: f64 = 100.0;
    /// The highest repeat penalty accepted.
    pub const MAX_REPEAT_PENALTY: f32 = 10.0;
    /// The most stop sequences a request may give.
    pub const MAX_STOPS: usize = 16;
    /// The longest stop sequence, in bytes.
    pub const MAX_STOP_BYTES: usize = 256;

    /// Checks the values, naming the first that is out of range.
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |m: String| Err(LlmError::InvalidRequest(m));
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if !(0.0..=Self::MAX_TEMPERATURE).contains(&self.temperature) {
            return bad(format!(
                "temperature must be from 0 to {}, got {}",
                Self::MAX_TEMPERATURE,
                self.temperature
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= Self::MAX_REPEAT_PENALTY) {
            return bad(format!(
                "repeat_penalty must be in (0, {}], got {}",
                Self::MAX_REPEAT_PENALTY,
                self.repeat_penalty
            ));
        }
        if self.stop.len() > Self::MAX_STOPS
            || self.stop.iter().any(|s| s.len() > Self::MAX_STOP_BYTES)
        {
            return bad(format!(
                "at most {} stop sequences of at most {} bytes each",
                Self::MAX_STOPS,
                Self::MAX_STOP_BYTES
            ));
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        if temperature <= 0.0 {
            return Sampling::ArgMax;
        }
        // candle keeps tokens while their summed probability is below p, in f32: a p that
        // rounds to 0 there would keep none. The smallest positive p keeps the top token alone.
        let top_p = self.top_p.map(|p| p.max(f64::from(f32::MIN_POSITIVE)));
        match (self.top_k, top_p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn, or a stop sequence appeared.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI-style name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Most tokens whose keys and values stay in the cache between requests for the next turn
/// of the conversation to reuse (about 120 MB of keys and values for a 1.5B Qwen; llama-server
/// keeps its whole context's).
const HELD_TOKENS_MAX: usize = 2048;

/// Figures of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of those, the tokens whose keys and values were already in the cache (the shared
    /// prefix, or the start of the conversation the last request ran).
    pub cached_prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// From the call to the first generated token (prompt processing included).
    pub time_to_first_token: Duration,
    /// Generated tokens per second after the first.
    pub tokens_per_second: f64,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A `tokenizer.json` to use instead of the one rebuilt from the GGUF (needed for
    /// SentencePiece vocabularies, which GGUF metadata cannot rebuild).
    pub tokenizer_json: Option<std::path::PathBuf>,
    /// How the key/value cache holds keys and values (f16 unless asked).
    pub kv_cache: KvFormat,
}

/// A loaded chat model: weights, tokenizer and chat template, resident until dropped.
pub struct Llm {
    weights: transformer::Transformer,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    device: Device,
    architecture: String,
    name: String,
    context_length: usize,
    /// Token ids that end the assistant's turn.
    eos: Vec<u32>,
    /// The start most conversations share, run once.
    shared_prefix: Option<SharedPrefix>,
    /// One per sequence that can run at once.
    slots: Vec<Slot>,
    /// Context tokens the running requests may reserve together.
    context_budget: usize,
    /// Counts [`Llm::start`] calls, to find the least recently used slot.
    clock: u64,
    pace: Pace,
}

/// The tokens conversations start with (the system prompt, the template's default one or that of
/// [`Llm::share_prefix`], and the header of the user's turn), with the keys and values they
/// leave: a prompt that starts with them runs only the rest. It is fixed in advance, so whether
/// a prompt uses it depends on the prompt alone, and a reply never on the request before it.
struct SharedPrefix {
    tokens: Vec<u32>,
    cache: transformer::KvCache,
}

impl Llm {
    /// Loads a GGUF file onto `device`, with the tokenizer rebuilt from its metadata.
    pub fn load(path: &Path, device: &Device) -> Result<Self, LlmError> {
        Self::load_with(path, device, &LoadOptions::default())
    }

    /// Loads a GGUF file onto `device` with `options`.
    pub fn load_with(
        path: &Path,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self, LlmError> {
        let tokenizer_json = options.tokenizer_json.as_deref();
        let read_error = |message: String| LlmError::Read {
            path: path.display().to_string(),
            message,
        };
        let mut file = File::open(path).map_err(|e| read_error(e.to_string()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| read_error(format!("not a valid GGUF file ({e})")))?;
        let architecture = meta_str(&content, "general.architecture")
            .unwrap_or("(none)")
            .to_string();
        if !matches!(architecture.as_str(), "llama" | "qwen2" | "qwen3") {
            return Err(LlmError::UnsupportedArchitecture(architecture));
        }
        let name = meta_str(&content, "general.name")
            .map(String::from)
            .unwrap_or_else(|| {
                path.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            });
        let context_length = meta_u32(&content, &format!("{architecture}.context_length"))
            .map(|n| n as usize)
            .unwrap_or(2048);
        let tokenizer = match tokenizer_json {
            Some(json) => Tokenizer::from_file(json)
                .map_err(|e| LlmError::Tokenizer(format!("cannot read {}: {e}", json.display())))?,
            None => tokenizer::from_gguf(&content)?,
        };
        let token_text = |key: &str| {
            meta_u32(&content, key)
                .and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let (bos, eos_text) = (
            token_text("tokenizer.ggml.bos_token_id"),
            token_text("tokenizer.ggml.eos_token_id"),
        );
        let template = ChatTemplate::new(
            meta_str(&content, "tokenizer.chat_template"),
            &bos,
            &eos_text,
        )?;
        if template.fallback {
            tracing::warn!("{name} has no chat template; using ChatML");
        }
        let mut eos: Vec<u32> = meta_u32(&content, "tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect();
        for end_of_turn in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
            if let Some(id) = tokenizer.token_to_id(end_of_turn) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        // The rotary tables are sized to the context; cap absurd claims to keep them small.
        let context_length = context_length.min(32_768);
        let mut weights = transformer::Transformer::load(
            &content,
            &mut file,
            device,
            &architecture,
            context_length,
        )
        .map_err(|e| read_error(format!("cannot load the weights ({e})")))?;
        weights
            .set_kv_format(options.kv_cache)
            .map_err(|e| LlmError::InvalidRequest(e.to_string()))?;
        let kernels = kernels(device);
        tracing::info!(%name, %architecture, context_length, kernels, "model loaded");
        let slots = vec![Slot::new(weights.new_cache())];
        let mut llm = Self {
            weights,
            tokenizer,
            template,
            device: device.clone(),
            architecture,
            name,
            context_length,
            eos,
            shared_prefix: None,
            slots,
            context_budget: context_length,
            clock: 0,
            pace: Pace::default(),
        };
        llm.share_prefix(None)?;
        Ok(llm)
    }

    /// Runs ahead the start of conversations that open with `system` as their system message
    /// (`None`: with none), so that their prompts run only what follows it (loading does this
    /// for `None`). Returns how many tokens that start is. The conversations the slots hold
    /// are forgotten, so that what runs next does not depend on what ran before.
    pub fn share_prefix(&mut self, system: Option<&str>) -> Result<usize, LlmError> {
        self.shared_prefix = None;
        self.forget_conversations();
        let render = |text: &str| -> Result<Vec<u32>, LlmError> {
            let mut messages: Vec<ChatMessage> =
                system.map(ChatMessage::system).into_iter().collect();
            messages.push(ChatMessage::user(text));
            self.encode(&self.render_chat(&messages)?)
        };
        // What two unrelated conversations share, but for the last token, into which the
        // user's text may merge.
        let (a, b) = (render("Hello!")?, render("2 + 2 = ?")?);
        let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        if shared < 3 || shared >= self.context_length {
            return Ok(0);
        }
        let tokens = a[..shared - 1].to_vec();
        let input = Tensor::new(tokens.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut cache = self.weights.new_cache();
        self.weights.forward(&mut cache, &input, 0)?;
        tracing::debug!("{} shared prompt tokens run ahead", tokens.len());
        let count = tokens.len();
        self.shared_prefix = Some(SharedPrefix {
            tokens,
            cache: cache.snapshot()?,
        });
        Ok(count)
    }

    /// How the key/value cache holds keys and values.
    pub fn kv_format(&self) -> KvFormat {
        self.weights.kv_format()
    }

    /// The model's name, from its metadata.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `general.architecture` of the GGUF.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Most tokens (prompt and reply together) the model can attend to.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The prompt for a conversation, ready for the assistant's reply.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        self.template.render(messages)
    }

    /// Token ids of `text` (special tokens in it are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LlmError::Tokenizer(format!("cannot encode the prompt: {e}")))
    }

    /// Renders, encodes and answers a conversation, streaming text through `on_text`.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Usage, LlmError> {
        let prompt = self.render_chat(messages)?;
        let tokens = self.encode_conversation(&prompt)?;
        self.generate(&tokens, params, on_text)
    }
}

#[cfg(test)]
/// The offline default model, as `tests/llm.rs` finds it.
pub(crate) fn smollm2() -> std::path::PathBuf {
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
