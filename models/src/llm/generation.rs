//! Generations in progress, several at once (continuous batching): each request's reply runs
//! on a slot of its own (its keys and values, and what they hold for the next turn), and
//! [`Llm::step`] advances every running reply by one token in a single pass over the weights,
//! fitting in a chunk of a newcomer's prompt between steps.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;

use super::stream::{Detokenizer, StopFilter};
use super::transformer::{SequenceCache, SequenceTokens, SLICE_PATH_MAX_TOKENS};
use super::{FinishReason, GenerationParams, Llm, LlmError, Usage, HELD_TOKENS_MAX};

/// Where one sequence's keys and values live between and during requests.
pub(super) struct Slot {
    cache: SequenceCache,
    /// The tokens whose keys and values the cache holds, from the last request that ran here:
    /// its prompt and the reply run so far. A prompt that starts with some of them (the next
    /// turn of the same conversation) runs only the rest.
    held: Vec<u32>,
    /// `held` decoded, special tokens and all: a conversation's next turn, rendered, starts
    /// with it ([`Llm::encode_conversation`]).
    held_text: String,
    /// The logits after the last request's prompt (with the prompt's length): the same
    /// prompt again starts from them without running anything.
    prompt_logits: Option<(usize, Tensor)>,
    /// Context tokens the running request may use (its prompt and `max_tokens`); 0 when free.
    reserved: usize,
    /// When it was last given out, in [`Llm::start`] calls: the least recent free slot goes to
    /// a request that continues none.
    last_used: u64,
}

impl Slot {
    pub(super) fn new(cache: SequenceCache) -> Self {
        Self {
            cache,
            held: Vec::new(),
            held_text: String::new(),
            prompt_logits: None,
            reserved: 0,
            last_used: 0,
        }
    }

    /// Drops what it holds for the next turn of its conversation.
    fn forget_held(&mut self) {
        self.held.clear();
        self.held_text.clear();
        self.prompt_logits = None;
    }
}

/// One request's reply in progress: made by [`Llm::start`], advanced by [`Llm::step`]
/// (together with any others), ended by [`Llm::end`].
pub struct Generation {
    slot: usize,
    prompt: Vec<u32>,
    params: GenerationParams,
    max_tokens: usize,
    sampler: LogitsProcessor,
    detok: Detokenizer,
    stops: StopFilter,
    /// The prompt and the tokens generated so far.
    history: Vec<u32>,
    /// Tokens whose keys and values the slot holds for this sequence.
    position: usize,
    /// Logits waiting to be sampled: its prompt's, once run (or held from the same prompt's
    /// last run).
    ready: Option<Tensor>,
    /// Its first token was held back for a step so that prompts which arrived with it could
    /// run together first (see [`Llm::step`]); it is held at most once.
    held_back: bool,
    /// The token sampled last, to run next.
    next: Option<u32>,
    generated: usize,
    cached_prompt_tokens: usize,
    started: Instant,
    first_token_at: Option<Instant>,
    finish: Option<FinishReason>,
    /// A step failed while this ran: its slot's cache may hold part of a step.
    broken: bool,
}

impl Generation {
    /// Whether it has ended (a stop, its length, or the caller's break); [`Llm::end`] it.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Whether its prompt has all run (it is generating).
    pub fn is_generating(&self) -> bool {
        self.position >= self.prompt.len()
    }
}

/// Tokens of a long prompt run in one pass. A pass's attention scores every row against
/// every position up to the pass's end, half of them masked off: 512 tokens in one pass made
/// Llama-1B's prompts (32 query heads) run at 0.7× the speed of 128-token ones. Chunks of 128
/// score over a third fewer pairs of 512 tokens, in tensors that stay in cache, and cost the
/// matrix products little: they take a long prompt's inputs in blocks of about this size
/// anyway (`quant::INPUT_BLOCK_BYTES`).
const LONG_PROMPT_CHUNK: usize = 128;

/// The cost of a step as a function of its rows (`base + per_row × rows`), fitted by least
/// squares over recent steps: it sizes a prompt's chunk between generation steps.
#[derive(Default)]
pub(super) struct Pace {
    /// Recent averages of rows, seconds, rows², rows × seconds.
    averages: Option<[f64; 4]>,
}

