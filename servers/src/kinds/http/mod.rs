//! `cpipe --serve http`: the live servers behind an OpenAI-compatible HTTP API, so chat UIs,
//! SDKs and agent frameworks use them unchanged. The bridge is a pipe client of the servers
//! (one connection each, [`crate::bridge::upstream`]) and a pipe server of its own, so it
//! shows in `cpipe --list` and stops with `cpipe http stop`.
//!
//! Each endpoint is one module; this one parses the flags, guards the listening address,
//! and runs axum on hyper with the timeouts that keep slow clients from holding connections.

mod chat;
mod embeddings;
mod error;
mod metrics;
mod speech;
mod transcriptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Args, FromArgMatches};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use pipe_core::{Fields, ToolServer};
use serde_json::{json, Value};

use super::Kind;
use crate::bridge::services::{self, Role};
use crate::bridge::upstream::Upstreams;
use error::ApiError;
use metrics::Metrics;

/// The http kind.
pub const KIND: Kind = Kind {
    name: "http",
    summary:
        "OpenAI-compatible HTTP API for the live servers (chat, transcription, speech, embeddings).",
    help: include_str!("../../../../skills/cpipe/http.md"),
    args: HttpArgs::augment_args,
    build: |matches, builder| build(HttpArgs::from_arg_matches(matches)?, builder),
};

/// The http kind's own flags.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address and port to listen on. An address other than loopback needs --api-key (or
    /// an explicit --insecure).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(
        long,
        env = "CPIPE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// Listen beyond loopback without an API key: anyone who reaches the port uses the models.
    #[arg(long)]
    pub insecure: bool,

    /// The largest request body taken (an audio file to transcribe), in megabytes.
    #[arg(long, default_value_t = 100, value_name = "MB")]
    pub max_upload_mb: usize,

    /// Seconds a client may take to send its request headers, or between parts of its body,
    /// before it is disconnected (slow clients must not hold connections).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub client_timeout: f64,
}

/// What every handler shares.
pub struct App {
    upstreams: Upstreams,
    /// The bridge's own server name, left out when looking for servers.
    own: String,
    metrics: Metrics,
    api_key: Option<String>,
    max_upload: usize,
}

/// Which server answered a request: handlers put it in the response's extensions for the
/// metrics.
#[derive(Clone)]
struct ServedBy(String);

fn build(args: HttpArgs, builder: pipe_core::Builder) -> anyhow::Result<ToolServer> {
    if !args.client_timeout.is_finite() || args.client_timeout <= 0.0 {
        bail!(
            "--client-timeout must be a positive number of seconds, got {}",
            args.client_timeout
        );
    }
    if !args.listen.ip().is_loopback() && args.api_key.is_none() && !args.insecure {
        bail!(
            "refusing to listen on {} without an API key: anyone who can reach it could use \
             the models. Give --api-key KEY (or CPIPE_API_KEY), or --insecure if that is \
             really meant",
            args.listen
        );
    }
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| {
        format!(
            "cannot listen on {} (another program on that port? choose one with --listen)",
            args.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let listen = listener.local_addr()?;
    let mut server = builder.bind()?;
    let (dir, own) = crate::bridge::home(&server, "http");
    server.set_config(Fields::from_iter([
        ("listen", Value::from(listen.to_string())),
        ("url", format!("http://{listen}/v1").into()),
        ("api_key", (args.api_key.is_some()).into()),
        ("max_upload_mb", args.max_upload_mb.into()),
    ]));
    let app = Arc::new(App {
        upstreams: Upstreams::new(dir),
        own,
        metrics: Metrics::default(),
        api_key: args.api_key,
        max_upload: args.max_upload_mb.saturating_mul(1 << 20),
    });
    let timeout = Duration::from_secs_f64(args.client_timeout);
    crate::bridge::run_listener(&server, "http", serve(listener, app, timeout))?;
    eprintln!("OpenAI-compatible API on http://{listen}/v1");
    Ok(server)
}

/// The routes, with authentication and metrics around them.
fn router(app: Arc<App>, timeout: Duration) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat::completions))
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions::transcribe).layer(DefaultBodyLimit::max(app.max_upload)),
        )
        .route("/v1/audio/speech", post(speech::speak))
        .route("/v1/embeddings", post(embeddings::embed))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(timeout))
        .with_state(app)
}

