//! `cpipe --serve wyoming`: the live stt and tts servers as Wyoming `asr` and `tts` services,
//! the protocol Home Assistant's voice pipelines speak. Like the http bridge it is a pipe
//! client of the servers (one connection each, shared by all Wyoming clients) and a pipe
//! server of its own.
//!
//! [`event`] is Wyoming's framing, [`session`] one client's conversation, [`zeroconf`] the
//! announcement Home Assistant discovers it by.

mod event;
mod session;
mod zeroconf;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, FromArgMatches};
use pipe_core::{Fields, ToolServer};
use serde_json::{json, Value};

use super::Kind;
use crate::bridge::services::{self, Role, Service};
use crate::bridge::upstream::{Upstream, Upstreams};
use crate::bridge::BridgeError;

/// The wyoming kind.
pub const KIND: Kind = Kind {
    name: "wyoming",
    summary: "Wyoming protocol server for Home Assistant: the live stt and tts servers as its asr and tts services.",
    help: include_str!("../../../../skills/cpipe/wyoming.md"),
    args: WyomingArgs::augment_args,
    build: |matches, builder| build(WyomingArgs::from_arg_matches(matches)?, builder),
};

/// The wyoming kind's own flags.
#[derive(Debug, Args)]
pub struct WyomingArgs {
    /// Where to listen: tcp://HOST:PORT or unix://PATH. Wyoming has no authentication:
    /// listen beyond loopback (e.g. tcp://0.0.0.0:10300 for Home Assistant on another
    /// machine) only on a network you trust.
    #[arg(long, default_value = "tcp://127.0.0.1:10300", value_name = "URI")]
    pub uri: String,

    /// The stt server to use (default: the only live one).
    #[arg(long, value_name = "NAME")]
    pub stt: Option<String>,

    /// The tts server to use (default: the only live one).
    #[arg(long, value_name = "NAME")]
    pub tts: Option<String>,

    /// Announce the service over zeroconf (mDNS) as NAME (default: cpipe), so that Home
    /// Assistant discovers it by itself. Needs --uri on an address other machines reach.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "cpipe")]
    pub zeroconf: Option<String>,
}

/// What every connection shares.
pub struct Bridge {
    upstreams: Upstreams,
    own: String,
    stt: Option<String>,
    tts: Option<String>,
}

impl Bridge {
    /// The server that does `role`: the one named by `--stt`/`--tts`, else the only one.
    async fn server(&self, role: Role) -> Result<(Arc<Upstream>, Service), BridgeError> {
        let named = match role {
            Role::Transcribe => self.stt.as_deref(),
            _ => self.tts.as_deref(),
        };
        services::resolve(&self.upstreams, &self.own, role, named.unwrap_or("")).await
    }

    /// The `info` event's data: the live stt server as an asr program, the tts server as a
    /// tts program, with their real model and voice names.
    async fn info(&self) -> Value {
        let attribution = json!({"name": "cpipe", "url": "https://github.com/cpipe/cpipe"});
        let version = env!("CARGO_PKG_VERSION");
        let mut asr = Vec::new();
        if let Ok((_, stt)) = self.server(Role::Transcribe).await {
            let model = stt.model.clone().unwrap_or_else(|| stt.name.clone());
            asr.push(json!({
                "name": format!("cpipe-{}", stt.name),
                "attribution": attribution,
                "installed": true,
                "description": "Whisper (whisper.cpp) on a resident cpipe stt server",
                "version": version,
                "models": [{
                    "name": model,
                    "attribution": {"name": "OpenAI Whisper", "url": "https://github.com/openai/whisper"},
                    "installed": true,
                    "description": model,
                    "version": null,
                    "languages": whisper_languages(&stt),
                }],
                "supports_transcript_streaming": true,
            }));
        }
        let mut tts = Vec::new();
        if let Ok((_, voice)) = self.server(Role::Speak).await {
            let name = voice.model.clone().unwrap_or_else(|| voice.name.clone());
            let speakers: Option<Vec<Value>> = voice
                .config
                .get("speakers")
                .and_then(Value::as_object)
                .filter(|s| !s.is_empty())
                .map(|s| s.keys().map(|k| json!({"name": k})).collect());
            tts.push(json!({
                "name": format!("cpipe-{}", voice.name),
                "attribution": attribution,
                "installed": true,
                "description": "Piper voices on a resident cpipe tts server",
                "version": version,
                "voices": [{
                    "name": name,
                    "attribution": {"name": "Piper", "url": "https://github.com/rhasspy/piper"},
                    "installed": true,
                    "description": name,
                    "version": null,
                    "languages": [voice_language(&name, &voice.config)],
                    "speakers": speakers,
                }],
                "supports_synthesize_streaming": true,
            }));
        }
        json!({"asr": asr, "tts": tts, "handle": [], "intent": [], "wake": [], "mic": [], "snd": []})
    }
}

