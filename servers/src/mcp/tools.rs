//! The tools `cpipe mcp` offers: fixed ones that work on any server (list, describe, call,
//! send, read, cancel, stop) and one per command of each live cpipe server, generated from
//! its `get_interface` answer and named `SERVER.COMMAND`.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pipe_core::discovery::{self, Liveness, ServerInfo};
use pipe_core::Client;
use serde_json::{json, Map, Value};

use super::arguments::{ArgResult, Args, Param};
use super::session::{Chunk, SendError, Session, Sessions};
use crate::listing;

/// Output returned per tool call unless `max_chars` says otherwise: enough for a long
/// reply, small enough for an agent's context.
pub(super) const DEFAULT_MAX_CHARS: u64 = 20_000;
pub(super) const MAX_MAX_CHARS: u64 = 1_000_000;
/// How long `call` waits for a request to finish unless told.
pub(super) const DEFAULT_CALL_SECS: f64 = 120.0;
pub(super) const MAX_CALL_SECS: f64 = 3600.0;
pub(super) const MAX_READ_WAIT_SECS: f64 = 60.0;
/// How long `stop_server` waits for a server to go.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A tool's answer: text for the agent, the same facts as JSON, and whether it failed.
#[derive(Debug)]
pub struct Outcome {
    /// What the agent reads.
    pub text: String,
    /// Machine-readable details.
    pub structured: Value,
    /// The tool failed (a tool error, which the agent can correct and retry).
    pub is_error: bool,
}

impl Outcome {
    fn ok(text: impl Into<String>, structured: Value) -> Self {
        Self {
            text: text.into(),
            structured,
            is_error: false,
        }
    }

    pub(super) fn error(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            structured: json!({"error": text}),
            text,
            is_error: true,
        }
    }
}

/// A call of a tool that does not exist (a protocol error, not a tool error).
#[derive(Debug)]
pub struct UnknownTool(pub String);

/// The tool catalogue and what it needs to run.
pub struct Tools {
    sessions: Sessions,
    /// Generated tools per server.
    generated: Mutex<HashMap<String, ServerTools>>,
}

/// The tools generated for one server, and the pid of the server they were read from.
type ServerTools = (Option<u32>, Vec<Value>);

/// One fixed tool, written once: the catalogue entry and the checked call both come from it.
struct FixedTool {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    /// The arguments it takes, in the order its schema lists them.
    params: &'static [Param],
    required: &'static [Param],
    annotations: &'static [(&'static str, bool)],
    run: fn(&Tools, &Args, &AtomicBool) -> ArgResult<Outcome>,
}

const READS_AND_WRITES: &[(&str, bool)] = &[("readOnlyHint", false), ("openWorldHint", false)];
const DESTRUCTIVE: &[(&str, bool)] = &[
    ("readOnlyHint", false),
    ("destructiveHint", true),
    ("openWorldHint", false),
];