/// Accepts connections until the listener fails; each is served by hyper with a deadline for
/// its headers.
async fn serve(
    listener: std::net::TcpListener,
    app: Arc<App>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let router = router(app, timeout);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// Requires the API key, when one is set, as a Bearer token.
async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.trim().as_bytes(), key.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "the API key is wrong: send the key the server was started with (--api-key) as \
             `Authorization: Bearer KEY`",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "this server needs an API key: send `Authorization: Bearer KEY`",
        )
        .into_response(),
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Counts every request in the metrics, by the server that answered it.
async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let endpoint = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    if matches!(endpoint.as_str(), "/metrics" | "/health") {
        return response;
    }
    let server = response
        .extensions()
        .get::<ServedBy>()
        .map_or("none", |s| s.0.as_str());
    app.metrics.request(
        server,
        &endpoint,
        started.elapsed().as_secs_f64(),
        response.status().is_success(),
    );
    response
}

/// A handler's answer, marked for the metrics with the server it went to, once known (so a
/// server's errors count as its own).
fn answer(server: Option<String>, result: Result<Response, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(server) = server {
        response.extensions_mut().insert(ServedBy(server));
    }
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_url",
        format!(
            "no endpoint {} {}: this server offers /v1/models, /v1/chat/completions, \
             /v1/audio/transcriptions, /v1/audio/speech, /v1/embeddings, /health and /metrics",
            request.method(),
            request.uri().path()
        ),
    )
}

/// `GET /health`: the bridge is up, and which servers it sees.
async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    let servers: Vec<Value> = services::services(&app.upstreams, &app.own)
        .await
        .into_iter()
        .map(|(_, s)| json!({"name": s.name, "model": s.model, "roles": roles(&s.roles)}))
        .collect();
    Json(json!({"status": "ok", "servers": servers}))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/models`: one model per live server that does a job; its id is the server's name.
async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let data: Vec<Value> = services::services(&app.upstreams, &app.own)
        .await
        .into_iter()
        .map(|(_, s)| model_entry(&s))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`.
async fn model(
    State(app): State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    services::services(&app.upstreams, &app.own)
        .await
        .into_iter()
        .find(|(_, s)| s.name == id || s.model.as_deref() == Some(id.as_str()))
        .map(|(_, s)| Json(model_entry(&s)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("no live server is named or runs '{id}' (GET /v1/models lists them)"),
            )
        })
}

fn model_entry(service: &services::Service) -> Value {
    json!({
        "id": service.name,
        "object": "model",
        "created": 0,
        "owned_by": "cpipe",
        "model": service.model,
        "roles": roles(&service.roles),
    })
}

fn roles(roles: &[Role]) -> Vec<&'static str> {
    roles.iter().map(|r| r.kind()).collect()
}

/// Reads a JSON object body of at most `limit` bytes.
async fn read_json(body: Body, limit: usize) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit")) {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the request body is over {} MB (--max-upload-mb)",
                    limit >> 20
                ),
            )
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"))
        }
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(ApiError::invalid(format!(
            "the body must be a JSON object, got {}",
            kind_of(&other)
        ))),
        Err(e) => Err(ApiError::invalid(format!(
            "the body is not valid JSON ({e}); send Content-Type: application/json with a JSON object"
        ))),
    }
}

/// A required string field.
fn required_str<'a>(
    fields: &'a serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, ApiError> {
    match fields.get(name) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::param(name, format!("'{name}' is required"))),
        Some(other) => Err(ApiError::param(
            name,
            format!("'{name}' must be a string, got {}", kind_of(other)),
        )),
    }
}

/// The JSON type of a value, for messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Seconds since the epoch, for `created` fields.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A response id unique enough for logs: the time in nanoseconds and a counter.
fn response_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}-{nanos:x}{:x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"key", b"key"));
        assert!(!same(b"key", b"kez"));
        assert!(!same(b"key", b"key2"));
        assert!(!same(b"", b"k"));
    }
}
