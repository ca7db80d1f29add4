//! Wyoming's framing, as the `wyoming` 1.10 package reads and writes it: a JSON header line
//! (`type`, optional `data`, `data_length`, `payload_length`), then `data_length` bytes of
//! JSON merged into `data`, then `payload_length` bytes of binary payload.

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The version of the `wyoming` package whose protocol this follows, sent in every header.
pub const VERSION: &str = "1.10.2";
/// The longest header line taken.
const MAX_HEADER: usize = 1 << 20;
/// The most data plus payload one event may carry (an audio chunk is a few kilobytes).
pub const MAX_BODY: usize = 16 << 20;

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct WyEvent {
    /// Its `type`.
    pub kind: String,
    /// Its `data`.
    pub data: Map<String, Value>,
    /// Its binary payload (audio).
    pub payload: Vec<u8>,
}

impl WyEvent {
    /// An event of `kind` with `data` (a JSON object or null).
    pub fn new(kind: &str, data: Value) -> Self {
        Self {
            kind: kind.into(),
            data: match data {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            payload: Vec::new(),
        }
    }

    /// The same event with a payload.
    pub fn with_payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    /// An `error` event.
    pub fn error(text: impl Into<String>, code: &str) -> Self {
        Self::new("error", json!({"text": text.into(), "code": code}))
    }

    /// A string field of `data`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

/// Why an event could not be read. After any of these but `Closed` the stream cannot be
/// trusted to be at an event boundary, so the connection ends after an `error` event.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The client closed the connection.
    #[error("the client closed the connection")]
    Closed,
    /// The header line or its body is over the limits.
    #[error("{0}")]
    TooLarge(String),
    /// The header is not what Wyoming sends.
    #[error("{0}")]
    Malformed(String),
    /// Reading failed.
    #[error("reading failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next event; `Err(FrameError::Closed)` at a clean end of stream.
pub async fn read_event<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<WyEvent, FrameError> {
    // A header is a JSON object: anything else here is the rest of a payload longer than its
    // header said, or not Wyoming at all. Said at once, rather than after a line that binary
    // audio may never end.
    match reader.fill_buf().await?.first() {
        None => return Err(FrameError::Closed),
        Some(b'{') => {}
        Some(_) => {
            return Err(FrameError::Malformed(
                "an event header must start with '{'; did a payload run longer than its \
                 payload_length said?"
                    .into(),
            ))
        }
    }
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_HEADER as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_HEADER {
            FrameError::TooLarge(format!("an event header is over {MAX_HEADER} bytes"))
        } else {
            FrameError::Closed // the connection ended mid-header
        });
    }
    let header: Value = serde_json::from_slice(&line).map_err(|e| {
        FrameError::Malformed(format!(
            "an event header is not JSON ({e}); did a payload run longer than its payload_length said?"
        ))
    })?;
    let Value::Object(mut header) = header else {
        return Err(FrameError::Malformed(
            "an event header must be a JSON object".into(),
        ));
    };
    let kind = match header.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => {
            return Err(FrameError::Malformed(
                "an event header needs a string \"type\"".into(),
            ))
        }
    };
    let length = |key: &str| -> Result<usize, FrameError> {
        match header.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                FrameError::Malformed(format!("\"{key}\" must be a non-negative integer, got {v}"))
            }),
        }
    };
    let (data_length, payload_length) = (length("data_length")?, length("payload_length")?);
    if data_length.saturating_add(payload_length) > MAX_BODY {
        return Err(FrameError::TooLarge(format!(
            "a {kind} event carries {} bytes; at most {MAX_BODY} are taken",
            data_length.saturating_add(payload_length)
        )));
    }
    let mut data = match header.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(FrameError::Malformed(format!(
                "\"data\" must be an object, got {other}"
            )))
        }
    };
    if data_length > 0 {
        let mut bytes = vec![0; data_length];
        reader.read_exact(&mut bytes).await?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(more)) => data.extend(more),
            _ => {
                return Err(FrameError::Malformed(format!(
                    "the data of a {kind} event is not a JSON object"
                )))
            }
        }
    }
    let mut payload = vec![0; payload_length];
    reader.read_exact(&mut payload).await?;
    Ok(WyEvent {
        kind,
        data,
        payload,
    })
}

/// Writes an event as the `wyoming` package does: data after the header, then the payload.
pub async fn write_event<W: AsyncWrite + Unpin>(
    writer: &mut W,
    event: &WyEvent,
) -> std::io::Result<()> {
    let mut header = json!({"type": event.kind, "version": VERSION});
    let data = if event.data.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&event.data).expect("JSON values serialize")
    };
    if !data.is_empty() {
        header["data_length"] = data.len().into();
    }
    if !event.payload.is_empty() {
        header["payload_length"] = event.payload.len().into();
    }
    let mut bytes = serde_json::to_vec(&header).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes.extend_from_slice(&data);
    bytes.extend_from_slice(&event.payload);
    writer.write_all(&bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<WyEvent, FrameError> {
        read_event(&mut tokio::io::BufReader::new(bytes)).await
    }

    #[tokio::test]
    async fn events_round_trip_with_data_and_payload() {
        let event = WyEvent::new(
            "audio-chunk",
            json!({"rate": 16000, "width": 2, "channels": 1}),
        )
        .with_payload(vec![1, 2, 3, 4]);
        let mut bytes = Vec::new();
        write_event(&mut bytes, &event).await.unwrap();
        assert_eq!(read(&bytes).await.unwrap(), event);
    }

    #[tokio::test]
    async fn inline_data_and_data_length_merge_as_the_python_package_merges_them() {
        let bytes = b"{\"type\":\"transcribe\",\"data\":{\"language\":\"en\"},\"data_length\":12}\n{\"name\":\"x\"}";
        let event = read(bytes).await.unwrap();
        assert_eq!(event.str("language"), Some("en"));
        assert_eq!(event.str("name"), Some("x"));
    }

    #[tokio::test]
    async fn bad_frames_are_named() {
        assert!(matches!(read(b"").await, Err(FrameError::Closed)));
        assert!(matches!(
            read(b"not json\n").await,
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read(b"{\"data\":{}}\n").await,
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read(b"\x00\x00 binary, no newline").await,
            Err(FrameError::Malformed(_))
        ));
        let huge = format!(
            "{{\"type\":\"audio-chunk\",\"payload_length\":{}}}\n",
            MAX_BODY + 1
        );
        assert!(matches!(
            read(huge.as_bytes()).await,
            Err(FrameError::TooLarge(_))
        ));
        // A payload shorter than announced: the stream ended inside it.
        assert!(matches!(
            read(b"{\"type\":\"a\",\"payload_length\":9}\nabc").await,
            Err(FrameError::Io(_))
        ));
    }
}