/// The tools that work on any server.
const FIXED: &[FixedTool] = &[
    FixedTool {
        name: "list_servers",
        title: "List cpipe servers",
        description: "Lists every tool server on this machine (cpipe or named-pipes) with its state, pid, subscriber count and status (alive, unresponsive, or orphaned). Orphaned pipes, left by servers that died, are removed as a side effect.",
        params: &[],
        required: &[],
        annotations: &[
            ("readOnlyHint", false),
            ("destructiveHint", false),
            ("idempotentHint", true),
            ("openWorldHint", false),
        ],
        run: |tools, _, _| Ok(tools.list_servers()),
    },
    FixedTool {
        name: "describe_server",
        title: "Describe a server",
        description: "What a server does: its description, its help text, and every command with the JSON Schema of its arguments and the events it emits (its get_interface answer).",
        params: &[Param::Server],
        required: &[Param::Server],
        annotations: &[("readOnlyHint", true), ("openWorldHint", false)],
        run: |tools, args, _| Ok(tools.describe(args.server()?)),
    },
    FixedTool {
        name: "call",
        title: "Call a command and wait",
        description: "Sends one command to a server and waits for it to finish, returning its whole output as text: streamed tokens joined (a full chat reply), other events one per line. Output beyond max_chars, or still coming at the timeout, is readable with read_output.",
        params: &[
            Param::Server,
            Param::Command,
            Param::Arguments,
            Param::TimeoutSeconds,
            Param::MaxChars,
        ],
        required: &[Param::Server, Param::Command],
        annotations: READS_AND_WRITES,
        run: |tools, args, stop| {
            tools.call_command(
                args.server()?,
                args.command()?,
                args.arguments()?,
                args.seconds("timeout_seconds", DEFAULT_CALL_SECS, MAX_CALL_SECS)?,
                args.max_chars()?,
                stop,
            )
        },
    },
    FixedTool {
        name: "send",
        title: "Start a command",
        description: "Starts a command on a server without waiting and returns its request id; read its output with read_output. One request per server at a time: while the previous one runs, send answers busy.",
        params: &[Param::Server, Param::Command, Param::Arguments],
        required: &[Param::Server, Param::Command],
        annotations: READS_AND_WRITES,
        run: |tools, args, _| Ok(tools.send(args.server()?, args.command()?, args.arguments()?)),
    },
    FixedTool {
        name: "read_output",
        title: "Read new output",
        description: "Returns the output that arrived since your last read, from one request (request_id) or from everything the server sent, broadcasts included (no request_id); plus the server's current state. A server that is gone reads as stopped.",
        params: &[
            Param::Server,
            Param::RequestId,
            Param::WaitSeconds,
            Param::MaxChars,
        ],
        required: &[Param::Server],
        annotations: READS_AND_WRITES,
        run: |tools, args, _| {
            Ok(tools.read_output(
                args.server()?,
                args.request_id()?,
                args.seconds("wait_seconds", 0.0, MAX_READ_WAIT_SECS)?,
                args.max_chars()?,
            ))
        },
    },
    FixedTool {
        name: "cancel",
        title: "Cancel a request",
        description: "Cancels a running request started with send or call; its output ends with a cancelled error.",
        params: &[Param::Server, Param::RequestId],
        required: &[Param::Server, Param::RequestId],
        annotations: DESTRUCTIVE,
        run: |tools, args, _| {
            let id = args.request_id()?.ok_or_else(|| {
                Outcome::error("cancel: missing required argument \"request_id\"")
            })?;
            Ok(tools.cancel(args.server()?, id))
        },
    },
    FixedTool {
        name: "stop_server",
        title: "Stop a server",
        description: "Asks a server to stop, waits for it to go, and removes its leftover pipes.",
        params: &[Param::Server],
        required: &[Param::Server],
        annotations: DESTRUCTIVE,
        run: |tools, args, _| Ok(tools.stop_server(args.server()?)),
    },
];

impl FixedTool {
    /// The tool as `tools/list` describes it.
    fn to_json(&self) -> Value {
        let properties: Map<String, Value> = self
            .params
            .iter()
            .map(|p| (p.name().to_string(), p.schema()))
            .collect();
        let required: Vec<&str> = self.required.iter().map(|p| p.name()).collect();
        let mut schema = json!({"type": "object", "properties": properties});
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        let annotations: Map<String, Value> = self
            .annotations
            .iter()
            .map(|(hint, on)| (hint.to_string(), Value::Bool(*on)))
            .collect();
        json!({
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": schema,
            "annotations": annotations,
        })
    }
}

impl Tools {
    /// Tools over the servers in `sessions`' directory.
    pub fn new(sessions: Sessions) -> Self {
        Self {
            sessions,
            generated: Mutex::new(HashMap::new()),
        }
    }

