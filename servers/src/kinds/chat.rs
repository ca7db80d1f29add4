//! `cpipe --serve chat`: a resident LLM streaming tokens to many clients.
//!
//! The model runs on the engine worker ([`crate::engine`]), which advances up to `--parallel`
//! replies together, one token each per pass over the weights (continuous batching, in
//! `models::llm`). A request joins at the next step when a slot and the context budget have
//! room; otherwise it waits in the worker's fair queue (round-robin across clients) and is
//! told its place with `queued` events. Handlers only translate: they queue a job and forward
//! its pieces as events, which keeps back-pressure and cancellation in pipe-core's hands.

use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::{Args, FromArgMatches};
use models::llm::{
    ChatMessage, Generation, GenerationParams, Llm, LlmError, LoadOptions, Role, Usage,
};
use models::source::ModelSource;
use pipe_core::{
    CommandSpec, Event, Fields, ProtocolEvent, Request, Responder, StateName, ToolError, ToolServer,
};
use serde_json::{json, Value};

use super::Kind;
use crate::engine::{Admitted, Engine, Line, Place, Work, Worker};
use crate::vocab::{ServerEvent, ServerState};

/// The chat kind.
pub const KIND: Kind = Kind {
    name: "chat",
    summary: "LLM chat server: a resident GGUF model on candle, streaming tokens.",
    help: include_str!("../../../skills/cpipe/chat.md"),
    args: ChatArgs::augment_args,
    build: |matches, builder| build(ChatArgs::from_arg_matches(matches)?, builder),
};

/// The chat server's own flags.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The model: a GGUF path; a Hugging Face file as owner/repo:file (fetched once into the
    /// hub cache); or an offline model installed by scripts/fetch-models.sh: smollm2,
    /// qwen-coder.
    #[arg(long, value_name = "MODEL", default_value = DEFAULT_HUB_MODEL)]
    pub model: String,

    /// A tokenizer.json to use instead of the one rebuilt from the GGUF (needed for
    /// SentencePiece vocabularies such as Llama 2's and Mistral's).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,

    /// The system prompt for conversations that bring none (by default the model's chat
    /// template decides, and some insert a long one of their own).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// Replies generated at once (continuous batching): each step reads the weights once for
    /// all of them. On a CPU one reply leaves the cores waiting on memory, so up to about four
    /// share a step for little more than one's time; beyond that, steps slow down in
    /// proportion. More requests wait in line, told their place.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=Llm::MAX_SLOTS as i64))]
    pub parallel: u16,

    /// Context tokens the running replies share: each reserves its prompt plus max_tokens when
    /// it starts, and a request waits while they do not fit [default: the model's context
    /// window].
    #[arg(long, value_name = "TOKENS")]
    pub ctx: Option<usize>,

    /// How the key/value cache holds keys and values: f16, or q8_0 (as llama.cpp's
    /// --cache-type-k/-v q8_0: about half the memory per context token, and half the bytes
    /// attention reads per generated token; each value within 1/254 of its block's largest;
    /// CPU only).
    #[arg(long, value_name = "FORMAT", default_value = "f16")]
    pub kv_cache: models::llm::KvFormat,
}

/// The model real users get by default: fetched once from the Hugging Face hub.
pub const DEFAULT_HUB_MODEL: &str =
    "Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf";

/// Short names for the offline models that `scripts/fetch-models.sh` installs.
const OFFLINE_MODELS: [(&str, &str, &str); 2] = [
    ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
    (
        "qwen-coder",
        "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
        "qwen-coder",
    ),
];

/// Turns `--model` into a source: an offline short name, a path, or a hub reference.
pub fn model_source(model: &str) -> anyhow::Result<ModelSource> {
    if let Some((_, file, fetch)) = OFFLINE_MODELS.iter().find(|(name, ..)| *name == model) {
        return Ok(ModelSource::Local(crate::assets::offline(
            model, file, fetch,
        )?));
    }
    Ok(ModelSource::parse(model)?)
}

/// A generation for the engine.
struct Job {
    messages: Vec<ChatMessage>,
    params: GenerationParams,
}