/// The languages an stt server transcribes: the one it was started with, English for an
/// English-only model, else every language Whisper knows.
fn whisper_languages(stt: &Service) -> Vec<String> {
    if let Some(language) = stt.config.get("language").and_then(Value::as_str) {
        return vec![language.to_string()];
    }
    if stt.model.as_deref().is_some_and(|m| m.contains(".en")) {
        return vec!["en".into()];
    }
    models::stt::languages()
        .into_iter()
        .map(String::from)
        .collect()
}

/// A Piper voice's language as Home Assistant names it (`en_US` from `en_US-joe-medium`),
/// else espeak's name for it.
fn voice_language(name: &str, config: &Value) -> String {
    let prefix = name.split('-').next().unwrap_or_default();
    let looks_like_locale = prefix.len() == 5 && prefix.as_bytes()[2] == b'_';
    if looks_like_locale {
        prefix.to_string()
    } else {
        config
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("en")
            .to_string()
    }
}

/// Where the bridge listens.
enum Endpoint {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// Binds `uri`: `tcp://HOST:PORT` or `unix://PATH` (a stale socket file there is replaced).
fn bind(uri: &str) -> anyhow::Result<Endpoint> {
    if let Some(address) = uri.strip_prefix("tcp://") {
        let listener = std::net::TcpListener::bind(address).with_context(|| {
            format!(
                "cannot listen on {address} (another program on that port? choose one with --uri)"
            )
        })?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() {
            tracing::warn!(
                "listening on {local}: Wyoming has no authentication, so anyone who reaches this \
                 port can use the models"
            );
        }
        return Ok(Endpoint::Tcp(listener));
    }
    if let Some(path) = uri.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        if path.exists() {
            use std::os::unix::fs::FileTypeExt;
            let is_socket = std::fs::symlink_metadata(&path)?.file_type().is_socket();
            if !is_socket {
                bail!(
                    "{} exists and is not a socket: choose another path",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                bail!("another server listens on {} already", path.display());
            }
            std::fs::remove_file(&path)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        listener.set_nonblocking(true)?;
        return Ok(Endpoint::Unix(listener, path));
    }
    bail!("--uri must be tcp://HOST:PORT or unix://PATH, got '{uri}'")
}

fn build(args: WyomingArgs, builder: pipe_core::Builder) -> anyhow::Result<ToolServer> {
    let endpoint = bind(&args.uri)?;
    let uri = match &endpoint {
        Endpoint::Tcp(listener) => format!("tcp://{}", listener.local_addr()?),
        Endpoint::Unix(_, path) => format!("unix://{}", path.display()),
    };
    let announcement = match (&args.zeroconf, &endpoint) {
        (None, _) => None,
        (Some(name), Endpoint::Tcp(listener)) => {
            Some(zeroconf::announce(name, listener.local_addr()?)?)
        }
        (Some(_), Endpoint::Unix(..)) => {
            bail!("--zeroconf announces a TCP port; a unix:// socket cannot be announced")
        }
    };
    let mut server = builder.bind()?;
    let (dir, own) = crate::bridge::home(&server, "wyoming");
    server.set_config(Fields::from_iter([
        ("uri", Value::from(uri.clone())),
        ("stt", json!(args.stt)),
        ("tts", json!(args.tts)),
        ("zeroconf", json!(args.zeroconf)),
    ]));
    let bridge = Arc::new(Bridge {
        upstreams: Upstreams::new(dir),
        own,
        stt: args.stt,
        tts: args.tts,
    });
    crate::bridge::run_listener(&server, "wyoming", async move {
        // Announced for as long as the bridge serves.
        let _announcement = announcement;
        serve(endpoint, bridge).await
    })?;
    eprintln!("Wyoming server on {uri}");
    Ok(server)
}

/// Accepts clients until the listener fails, each served on a task of its own.
async fn serve(endpoint: Endpoint, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    match endpoint {
        Endpoint::Tcp(listener) => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("wyoming client {n} from {peer}");
                        tokio::spawn(session::serve(bridge.clone(), stream, n));
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
        }
        Endpoint::Unix(listener, _path) => {
            let listener = tokio::net::UnixListener::from_std(listener)?;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(session::serve(bridge.clone(), stream, n));
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
        }
    }
}

/// Out of file descriptors and the like: wait rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accepting a connection failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piper_voice_names_give_home_assistants_locale() {
        assert_eq!(voice_language("en_US-joe-medium", &json!({})), "en_US");
        assert_eq!(voice_language("custom", &json!({"language": "de"})), "de");
    }

    #[test]
    fn only_tcp_and_unix_uris_are_taken() {
        assert!(bind("http://x").is_err());
        let error = bind("tcp://256.0.0.1:1").err().unwrap();
        assert!(format!("{error:#}").contains("cannot listen"));
    }
}
