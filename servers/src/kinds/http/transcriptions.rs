//! `POST /v1/audio/transcriptions`: a WAV upload (multipart, as the OpenAI SDKs send it)
//! transcribed by an stt server, answered in any of OpenAI's response formats.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pipe_core::audio::AudioChunk;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{answer, App};
use crate::bridge::services::{self, Role};
use crate::bridge::upstream::Upstream;

/// The rate the stt server works at: uploads are sent at it, which is also the least to send.
const STT_RATE: u32 = 16_000;

/// The handler.
pub async fn transcribe(State(app): State<Arc<App>>, request: Request) -> Response {
    let mut server = None;
    let result = run(app, request, &mut server).await;
    answer(server, result)
}

/// What the multipart form asked for.
#[derive(Default)]
struct Form {
    file: Option<axum::body::Bytes>,
    model: Option<String>,
    format: Option<String>,
    language: Option<String>,
    granularities: Vec<String>,
}

/// The response formats OpenAI defines, all served.
const FORMATS: [&str; 5] = ["json", "text", "srt", "verbose_json", "vtt"];

async fn run(
    app: Arc<App>,
    request: Request,
    server: &mut Option<String>,
) -> Result<Response, ApiError> {
    let form = read_form(request).await?;
    let model = form.model.as_deref().ok_or_else(|| {
        ApiError::param("model", "'model' is required (GET /v1/models lists them)")
    })?;
    let file = form.file.ok_or_else(|| {
        ApiError::param(
            "file",
            "'file' is required: upload the audio as a multipart file field",
        )
    })?;
    let format = form.format.as_deref().unwrap_or("json");
    if !FORMATS.contains(&format) {
        return Err(ApiError::param(
            "response_format",
            format!(
                "response_format '{format}' is not one of {}",
                FORMATS.join(", ")
            ),
        ));
    }
    let words = form.granularities.iter().any(|g| g == "word");
    let (upstream, service) =
        services::resolve(&app.upstreams, &app.own, Role::Transcribe, model).await?;
    *server = Some(service.name.clone());
    if form.language.as_deref().is_some_and(|asked| {
        let serving = service.config.get("language").and_then(Value::as_str);
        serving.is_some_and(|serving| serving != asked)
    }) {
        return Err(ApiError::param(
            "language",
            format!(
                "the stt server '{}' transcribes {} only; start one with --language {} for that",
                service.name,
                service.config["language"],
                form.language.unwrap_or_default()
            ),
        ));
    }
    let audio = tokio::task::spawn_blocking(move || to_chunk(&file))
        .await
        .map_err(|e| ApiError::invalid(format!("decoding failed: {e}")))??;
    let transcript = transcribe_chunk(&upstream, audio, words).await?;
    let response = match format {
        "json" => Json(json!({"text": transcript["text"]})).into_response(),
        "text" => plain(
            "text/plain; charset=utf-8",
            format!("{}\n", text(&transcript)),
        ),
        "srt" => plain(
            "application/x-subrip; charset=utf-8",
            subtitles(&transcript, false),
        ),
        "vtt" => plain("text/vtt; charset=utf-8", subtitles(&transcript, true)),
        _ => Json(verbose(&transcript, &service.config, words)).into_response(),
    };
    Ok(response)
}

/// Reads the multipart form; bodies over the limit get 413.
async fn read_form(request: Request) -> Result<Form, ApiError> {
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::invalid(format!(
            "{}: send the audio as multipart/form-data with a 'file' field",
            e.body_text()
        ))
    })?;
    let mut form = Form::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Ok(form),
            Err(e) => return Err(multipart_error(e)),
        };
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            form.file = Some(field.bytes().await.map_err(multipart_error)?);
            continue;
        }
        let value = field.text().await.map_err(multipart_error)?;
        match name.as_str() {
            "model" => form.model = Some(value),
            "response_format" => form.format = Some(value),
            "language" => form.language = Some(value).filter(|l| !l.is_empty()),
            "timestamp_granularities[]" | "timestamp_granularities" => {
                form.granularities.push(value)
            }
            // prompt, temperature, chunking_strategy...: whisper.cpp's greedy decoding here
            // takes none of them; they change nothing, as with a model that ignores them.
            _ => {}
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the upload is larger than this server takes (--max-upload-mb): send a shorter \
             or smaller file (16 kHz mono 16-bit WAV is the most compact)",
        )
    } else {
        ApiError::invalid(format!("could not read the upload: {}", e.body_text()))
    }
}

/// The upload as one 16 kHz mono 16-bit chunk.
fn to_chunk(file: &[u8]) -> Result<AudioChunk, ApiError> {
    if let Some(chunk) = already_16k_mono(file) {
        return Ok(chunk);
    }
    let (samples, rate, channels) =
        crate::wav::decode_wav(file).map_err(|e| ApiError::param("file", format!("{e:#}")))?;
    let mono = models::stt::audio::to_16k_mono(&samples, rate, channels);
    let pcm: Vec<i16> = mono.iter().map(|&s| crate::wav::to_pcm16(s)).collect();
    Ok(AudioChunk::from_i16(STT_RATE, 1, &pcm))
}

/// A 16 kHz mono 16-bit WAV's samples as they are in the file, without decoding them (what
/// speech tools usually write, and what the stt server wants).
fn already_16k_mono(file: &[u8]) -> Option<AudioChunk> {
    let reader = hound::WavReader::new(std::io::Cursor::new(file)).ok()?;
    let spec = reader.spec();
    let wanted = spec.sample_format == hound::SampleFormat::Int
        && spec.bits_per_sample == 16
        && spec.sample_rate == STT_RATE
        && spec.channels == 1;
    if !wanted {
        return None;
    }
    let samples = reader.len() as usize;
    // The reader stops at the start of the data; a streamed WAV's data runs to the file's end.
    let start = reader.into_inner().position() as usize;
    let end = start
        .saturating_add(samples.saturating_mul(2))
        .min(file.len());
    let end = start + (end.saturating_sub(start)) / 2 * 2;
    Some(AudioChunk {
        rate: STT_RATE,
        channels: 1,
        encoding: pipe_core::audio::Encoding::PcmS16Le,
        data: file.get(start..end)?.to_vec(),
    })
}