fn to_tool_error(e: LlmError) -> ToolError {
    match e {
        LlmError::InvalidRequest(m) => ToolError::invalid(m),
        LlmError::Template(m) => ToolError::invalid(format!("chat template: {m}")),
        other => ToolError::internal(other.to_string()),
    }
}

/// The loaded model on the engine worker: streams a reply's text pieces, answers its usage.
struct ChatEngine {
    llm: Llm,
    server: pipe_core::ServerHandle,
}

/// A taken request with its prompt, waiting for a slot.
struct Prepared {
    admitted: Admitted<ChatEngine>,
    prompt: Vec<u32>,
    params: GenerationParams,
}

/// A reply in progress and where it goes.
type Running = (Admitted<ChatEngine>, Generation);

impl ChatEngine {
    /// Renders and encodes a taken request's prompt; a request that cannot be is answered.
    fn prepare(&self, mut admitted: Admitted<Self>) -> Option<Prepared> {
        let job = admitted.take_job()?;
        let prompt = self
            .llm
            .render_chat(&job.messages)
            .and_then(|text| self.llm.encode_conversation(&text));
        match prompt {
            Ok(prompt) => Some(Prepared {
                admitted,
                prompt,
                params: job.params,
            }),
            Err(e) => {
                admitted.finish(Err(to_tool_error(e)));
                None
            }
        }
    }

    /// Starts the requests in line while slots and the context budget have room; returns the
    /// first that must wait.
    fn admit(
        &mut self,
        mut next: Option<Prepared>,
        line: &Line<'_, Self>,
        running: &mut Vec<Running>,
    ) -> Option<Prepared> {
        loop {
            let prepared = match next.take() {
                Some(prepared) => prepared,
                None => match line.try_next().and_then(|a| self.prepare(a)) {
                    Some(prepared) => prepared,
                    None if line.waiting() > 0 => continue,
                    None => return None,
                },
            };
            if let Some(reason) = prepared.admitted.cancelled() {
                prepared.admitted.finish(Err(reason.into()));
                continue;
            }
            if !self.llm.has_room(prepared.prompt.len(), &prepared.params) {
                return Some(prepared);
            }
            match self.llm.start(prepared.prompt, &prepared.params) {
                Ok(generation) => running.push((prepared.admitted, generation)),
                Err(e) => prepared.admitted.finish(Err(to_tool_error(e))),
            }
        }
    }

    /// Ends the replies whose request was cancelled or whose client is gone: their slots free
    /// up at once.
    fn drop_departed(&mut self, running: &mut Vec<Running>) {
        let (gone, staying): (Vec<Running>, Vec<Running>) = std::mem::take(running)
            .into_iter()
            .partition(|(admitted, _)| admitted.work().stopped());
        *running = staying;
        for (admitted, generation) in gone {
            let usage = self.llm.end(generation, |_| ControlFlow::Break(()));
            admitted.finish(usage.map_err(to_tool_error));
        }
    }

