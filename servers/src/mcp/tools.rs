//! The tools `cpipe mcp` offers: fixed ones that work on any server (list, describe, call,
//! send, read, cancel, stop) and one per command of each live cpipe server, generated from
//! its `get_interface` answer and named `SERVER.COMMAND`.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pipe_core::discovery::{self, Liveness, ServerInfo};
use pipe_core::{Event, ProtocolEvent};
use serde_json::{json, Map, Value};

use super::session::{Chunk, SendError, Session, Sessions};
use crate::listing;

/// Output returned per tool call unless `max_chars` says otherwise: enough for a long
/// reply, small enough for an agent's context.
const DEFAULT_MAX_CHARS: u64 = 20_000;
const MAX_MAX_CHARS: u64 = 1_000_000;
/// How long `call` waits for a request to finish unless told.
const DEFAULT_CALL_SECS: f64 = 120.0;
const MAX_CALL_SECS: f64 = 3600.0;
const MAX_READ_WAIT_SECS: f64 = 60.0;
/// How long `stop_server` waits for a server to go.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// Commands an agent must not send itself: the connection is `cpipe mcp`'s.
const MANAGED: [(&str, &str); 4] = [
    ("subscribe", "cpipe mcp subscribes to each server itself"),
    ("unsubscribe", "cpipe mcp manages its own subscriptions"),
    ("cancel", "use the cancel tool"),
    (
        "stop",
        "use the stop_server tool, which also reclaims the server's pipes",
    ),
];

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

    fn error(text: impl Into<String>) -> Self {
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

type ArgResult<T> = Result<T, Outcome>;

/// The tools generated for one server, and the pid of the server they were read from.
type ServerTools = (Option<u32>, Vec<Value>);

/// A tool's arguments, checked one by one with errors that say how to fix them.
struct Args<'a> {
    tool: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    fn new(tool: &'a str, value: &'a Value, allowed: &[&str]) -> ArgResult<Self> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let fields = match value {
            Value::Object(fields) => fields,
            Value::Null => EMPTY.get_or_init(Map::new),
            other => {
                return Err(Outcome::error(format!(
                    "{tool}: arguments must be a JSON object, got {other}"
                )))
            }
        };
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(Outcome::error(format!(
                "{tool}: unknown argument \"{unknown}\"; it takes {}",
                allowed.join(", ")
            )));
        }
        Ok(Self { tool, fields })
    }

    fn fail(&self, key: &str, what: &str, got: &Value) -> Outcome {
        Outcome::error(format!(
            "{}: argument \"{key}\" must be {what}, got {got}",
            self.tool
        ))
    }

    fn server(&self) -> ArgResult<&'a str> {
        match self.fields.get("server") {
            Some(Value::String(s)) if pipe_core::paths::valid_name(s) => Ok(s),
            None | Some(Value::Null) => Err(Outcome::error(format!(
                "{}: missing required argument \"server\" (a name from list_servers, e.g. \"chat\")",
                self.tool
            ))),
            Some(other) => Err(self.fail("server", "a server name such as \"chat\"", other)),
        }
    }

    fn command(&self) -> ArgResult<&'a str> {
        let command = match self.fields.get("command") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
            None | Some(Value::Null) => {
                return Err(Outcome::error(format!(
                    "{}: missing required argument \"command\" (see describe_server for a \
                     server's commands)",
                    self.tool
                )))
            }
            Some(other) => return Err(self.fail("command", "a command name", other)),
        };
        if let Some((_, why)) = MANAGED
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(command))
        {
            return Err(Outcome::error(format!(
                "{}: '{command}' cannot be sent this way: {why}",
                self.tool
            )));
        }
        Ok(command)
    }

    fn arguments(&self) -> ArgResult<Value> {
        match self.fields.get("arguments") {
            None | Some(Value::Null) => Ok(json!({})),
            Some(Value::Object(o)) => {
                if let Some(reserved) = ["pid", "cmd", "id"].iter().find(|k| o.contains_key(**k)) {
                    return Err(Outcome::error(format!(
                        "{}: \"{reserved}\" is set by cpipe mcp; leave it out of arguments",
                        self.tool
                    )));
                }
                Ok(Value::Object(o.clone()))
            }
            Some(other) => {
                Err(self.fail("arguments", "a JSON object of the command's fields", other))
            }
        }
    }

    fn request_id(&self) -> ArgResult<Option<u64>> {
        match self.fields.get("request_id") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| self.fail("request_id", "a request id from send or call", v)),
        }
    }

    fn seconds(&self, key: &str, default: f64, max: f64) -> ArgResult<Duration> {
        let secs = match self.fields.get(key) {
            None | Some(Value::Null) => default,
            Some(v) => match v.as_f64() {
                Some(s) if (0.0..=max).contains(&s) => s,
                _ => {
                    return Err(self.fail(key, &format!("a number of seconds from 0 to {max}"), v))
                }
            },
        };
        Ok(Duration::from_secs_f64(secs))
    }

    fn max_chars(&self) -> ArgResult<usize> {
        match self.fields.get("max_chars") {
            None | Some(Value::Null) => Ok(DEFAULT_MAX_CHARS as usize),
            Some(v) => match v.as_u64() {
                Some(n @ 1..=MAX_MAX_CHARS) => Ok(n as usize),
                _ => Err(self.fail(
                    "max_chars",
                    &format!("an integer from 1 to {MAX_MAX_CHARS}"),
                    v,
                )),
            },
        }
    }
}