    /// Every tool: the fixed ones, then one per command of each live cpipe server.
    pub fn list(&self) -> Vec<Value> {
        let mut tools: Vec<Value> = FIXED.iter().map(FixedTool::to_json).collect();
        let servers = self.servers().unwrap_or_default();
        let mut generated = self.generated.lock().unwrap_or_else(|p| p.into_inner());
        generated.retain(|name, _| servers.iter().any(|s| &s.name == name));
        for server in servers.iter().filter(|s| s.status != Liveness::Orphaned) {
            let fresh = generated
                .get(&server.name)
                .is_some_and(|(pid, _)| pid.is_some() && *pid == server.pid);
            if !fresh {
                match self.server_tools(&server.name) {
                    Some(commands) => {
                        generated.insert(server.name.clone(), (server.pid, commands));
                    }
                    // Not reachable in time: list it without its own tools, and ask again at
                    // the next tools/list rather than remembering it has none.
                    None => continue,
                }
            }
            tools.extend(generated[&server.name].1.iter().cloned());
        }
        tools
    }

    /// The generated tools of one server: none for servers without `get_interface` (such as
    /// named-pipes servers); `None` if it could not be asked in time.
    fn server_tools(&self, name: &str) -> Option<Vec<Value>> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        let session = self.sessions.connect(name).ok()?;
        let interface = match interface(&session) {
            Ok(found) => found?,
            Err(pipe_core::Error::Remote { .. }) => return Some(Vec::new()),
            Err(e) => {
                tracing::warn!("cannot read the interface of '{name}': {e}");
                return None;
            }
        };
        let commands = interface.get("commands").and_then(Value::as_array);
        let tools = commands
            .into_iter()
            .flatten()
            .filter(|c| c.get("builtin").and_then(Value::as_bool) != Some(true))
            .filter_map(|c| {
                let cmd = c.get("name")?.as_str()?;
                let tool = format!("{name}.{cmd}");
                if !valid(&tool) {
                    tracing::debug!("no MCP tool for {tool}: not a valid tool name");
                    return None;
                }
                let summary = c.get("summary").and_then(Value::as_str).unwrap_or("");
                let mut schema = c.get("args").cloned().unwrap_or_else(|| json!({}));
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    schema = json!({"type": "object"});
                }
                Some(json!({
                    "name": tool,
                    "description": format!("{summary} (the '{cmd}' command of the live cpipe server '{name}'; runs like the call tool, waiting up to {DEFAULT_CALL_SECS} s)"),
                    "inputSchema": schema,
                }))
            })
            .collect();
        Some(tools)
    }

    /// Runs tool `name`; `stop` is set if the agent cancels the call.
    pub fn call(
        &self,
        name: &str,
        args: &Value,
        stop: &AtomicBool,
    ) -> Result<Outcome, UnknownTool> {
        if let Some(tool) = FIXED.iter().find(|tool| tool.name == name) {
            let outcome =
                Args::new(name, args, tool.params).and_then(|a| (tool.run)(self, &a, stop));
            return Ok(outcome.unwrap_or_else(|e| e));
        }
        // A generated tool: SERVER.COMMAND.
        let Some((server, cmd)) = name.split_once('.') else {
            return Err(UnknownTool(name.into()));
        };
        let arguments = match args {
            Value::Null => json!({}),
            Value::Object(_) => args.clone(),
            other => {
                return Ok(Outcome::error(format!(
                    "{name}: arguments must be a JSON object, got {other}"
                )))
            }
        };
        let outcome = self.call_command(
            server,
            cmd,
            arguments,
            Duration::from_secs_f64(DEFAULT_CALL_SECS),
            DEFAULT_MAX_CHARS as usize,
            stop,
        );
        Ok(outcome.unwrap_or_else(|e| e))
    }

    fn list_servers(&self) -> Outcome {
        let dir = self.sessions.dir();
        let servers = match self.servers() {
            Ok(s) => s,
            Err(e) => return Outcome::error(format!("cannot list servers: {e}")),
        };
        let reclaimed = discovery::clear_orphans(dir).unwrap_or_default();
        let mut text = listing::table(&servers, dir);
        if !reclaimed.is_empty() {
            text += &format!(
                "Reclaimed {} orphaned pipe(s): {}\n",
                reclaimed.len(),
                reclaimed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let list: Vec<Value> = servers
            .iter()
            .map(|s| {
                json!({
                    "name": s.name, "state": s.state, "pid": s.pid, "subscribers": s.subscribers,
                    "status": listing::status_name(s.status), "pipe": s.path,
                })
            })
            .collect();
        Outcome::ok(
            text,
            json!({"servers": list, "reclaimed": reclaimed, "dir": dir}),
        )
    }

    /// The servers in the pipe directory, each asked for its state through this process's own
    /// connection to it (the protocol allows a process one connection per server, so probing
    /// with a second one would fail while a tool call holds the first).
    fn servers(&self) -> pipe_core::Result<Vec<ServerInfo>> {
        let pipes = discovery::server_pipes(self.sessions.dir())?;
        Ok(pipes
            .into_iter()
            .map(|(name, path)| {
                let alive = matches!(pipe_core::has_reader(&path), Ok(true));
                let mut info = ServerInfo {
                    name,
                    path,
                    status: Liveness::Orphaned,
                    state: None,
                    pid: None,
                    subscribers: None,
                };
                if alive {
                    info.status = Liveness::Unresponsive;
                    if let Ok(session) = self.sessions.connect(&info.name) {
                        fill_state(&mut info, &session);
                    }
                }
                info
            })
            .collect())
    }

    fn session(&self, server: &str) -> Result<std::sync::Arc<Session>, Outcome> {
        self.sessions.connect(server).map_err(|e| {
            Outcome::error(format!(
                "cannot reach server '{server}': {e}. Call list_servers to see what is running."
            ))
        })
    }

    fn describe(&self, server: &str) -> Outcome {
        let session = match self.session(server) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let text_of = |cmd: &str, field: &str| {
            session
                .control(cmd)
                .ok()
                .and_then(|events| events.iter().find_map(|e| e.str(field).map(String::from)))
        };
        let help = text_of("get_help", "help");
        let mut text = String::new();
        let mut structured = json!({"server": server, "help": help});
        match interface(&session) {
            Ok(Some(interface)) => {
                let description = interface
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                text +=
                    &format!("{server}: {description}\n\nCommands (arguments as JSON Schema):\n");
                for c in interface
                    .get("commands")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let field = |k: &str| c.get(k).cloned().unwrap_or(Value::Null);
                    let builtin = if c.get("builtin").and_then(Value::as_bool) == Some(true) {
                        " [built in]"
                    } else {
                        ""
                    };
                    text += &format!(
                        "- {}{builtin}: {}\n  args: {}\n  emits: {}\n",
                        c.get("name").and_then(Value::as_str).unwrap_or("?"),
                        c.get("summary").and_then(Value::as_str).unwrap_or(""),
                        field("args"),
                        field("emits"),
                    );
                }
                structured["interface"] = interface.clone();
            }
            _ => {
                // named-pipes servers have no get_interface: describe them by their help.
                let description = text_of("get_description", "description").unwrap_or_default();
                text += &format!(
                    "{server}: {description}\n(This server does not answer get_interface, so \
                     its commands are known only from its help.)\n"
                );
            }
        }
        if let Some(help) = help {
            text += &format!("\nHelp:\n{help}\n");
        }
        Outcome::ok(text, structured)
    }

    fn start(
        &self,
        server: &str,
        cmd: &str,
        arguments: Value,
    ) -> Result<(std::sync::Arc<Session>, u64), Outcome> {
        let session = self.session(server)?;
        match session.send(cmd, arguments) {
            Ok(id) => Ok((session, id)),
            Err(e @ SendError::Busy { .. }) => Err(Outcome::error(e.to_string())),
            Err(SendError::Pipe(e)) => Err(Outcome::error(format!(
                "cannot send '{cmd}' to '{server}': {e}. Call list_servers to see what is running."
            ))),
        }
    }

    fn call_command(
        &self,
        server: &str,
        cmd: &str,
        arguments: Value,
        timeout: Duration,
        max_chars: usize,
        stop: &AtomicBool,
    ) -> ArgResult<Outcome> {
        let (session, id) = self.start(server, cmd, arguments)?;
        let finished = session.wait_finished(id, Instant::now() + timeout, stop);
        if !finished && stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = session.cancel(id);
        }
        let mut outcome = read_request(&session, id, max_chars);
        if !finished {
            outcome.text += &format!(
                "[still running after {:.0} s: read the rest with read_output {}, or cancel it]\n",
                timeout.as_secs_f64(),
                json!({"server": server, "request_id": id})
            );
        }
        Ok(outcome)
    }

    fn send(&self, server: &str, cmd: &str, arguments: Value) -> Outcome {
        match self.start(server, cmd, arguments) {
            Ok((_, id)) => Outcome::ok(
                format!(
                    "Started request {id} ('{cmd}' on '{server}'). Read its output with \
                     read_output {}.",
                    json!({"server": server, "request_id": id})
                ),
                json!({"server": server, "request_id": id, "command": cmd}),
            ),
            Err(e) => e,
        }
    }

    fn read_output(
        &self,
        server: &str,
        request: Option<u64>,
        wait: Duration,
        max_chars: usize,
    ) -> Outcome {
        let session = match self.sessions.existing(server).filter(|s| s.is_open()) {
            Some(s) => Some(s),
            None => self
                .sessions
                .connect(server)
                .ok()
                .or_else(|| self.sessions.existing(server)),
        };
        let Some(session) = session else {
            return Outcome::ok(
                format!("[server '{server}' is stopped: nothing to read]\n"),
                json!({"server": server, "state": "stopped", "output": ""}),
            );
        };
        if let Some(id) = request {
            if !session.log().requests.contains_key(&id) {
                return Outcome::error(format!(
                    "read_output: '{server}' has no request {id} from this session (ids come \
                     from send or call; the oldest are forgotten after 64 requests)"
                ));
            }
            if !wait.is_zero() {
                let offset = session.log().cursors.get(&request).copied().unwrap_or(0);
                session.wait_output(request, offset, Instant::now() + wait);
            }
            return read_request(&session, id, max_chars);
        }
        let offset = session.log().cursors.get(&None).copied().unwrap_or(0);
        if !wait.is_zero() {
            session.wait_output(None, offset, Instant::now() + wait);
        }
        let state = current_state(&session);
        let mut log = session.log();
        let chunk = log.all.read(offset, max_chars);
        log.cursors.insert(None, chunk.next);
        drop(log);
        let mut text = chunk.text.clone();
        text += &footer(server, None, &chunk);
        text += &format!("[state: {state}]\n");
        Outcome::ok(
            text,
            json!({"server": server, "state": state, "output": chunk.text,
                   "remaining_chars": chunk.remaining, "lost_chars": chunk.lost}),
        )
    }

    fn cancel(&self, server: &str, id: u64) -> Outcome {
        let session = match self.session(server) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let known = session.log().requests.get(&id).map(|r| r.finished);
        match known {
            None => Outcome::error(format!(
                "cancel: '{server}' has no request {id} from this session"
            )),
            Some(true) => Outcome::ok(
                format!("Request {id} on '{server}' had already finished."),
                json!({"server": server, "request_id": id, "cancelled": false}),
            ),
            Some(false) => match session.cancel(id) {
                Ok(()) => Outcome::ok(
                    format!("Cancelled request {id} on '{server}'."),
                    json!({"server": server, "request_id": id, "cancelled": true}),
                ),
                Err(e) => Outcome::error(format!("cannot cancel request {id} on '{server}': {e}")),
            },
        }
    }

    fn stop_server(&self, server: &str) -> Outcome {
        let dir = self.sessions.dir();
        let pipe = pipe_core::paths::ToolPaths::new(dir, server).upstream();
        let was_running = match self.sessions.connect(server) {
            Ok(session) => {
                // The server may close our pipe before answering: that is success too.
                let _ = session.control("stop");
                self.sessions.forget(server);
                true
            }
            Err(_) => false,
        };
        let deadline = Instant::now() + STOP_WAIT;
        while was_running
            && matches!(pipe_core::has_reader(&pipe), Ok(true))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let still_running = matches!(pipe_core::has_reader(&pipe), Ok(true));
        let reclaimed = discovery::clear_orphans(dir).unwrap_or_default();
        let structured = json!({"server": server, "was_running": was_running,
                                "stopped": !still_running, "reclaimed": reclaimed});
        if still_running {
            return Outcome {
                text: format!(
                    "'{server}' was asked to stop but still runs after {} s (busy finishing \
                     work?); check again with list_servers.",
                    STOP_WAIT.as_secs()
                ),
                structured,
                is_error: true,
            };
        }
        let text = if was_running {
            format!("Stopped '{server}'; reclaimed {} pipe(s).", reclaimed.len())
        } else {
            format!(
                "'{server}' was not running; reclaimed {} orphaned pipe(s).",
                reclaimed.len()
            )
        };
        Outcome::ok(text, structured)
    }
}