impl Pace {
    /// How much the latest step counts in the averages.
    const WEIGHT: f64 = 0.1;

    fn record(&mut self, rows: usize, seconds: f64) {
        let x = rows as f64;
        let sample = [x, seconds, x * x, x * seconds];
        self.averages = Some(match self.averages {
            None => sample,
            Some(a) => std::array::from_fn(|i| a[i] + Self::WEIGHT * (sample[i] - a[i])),
        });
    }

    /// `(base, per_row)` seconds, once the steps seen had different sizes.
    fn cost(&self) -> Option<(f64, f64)> {
        let [x, y, xx, xy] = self.averages?;
        let variance = xx - x * x;
        if variance < 0.25 {
            return None;
        }
        let per_row = (xy - x * y) / variance;
        let base = y - per_row * x;
        (per_row > 0.0 && base >= 0.0).then_some((base, per_row))
    }

    /// Prompt tokens that take about as long as a step of `generating` rows: a running
    /// reply's gap between tokens at most doubles while a newcomer's prompt runs.
    fn chunk(&self, generating: usize) -> usize {
        let tokens = match self.cost() {
            Some((base, per_row)) => (base / per_row) as usize + generating,
            None => generating.max(8),
        };
        tokens.clamp(1, SLICE_PATH_MAX_TOKENS - 1)
    }
}

