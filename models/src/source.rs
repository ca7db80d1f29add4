//! Where a model file comes from: a local path, or a file in a Hugging Face hub repository,
//! fetched through `hf-hub` into its usual cache (`HF_HOME`), with a progress bar, and read
//! from that cache alone when `HF_HUB_OFFLINE=1`.

use std::path::{Path, PathBuf};

/// A model file reference as a user writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file on disk.
    Local(PathBuf),
    /// `owner/repo:file` or `hf://owner/repo/file`.
    Hub {
        /// `owner/repo`.
        repo: String,
        /// The file's path inside the repository.
        file: String,
    },
}

/// Where offline models live: `CPIPE_MODELS`, else `~/.cache/cpipe/models`, where
/// scripts/fetch-models.sh puts them.
pub fn offline_models_dir() -> PathBuf {
    match std::env::var_os("CPIPE_MODELS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/cpipe/models"),
    }
}

/// Why a model file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither an existing path nor a hub reference.
    #[error("model '{0}' is neither an existing file nor a hub reference; give a path to a local file, or owner/repo:file (e.g. {example})", example = HUB_EXAMPLE)]
    Unrecognised(String),
    /// Offline, and the file is not in the cache.
    #[error("{repo}:{file} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; fetch it once online, or give a local path")]
    NotCached {
        /// The repository.
        repo: String,
        /// The file.
        file: String,
    },
    /// The hub could not be reached or refused.
    #[error("cannot fetch {repo}:{file} from the Hugging Face hub: {message}; check the name and your connection, or give a local path")]
    Fetch {
        /// The repository.
        repo: String,
        /// The file.
        file: String,
        /// What hf-hub said.
        message: String,
    },
}

const HUB_EXAMPLE: &str = "bartowski/SmolLM2-360M-Instruct-GGUF:SmolLM2-360M-Instruct-Q4_K_M.gguf";

impl ModelSource {
    /// Reads what the user wrote. An existing path always wins over a hub reference.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let path = Path::new(text);
        if path.exists() {
            return Ok(Self::Local(path.into()));
        }
        let hub = |repo: &str, file: &str| {
            let valid = repo.split('/').count() == 2
                && !repo.starts_with('/')
                && !repo.ends_with('/')
                && !file.is_empty();
            valid.then(|| Self::Hub {
                repo: repo.into(),
                file: file.into(),
            })
        };
        let parsed = if let Some(rest) = text.strip_prefix("hf://") {
            let mut parts = rest.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(owner), Some(name), Some(file)) => hub(&format!("{owner}/{name}"), file),
                _ => None,
            }
        } else if let Some((repo, file)) = text.split_once(':') {
            hub(repo, file)
        } else {
            None
        };
        match parsed {
            Some(source) => Ok(source),
            None if text.contains('/') || text.ends_with(".gguf") => {
                Err(SourceError::Unrecognised(format!("{text} (no such file)")))
            }
            None => Err(SourceError::Unrecognised(text.into())),
        }
    }

    /// The local path of the file, downloading it first when it comes from the hub.
    pub fn resolve(&self) -> Result<PathBuf, SourceError> {
        let (repo, file) = match self {
            Self::Local(path) => return Ok(path.clone()),
            Self::Hub { repo, file } => (repo, file),
        };
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
        if offline {
            return hf_hub::Cache::from_env()
                .model(repo.clone())
                .get(file)
                .ok_or_else(|| SourceError::NotCached {
                    repo: repo.clone(),
                    file: file.clone(),
                });
        }
        let fetch_error = |e: hf_hub::api::sync::ApiError| SourceError::Fetch {
            repo: repo.clone(),
            file: file.clone(),
            message: e.to_string(),
        };
        tracing::info!(
            "fetching {repo}:{file} from the Hugging Face hub (cached after the first time)"
        );
        hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(fetch_error)?
            .model(repo.clone())
            .get(file)
            .map_err(fetch_error)
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::Hub { repo, file } => write!(f, "{repo}:{file}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_and_hub_references() {
        assert_eq!(
            ModelSource::parse("Cargo.toml").unwrap(),
            ModelSource::Local("Cargo.toml".into())
        );
        assert_eq!(
            ModelSource::parse("owner/repo:dir/model.gguf").unwrap(),
            ModelSource::Hub {
                repo: "owner/repo".into(),
                file: "dir/model.gguf".into()
            }
        );
        assert_eq!(
            ModelSource::parse("hf://owner/repo/model.gguf").unwrap(),
            ModelSource::Hub {
                repo: "owner/repo".into(),
                file: "model.gguf".into()
            }
        );
        let err = ModelSource::parse("/no/such/model.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
        assert!(ModelSource::parse("justaword").is_err());
        assert!(ModelSource::parse("a/b/c:file").is_err());
    }
}