/// Sends audio to the stt server's `transcribe`; its `transcript` event.
async fn transcribe_chunk(
    upstream: &Arc<Upstream>,
    audio: AudioChunk,
    words: bool,
) -> Result<Value, ApiError> {
    let mut args: serde_json::Map<String, Value> = audio.to_event().into_fields().into();
    args.remove("event");
    args.insert("words".into(), words.into());
    let events = upstream.collect("transcribe", Value::Object(args)).await?;
    events
        .into_iter()
        .find(|e| e.is(crate::vocab::ServerEvent::Transcript))
        .map(|e| Value::from(e.into_fields()))
        .ok_or_else(|| ApiError::invalid("the stt server sent no transcript"))
}

fn plain(content_type: &'static str, body: String) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn text(transcript: &Value) -> &str {
    transcript["text"].as_str().unwrap_or_default()
}

fn segments(transcript: &Value) -> &[Value] {
    transcript["segments"].as_array().map_or(&[], Vec::as_slice)
}

/// `verbose_json`: OpenAI's fields, with what whisper.cpp does not report as zeros.
fn verbose(transcript: &Value, config: &Value, words: bool) -> Value {
    let segments: Vec<Value> = segments(transcript)
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "id": i, "seek": 0, "start": s["start"], "end": s["end"], "text": s["text"],
                "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                "compression_ratio": 0.0, "no_speech_prob": 0.0,
            })
        })
        .collect();
    let mut body = json!({
        "task": "transcribe",
        "language": config.get("language").and_then(Value::as_str).unwrap_or("auto"),
        "duration": transcript["duration"],
        "text": transcript["text"],
        "segments": segments,
    });
    if words {
        let words: Vec<Value> = transcript["words"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|w| json!({"word": w["word"], "start": w["start"], "end": w["end"]}))
            .collect();
        body["words"] = words.into();
    }
    body
}

/// SubRip or WebVTT cues, one per segment.
fn subtitles(transcript: &Value, vtt: bool) -> String {
    let mut out = String::from(if vtt { "WEBVTT\n\n" } else { "" });
    for (i, s) in segments(transcript).iter().enumerate() {
        let at = |key: &str| timestamp(s[key].as_f64().unwrap_or(0.0), vtt);
        if !vtt {
            let _ = writeln!(out, "{}", i + 1);
        }
        let _ = write!(
            out,
            "{} --> {}\n{}\n\n",
            at("start"),
            at("end"),
            s["text"].as_str().unwrap_or_default().trim()
        );
    }
    out
}

/// `HH:MM:SS,mmm` (SubRip) or `HH:MM:SS.mmm` (WebVTT).
fn timestamp(seconds: f64, vtt: bool) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{}{ms:03}", if vtt { '.' } else { ',' })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Value {
        json!({"text": "And so my fellow Americans", "duration": 11.0,
               "segments": [{"start": 0.32, "end": 2.5, "text": " And so"},
                            {"start": 2.5, "end": 3661.25, "text": " my fellow Americans"}],
               "words": [{"word": "And", "start": 0.32, "end": 0.5, "probability": 0.9}]})
    }

    #[test]
    fn a_16k_mono_wav_is_taken_as_it_is_and_others_are_converted() {
        let samples: Vec<i16> = (0..1600).map(|i| (i % 300 - 150) as i16 * 100).collect();
        let wav = |rate: u32| {
            let mut bytes = std::io::Cursor::new(Vec::new());
            let mut writer = hound::WavWriter::new(&mut bytes, crate::wav::mono16(rate)).unwrap();
            samples
                .iter()
                .for_each(|&s| writer.write_sample(s).unwrap());
            writer.finalize().unwrap();
            bytes.into_inner()
        };
        let direct = already_16k_mono(&wav(16_000)).expect("16 kHz mono 16-bit is taken as is");
        assert_eq!(direct, AudioChunk::from_i16(16_000, 1, &samples));
        assert_eq!(to_chunk(&wav(16_000)).unwrap(), direct);
        assert!(already_16k_mono(&wav(8_000)).is_none());
        let converted = to_chunk(&wav(8_000)).unwrap();
        assert_eq!(
            (converted.rate, converted.channels, converted.frames()),
            (16_000, 1, 3200)
        );
    }

    #[test]
    fn subtitles_number_srt_cues_and_head_vtt() {
        assert_eq!(
            subtitles(&transcript(), false),
            "1\n00:00:00,320 --> 00:00:02,500\nAnd so\n\n2\n00:00:02,500 --> 01:01:01,250\nmy fellow Americans\n\n"
        );
        assert!(subtitles(&transcript(), true)
            .starts_with("WEBVTT\n\n00:00:00.320 --> 00:00:02.500\nAnd so\n\n"));
    }

    #[test]
    fn verbose_json_has_openais_fields_and_words_when_asked() {
        let body = verbose(&transcript(), &json!({"language": "en"}), true);
        assert_eq!(body["language"], "en");
        assert_eq!(body["segments"][1]["id"], 1);
        assert_eq!(body["segments"][1]["end"], 3661.25);
        assert_eq!(
            body["words"],
            json!([{"word": "And", "start": 0.32, "end": 0.5}])
        );
        assert!(verbose(&transcript(), &json!({}), false)
            .get("words")
            .is_none());
    }
}