/// The server's commands in the form of cpipe's `get_interface` answer (a cpipe server's own,
/// or a named-pipes 0.7 server's named interfaces converted); `None` for a server that
/// describes neither (named-pipes 0.4).
fn interface(session: &Session) -> pipe_core::Result<Option<Value>> {
    session.with(Client::describe)
}

/// Reads the unread output of request `id`, advancing its cursor.
fn read_request(session: &Session, id: u64, max_chars: usize) -> Outcome {
    let state = current_state(session);
    let mut log = session.log();
    let offset = log.cursors.get(&Some(id)).copied().unwrap_or(0);
    let Some(request) = log.requests.get(&id) else {
        return Outcome::error(format!("request {id} is no longer kept"));
    };
    let chunk = request.transcript.read(offset, max_chars);
    let (finished, failed, cmd) = (request.finished, request.failed, request.cmd.clone());
    log.cursors.insert(Some(id), chunk.next);
    drop(log);
    let mut text = chunk.text.clone();
    text += &footer(&session.name, Some(id), &chunk);
    if !finished && chunk.remaining == 0 {
        text += &format!("[request {id} is still running; read again for more]\n");
    }
    Outcome {
        text,
        structured: json!({
            "server": session.name, "request_id": id, "command": cmd, "finished": finished,
            "failed": failed, "state": state, "output": chunk.text,
            "remaining_chars": chunk.remaining, "lost_chars": chunk.lost,
        }),
        is_error: failed,
    }
}

