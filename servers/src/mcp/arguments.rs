//! The fixed tools' arguments: each one's name, JSON Schema and check written once
//! ([`Param`]), and a tool call's arguments read through them ([`Args`]) with errors that say
//! how to fix them.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::tools::{
    Outcome, DEFAULT_CALL_SECS, DEFAULT_MAX_CHARS, MAX_CALL_SECS, MAX_MAX_CHARS, MAX_READ_WAIT_SECS,
};

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

/// What checking an argument gives: the value, or the error for the agent.
pub type ArgResult<T> = Result<T, Outcome>;

/// An argument a fixed tool takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// The server's name.
    Server,
    /// The command to send.
    Command,
    /// The command's fields.
    Arguments,
    /// How long `call` waits.
    TimeoutSeconds,
    /// How long `read_output` waits for something new.
    WaitSeconds,
    /// How much output to return.
    MaxChars,
    /// A request from `send` or `call`.
    RequestId,
}

impl Param {
    /// The argument's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Command => "command",
            Self::Arguments => "arguments",
            Self::TimeoutSeconds => "timeout_seconds",
            Self::WaitSeconds => "wait_seconds",
            Self::MaxChars => "max_chars",
            Self::RequestId => "request_id",
        }
    }

    /// The argument's JSON Schema.
    pub fn schema(self) -> Value {
        match self {
            Self::Server => {
                json!({"type": "string", "description": "The server's name, as list_servers shows it (e.g. \"chat\")."})
            }
            Self::Command => {
                json!({"type": "string", "description": "The command to send (see describe_server)."})
            }
            Self::Arguments => {
                json!({"type": "object", "description": "The command's fields, as describe_server lists them (e.g. {\"messages\": [...]} for chat)."})
            }
            Self::TimeoutSeconds => {
                json!({"type": "number", "minimum": 0, "maximum": MAX_CALL_SECS, "description": format!("How long to wait for the command to finish (default {DEFAULT_CALL_SECS}).")})
            }
            Self::WaitSeconds => {
                json!({"type": "number", "minimum": 0, "maximum": MAX_READ_WAIT_SECS, "description": "If nothing new has arrived, wait up to this long for it (default 0)."})
            }
            Self::MaxChars => json!({"type": "integer", "minimum": 1, "maximum": MAX_MAX_CHARS,
                "description": format!("Most characters of output to return (default {DEFAULT_MAX_CHARS}); the rest stays readable with read_output.")}),
            Self::RequestId => {
                json!({"type": "integer", "minimum": 1, "description": "A request id returned by send or call."})
            }
        }
    }
}

/// A tool's arguments, checked one by one with errors that say how to fix them.
pub struct Args<'a> {
    tool: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    /// Reads a call of `tool` that takes the `allowed` arguments.
    pub fn new(tool: &'a str, value: &'a Value, allowed: &[Param]) -> ArgResult<Self> {
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
        if let Some(unknown) = fields
            .keys()
            .find(|k| !allowed.iter().any(|p| p.name() == k.as_str()))
        {
            let names: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
            return Err(Outcome::error(format!(
                "{tool}: unknown argument \"{unknown}\"; it takes {}",
                names.join(", ")
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

    /// The `server` argument: a valid server name.
    pub fn server(&self) -> ArgResult<&'a str> {
        match self.fields.get("server") {
            Some(Value::String(s)) if pipe_core::paths::valid_name(s) => Ok(s),
            None | Some(Value::Null) => Err(Outcome::error(format!(
                "{}: missing required argument \"server\" (a name from list_servers, e.g. \"chat\")",
                self.tool
            ))),
            Some(other) => Err(self.fail("server", "a server name such as \"chat\"", other)),
        }
    }

    /// The `command` argument: one an agent may send.
    pub fn command(&self) -> ArgResult<&'a str> {
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

    /// The `arguments` object, without the fields cpipe mcp sets.
    pub fn arguments(&self) -> ArgResult<Value> {
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

    /// The `request_id`, if given.
    pub fn request_id(&self) -> ArgResult<Option<u64>> {
        match self.fields.get("request_id") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| self.fail("request_id", "a request id from send or call", v)),
        }
    }

    /// A duration argument in seconds, from 0 to `max`.
    pub fn seconds(&self, key: &str, default: f64, max: f64) -> ArgResult<Duration> {
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

    /// The `max_chars` argument.
    pub fn max_chars(&self) -> ArgResult<usize> {
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
