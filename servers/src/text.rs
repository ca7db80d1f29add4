//! Events as plain text, the way named-pipes' `cpipe --text` prints them: streamed token
//! texts joined, other events' payloads one per line. Shared by `cpipe NAME CMD --text` and
//! `cpipe mcp`, so an agent reads what a person reads.

use pipe_core::{Event, Fields, ProtocolEvent};

use crate::vocab::ServerEvent;
use serde_json::Value;

/// One event's contribution to the text.
#[derive(Debug, PartialEq)]
pub enum Piece {
    /// Streamed text, joined to what came before; `end_line` closes the stream.
    Stream {
        /// The text.
        text: String,
        /// The stream ends here: close its line.
        end_line: bool,
    },
    /// A line of its own.
    Line(String),
    /// The server reported an error.
    Error {
        /// The error's code.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// Nothing to show (the usage summary that closes a stream, a place in line: JSON mode
    /// shows them).
    Nothing,
}

/// What `event` contributes to the text.
pub fn piece(event: &Event) -> Piece {
    if let Some(error) = event.as_error() {
        return Piece::Error {
            code: error.code.to_string(),
            message: error.message,
        };
    }
    if let (Some(done), Some(text)) = (event.get("done"), event.str("text")) {
        return Piece::Stream {
            text: text.into(),
            end_line: done.as_bool() == Some(true),
        };
    }
    // A place in line is progress for programs (JSON mode), not part of the answer.
    if event.is(ServerEvent::Done) || event.is(ServerEvent::Queued) || event.is(ProtocolEvent::End)
    {
        return Piece::Nothing;
    }
    // An event that carries text (a reply, a transcript, a spoken sentence) reads as its text;
    // its other fields (usage, segments, audio) are for programs, which read JSON.
    if let Some(text) = event.str("text") {
        return Piece::Line(text.into());
    }
    let payload: Fields = event
        .fields()
        .iter()
        .filter(|(k, _)| *k != "event" && *k != "id")
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    Piece::Line(match payload.len() {
        0 => event.name().to_string(),
        1 => match payload.into_iter().next() {
            Some((_, Value::String(s))) => s,
            Some((_, v)) => v.to_string(),
            None => String::new(),
        },
        _ => serde_json::to_string(&payload).expect("JSON fields serialize"),
    })
}

/// Appends events to a text, remembering whether streamed text left a line open.
#[derive(Debug, Default)]
pub struct TextWriter {
    mid_line: bool,
}

impl TextWriter {
    /// Appends `event` to `out`; errors become lines `error (CODE): MESSAGE`.
    pub fn push(&mut self, event: &Event, out: &mut String) {
        match piece(event) {
            Piece::Stream { text, end_line } => {
                out.push_str(&text);
                self.mid_line |= !text.is_empty();
                if end_line {
                    self.end_line(out);
                }
            }
            Piece::Line(line) => {
                self.end_line(out);
                out.push_str(&line);
                out.push('\n');
            }
            Piece::Error { code, message } => {
                self.end_line(out);
                out.push_str(&format!("error ({code}): {message}\n"));
            }
            Piece::Nothing => {}
        }
    }

    /// Closes a line left open by streamed text.
    pub fn end_line(&mut self, out: &mut String) {
        if std::mem::take(&mut self.mid_line) {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> Event {
        let Value::Object(fields) = value else {
            unreachable!()
        };
        Event::from_fields(fields.into()).unwrap()
    }

    #[test]
    fn tokens_join_and_other_events_take_lines() {
        let mut writer = TextWriter::default();
        let mut out = String::new();
        for value in [
            json!({"event": "state_changed", "state": "inferring"}),
            json!({"event": "token", "text": "Hel", "done": false, "id": 1}),
            json!({"event": "token", "text": "lo", "done": false, "id": 1}),
            json!({"event": "token", "text": "", "done": true, "id": 1}),
            json!({"event": "done", "usage": {"completion_tokens": 2}}),
            json!({"event": "echo", "msg": "hi", "n": 2}),
            json!({"event": "transcript", "text": "And so", "segments": [], "duration": 11.0}),
            json!({"event": "token", "text": "cut", "done": false}),
            json!({"event": "error", "code": "cancelled", "message": "stopped"}),
        ] {
            writer.push(&event(value), &mut out);
        }
        assert_eq!(
            out,
            "inferring\nHello\n{\"msg\":\"hi\",\"n\":2}\nAnd so\ncut\nerror (cancelled): stopped\n"
        );
    }
}