impl Llm {
    /// Sequences that can run at once (`--parallel`).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Slots running a request now.
    pub fn busy_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.reserved > 0).count()
    }

    /// Tokens whose keys and values the slots hold for the next turns of their conversations.
    pub fn cached_tokens(&self) -> usize {
        self.slots.iter().map(|s| s.held.len()).sum()
    }

    /// The context tokens the running requests may use together (`--ctx`).
    pub fn context_budget(&self) -> usize {
        self.context_budget
    }

    /// Sets how many sequences run at once and the context tokens they share (each request
    /// reserves its prompt and `max_tokens` when it starts). Only while none runs.
    pub fn set_parallel(&mut self, slots: usize, context_budget: usize) -> Result<(), LlmError> {
        if slots == 0 || slots > Self::MAX_SLOTS {
            return Err(LlmError::InvalidRequest(format!(
                "parallel must be from 1 to {}, got {slots}",
                Self::MAX_SLOTS
            )));
        }
        if context_budget < 16 {
            return Err(LlmError::InvalidRequest(format!(
                "the context budget must be at least 16 tokens, got {context_budget}"
            )));
        }
        if self.busy_slots() > 0 {
            return Err(LlmError::InvalidRequest(
                "cannot change the slots while requests run".into(),
            ));
        }
        self.slots
            .resize_with(slots, || Slot::new(self.weights.new_cache()));
        self.context_budget = context_budget;
        Ok(())
    }

    /// Frees the slots of generations that were never ended (their caller panicked mid-step):
    /// what those slots hold may be part of a step, so it is dropped. Call it when no
    /// [`Generation`] is alive.
    pub fn free_abandoned_slots(&mut self) {
        for slot in self.slots.iter_mut().filter(|s| s.reserved > 0) {
            tracing::warn!("a slot left by an interrupted generation is freed");
            slot.reserved = 0;
            slot.forget_held();
        }
    }

    /// Drops what the free slots hold for the next turns of their conversations.
    pub(super) fn forget_conversations(&mut self) {
        for slot in self.slots.iter_mut().filter(|s| s.reserved == 0) {
            slot.forget_held();
        }
    }

    /// The most slots [`Llm::set_parallel`] accepts.
    pub const MAX_SLOTS: usize = 64;

    /// Context tokens `prompt_tokens` with `params` reserves.
    fn reservation(&self, prompt_tokens: usize, params: &GenerationParams) -> usize {
        prompt_tokens
            + params
                .max_tokens
                .min(self.context_length.saturating_sub(prompt_tokens))
    }

    /// Whether a request of `prompt_tokens` with `params` can start now: a slot is free and
    /// the context budget has room for it. When it is not, it waits for a running one to end.
    pub fn has_room(&self, prompt_tokens: usize, params: &GenerationParams) -> bool {
        // A request that can never fit is let in, for `start` to refuse it clearly.
        let reserved: usize = self.slots.iter().map(|s| s.reserved).sum();
        self.busy_slots() < self.slots.len()
            && (reserved == 0
                || reserved + self.reservation(prompt_tokens, params) <= self.context_budget)
    }

    /// Token ids of a rendered conversation. Where the tokens a slot holds decode to the start
    /// of `text` (the conversation's earlier turns and the reply generated for the last), those
    /// tokens are kept as they are and only the rest is encoded: a reply the model spelt in
    /// other tokens than the tokenizer's own would otherwise encode differently, and its keys
    /// and values would run again (llama-server re-encodes, and runs them again).
    pub fn encode_conversation(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let held = self
            .slots
            .iter()
            .filter(|s| !s.held_text.is_empty() && text.starts_with(&s.held_text))
            .max_by_key(|s| s.held.len());
        match held {
            Some(slot) => {
                let mut tokens = slot.held.clone();
                tokens.extend(self.encode(&text[slot.held_text.len()..])?);
                Ok(tokens)
            }
            None => self.encode(text),
        }
    }

    /// Starts a reply to `prompt` on a free slot: the one whose held tokens share the longest
    /// start with it, else the least recently used. Nothing runs until [`Llm::step`]. Fails
    /// when the prompt is invalid or too long, or when no slot is free.
    pub fn start(
        &mut self,
        prompt: Vec<u32>,
        params: &GenerationParams,
    ) -> Result<Generation, LlmError> {
        params.validate()?;
        let started = Instant::now();
        if prompt.is_empty() {
            return Err(LlmError::InvalidRequest("the prompt is empty".into()));
        }
        if prompt.len() >= self.context_length {
            return Err(LlmError::InvalidRequest(format!(
                "the prompt is {} tokens but the model's context window is {}; shorten the conversation",
                prompt.len(),
                self.context_length
            )));
        }
        let reserve = self.reservation(prompt.len(), params);
        if reserve > self.context_budget {
            return Err(LlmError::InvalidRequest(format!(
                "the prompt and max_tokens need {reserve} tokens of context but the server's context budget (--ctx) is {}; ask for fewer max_tokens, shorten the conversation, or raise --ctx",
                self.context_budget
            )));
        }
        let common = |held: &[u32]| held.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
        // A slot continues a conversation when the prompt shares most of what it holds beyond
        // the shared prefix (which any slot gets), as llama-server's slot similarity does: a
        // new conversation must not take the slot of another that merely starts alike.
        let prefix = self
            .shared_prefix
            .as_ref()
            .filter(|p| prompt.starts_with(&p.tokens))
            .map_or(0, |p| p.tokens.len());
        let slot = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.reserved == 0)
            .max_by_key(|(_, s)| {
                let n = common(&s.held);
                let continues = params.cache_prompt
                    && s.held.len() > prefix
                    && 2 * n.saturating_sub(prefix) > s.held.len() - prefix;
                (
                    if continues { n } else { 0 },
                    std::cmp::Reverse(s.last_used),
                )
            })
            .map(|(i, _)| i)
            .ok_or_else(|| {
                LlmError::InvalidRequest(format!("all {} slots are busy", self.slots.len()))
            })?;
        self.clock += 1;
        let shared_prefix = self.shared_prefix.as_ref();
        let slot_index = slot;
        let slot = &mut self.slots[slot];
        slot.reserved = reserve;
        slot.last_used = self.clock;
        let mut held = std::mem::take(&mut slot.held);
        slot.held_text.clear();
        if !params.cache_prompt {
            held.clear();
        }
        // The same prompt again (a retry, a regenerate): its keys and values and the logits
        // after it are all held, exactly as a cold run computes them, so the reply is the one
        // a cold run gives.
        let ready = slot
            .prompt_logits
            .take()
            .filter(|(len, _)| {
                params.cache_prompt && *len == prompt.len() && held.starts_with(&prompt)
            })
            .map(|(_, logits)| logits);
        // The longest start of the prompt whose keys and values the slot holds (at least one
        // token must run, for the logits), else the shared prefix. Held keys and values were
        // computed in other chunks than a fresh run would use, so their rounding can differ in
        // the last bits: like llama.cpp's prompt cache, a reply can then differ from a cold
        // run's where two tokens were nearly tied.
        let reusable = common(&held).min(prompt.len() - 1);
        let position = match shared_prefix {
            _ if ready.is_some() => prompt.len(),
            Some(shared)
                if prompt.len() > shared.tokens.len()
                    && prompt.starts_with(&shared.tokens)
                    && reusable <= shared.tokens.len() =>
            {
                slot.cache.restore(&shared.cache)?;
                shared.tokens.len()
            }
            _ => reusable,
        };
        Ok(Generation {
            slot: slot_index,
            max_tokens: params.max_tokens.min(self.context_length - prompt.len()),
            sampler: LogitsProcessor::from_sampling(params.seed, params.sampling()),
            detok: Detokenizer::default(),
            stops: StopFilter::new(&params.stop),
            history: prompt.clone(),
            prompt,
            params: params.clone(),
            position,
            ready,
            held_back: false,
            next: None,
            generated: 0,
            cached_prompt_tokens: position,
            started,
            first_token_at: None,
            finish: None,
            broken: false,
        })
    }

    /// Advances every generation in `running` that has not finished: each generating one by
    /// one token, all in one pass over the weights; then a prompt waiting to run: all of
    /// every waiting prompt when none is generating, else a chunk of the first that takes
    /// about as long as the step (so a running reply's gap between tokens at most doubles).
    ///
    /// A burst of requests (clients that ask at the same moment) runs its prompts together:
    /// when none is generating yet and prompts wait, the replies whose prompts have run hold
    /// their first token for one step while the waiting prompts run whole. Their first tokens
    /// come a little later, and every prompt of the burst is done before any gap between
    /// tokens starts; otherwise the first reply would generate while the others' prompts
    /// crept in by paced chunks, and the last client would wait for all of them.
    ///
    /// `on_text(i, text)` gets the text that became final for `running[i]`; breaking ends that
    /// generation (finish reason `Cancelled`). On an error, every generation in `running`
    /// should be ended.
    pub fn step(
        &mut self,
        running: &mut [&mut Generation],
        mut on_text: impl FnMut(usize, &str) -> ControlFlow<()>,
    ) -> Result<(), LlmError> {
        let result = self.step_all(running, &mut on_text);
        if result.is_err() {
            for generation in running.iter_mut() {
                generation.broken = true;
            }
        }
        result
    }

    fn step_all(
        &mut self,
        running: &mut [&mut Generation],
        on_text: &mut dyn FnMut(usize, &str) -> ControlFlow<()>,
    ) -> Result<(), LlmError> {
        let live = |g: &Generation| g.finish.is_none();
        let prompts_wait = running.iter().any(|g| live(g) && !g.is_generating());
        let burst = prompts_wait && running.iter().all(|g| g.next.is_none() && !g.held_back);
        for (i, generation) in running.iter_mut().enumerate() {
            if burst && generation.ready.is_some() {
                generation.held_back = true;
                continue;
            }
            if let Some(logits) = generation.ready.take() {
                let slot = &mut self.slots[generation.slot];
                slot.prompt_logits = Some((generation.prompt.len(), logits.clone()));
                self.sample(generation, &logits, &mut |text| on_text(i, text))?;
            }
        }
        let generating: Vec<usize> = (0..running.len())
            .filter(|&i| live(running[i]) && running[i].next.is_some())
            .collect();
        let waiting: Vec<usize> = (0..running.len())
            .filter(|&i| live(running[i]) && !running[i].is_generating())
            .collect();
        // What joins this step, as (generation, tokens to run): every generated token, and
        // prompts. With replies running, a chunk of paced size from the first prompts in line;
        // with none, every prompt whole, the short ones in this pass and the long ones on the tensor path (a GEMM).
        let mut batch: Vec<(usize, usize)> = Vec::new();
        for &i in &generating {
            batch.push((i, 1));
        }
        let mut long_prompts = Vec::new();
        // The chunk's tokens are shared by the waiting prompts in order.
        let mut budget = self.pace.chunk(generating.len());
        for &i in &waiting {
            let left = running[i].prompt.len() - running[i].position;
            if !generating.is_empty() {
                if budget == 0 {
                    break;
                }
                let take = left.min(budget);
                batch.push((i, take));
                budget -= take;
                continue;
            }
            if left < SLICE_PATH_MAX_TOKENS {
                batch.push((i, left));
            } else {
                long_prompts.push(i);
            }
        }
        for i in long_prompts {
            let generation = &mut *running[i];
            let cache = &mut self.slots[generation.slot].cache;
            let mut logits = None;
            for chunk in generation.prompt[generation.position..].chunks(LONG_PROMPT_CHUNK) {
                let input = Tensor::new(chunk, &self.device)?.unsqueeze(0)?;
                logits = Some(
                    self.weights
                        .forward(cache, &input, generation.position)?
                        .squeeze(0)?,
                );
                generation.position += chunk.len();
            }
            generation.ready = logits;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let logits = {
            // Each generation's own slot, borrowed apart from the others.
            let mut caches: Vec<Option<&mut SequenceCache>> =
                self.slots.iter_mut().map(|s| Some(&mut s.cache)).collect();
            let mut sequences: Vec<SequenceTokens<'_>> = batch
                .iter()
                .map(|&(i, count)| {
                    let g = &*running[i];
                    let (tokens, logits) = match &g.next {
                        Some(token) => (std::slice::from_ref(token), true),
                        None => (
                            &g.prompt[g.position..g.position + count],
                            g.position + count == g.prompt.len(),
                        ),
                    };
                    SequenceTokens {
                        cache: caches[g.slot].take().expect("one generation per slot"),
                        tokens,
                        position: g.position,
                        logits,
                    }
                })
                .collect();
            self.weights.forward_tokens(&mut sequences)?
        };
        let rows: usize = batch.iter().map(|(_, count)| count).sum();
        self.pace.record(rows, started.elapsed().as_secs_f64());
        let wanting = batch
            .iter()
            .filter(|&&(i, count)| {
                let g = &*running[i];
                g.next.is_some() || g.position + count == g.prompt.len()
            })
            .count();
        let vocab = logits.len() / wanting.max(1);
        let mut rows = logits.chunks_exact(vocab.max(1));
        for (i, count) in batch {
            let generation = &mut *running[i];
            let sampled = generation.next.take().is_some();
            generation.position += count;
            if sampled || generation.is_generating() {
                let row = rows.next().expect("logits for each that wants them");
                let row = Tensor::from_slice(row, vocab, &self.device)?;
                if sampled {
                    self.sample(generation, &row, &mut |text| on_text(i, text))?;
                } else {
                    // Its prompt has run: sampled at the next step's start, or held back
                    // there for a burst.
                    generation.ready = Some(row);
                }
            }
        }
        Ok(())
    }

    /// Picks the next token from `logits` and passes on the text it completes.
    fn sample(
        &self,
        g: &mut Generation,
        logits: &Tensor,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<(), LlmError> {
        let params = &g.params;
        let logits = if params.repeat_penalty == 1.0 {
            logits.clone()
        } else {
            let start = g.history.len().saturating_sub(params.repeat_last_n);
            candle_transformers::utils::apply_repeat_penalty(
                logits,
                params.repeat_penalty,
                &g.history[start..],
            )?
        };
        let token = g.sampler.sample(&logits)?;
        g.generated += 1;
        g.first_token_at.get_or_insert_with(Instant::now);
        if !params.ignore_eos && self.eos.contains(&token) {
            g.finish = Some(FinishReason::Stop);
            return Ok(());
        }
        g.history.push(token);
        let piece = g.stops.push(&g.detok.push(&self.tokenizer, token)?);
        if on_text(&piece.text).is_break() {
            g.finish = Some(FinishReason::Cancelled);
        } else if piece.stopped {
            g.finish = Some(FinishReason::Stop);
        } else if g.generated >= g.max_tokens {
            g.finish = Some(FinishReason::Length);
        } else {
            g.next = Some(token);
        }
        Ok(())
    }

    /// Ends a generation and frees its slot, which keeps what it ran for the next turn of the
    /// conversation. The text still held back (a possible stop sequence that was not one) goes
    /// to `on_text`. A generation ended before it finished counts as cancelled.
    pub fn end(
        &mut self,
        mut generation: Generation,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Usage, LlmError> {
        let finish = *generation.finish.get_or_insert(FinishReason::Cancelled);
        let slot = &mut self.slots[generation.slot];
        slot.reserved = 0;
        // What the cache holds now: every token run, prompt and reply.
        generation.history.truncate(generation.position);
        slot.held = if generation.broken {
            Vec::new()
        } else {
            std::mem::take(&mut generation.history)
        };
        if slot.held.len() > HELD_TOKENS_MAX {
            // A long conversation's keys and values would stay resident between requests:
            // give them back, so memory returns near its resting size.
            slot.cache.release();
        }
        if slot.held.is_empty() || slot.held.len() > HELD_TOKENS_MAX {
            slot.forget_held();
        } else {
            // A text the tokens do not decode to (invalid UTF-8 cut mid-character) matches no
            // conversation, which is then encoded whole.
            slot.held_text = self.tokenizer.decode(&slot.held, false).unwrap_or_default();
        }
        let params = &generation.params;
        if finish != FinishReason::Cancelled
            && !generation.broken
            && (finish != FinishReason::Stop || params.stop.is_empty())
        {
            let stops = &mut generation.stops;
            let rest = stops.push(&generation.detok.finish(&self.tokenizer)?);
            let tail = if rest.stopped {
                rest.text
            } else {
                rest.text + &stops.finish()
            };
            if !tail.is_empty() {
                let _ = on_text(&tail);
            }
        }
        let first = generation.first_token_at.unwrap_or_else(Instant::now);
        let decode_time = first.elapsed().as_secs_f64();
        let generated = generation.generated;
        Ok(Usage {
            prompt_tokens: generation.prompt.len(),
            cached_prompt_tokens: generation.cached_prompt_tokens,
            completion_tokens: generated,
            time_to_first_token: first.saturating_duration_since(generation.started),
            tokens_per_second: if generated > 1 && decode_time > 0.0 {
                (generated - 1) as f64 / decode_time
            } else {
                0.0
            },
            finish_reason: finish,
        })
    }

    /// Generates a continuation of `prompt` alone, calling `on_text` once per generated token
    /// with the text that became final (often empty: a character or a possible stop sequence
    /// can span tokens). Returning `ControlFlow::Break` stops generation (finish reason
    /// `Cancelled`) before the next token.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerationParams,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Usage, LlmError> {
        let mut generation = self.start(prompt.to_vec(), params)?;
        let mut result = Ok(());
        while !generation.is_finished() && result.is_ok() {
            result = self.step(&mut [&mut generation], |_, text| on_text(text));
        }
        let usage = self.end(generation, &mut on_text);
        result.and(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    /// A conversation's next turn keeps the tokens its slot holds, spelt as the model spelt
    /// them, and encodes only what follows; a text that does not start with them is encoded
    /// whole.
    #[test]
    fn a_next_turn_keeps_the_held_tokens() -> Result<(), LlmError> {
        let mut llm = Llm::load(&crate::llm::smollm2(), &candle_core::Device::Cpu)?;
        let turn = llm.render_chat(&[ChatMessage::user("Hi")])?;
        let params = GenerationParams {
            max_tokens: 4,
            ..GenerationParams::default()
        };
        llm.generate(&llm.encode(&turn)?, &params, |_| ControlFlow::Continue(()))?;
        let slot = &llm.slots[0];
        assert!(slot.held.len() > 4 && slot.held_text.starts_with(&turn));
        let next = format!("{}<|im_end|>\n<|im_start|>user\nMore", slot.held_text);
        let mut expected = slot.held.clone();
        expected.extend(llm.encode("<|im_end|>\n<|im_start|>user\nMore")?);
        assert_eq!(llm.encode_conversation(&next)?, expected);

        // "Hello" in two tokens, where the tokenizer makes one: held as the model ran them.
        let spelt: Vec<u32> = ["H", "ello"]
            .iter()
            .map(|piece| llm.tokenizer.token_to_id(piece).expect("a token"))
            .collect();
        assert_ne!(llm.encode("Hello")?, spelt);
        let slot = &mut llm.slots[0];
        slot.held = spelt.clone();
        slot.held_text = "Hello".into();
        let tokens = llm.encode_conversation("Hello there")?;
        assert_eq!(tokens[..2], spelt[..]);
        assert_eq!(llm.encode_conversation("Help")?, llm.encode("Help")?);
        Ok(())
    }
}
