//! The two kinds of line on the wire: requests (`{"pid":P,"cmd":...}`) and events
//! (`{"event":...}`), plus the error vocabulary they share.

use crate::vocabulary::{EventName, ProtocolEvent};
use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fields::Fields;

/// Machine-readable error codes carried in an error event's `code` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, wrong field types, missing fields.
    InvalidRequest,
    /// No handler for the command.
    UnknownCommand,
    /// The server cannot take the request now; retry later.
    Busy,
    /// The request was cancelled, by `cancel` or because its client went away.
    Cancelled,
    /// The request line exceeds the server's limit.
    TooLarge,
    /// The thing named (a request id, a voice, a device) does not exist.
    NotFound,
    /// The server is not ready (e.g. still loading) or lacks a resource.
    Unavailable,
    /// A fault inside the server.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::UnknownCommand => "unknown_command",
            Self::Busy => "busy",
            Self::Cancelled => "cancelled",
            Self::TooLarge => "too_large",
            Self::NotFound => "not_found",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// Parses a wire code; unknown codes (from newer servers) become `Internal`.
    pub fn parse(code: &str) -> Self {
        serde_json::from_value(Value::String(code.to_owned())).unwrap_or(Self::Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a handler reports to its client as `{"event":"error","code":...,"message":...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

impl ToolError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// A fault inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The error as an event.
    pub fn to_event(&self) -> Event {
        Event::new(ProtocolEvent::Error)
            .with("message", self.message.as_str())
            .with("code", self.code.as_str())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ToolError {}

/// An event: a JSON object whose first field is `"event"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event(Fields);

impl Event {
    /// An event named `name` (from a [`vocabulary!`](crate::vocabulary!)) with no other fields.
    pub fn new(name: impl Into<EventName>) -> Self {
        let mut fields = Fields::new();
        fields.insert("event", name.into().as_str());
        Self(fields)
    }

    /// Whether this event, from a named-pipes 0.4 server (which sends no ids), answers the
    /// request waiting for one: anything but the `state_changed` broadcast does.
    pub fn answers_legacy_request(&self) -> bool {
        !self.is(ProtocolEvent::StateChanged)
    }

    /// Whether the event is named `name`.
    pub fn is(&self, name: impl Into<EventName>) -> bool {
        self.name() == name.into().as_str()
    }

    /// Adds (or replaces) a field. The `event` field itself cannot be replaced this way.
    /// A literal key costs no allocation; pass a `String` for a key made at run time.
    pub fn with(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Self {
        self.set(key, value);
        self
    }

    /// Sets a field, leaving `event` alone.
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) {
        let key = key.into();
        if key != "event" {
            self.0.insert(key, value);
        }
    }

    /// Sets every field of `fields` but `event`: to pass a request's or a config's fields on.
    pub fn set_all(&mut self, fields: &Fields) {
        let others = fields.entries().filter(|(key, _)| key != "event");
        self.0.extend(others.cloned());
    }

    /// The event's name (`""` if the peer sent none).
    pub fn name(&self) -> &str {
        self.0.get("event").and_then(Value::as_str).unwrap_or("")
    }

    /// A field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The request id this event answers, if any.
    pub fn id(&self) -> Option<&Value> {
        self.get("id")
    }

    /// All fields, `event` included.
    pub fn fields(&self) -> &Fields {
        &self.0
    }

    /// Consumes the event into its fields.
    pub fn into_fields(self) -> Fields {
        self.0
    }

    /// Builds an event from received fields; `None` if there is no string `event` field.
    pub fn from_fields(fields: Fields) -> Option<Self> {
        fields.get("event")?.as_str()?;
        Some(Self(fields))
    }

    /// Whether this is an error event, and if so its code and message.
    pub fn as_error(&self) -> Option<ToolError> {
        self.is(ProtocolEvent::Error).then(|| {
            ToolError::new(
                self.str("code")
                    .map(ErrorCode::parse)
                    .unwrap_or(ErrorCode::Internal),
                self.str("message").unwrap_or("(no message)"),
            )
        })
    }

    /// The wire form: compact JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(64);
        self.write_line(&mut line);
        line
    }

    /// Appends the wire form to `out`, for several events sent in one write.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        self.write_json(out);
        out.push(b'\n');
    }

    /// Compact JSON with `event` first, as named-pipes writes it, then the other fields in the
    /// order they were added (or received).
    fn write_json(&self, out: &mut Vec<u8>) {
        let fields = self.0.iter().filter(|(key, _)| *key != "event");
        out.extend_from_slice(b"{\"event\":");
        write_value(out, self.name());
        for (key, value) in fields {
            out.push(b',');
            write_value(out, key);
            out.push(b':');
            write_value(out, value);
        }
        out.push(b'}');
    }
}