    /// One step of every reply whose client keeps up; answers the ones that finished.
    fn step(&mut self, running: &mut Vec<Running>) {
        let (works, mut generations): (Vec<Work<'_, String>>, Vec<&mut Generation>) = running
            .iter_mut()
            .filter(|(admitted, _)| !admitted.is_lagging())
            .map(|(admitted, generation)| (admitted.work(), generation))
            .unzip();
        if generations.is_empty() {
            // Every client lags behind its own stream: give them a moment to read.
            std::thread::sleep(std::time::Duration::from_millis(2));
            return;
        }
        let stepped = self.llm.step(&mut generations, |k, text| {
            if text.is_empty() || works[k].send(text.to_string()) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        drop(works);
        if let Err(e) = stepped {
            let error = to_tool_error(e);
            for (admitted, generation) in running.drain(..) {
                let _ = self.llm.end(generation, |_| ControlFlow::Break(()));
                admitted.finish(Err(error.clone()));
            }
            return;
        }
        let (finished, going): (Vec<Running>, Vec<Running>) = std::mem::take(running)
            .into_iter()
            .partition(|(_, generation)| generation.is_finished());
        *running = going;
        for (admitted, generation) in finished {
            let usage = self.llm.end(generation, |tail| {
                admitted.work().send(tail.to_string());
                ControlFlow::Continue(())
            });
            admitted.finish(usage.map_err(to_tool_error));
        }
    }

    /// Publishes the slots in use, the line and the cache size for `get_state`.
    fn publish_status(&self, waiting: usize) {
        self.server.set_status(Fields::from_iter([
            ("slots", self.llm.slots().into()),
            ("slots_busy", self.llm.busy_slots().into()),
            ("queued", waiting.into()),
            ("cached_tokens", self.llm.cached_tokens().into()),
        ]));
    }
}

impl Engine for ChatEngine {
    type Job = Job;
    type Piece = String;
    type Output = Usage;
    const BUSY: StateName = ServerState::Inferring.name();

    fn ready(&mut self) {
        self.publish_status(0);
    }

    /// One reply alone; the worker calls [`Engine::run_admitted`], which runs many.
    fn run(&mut self, job: Job, work: &Work<String>) -> Result<Usage, ToolError> {
        self.llm
            .chat(&job.messages, &job.params, |text| {
                if work.stopped() || (!text.is_empty() && !work.send(text.to_string())) {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
            .map_err(to_tool_error)
    }

    /// Continuous batching: takes requests from the line while there is room, steps every
    /// running reply together, and ends when none runs and none waits.
    fn run_admitted(&mut self, first: Admitted<Self>, line: &Line<'_, Self>) {
        // A panic in an earlier run dropped its generations without ending them.
        self.llm.free_abandoned_slots();
        let mut running: Vec<Running> = Vec::new();
        let mut waiting = self.prepare(first);
        loop {
            waiting = self.admit(waiting, line, &mut running);
            if running.is_empty() {
                // Nothing reserves context, so a waiting request would have started.
                debug_assert!(waiting.is_none());
                break;
            }
            if let Some(prepared) = &waiting {
                prepared.admitted.set_place(1);
            }
            let ahead = usize::from(waiting.is_some());
            line.announce_places(1 + ahead);
            self.publish_status(line.waiting() + ahead);
            self.drop_departed(&mut running);
            self.step(&mut running);
        }
        self.publish_status(0);
    }
}

/// Loads the model (on the worker thread) and reports it in `get_config`.
fn load(
    source: ModelSource,
    args: &ChatArgs,
    server: &pipe_core::ServerHandle,
) -> Result<ChatEngine, String> {
    let device = models::device::best_device();
    let path = source.resolve().map_err(|e| e.to_string())?;
    let options = LoadOptions {
        tokenizer_json: args.tokenizer.clone(),
        kv_cache: args.kv_cache,
    };
    let mut llm = Llm::load_with(&path, &device, &options).map_err(|e| e.to_string())?;
    let slots = usize::from(args.parallel);
    let ctx = args.ctx.unwrap_or(llm.context_length());
    if ctx > slots * llm.context_length() {
        return Err(format!(
            "--ctx {ctx} is more than {slots} slots of the model's {}-token context window can use; give at most {}",
            llm.context_length(),
            slots * llm.context_length()
        ));
    }
    llm.set_parallel(slots, ctx)
        .map_err(|e| format!("--parallel/--ctx: {e}"))?;
    let system = args.system.clone();
    // Conversations get the server's system prompt: theirs is the start to run ahead.
    if system.is_some() {
        llm.share_prefix(system.as_deref())
            .map_err(|e| e.to_string())?;
    }
    server.set_config(Fields::from_iter([
        ("model", llm.name().into()),
        ("architecture", llm.architecture().into()),
        ("context_length", llm.context_length().into()),
        ("parallel", llm.slots().into()),
        ("ctx", llm.context_budget().into()),
        ("kv_cache", llm.kv_format().name().into()),
        ("device", models::device::describe(&device).into()),
        ("kernels", models::llm::kernels(&device).into()),
        ("source", source.to_string().into()),
    ]));
    Ok(ChatEngine {
        llm,
        server: server.clone(),
    })
}

/// Reads the conversation from `messages`, or from `data` (messages, `{messages}`, or a string).
fn parse_messages(req: &Request) -> Result<Vec<ChatMessage>, ToolError> {
    let data = req.get("data");
    let raw = req
        .get("messages")
        .or_else(|| data.and_then(|d| d.get("messages")))
        .or(data);
    let list = match raw {
        Some(Value::Array(list)) => list.clone(),
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(other) => {
            return Err(ToolError::invalid(format!(
                "messages must be a list of {{\"role\",\"content\"}} objects, got {other}"
            )))
        }
        None => {
            return Err(ToolError::invalid(
                "missing messages: send {\"messages\":[{\"role\":\"user\",\"content\":\"...\"}]}, or the question as data",
            ))
        }
    };
    if list.is_empty() {
        return Err(ToolError::invalid(
            "messages is empty: send at least one user message",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ToolError::invalid(format!(
                    "message {i} needs a \"role\" string (system, user or assistant)"
                ))
            })?;
            let role: Role = role
                .parse()
                .map_err(|e: String| ToolError::invalid(format!("message {i}: {e}")))?;
            let content = m.get("content").and_then(Value::as_str).ok_or_else(|| {
                ToolError::invalid(format!("message {i} needs a \"content\" string"))
            })?;
            if content.trim().is_empty() {
                return Err(ToolError::invalid(format!("message {i} has empty content")));
            }
            Ok(ChatMessage {
                role,
                content: content.into(),
            })
        })
        .collect()
}

/// Reads sampling options from the request (or its `data` object).
fn parse_params(req: &Request) -> Result<GenerationParams, ToolError> {
    let data = req.get("data").and_then(Value::as_object);
    let field = |key: &str| req.get(key).or_else(|| data.and_then(|d| d.get(key)));
    let mut params = GenerationParams::default();
    let number = |key: &str| -> Result<Option<f64>, ToolError> {
        match field(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ToolError::invalid(format!("\"{key}\" must be a number, got {v}"))),
        }
    };
    let count = |key: &str| -> Result<Option<u64>, ToolError> {
        match field(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ToolError::invalid(format!("\"{key}\" must be a non-negative integer, got {v}"))
            }),
        }
    };
    if let Some(n) = count("max_tokens")? {
        params.max_tokens = n.min(1 << 20) as usize;
    }
    if let Some(t) = number("temperature")? {
        params.temperature = t;
    }
    params.top_p = number("top_p")?;
    params.top_k = count("top_k")?.map(|k| k as usize);
    if let Some(p) = number("repeat_penalty")? {
        params.repeat_penalty = p as f32;
    }
    if let Some(seed) = count("seed")? {
        params.seed = seed;
    }
    for (key, flag) in [
        ("cache_prompt", &mut params.cache_prompt),
        ("ignore_eos", &mut params.ignore_eos),
    ] {
        match field(key) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(on)) => *flag = *on,
            Some(v) => {
                return Err(ToolError::invalid(format!(
                    "\"{key}\" must be true or false, got {v}"
                )))
            }
        }
    }
    params.stop = match field("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|s| {
                s.as_str().map(String::from).ok_or_else(|| {
                    ToolError::invalid("\"stop\" must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ToolError::invalid(
                "\"stop\" must be a string or a list of strings",
            ))
        }
    };
    params.validate().map_err(to_tool_error)?;
    Ok(params)
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "time_to_first_token_ms": (usage.time_to_first_token.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
        "tokens_per_second": (usage.tokens_per_second * 10.0).round() / 10.0,
        "finish_reason": usage.finish_reason.as_str(),
    })
}

