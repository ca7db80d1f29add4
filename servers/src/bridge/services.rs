//! Finding the live server for a job. A server is known by the command that does the job
//! (a chat server answers `chat`, whatever its name), and a remote client names it by the
//! server's name or by the model it runs.

use std::sync::Arc;

use serde_json::Value;

use super::upstream::{Upstream, Upstreams};
use super::BridgeError;

/// A job a bridge hands to a pipe server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Chat completions (`chat`).
    Chat,
    /// Speech to text (`transcribe`, `push`).
    Transcribe,
    /// Text to speech (`synthesize`).
    Speak,
    /// Sentence embeddings (`embed`).
    Embed,
}

impl Role {
    /// Every role, in the order listings show them.
    pub const ALL: [Role; 4] = [Role::Chat, Role::Transcribe, Role::Speak, Role::Embed];

    /// The command that marks a server able to do this job.
    pub fn command(self) -> &'static str {
        match self {
            Role::Chat => "chat",
            Role::Transcribe => "transcribe",
            Role::Speak => "synthesize",
            Role::Embed => "embed",
        }
    }

    /// The job, for people.
    pub fn what(self) -> &'static str {
        match self {
            Role::Chat => "chat",
            Role::Transcribe => "speech-to-text",
            Role::Speak => "text-to-speech",
            Role::Embed => "embedding",
        }
    }

    /// The server kind that does it.
    pub fn kind(self) -> &'static str {
        match self {
            Role::Chat => "chat",
            Role::Transcribe => "stt",
            Role::Speak => "tts",
            Role::Embed => "search",
        }
    }
}

/// A live server and what it offers.
#[derive(Debug, Clone)]
pub struct Service {
    /// The server's name (its pipe is `tool-NAME`).
    pub name: String,
    /// The jobs it does.
    pub roles: Vec<Role>,
    /// The model or voice it runs, as it reports it (a path is cut to its file name).
    pub model: Option<String>,
    /// Its `get_config` answer.
    pub config: Value,
}

impl Service {
    fn answers_to(&self, model: &str) -> bool {
        self.name == model || self.model.as_deref() == Some(model)
    }
}

/// The live servers in the bridge's pipe directory that do at least one job, except the
/// bridge itself (`own`). Servers that do not answer are left out.
pub async fn services(upstreams: &Upstreams, own: &str) -> Vec<(Arc<Upstream>, Service)> {
    let names = match pipe_core::discovery::server_pipes(upstreams.dir()) {
        Ok(pipes) => pipes.into_iter().map(|(name, _)| name),
        Err(e) => {
            tracing::warn!("cannot list {}: {e}", upstreams.dir().display());
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for name in names.filter(|name| name != own) {
        match describe(upstreams, &name).await {
            Ok(Some(service)) => found.push(service),
            Ok(None) => {}
            Err(e) => tracing::debug!("leaving out '{name}': {e}"),
        }
    }
    found
}

async fn describe(
    upstreams: &Upstreams,
    name: &str,
) -> Result<Option<(Arc<Upstream>, Service)>, BridgeError> {
    let upstream = upstreams.get(name).await?;
    let profile = upstream.profile().await?;
    let has = |command: &str| {
        profile["commands"]
            .as_array()
            .is_some_and(|list| list.iter().any(|c| c == command))
    };
    let roles: Vec<Role> = Role::ALL.into_iter().filter(|r| has(r.command())).collect();
    if roles.is_empty() {
        return Ok(None);
    }
    let config = profile["config"].clone();
    let model = ["model", "voice"]
        .iter()
        .find_map(|key| config.get(*key).and_then(Value::as_str))
        .map(|m| m.rsplit('/').next().unwrap_or(m).to_string());
    let service = Service {
        name: name.to_string(),
        roles,
        model,
        config,
    };
    Ok(Some((upstream, service)))
}

/// The live server that does `role`, chosen by `model` (a server's name or its model's); a
/// name nobody answers to falls to the only server that does the job, as single-model
/// servers such as llama-server take any name, and is refused when there are several.
pub async fn resolve(
    upstreams: &Upstreams,
    own: &str,
    role: Role,
    model: &str,
) -> Result<(Arc<Upstream>, Service), BridgeError> {
    let mut able: Vec<(Arc<Upstream>, Service)> = services(upstreams, own)
        .await
        .into_iter()
        .filter(|(_, s)| s.roles.contains(&role))
        .collect();
    if let Some(i) = able.iter().position(|(_, s)| s.answers_to(model)) {
        return Ok(able.swap_remove(i));
    }
    match able.len() {
        0 => Err(BridgeError::NoService {
            what: role.what(),
            kind: role.kind(),
            dir: upstreams.dir().to_path_buf(),
        }),
        1 => Ok(able.remove(0)),
        _ => Err(BridgeError::UnknownModel {
            model: model.into(),
            what: role.what(),
            available: able
                .iter()
                .map(|(_, s)| format!("'{}'", s.name))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