/// Appends `value` as compact JSON.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("JSON values and strings always serialize");
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut json = Vec::new();
        self.write_json(&mut json);
        f.write_str(&String::from_utf8_lossy(&json))
    }
}

/// A request as the server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The command, lower-cased as named-pipes does.
    pub cmd: String,
    /// The sender's pid: where replies go. `None` when the line carried none.
    pub pid: Option<u32>,
    /// The optional request id, echoed on every event the request causes.
    pub id: Option<Value>,
    /// Every field of the request as sent, `pid`, `cmd` and `id` included.
    pub fields: Fields,
}

/// Why a line could not become a request.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseOutcome {
    /// A request to dispatch.
    Request(Request),
    /// `{}`: named-pipes ignores it, and so do we.
    Empty,
    /// Not a valid request. `pid` is the sender when it could be told, to route the error.
    Invalid {
        /// The sender, if it could be told.
        pid: Option<u32>,
        /// The request id, if it could be read.
        id: Option<Value>,
        /// What is wrong.
        error: ToolError,
    },
}

impl Request {
    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> ParseOutcome {
        let fields: Fields = match serde_json::from_slice(line) {
            Ok(fields) => fields,
            // Any value is accepted inside an object, so a type error means the line holds
            // something other than an object (an array, a number, a string).
            Err(e) if e.is_data() => {
                return ParseOutcome::Invalid {
                    pid: None,
                    id: None,
                    error: ToolError::invalid("a request must be a JSON object"),
                }
            }
            Err(e) => {
                return ParseOutcome::Invalid {
                    pid: pid_hint(line),
                    id: None,
                    error: ToolError::invalid(format!(
                        "malformed JSON request: {e}; send one JSON object per line"
                    )),
                }
            }
        };
        if fields.is_empty() {
            return ParseOutcome::Empty;
        }
        Self::from_fields(fields)
    }

    /// Validates the fields of a parsed object.
    pub fn from_fields(fields: Fields) -> ParseOutcome {
        let invalid = |pid, id, message: String| ParseOutcome::Invalid {
            pid,
            id,
            error: ToolError::invalid(message),
        };
        let pid = match fields.get("pid") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().and_then(|p| u32::try_from(p).ok()) {
                Some(p) if p > 0 => Some(p),
                _ => {
                    return invalid(
                        None,
                        None,
                        format!("\"pid\" must be a positive integer process id, got {v}"),
                    )
                }
            },
        };
        let id = match fields.get("id") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
            Some(v) => {
                return invalid(
                    pid,
                    None,
                    format!("\"id\" must be a string or a number, got {v}"),
                )
            }
        };
        let cmd = match fields.get("cmd") {
            Some(Value::String(c)) if !c.is_empty() => c.to_lowercase(),
            Some(Value::String(_)) | None => {
                return invalid(
                    pid,
                    id,
                    "missing \"cmd\": say which command to run, e.g. {\"cmd\":\"ping\"}".into(),
                )
            }
            Some(v) => return invalid(pid, id, format!("\"cmd\" must be a string, got {v}")),
        };
        ParseOutcome::Request(Self {
            cmd,
            pid,
            id,
            fields,
        })
    }

    /// A field of the request.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key).filter(|v| !v.is_null())
    }

    /// An optional string argument; a wrong type is an `invalid_request` error.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, ToolError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(type_error(&self.cmd, key, "a string", v)),
        }
    }

    /// An optional unsigned integer argument.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, ToolError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| type_error(&self.cmd, key, "a non-negative integer", v)),
        }
    }

    /// An optional number argument.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ToolError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| type_error(&self.cmd, key, "a number", v)),
        }
    }

    /// An optional boolean argument.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ToolError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| type_error(&self.cmd, key, "true or false", v)),
        }
    }
}

