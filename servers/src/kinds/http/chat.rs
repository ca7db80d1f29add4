//! `POST /v1/chat/completions`: a chat server's `chat`, whole or streamed as server-sent
//! events, with OpenAI's sampling options mapped onto the server's.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pipe_core::{Event, ProtocolEvent};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::{answer, kind_of, now, read_json, required_str, response_id, App};
use crate::bridge::services::{self, Role};
use crate::bridge::upstream::{remote_error, Call};

/// The largest chat request body: conversations are text.
const MAX_BODY: usize = 16 << 20;
/// The endpoint, as metrics name it.
const ENDPOINT: &str = "/v1/chat/completions";

/// The handler.
pub async fn completions(State(app): State<Arc<App>>, body: Body) -> Response {
    let mut server = None;
    let result = complete(app, body, &mut server).await;
    answer(server, result)
}

async fn complete(
    app: Arc<App>,
    body: Body,
    server: &mut Option<String>,
) -> Result<Response, ApiError> {
    let request = read_json(body, MAX_BODY).await?;
    let model = required_str(&request, "model")?;
    let args = chat_args(&request)?;
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (upstream, service) =
        services::resolve(&app.upstreams, &app.own, Role::Chat, model).await?;
    *server = Some(service.name.clone());
    let mut call = upstream.call("chat", args).await?;
    let reply = Reply {
        id: response_id("chatcmpl"),
        created: now(),
        model: service.name.clone(),
    };
    // The first event decides the status: an error before any token is an HTTP error.
    let first = match call.next().await {
        Some(event) => remote_error(event)?,
        None => {
            return Err(ApiError::invalid(
                "the chat server ended the request without a reply",
            ))
        }
    };
    let response = if stream {
        let state = Streaming {
            call,
            app: app.clone(),
            reply,
            include_usage,
            out: VecDeque::new(),
            finished: false,
        };
        stream_reply(state, first).into_response()
    } else {
        whole_reply(&app, call, reply, first).await?.into_response()
    };
    Ok(response)
}

/// The fields every response and chunk carries.
struct Reply {
    id: String,
    created: u64,
    model: String,
}

async fn whole_reply(
    app: &App,
    mut call: Call,
    reply: Reply,
    first: Event,
) -> Result<Json<Value>, ApiError> {
    let mut text = String::new();
    let mut usage = Value::Null;
    let mut event = Some(first);
    while let Some(e) = event {
        let e = remote_error(e)?;
        if e.is(ProtocolEvent::Token) {
            text += e.str("text").unwrap_or_default();
            if let Some(u) = e.get("usage") {
                usage = u.clone();
            }
        }
        event = call.next().await;
    }
    app.metrics.tokens(
        &reply.model,
        super::chat::ENDPOINT,
        completion_tokens(&usage),
    );
    Ok(Json(json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish_reason(&usage),
        }],
        "usage": openai_usage(&usage),
    })))
}

/// A streamed reply's progress.
struct Streaming {
    call: Call,
    app: Arc<App>,
    reply: Reply,
    include_usage: bool,
    /// Server-sent event payloads waiting to go out.
    out: VecDeque<String>,
    finished: bool,
}

impl Streaming {
    fn chunk(&self, delta: Value, finish: Value) -> String {
        json!({
            "id": self.reply.id,
            "object": "chat.completion.chunk",
            "created": self.reply.created,
            "model": self.reply.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
        .to_string()
    }

    /// Turns one of the server's events into chunks.
    fn take(&mut self, event: Event) {
        if let Some(e) = event.as_error() {
            let error = ApiError::from(crate::bridge::BridgeError::Remote {
                code: e.code.as_str().into(),
                message: e.message,
            });
            self.out.push_back(error.body().to_string());
            return;
        }
        if !event.is(ProtocolEvent::Token) {
            return; // `done` repeats the usage the last token carried
        }
        let text = event.str("text").unwrap_or_default();
        if !text.is_empty() {
            let delta = json!({"content": text});
            let chunk = self.chunk(delta, Value::Null);
            self.out.push_back(chunk);
        }
        if event.get("done").and_then(Value::as_bool) == Some(true) {
            let usage = event.get("usage").cloned().unwrap_or(Value::Null);
            let tokens = completion_tokens(&usage);
            self.app.metrics.tokens(&self.reply.model, ENDPOINT, tokens);
            let last = self.chunk(json!({}), finish_reason(&usage).into());
            self.out.push_back(last);
            if self.include_usage {
                let chunk = json!({
                    "id": self.reply.id,
                    "object": "chat.completion.chunk",
                    "created": self.reply.created,
                    "model": self.reply.model,
                    "choices": [],
                    "usage": openai_usage(&usage),
                });
                self.out.push_back(chunk.to_string());
            }
        }
    }
}

fn stream_reply(
    mut state: Streaming,
    first: Event,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let opening = state.chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    state.out.push_back(opening);
    state.take(first);
    let events = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(data) = state.out.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), state));
            }
            if state.finished {
                return None;
            }
            match state.call.next().await {
                Some(event) => state.take(event),
                None => {
                    state.finished = true;
                    state.out.push_back("[DONE]".into());
                }
            }
        }
    });
    Sse::new(events)
}

