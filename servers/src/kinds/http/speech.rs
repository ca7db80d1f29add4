//! `POST /v1/audio/speech`: text spoken by a tts server, streamed to the client sentence by
//! sentence as it is synthesized, as WAV or as OpenAI's raw PCM (24 kHz, 16-bit, mono).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use pipe_core::audio::AudioChunk;
use pipe_core::Event;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{answer, kind_of, read_json, required_str, App};
use crate::bridge::services::{self, Role};
use crate::bridge::upstream::remote_error;

/// The rate OpenAI's `pcm` format is defined at.
const PCM_RATE: u32 = 24_000;
/// OpenAI's voice names: a client written for OpenAI sends one, and gets the server's voice.
const OPENAI_VOICES: [&str; 13] = [
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
    "marin", "cedar",
];

/// The handler.
pub async fn speak(State(app): State<Arc<App>>, body: Body) -> Response {
    let mut server = None;
    let result = run(app, body, &mut server).await;
    answer(server, result)
}

/// The audio formats served.
#[derive(Clone, Copy)]
enum Format {
    Wav,
    Pcm,
}

async fn run(app: Arc<App>, body: Body, server: &mut Option<String>) -> Result<Response, ApiError> {
    let request = read_json(body, 4 << 20).await?;
    let model = required_str(&request, "model")?;
    let input = required_str(&request, "input")?;
    if input.trim().is_empty() {
        return Err(ApiError::param(
            "input",
            "'input' is empty: give the text to speak",
        ));
    }
    let format = match request.get("response_format").and_then(Value::as_str) {
        None | Some("wav") => Format::Wav,
        Some("pcm") => Format::Pcm,
        Some(other) => {
            return Err(ApiError::param(
                "response_format",
                format!("response_format '{other}' is not supported: use wav or pcm (mp3, opus, aac and flac need an encoder this server does not have)"),
            ))
        }
    };
    let (upstream, service) =
        services::resolve(&app.upstreams, &app.own, Role::Speak, model).await?;
    *server = Some(service.name.clone());
    let mut args = json!({"text": input, "audio": true, "play": false});
    if let Some(speaker) = speaker(request.get("voice"), &service.config)? {
        args["speaker"] = speaker.into();
    }
    match request.get("speed") {
        None | Some(Value::Null) => {}
        Some(Value::Number(speed)) => args["speed"] = speed.clone().into(),
        Some(other) => {
            return Err(ApiError::param(
                "speed",
                format!("'speed' must be a number, got {}", kind_of(other)),
            ))
        }
    }
    let mut call = upstream.call("synthesize", args).await?;
    // The first event decides the status: an error before any audio is an HTTP error.
    let first = loop {
        match call.next().await {
            Some(event) => {
                let event = remote_error(event)?;
                if event.is(pipe_core::ProtocolEvent::Audio) {
                    break Some(event);
                }
            }
            None => break None,
        }
    };
    let Some(first) = first else {
        return Err(ApiError::invalid(
            "the tts server made no audio of that text",
        ));
    };
    let rate = first.get("rate").and_then(Value::as_u64).unwrap_or(0) as u32;
    let content_type = match format {
        Format::Wav => "audio/wav",
        Format::Pcm => "audio/pcm",
    };
    let sample_rate = match format {
        Format::Wav => rate,
        Format::Pcm => PCM_RATE,
    };
    let stream = futures_util::stream::unfold(
        (call, Some(first), true),
        move |(mut call, mut pending, opening)| async move {
            loop {
                let event = match pending.take() {
                    Some(event) => event,
                    None => call.next().await?,
                };
                if let Some(e) = event.as_error() {
                    // The status has gone out: all that can be done is to end the body early.
                    tracing::warn!("speech ended early: {}", e.message);
                    return None;
                }
                let Some(mut bytes) = pcm(&event, format) else {
                    continue;
                };
                if opening && matches!(format, Format::Wav) {
                    let mut header = wav_header(rate);
                    header.append(&mut bytes);
                    bytes = header;
                }
                return Some((Ok::<_, Infallible>(Bytes::from(bytes)), (call, None, false)));
            }
        },
    );
    let response = (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::HeaderName::from_static("x-sample-rate"),
                sample_rate.to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    Ok(response)
}

/// The tts server's `speaker` for OpenAI's `voice`: the loaded voice's name and OpenAI's own
/// voice names mean its default speaker, one of its speakers that speaker; anything else is
/// refused with the choices.
fn speaker(voice: Option<&Value>, config: &Value) -> Result<Option<String>, ApiError> {
    let voice = match voice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(v)) => v.as_str(),
        Some(other) => {
            return Err(ApiError::param(
                "voice",
                format!("'voice' must be a string, got {}", kind_of(other)),
            ))
        }
    };
    let loaded = config
        .get("voice")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if voice == loaded || OPENAI_VOICES.contains(&voice) {
        return Ok(None);
    }
    let speakers: Vec<&str> = config
        .get("speakers")
        .and_then(Value::as_object)
        .map(|names| names.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if speakers.contains(&voice) {
        return Ok(Some(voice.to_string()));
    }
    let mut choices = vec![loaded];
    choices.extend(speakers);
    Err(ApiError::param(
        "voice",
        format!(
            "voice '{voice}' is not here: the tts server speaks {} (or give one of OpenAI's voice names for its default)",
            choices.join(", ")
        ),
    ))
}