/// Queues a job and hands each piece to `on_text`; returns the usage.
fn run_job(
    worker: &Worker<ChatEngine>,
    system: Option<&str>,
    req: &Request,
    out: &Responder,
    on_text: impl FnMut(String) -> Result<(), ToolError>,
) -> Result<Usage, ToolError> {
    let mut messages = parse_messages(req)?;
    if let Some(system) = system {
        if !messages.iter().any(|m| m.role == Role::System) {
            messages.insert(0, ChatMessage::system(system));
        }
    }
    let params = parse_params(req)?;
    worker
        .submit(
            Job { messages, params },
            Place::client(req.pid),
            &out.cancel_token(),
        )
        .finish_in_line(
            |position| {
                // Only for requests with an id: named-pipes' clients, which send none, take
                // the first event of a request for its answer.
                if out.id().is_some() {
                    out.emit(Event::new(ServerEvent::Queued).with("position", position))?;
                }
                Ok(())
            },
            on_text,
        )
}

fn chat_args() -> Value {
    json!({
        "type": "object",
        "properties": {
            "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"], "properties": {
                "role": {"enum": ["system", "user", "assistant"]},
                "content": {"type": "string"}}}},
            "data": {"description": "Alternatively: a list of messages, {\"messages\": [...]}, or one user message as a string."},
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": GenerationParams::MAX_TEMPERATURE, "description": "0 is greedy."},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1, "description": "Above 0."},
            "top_k": {"type": "integer", "minimum": 1},
            "repeat_penalty": {"type": "number", "minimum": 0, "maximum": GenerationParams::MAX_REPEAT_PENALTY, "description": "Above 0; 1 is none."},
            "seed": {"type": "integer", "minimum": 0},
            "cache_prompt": {"type": "boolean", "description": "Reuse the keys and values of the last request where the prompt starts like it (default true); false runs it cold, for a reply that does not depend on earlier requests."},
            "ignore_eos": {"type": "boolean", "description": "Go on past the model's end of turn until max_tokens (for benchmarks, as llama-server's)."},
            "stop": {"type": ["string", "array"], "items": {"type": "string", "maxLength": GenerationParams::MAX_STOP_BYTES}, "maxItems": GenerationParams::MAX_STOPS}
        }
    })
}

