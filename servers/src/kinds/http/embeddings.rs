//! `POST /v1/embeddings`: a search server's `embed`, as floats or as the base64 of
//! little-endian f32s (what the OpenAI Python SDK asks for by default).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{answer, kind_of, read_json, required_str, App};
use crate::bridge::services::{self, Role};

/// The handler.
pub async fn embed(State(app): State<Arc<App>>, body: Body) -> Response {
    let mut server = None;
    let result = run(app, body, &mut server).await;
    answer(server, result)
}

async fn run(app: Arc<App>, body: Body, server: &mut Option<String>) -> Result<Response, ApiError> {
    let request = read_json(body, 64 << 20).await?;
    let model = required_str(&request, "model")?;
    let texts = inputs(request.get("input"))?;
    let base64 = match request.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::param(
                "encoding_format",
                format!("encoding_format '{other}' is not one of float, base64"),
            ))
        }
    };
    let (upstream, service) =
        services::resolve(&app.upstreams, &app.own, Role::Embed, model).await?;
    *server = Some(service.name.clone());
    let events = upstream.collect("embed", json!({ "texts": texts })).await?;
    let answer = events
        .into_iter()
        .find(|e| e.get("vectors").is_some())
        .ok_or_else(|| ApiError::invalid("the search server sent no vectors"))?;
    let vectors = answer
        .get("vectors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(wanted) = request.get("dimensions").and_then(Value::as_u64) {
        let has = answer.get("dimension").and_then(Value::as_u64).unwrap_or(0);
        if wanted != has {
            return Err(ApiError::param(
                "dimensions",
                format!(
                    "the model makes {has}-dimensional vectors; it cannot shorten them to {wanted}"
                ),
            ));
        }
    }
    let tokens: u64 = answer
        .get("tokens")
        .and_then(Value::as_array)
        .map_or(0, |t| t.iter().filter_map(Value::as_u64).sum());
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector
                    .as_array()
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into()
            } else {
                vector.clone()
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": service.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(Json(body).into_response())
}

/// `input`: a text or a list of texts (token ids are refused: the server embeds text).
fn inputs(input: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let refuse = |what: String| Err(ApiError::param("input", what));
    match input {
        None | Some(Value::Null) => refuse("'input' is required: a text or a list of texts".into()),
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(items)) if items.is_empty() => refuse("'input' is an empty list".into()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(text.clone()),
                Value::Number(_) | Value::Array(_) => Err(ApiError::param(
                    "input",
                    "token ids are not supported: send the texts themselves",
                )),
                other => Err(ApiError::param(
                    "input",
                    format!("input[{i}] must be a string, got {}", kind_of(other)),
                )),
            })
            .collect(),
        Some(other) => refuse(format!(
            "'input' must be a string or a list of strings, got {}",
            kind_of(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_take_a_text_or_texts_and_refuse_token_ids() {
        assert_eq!(inputs(Some(&json!("a"))).unwrap(), ["a"]);
        assert_eq!(inputs(Some(&json!(["a", "b"]))).unwrap(), ["a", "b"]);
        for bad in [
            json!([]),
            json!([1, 2]),
            json!([[1]]),
            json!(3),
            json!([null]),
        ] {
            assert!(inputs(Some(&bad)).is_err(), "{bad}");
        }
        assert!(inputs(None).is_err());
    }
}