/// The chat server's request for an OpenAI chat completion request.
fn chat_args(request: &Map<String, Value>) -> Result<Value, ApiError> {
    let messages = match request.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(ApiError::param("messages", "'messages' is empty")),
        None | Some(Value::Null) => {
            return Err(ApiError::param("messages", "'messages' is required"))
        }
        Some(other) => {
            return Err(ApiError::param(
                "messages",
                format!("'messages' must be an array, got {}", kind_of(other)),
            ))
        }
    };
    let messages = messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut args = json!({ "messages": messages });
    if let Some(n) = request.get("n").and_then(Value::as_u64).filter(|&n| n != 1) {
        return Err(ApiError::param(
            "n",
            format!("n = {n}: one choice per request is supported"),
        ));
    }
    for unsupported in ["tools", "functions", "tool_choice"] {
        if request
            .get(unsupported)
            .is_some_and(|v| !v.is_null() && v != &json!([]))
        {
            return Err(ApiError::param(
                "tools",
                format!("'{unsupported}': tool calling is not supported by cpipe's chat server"),
            ));
        }
    }
    if let Some(format) = request.get("response_format").and_then(|f| f.get("type")) {
        if format != "text" {
            return Err(ApiError::param(
                "response_format",
                format!("response_format {format} is not supported: only text"),
            ));
        }
    }
    for penalty in ["presence_penalty", "frequency_penalty"] {
        if request
            .get(penalty)
            .and_then(Value::as_f64)
            .is_some_and(|p| p != 0.0)
        {
            return Err(ApiError::param(
                "frequency_penalty",
                format!("'{penalty}' is not supported: use 'repeat_penalty' (1.0 is off)"),
            ));
        }
    }
    let max_tokens = request
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| request.get("max_tokens"));
    copy(&mut args, "max_tokens", max_tokens);
    // The same names on both sides; top_k, repeat_penalty and cache_prompt are llama-server's
    // extensions.
    for name in [
        "temperature",
        "top_p",
        "top_k",
        "repeat_penalty",
        "seed",
        "stop",
        "cache_prompt",
    ] {
        copy(&mut args, name, request.get(name));
    }
    Ok(args)
}

/// Copies a field unless it is absent or null.
fn copy(args: &mut Value, name: &str, value: Option<&Value>) {
    if let Some(value) = value.filter(|v| !v.is_null()) {
        args[name] = value.clone();
    }
}

/// One message in the chat server's form: a role it knows and text content.
fn message(i: usize, message: &Value) -> Result<Value, ApiError> {
    let role = match message.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some(other) => {
            return Err(ApiError::param(
                "messages",
                format!("messages[{i}]: role '{other}' is not supported (system, developer, user, assistant)"),
            ))
        }
        None => {
            return Err(ApiError::param(
                "messages",
                format!("messages[{i}] needs a 'role'"),
            ))
        }
    };
    let content = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        None | Some(Value::Null) => String::new(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text += t,
                    (kind, _) => {
                        return Err(ApiError::param(
                            "messages",
                            format!(
                                "messages[{i}]: content part {} is not supported: only text",
                                kind.unwrap_or("without a type")
                            ),
                        ))
                    }
                }
            }
            text
        }
        Some(other) => {
            return Err(ApiError::param(
                "messages",
                format!(
                    "messages[{i}].content must be a string or a list of text parts, got {}",
                    kind_of(other)
                ),
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// OpenAI's finish reason for the server's (`cancelled` has no OpenAI name: `stop`).
fn finish_reason(usage: &Value) -> &'static str {
    match usage.get("finish_reason").and_then(Value::as_str) {
        Some("length") => "length",
        _ => "stop",
    }
}

fn completion_tokens(usage: &Value) -> u64 {
    usage
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// OpenAI's usage object for the server's.
fn openai_usage(usage: &Value) -> Value {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("prompt_tokens");
    let completion = count("completion_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": count("cached_prompt_tokens")},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(request: Value) -> Result<Value, ApiError> {
        chat_args(request.as_object().unwrap())
    }

    #[test]
    fn openai_options_map_to_the_chat_servers() {
        let mapped = args(json!({
            "model": "chat",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
            ],
            "max_completion_tokens": 5, "temperature": 0, "top_p": 0.9, "seed": 3, "stop": ["\n"],
            "frequency_penalty": 0, "stream": true, "cache_prompt": false
        }))
        .unwrap();
        assert_eq!(
            mapped,
            json!({"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi there"}],
                   "max_tokens": 5, "temperature": 0, "top_p": 0.9, "seed": 3, "stop": ["\n"],
                   "cache_prompt": false})
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let base = json!({"role": "user", "content": "x"});
        let refused = |request: Value, word: &str| {
            let e = args(request).unwrap_err();
            assert!(e.body().to_string().contains(word), "{}", e.body());
        };
        refused(json!({"messages": []}), "empty");
        refused(json!({"messages": "hi"}), "must be an array");
        refused(json!({"messages": [base], "n": 2}), "one choice");
        refused(
            json!({"messages": [base], "tools": [{"type": "function"}]}),
            "tool calling",
        );
        refused(
            json!({"messages": [base], "presence_penalty": 0.5}),
            "repeat_penalty",
        );
        refused(
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "role 'tool'",
        );
        refused(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "image_url",
        );
    }

    #[test]
    fn usage_and_finish_reasons_take_openais_names() {
        let usage = json!({"prompt_tokens": 7, "cached_prompt_tokens": 4, "completion_tokens": 3, "finish_reason": "length"});
        assert_eq!(finish_reason(&usage), "length");
        assert_eq!(
            finish_reason(&json!({"finish_reason": "cancelled"})),
            "stop"
        );
        assert_eq!(
            openai_usage(&usage),
            json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                   "prompt_tokens_details": {"cached_tokens": 4}})
        );
    }
}