/// The fixed tools' definitions.
fn fixed_tools() -> Vec<Value> {
    let server = json!({"type": "string", "description": "The server's name, as list_servers shows it (e.g. \"chat\")."});
    let request_id = json!({"type": "integer", "minimum": 1, "description": "A request id returned by send or call."});
    let max_chars = json!({"type": "integer", "minimum": 1, "maximum": MAX_MAX_CHARS,
        "description": format!("Most characters of output to return (default {DEFAULT_MAX_CHARS}); the rest stays readable with read_output.")});
    let arguments = json!({"type": "object", "description": "The command's fields, as describe_server lists them (e.g. {\"messages\": [...]} for chat)."});
    let command =
        json!({"type": "string", "description": "The command to send (see describe_server)."});
    vec![
        json!({
            "name": "list_servers",
            "title": "List cpipe servers",
            "description": "Lists every tool server on this machine (cpipe or named-pipes) with its state, pid, subscriber count and status (alive, unresponsive, or orphaned). Orphaned pipes, left by servers that died, are removed as a side effect.",
            "inputSchema": {"type": "object", "properties": {}},
            "annotations": {"readOnlyHint": false, "destructiveHint": false, "idempotentHint": true, "openWorldHint": false}
        }),
        json!({
            "name": "describe_server",
            "title": "Describe a server",
            "description": "What a server does: its description, its help text, and every command with the JSON Schema of its arguments and the events it emits (its get_interface answer).",
            "inputSchema": {"type": "object", "required": ["server"], "properties": {"server": server}},
            "annotations": {"readOnlyHint": true, "openWorldHint": false}
        }),
        json!({
            "name": "call",
            "title": "Call a command and wait",
            "description": "Sends one command to a server and waits for it to finish, returning its whole output as text: streamed tokens joined (a full chat reply), other events one per line. Output beyond max_chars, or still coming at the timeout, is readable with read_output.",
            "inputSchema": {"type": "object", "required": ["server", "command"], "properties": {
                "server": server, "command": command, "arguments": arguments,
                "timeout_seconds": {"type": "number", "minimum": 0, "maximum": MAX_CALL_SECS, "description": format!("How long to wait for the command to finish (default {DEFAULT_CALL_SECS}).")},
                "max_chars": max_chars}},
            "annotations": {"readOnlyHint": false, "openWorldHint": false}
        }),
        json!({
            "name": "send",
            "title": "Start a command",
            "description": "Starts a command on a server without waiting and returns its request id; read its output with read_output. One request per server at a time: while the previous one runs, send answers busy.",
            "inputSchema": {"type": "object", "required": ["server", "command"], "properties": {
                "server": server, "command": command, "arguments": arguments}},
            "annotations": {"readOnlyHint": false, "openWorldHint": false}
        }),
        json!({
            "name": "read_output",
            "title": "Read new output",
            "description": "Returns the output that arrived since your last read, from one request (request_id) or from everything the server sent, broadcasts included (no request_id); plus the server's current state. A server that is gone reads as stopped.",
            "inputSchema": {"type": "object", "required": ["server"], "properties": {
                "server": server, "request_id": request_id,
                "wait_seconds": {"type": "number", "minimum": 0, "maximum": MAX_READ_WAIT_SECS, "description": "If nothing new has arrived, wait up to this long for it (default 0)."},
                "max_chars": max_chars}},
            "annotations": {"readOnlyHint": false, "openWorldHint": false}
        }),
        json!({
            "name": "cancel",
            "title": "Cancel a request",
            "description": "Cancels a running request started with send or call; its output ends with a cancelled error.",
            "inputSchema": {"type": "object", "required": ["server", "request_id"], "properties": {
                "server": server, "request_id": request_id}},
            "annotations": {"readOnlyHint": false, "destructiveHint": true, "openWorldHint": false}
        }),
        json!({
            "name": "stop_server",
            "title": "Stop a server",
            "description": "Asks a server to stop, waits for it to go, and removes its leftover pipes.",
            "inputSchema": {"type": "object", "required": ["server"], "properties": {"server": server}},
            "annotations": {"readOnlyHint": false, "destructiveHint": true, "openWorldHint": false}
        }),
    ]
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
        let mut tools = fixed_tools();
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
        let outcome = match name {
            "list_servers" => Args::new(name, args, &[]).map(|_| self.list_servers()),
            "describe_server" => {
                Args::new(name, args, &["server"]).and_then(|a| Ok(self.describe(a.server()?)))
            }
            "call" => Args::new(
                name,
                args,
                &[
                    "server",
                    "command",
                    "arguments",
                    "timeout_seconds",
                    "max_chars",
                ],
            )
            .and_then(|a| {
                self.call_command(
                    a.server()?,
                    a.command()?,
                    a.arguments()?,
                    a.seconds("timeout_seconds", DEFAULT_CALL_SECS, MAX_CALL_SECS)?,
                    a.max_chars()?,
                    stop,
                )
            }),
            "send" => Args::new(name, args, &["server", "command", "arguments"])
                .and_then(|a| Ok(self.send(a.server()?, a.command()?, a.arguments()?))),
            "read_output" => Args::new(
                name,
                args,
                &["server", "request_id", "wait_seconds", "max_chars"],
            )
            .and_then(|a| {
                Ok(self.read_output(
                    a.server()?,
                    a.request_id()?,
                    a.seconds("wait_seconds", 0.0, MAX_READ_WAIT_SECS)?,
                    a.max_chars()?,
                ))
            }),
            "cancel" => Args::new(name, args, &["server", "request_id"]).and_then(|a| {
                let id = a.request_id()?.ok_or_else(|| {
                    Outcome::error("cancel: missing required argument \"request_id\"")
                })?;
                Ok(self.cancel(a.server()?, id))
            }),
            "stop_server" => {
                Args::new(name, args, &["server"]).and_then(|a| Ok(self.stop_server(a.server()?)))
            }
            generated => {
                let Some((server, cmd)) = generated.split_once('.') else {
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
                self.call_command(
                    server,
                    cmd,
                    arguments,
                    Duration::from_secs_f64(DEFAULT_CALL_SECS),
                    DEFAULT_MAX_CHARS as usize,
                    stop,
                )
            }
        };
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
                let description = interface.str("description").unwrap_or("");
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
                structured["interface"] = Value::from(interface.fields().clone());
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

/// The server's `get_interface` answer (a remote error from servers without the command).
fn interface(session: &Session) -> pipe_core::Result<Option<Event>> {
    let events = session.control("get_interface")?;
    Ok(events.into_iter().find(|e| e.is(ProtocolEvent::Interface)))
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