/// Notes on what a read left out.
fn footer(server: &str, request: Option<u64>, chunk: &Chunk) -> String {
    let mut text = String::new();
    if !chunk.text.is_empty() && !chunk.text.ends_with('\n') {
        text.push('\n');
    }
    if chunk.lost > 0 {
        text += &format!(
            "[{} bytes of older output were dropped before they were read]\n",
            chunk.lost
        );
    }
    if chunk.remaining > 0 {
        let mut args = json!({"server": server});
        if let Some(id) = request {
            args["request_id"] = id.into();
        }
        text += &format!(
            "[truncated: {} more bytes; call read_output {args} to read the rest]\n",
            chunk.remaining
        );
    }
    text
}

/// The server's state through our connection: "stopped" once the connection is gone.
fn current_state(session: &Session) -> String {
    if !session.is_open() {
        return "stopped".into();
    }
    match session.control("get_state") {
        Ok(events) => events
            .iter()
            .find_map(|e| e.str("state").map(String::from))
            .unwrap_or_else(|| "unknown".into()),
        Err(pipe_core::Error::Disconnected { .. }) => "stopped".into(),
        Err(_) => session
            .log()
            .state
            .clone()
            .unwrap_or_else(|| "unresponsive".into()),
    }
}

fn fill_state(server: &mut ServerInfo, session: &Session) {
    if let Ok(events) = session.control("get_state") {
        server.apply_state_reply(&events);
    }
}
