//! The audio chunk event that TTS and STT servers exchange:
//!
//! ```json
//! {"event":"audio","rate":22050,"width":2,"channels":1,"encoding":"pcm_s16le","data":"<base64>"}
//! ```
//!
//! `data` is base64 (standard alphabet, padded) of interleaved little-endian PCM frames.

use base64::Engine;
use serde_json::Value;

use crate::fields::Fields;
use crate::message::{Event, ToolError};
use crate::vocabulary::ProtocolEvent;

/// Sample encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Signed 16-bit little-endian integers (`width` 2).
    PcmS16Le,
    /// 32-bit little-endian IEEE floats in [-1, 1] (`width` 4).
    PcmF32Le,
}

impl Encoding {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PcmS16Le => "pcm_s16le",
            Self::PcmF32Le => "pcm_f32le",
        }
    }

    /// Bytes per sample.
    pub fn width(self) -> usize {
        match self {
            Self::PcmS16Le => 2,
            Self::PcmF32Le => 4,
        }
    }
}

/// A block of PCM audio.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioChunk {
    /// Frames per second.
    pub rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
    /// Sample encoding.
    pub encoding: Encoding,
    /// Raw little-endian PCM bytes; a whole number of frames.
    pub data: Vec<u8>,
}

impl AudioChunk {
    /// A chunk of 16-bit samples.
    pub fn from_i16(rate: u32, channels: u16, samples: &[i16]) -> Self {
        Self {
            rate,
            channels,
            encoding: Encoding::PcmS16Le,
            data: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }

    /// A chunk of float samples.
    pub fn from_f32(rate: u32, channels: u16, samples: &[f32]) -> Self {
        Self {
            rate,
            channels,
            encoding: Encoding::PcmF32Le,
            data: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }

    /// The samples as floats in [-1, 1], interleaved.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.encoding {
            Encoding::PcmS16Le => self
                .data
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                .collect(),
            Encoding::PcmF32Le => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.data.len() / (self.encoding.width() * usize::from(self.channels.max(1)))
    }

    /// The chunk as an `audio` event.
    pub fn to_event(&self) -> Event {
        Event::new(ProtocolEvent::Audio)
            .with("rate", self.rate)
            .with("width", self.encoding.width())
            .with("channels", self.channels)
            .with("encoding", self.encoding.as_str())
            .with(
                "data",
                base64::engine::general_purpose::STANDARD.encode(&self.data),
            )
    }

    /// The lowest sample rate a chunk may declare: below telephone quality there is no speech
    /// to hear, and a tiny rate declared for many samples would make a resampler to 16 kHz turn
    /// a few kilobytes into hours of audio.
    pub const MIN_RATE: u32 = 8_000;
    /// The highest sample rate a chunk may declare.
    pub const MAX_RATE: u32 = 384_000;
    /// The most channels a chunk may have.
    pub const MAX_CHANNELS: u16 = 32;

    /// The JSON Schema properties of a chunk's fields, for the commands that take audio: the
    /// same limits [`AudioChunk::from_fields`] checks.
    pub fn schema_properties() -> Value {
        serde_json::json!({
            "rate": {"type": "integer", "minimum": Self::MIN_RATE, "maximum": Self::MAX_RATE},
            "width": {"type": "integer", "enum": [2, 4]},
            "channels": {"type": "integer", "minimum": 1, "maximum": Self::MAX_CHANNELS},
            "encoding": {"type": "string", "enum": [Encoding::PcmS16Le.as_str(), Encoding::PcmF32Le.as_str()]},
            "data": {"type": "string", "description": "Base64 PCM (see PROTOCOL.md, audio chunks)."}
        })
    }

    /// Checks a format read from elsewhere (a WAV file's header) against the chunk's limits.
    pub fn check_format(rate: u32, channels: u16) -> Result<(), ToolError> {
        if !(Self::MIN_RATE..=Self::MAX_RATE).contains(&rate) {
            return Err(ToolError::invalid(format!(
                "audio: a rate of {rate} Hz is outside {} to {} Hz",
                Self::MIN_RATE,
                Self::MAX_RATE
            )));
        }
        if !(1..=Self::MAX_CHANNELS).contains(&channels) {
            return Err(ToolError::invalid(format!(
                "audio: {channels} channels is outside 1 to {}",
                Self::MAX_CHANNELS
            )));
        }
        Ok(())
    }

    /// Reads and checks a chunk from the fields of a request or event.
    pub fn from_fields(fields: &Fields) -> Result<Self, ToolError> {
        let uint = |key: &str, max: u64| -> Result<u64, ToolError> {
            let v = fields
                .get(key)
                .ok_or_else(|| ToolError::invalid(format!("audio: missing \"{key}\"")))?;
            v.as_u64().filter(|&n| n > 0 && n <= max).ok_or_else(|| {
                ToolError::invalid(format!(
                    "audio: \"{key}\" must be an integer from 1 to {max}, got {v}"
                ))
            })
        };
        let rate = uint("rate", Self::MAX_RATE.into())? as u32;
        let channels = uint("channels", Self::MAX_CHANNELS.into())? as u16;
        Self::check_format(rate, channels)?;
        let width = uint("width", 8)? as usize;
        let encoding = match fields.get("encoding").and_then(Value::as_str) {
            None | Some("pcm_s16le") if width == 2 => Encoding::PcmS16Le,
            None | Some("pcm_f32le") if width == 4 => Encoding::PcmF32Le,
            Some(other @ ("pcm_s16le" | "pcm_f32le")) => {
                return Err(ToolError::invalid(format!(
                    "audio: encoding {other} does not have width {width}"
                )))
            }
            Some(other) => {
                return Err(ToolError::invalid(format!(
                    "audio: unsupported encoding \"{other}\"; use pcm_s16le or pcm_f32le"
                )))
            }
            None => {
                return Err(ToolError::invalid(format!(
                    "audio: width {width} needs an explicit encoding (2 = pcm_s16le, 4 = pcm_f32le)"
                )))
            }
        };
        let text = fields
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::invalid("audio: \"data\" must be a base64 string"))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| ToolError::invalid(format!("audio: \"data\" is not valid base64: {e}")))?;
        let frame = width * usize::from(channels);
        if data.len() % frame != 0 {
            return Err(ToolError::invalid(format!(
                "audio: {} bytes is not a whole number of {channels}-channel frames of {width}-byte samples",
                data.len()
            )));
        }
        Ok(Self {
            rate,
            channels,
            encoding,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_an_event() {
        let chunk = AudioChunk::from_i16(16_000, 1, &[0, 1000, -32768, 32767]);
        let event = chunk.to_event();
        assert_eq!(event.str("encoding"), Some("pcm_s16le"));
        let back = AudioChunk::from_fields(event.fields()).unwrap();
        assert_eq!(back, chunk);
        assert_eq!(back.frames(), 4);
        assert_eq!(back.to_f32()[2], -1.0);
    }

    #[test]
    fn rejects_inconsistent_chunks() {
        let mut f = AudioChunk::from_i16(16_000, 2, &[1, 2])
            .to_event()
            .into_fields();
        f.insert("data", "AAE="); // 2 bytes: half a stereo frame
        assert!(AudioChunk::from_fields(&f)
            .unwrap_err()
            .message
            .contains("whole number"));
        f.insert("data", "***");
        assert!(AudioChunk::from_fields(&f)
            .unwrap_err()
            .message
            .contains("base64"));
        f.insert("width", 4);
        assert!(AudioChunk::from_fields(&f)
            .unwrap_err()
            .message
            .contains("width 4"));
        f.insert("rate", 0);
        assert!(AudioChunk::from_fields(&f)
            .unwrap_err()
            .message
            .contains("\"rate\""));
    }
}