fn type_error(cmd: &str, key: &str, expected: &str, got: &Value) -> ToolError {
    let mut shown = got.to_string();
    if shown.len() > 80 {
        let cut = (0..=77)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("...");
    }
    ToolError::invalid(format!("{cmd}: \"{key}\" must be {expected}, got {shown}"))
}

/// Finds `"pid": N` in a line that is not valid JSON, so its sender can be told.
pub(crate) fn pid_hint(line: &[u8]) -> Option<u32> {
    let key = b"\"pid\"";
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &line[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits: Vec<u8> = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits)
        .ok()?
        .parse()
        .ok()
        .filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_message(line: &str) -> String {
        match Request::parse(line.as_bytes()) {
            ParseOutcome::Invalid { error, .. } => error.message,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_named_pipes_requests() {
        let ParseOutcome::Request(r) = Request::parse(br#"{"pid": 12, "cmd": "PING"}"#) else {
            panic!()
        };
        assert_eq!((r.cmd.as_str(), r.pid, r.id), ("ping", Some(12), None));
    }

    #[test]
    fn keeps_ids_and_every_field() {
        let ParseOutcome::Request(r) =
            Request::parse(br#"{"pid":1,"cmd":"echo","id":"a","x":[1,2]}"#)
        else {
            panic!()
        };
        assert_eq!(r.id, Some(Value::from("a")));
        assert_eq!(r.fields.len(), 4);
    }

    #[test]
    fn rejects_bad_input_clearly() {
        assert!(invalid_message("{not json").contains("malformed JSON"));
        assert!(invalid_message("[1,2]").contains("JSON object"));
        assert!(invalid_message("\"ping\"").contains("JSON object"));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(invalid_message(&deep).contains("malformed JSON"));
        assert!(invalid_message(r#"{"pid":"x","cmd":"ping"}"#).contains("pid"));
        assert!(invalid_message(r#"{"pid":1,"cmd":5}"#).contains("\"cmd\" must be a string"));
        assert!(invalid_message(r#"{"pid":1}"#).contains("missing \"cmd\""));
        assert!(invalid_message(r#"{"pid":1,"cmd":"x","id":[1]}"#).contains("\"id\""));
        assert_eq!(Request::parse(b"{}"), ParseOutcome::Empty);
    }

    #[test]
    fn finds_the_sender_of_garbage() {
        assert_eq!(pid_hint(br#"{"pid": 4242, "cmd": "x", oops"#), Some(4242));
        assert_eq!(pid_hint(b"\x00\x01garbage"), None);
        match Request::parse(br#"{"pid":7,"cmd":"ping""#) {
            ParseOutcome::Invalid { pid, .. } => assert_eq!(pid, Some(7)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn typed_arguments_name_the_problem() {
        let ParseOutcome::Request(r) = Request::parse(br#"{"pid":1,"cmd":"stream","n":"ten"}"#)
        else {
            panic!()
        };
        let err = r.opt_u64("n").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.message.contains("\"n\" must be a non-negative integer"));
    }

    #[test]
    fn error_events_round_trip() {
        let e = ToolError::new(ErrorCode::Busy, "later").to_event();
        assert_eq!(e.name(), "error");
        assert_eq!(e.as_error().unwrap().code, ErrorCode::Busy);
        assert_eq!(ErrorCode::parse("something_new"), ErrorCode::Internal);
    }
}
