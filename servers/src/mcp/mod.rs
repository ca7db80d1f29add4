//! `cpipe mcp`: a Model Context Protocol server on stdin/stdout that makes the live tool
//! servers tools an agent can call.
//!
//! The protocol subset is small enough to write by hand: JSON-RPC 2.0, one message per line;
//! both eras of MCP, the `initialize` handshake (2024-11-05 to 2025-11-25) and the stateless
//! per-request envelope of 2026-07-28 (`server/discover`, `_meta` on every request,
//! `subscriptions/listen`); and only the tools feature. Tool calls run on their own threads,
//! so a long `call` never blocks a `read_output` or a cancellation.

mod arguments;
mod session;
mod tools;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use session::Sessions;
use tools::{Tools, UnknownTool};

/// Revisions reached through the `initialize` handshake, oldest first.
const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// Revisions of the per-request envelope.
const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];
const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";
const SUBSCRIPTION_ID_KEY: &str = "io.modelcontextprotocol/subscriptionId";
/// How often the pipe directory is checked for servers coming and going.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// JSON-RPC and MCP error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// What an agent reads first: how the tools fit together.
const INSTRUCTIONS: &str = "\
These tools reach the cpipe tool servers running on this machine (resident LLM chat, \
text-to-speech, speech-to-text, ...), which talk over named pipes. Start with list_servers, \
then describe_server to learn a server's commands and their arguments. call runs a command \
and returns its whole output; for long work use send, then read_output (each read returns only \
what is new) and cancel. Each live cpipe server's commands are also tools of their own, named \
SERVER.COMMAND (for example chat.chat).";

/// A JSON-RPC error.
struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
}

/// The state of one `cpipe mcp` process.
struct Mcp {
    tools: Tools,
    out: Mutex<std::io::Stdout>,
    /// A handshake-era client finished `initialize`: it gets list_changed notifications.
    initialized: AtomicBool,
    /// Open `subscriptions/listen` requests that asked for tool list changes, by id.
    listeners: Mutex<Vec<Value>>,
    /// Running tool calls, by JSON-RPC id, with the flag that cancels them.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// Serves MCP on stdin/stdout for the servers in `dir` until stdin closes.
pub fn run(dir: PathBuf) -> anyhow::Result<()> {
    let mcp = Arc::new(Mcp {
        tools: Tools::new(Sessions::new(dir.clone())),
        out: Mutex::new(std::io::stdout()),
        initialized: AtomicBool::new(false),
        listeners: Mutex::new(Vec::new()),
        running: Mutex::new(HashMap::new()),
    });
    let watcher = Arc::clone(&mcp);
    std::thread::Builder::new()
        .name("mcp-watch".into())
        .spawn(move || watcher.watch(&dir))?;
    tracing::debug!("cpipe mcp: serving on stdin/stdout");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if !line.trim().is_empty() {
            mcp.on_line(&line);
        }
    }
    Ok(())
}