/// An `audio` event's samples as little-endian 16-bit PCM in `format`'s rate; `None` for
/// other events.
fn pcm(event: &Event, format: Format) -> Option<Vec<u8>> {
    if !event.is(pipe_core::ProtocolEvent::Audio) {
        return None;
    }
    let chunk = AudioChunk::from_fields(event.fields()).ok()?;
    let resample = matches!(format, Format::Pcm) && chunk.rate != PCM_RATE;
    if chunk.channels == 1 && !resample {
        return Some(crate::wav::pcm16_bytes(&chunk));
    }
    let mut samples = chunk.to_f32();
    if chunk.channels > 1 {
        let channels = usize::from(chunk.channels);
        samples = samples
            .chunks(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect();
    }
    if resample {
        samples = models::stt::audio::resample(&samples, chunk.rate, PCM_RATE);
    }
    Some(crate::wav::pcm16_bytes(&AudioChunk::from_f32(
        PCM_RATE, 1, &samples,
    )))
}

/// The header of a mono 16-bit WAV whose length is not known yet: streaming writers put the
/// largest sizes there (for the data, the largest whole number of frames, which strict
/// readers such as hound require), and readers read to the end.
fn wav_header(rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    h.extend_from_slice(&2u16.to_le_bytes()); // bytes per frame
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_wav_reads_back_to_its_end() {
        let samples: Vec<i16> = (0..1000).map(|i| (i * 7) as i16).collect();
        let mut file = wav_header(22_050);
        file.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        let (read, rate, channels) = crate::wav::decode_wav(&file).unwrap();
        assert_eq!((rate, channels, read.len()), (22_050, 1, 1000));
        assert!((crate::wav::to_pcm16(read[999]) - samples[999]).abs() <= 1);
    }

    #[test]
    fn voices_map_to_speakers_or_are_refused_with_the_choices() {
        let config = json!({"voice": "en_US-lessac-medium", "speakers": {"p1": 0, "p2": 1}});
        assert_eq!(speaker(Some(&json!("alloy")), &config).unwrap(), None);
        assert_eq!(
            speaker(Some(&json!("en_US-lessac-medium")), &config).unwrap(),
            None
        );
        assert_eq!(
            speaker(Some(&json!("p2")), &config).unwrap().as_deref(),
            Some("p2")
        );
        let refused = speaker(Some(&json!("brian")), &config).unwrap_err();
        assert!(refused
            .body()
            .to_string()
            .contains("en_US-lessac-medium, p1, p2"));
    }
}
