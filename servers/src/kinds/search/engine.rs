//! The embedding model on the engine worker: texts in, vectors out.

use std::convert::Infallible;

use models::embed::{Embedder, Embedding, ModelFolder};
use pipe_core::{Fields, ServerHandle, StateName, ToolError};

use super::SearchState;
use crate::engine::{Engine, Work};

/// The loaded embedding model.
pub(super) struct EmbedEngine {
    embedder: Embedder,
}

/// What handlers need to know of the loaded model.
#[derive(Debug, Clone)]
pub(super) struct ModelInfo {
    /// Its name, recorded with each collection it fills.
    pub(super) name: String,
    /// Its vectors' length.
    pub(super) dimension: usize,
}

/// Loads the model (on the worker thread), tells the handlers about it through `info`, and
/// reports it in `get_config` beside the database's path.
pub(super) fn load(
    folder: &ModelFolder,
    server: &ServerHandle,
    database: &std::path::Path,
    info: &std::sync::OnceLock<ModelInfo>,
) -> Result<EmbedEngine, String> {
    let device = models::device::best_device();
    let embedder = Embedder::load(folder, &device).map_err(|e| e.to_string())?;
    let _ = info.set(ModelInfo {
        name: embedder.name().into(),
        dimension: embedder.dimension(),
    });
    let pooling = embedder.pooling();
    server.set_config(Fields::from_iter([
        ("model", embedder.name().into()),
        ("source", folder.to_string().into()),
        ("dimension", embedder.dimension().into()),
        ("max_tokens", embedder.max_tokens().into()),
        (
            "pooling",
            format!("{:?}", pooling.mode).to_lowercase().into(),
        ),
        ("normalized", pooling.normalize.into()),
        ("device", models::device::describe(&device).into()),
        ("db", database.display().to_string().into()),
    ]));
    Ok(EmbedEngine { embedder })
}

impl Engine for EmbedEngine {
    type Job = Vec<String>;
    type Piece = Infallible;
    type Output = Vec<Embedding>;
    const BUSY: StateName = SearchState::Embedding.name();

    fn run(
        &mut self,
        texts: Vec<String>,
        work: &Work<Infallible>,
    ) -> Result<Vec<Embedding>, ToolError> {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut stopped = false;
        let embedded = self
            .embedder
            .embed(&texts, |_| stopped = stopped || work.stopped());
        if stopped {
            return Err(ToolError::new(
                pipe_core::ErrorCode::Cancelled,
                "embedding stopped: the request was cancelled",
            ));
        }
        embedded.map_err(|e| match e {
            models::embed::EmbedError::EmptyText(_) => ToolError::invalid(e.to_string()),
            other => ToolError::internal(other.to_string()),
        })
    }
}