impl Mcp {
    fn on_line(self: &Arc<Self>, line: &str) {
        let message: Value = match serde_json::from_str(line) {
            Ok(m) => m,
            Err(e) => {
                let error = RpcError::new(PARSE_ERROR, format!("not JSON: {e}"));
                return self.respond(&Value::Null, Err(error), false);
            }
        };
        let Some(method) = message.get("method").and_then(Value::as_str) else {
            if message.get("id").is_none() || !message.is_object() {
                let error = RpcError::new(
                    INVALID_REQUEST,
                    "expected a JSON-RPC 2.0 request or notification object (batches are not supported)",
                );
                self.respond(&Value::Null, Err(error), false);
            }
            return; // a response to a request of ours: we send none
        };
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        let Some(id) = message.get("id").cloned() else {
            return self.on_notification(method, &params);
        };
        let version = params
            .pointer(&format!(
                "/_meta/{}",
                PROTOCOL_VERSION_KEY.replace('/', "~1")
            ))
            .and_then(Value::as_str);
        let modern = version.is_some_and(|v| MODERN_VERSIONS.contains(&v));
        if let Some(v) = version.filter(|v| !modern && !HANDSHAKE_VERSIONS.contains(v)) {
            let mut error = RpcError::new(
                UNSUPPORTED_PROTOCOL_VERSION,
                format!("unsupported protocol version {v}"),
            );
            error.data = Some(json!({"supported": supported_versions(), "requested": v}));
            return self.respond(&id, Err(error), false);
        }
        match method {
            "initialize" => {
                let asked = params.get("protocolVersion").and_then(Value::as_str);
                let version = asked
                    .filter(|v| HANDSHAKE_VERSIONS.contains(v))
                    .unwrap_or(HANDSHAKE_VERSIONS[HANDSHAKE_VERSIONS.len() - 1]);
                let result = json!({
                    "protocolVersion": version,
                    "capabilities": capabilities(),
                    "serverInfo": server_info(),
                    "instructions": INSTRUCTIONS,
                });
                self.respond(&id, Ok(result), false);
            }
            "server/discover" => {
                let result = json!({
                    "supportedVersions": supported_versions(),
                    "capabilities": capabilities(),
                    "instructions": INSTRUCTIONS,
                    "ttlMs": 0,
                    "cacheScope": "private",
                });
                self.respond(&id, Ok(result), true);
            }
            "ping" => self.respond(&id, Ok(json!({})), modern),
            "tools/list" => {
                let mcp = Arc::clone(self);
                self.spawn(move || {
                    let mut result = json!({"tools": mcp.tools.list()});
                    if modern {
                        result["ttlMs"] = 0.into();
                        result["cacheScope"] = "private".into();
                    }
                    mcp.respond(&id, Ok(result), modern);
                });
            }
            "tools/call" => self.start_call(id, params, modern),
            "subscriptions/listen" => {
                let wants_tools = params
                    .pointer("/notifications/toolsListChanged")
                    .and_then(Value::as_bool)
                    == Some(true);
                let honoured = if wants_tools {
                    self.listeners
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(id.clone());
                    json!({"toolsListChanged": true})
                } else {
                    json!({})
                };
                // The stream stays open (no response) until the client cancels it.
                self.write(&json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/subscriptions/acknowledged",
                    "params": {"notifications": honoured, "_meta": {SUBSCRIPTION_ID_KEY: id}},
                }));
            }
            other => {
                let error = RpcError::new(
                    METHOD_NOT_FOUND,
                    format!("method '{other}' is not supported: cpipe mcp offers only tools"),
                );
                self.respond(&id, Err(error), modern);
            }
        }
    }

    fn on_notification(&self, method: &str, params: &Value) {
        match method {
            "notifications/initialized" => self.initialized.store(true, Ordering::Release),
            "notifications/cancelled" => {
                let Some(id) = params.get("requestId") else {
                    return;
                };
                if let Some(flag) = self.running().get(&id.to_string()) {
                    flag.store(true, Ordering::Relaxed);
                }
                self.listeners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|listener| listener != id);
            }
            _ => tracing::debug!("ignoring notification {method}"),
        }
    }

    fn start_call(self: &Arc<Self>, id: Value, params: Value, modern: bool) {
        let Some(name) = params.get("name").and_then(Value::as_str).map(String::from) else {
            let error = RpcError::new(
                INVALID_PARAMS,
                "tools/call needs params.name, the tool to call",
            );
            return self.respond(&id, Err(error), modern);
        };
        let stop = Arc::new(AtomicBool::new(false));
        self.running().insert(id.to_string(), Arc::clone(&stop));
        let mcp = Arc::clone(self);
        self.spawn(move || {
            let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
            let outcome = mcp.tools.call(&name, &arguments, &stop);
            mcp.running().remove(&id.to_string());
            if stop.load(Ordering::Relaxed) {
                return; // cancelled: the client expects no response
            }
            let result = match outcome {
                Ok(outcome) => Ok(json!({
                    "content": [{"type": "text", "text": outcome.text}],
                    "structuredContent": outcome.structured,
                    "isError": outcome.is_error,
                })),
                Err(UnknownTool(name)) => Err(RpcError::new(
                    INVALID_PARAMS,
                    format!(
                        "unknown tool '{name}': call tools/list (server commands are named \
                         SERVER.COMMAND)"
                    ),
                )),
            };
            mcp.respond(&id, result, modern);
        });
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, work: impl FnOnce() + Send + 'static) {
        if let Err(e) = std::thread::Builder::new()
            .name("mcp-call".into())
            .spawn(work)
        {
            tracing::error!("cannot start a thread for a request: {e}");
        }
    }

    /// Sends a response; `modern` adds the 2026-07-28 result envelope.
    fn respond(&self, id: &Value, result: Result<Value, RpcError>, modern: bool) {
        let message = match result {
            Ok(mut result) => {
                if modern {
                    result["resultType"] = "complete".into();
                    result["_meta"] = json!({SERVER_INFO_KEY: server_info()});
                }
                json!({"jsonrpc": "2.0", "id": id, "result": result})
            }
            Err(e) => {
                let mut error = json!({"code": e.code, "message": e.message});
                if let Some(data) = e.data {
                    error["data"] = data;
                }
                json!({"jsonrpc": "2.0", "id": id, "error": error})
            }
        };
        self.write(&message);
    }

    fn write(&self, message: &Value) {
        let mut line = message.to_string();
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // The client is gone: nobody is left to serve.
            std::process::exit(0);
        }
    }

    /// Watches the pipe directory and tells clients when the set of live servers changes,
    /// since each server brings its own tools.
    fn watch(&self, dir: &Path) {
        let mut known = live_servers(dir);
        loop {
            std::thread::sleep(WATCH_EVERY);
            let now = live_servers(dir);
            if now == known {
                continue;
            }
            known = now;
            if self.initialized.load(Ordering::Acquire) {
                self.write(
                    &json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
                );
            }
            let listeners = self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for id in listeners {
                self.write(&json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/tools/list_changed",
                    "params": {"_meta": {SUBSCRIPTION_ID_KEY: id}},
                }));
            }
        }
    }
}

/// Names of the servers in `dir` whose pipes someone reads.
fn live_servers(dir: &Path) -> BTreeSet<String> {
    pipe_core::discovery::server_pipes(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, path)| matches!(pipe_core::has_reader(path), Ok(true)))
        .map(|(name, _)| name)
        .collect()
}

fn supported_versions() -> Vec<&'static str> {
    HANDSHAKE_VERSIONS
        .iter()
        .chain(MODERN_VERSIONS.iter())
        .copied()
        .collect()
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": true}})
}

fn server_info() -> Value {
    json!({"name": "cpipe", "title": "cpipe tool servers", "version": env!("CARGO_PKG_VERSION")})
}