/// Binds the chat server and starts loading the model on the engine worker.
fn build(args: ChatArgs, builder: pipe_core::Builder) -> anyhow::Result<ToolServer> {
    let source = model_source(&args.model)?;
    if args.ctx.is_some_and(|ctx| ctx < 16) {
        anyhow::bail!("--ctx must be at least 16 tokens");
    }
    let system = args.system.clone();
    let mut server = builder.initial_state(ServerState::Loading).bind()?;
    let handle = server.handle_ref();
    let worker = Worker::new();
    worker.start("model", "model", handle.clone(), move || {
        load(source, &args, &handle)
    })?;
    let stream_system = system.clone();
    let stream_worker = worker.clone();
    server.handle(
        CommandSpec::new("chat", "Streams the assistant's reply to a conversation.")
            .args(chat_args())
            .emits(&[
                ProtocolEvent::Token.name(),
                ServerEvent::Done.name(),
                ServerEvent::Queued.name(),
            ]),
        move |req, out| {
            let usage = run_job(&stream_worker, stream_system.as_deref(), req, out, |text| {
                out.emit(
                    Event::new(ProtocolEvent::Token)
                        .with("text", text)
                        .with("done", false),
                )?;
                Ok(())
            })?;
            let usage = usage_json(&usage);
            out.emit(
                Event::new(ProtocolEvent::Token)
                    .with("text", "")
                    .with("done", true)
                    .with("usage", usage.clone()),
            )?;
            if out.id().is_some() {
                out.emit(Event::new(ServerEvent::Done).with("usage", usage))?;
            }
            Ok(())
        },
    );
    server.handle(
        CommandSpec::new(
            "chat_blocking",
            "Answers with the whole reply in one event.",
        )
        .args(chat_args())
        .emits(&[ServerEvent::Reply, ServerEvent::Queued]),
        move |req, out| {
            let mut reply = String::new();
            let usage = run_job(&worker, system.as_deref(), req, out, |text| {
                reply.push_str(&text);
                Ok(())
            })?;
            out.emit(
                Event::new(ServerEvent::Reply)
                    .with("text", reply)
                    .with("usage", usage_json(&usage)),
            )?;
            Ok(())
        },
    );
    Ok(server)
}
