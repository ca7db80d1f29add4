//! Shared helpers of the engine tests.

use std::path::PathBuf;

/// Where the offline models are: `CPIPE_MODELS`, else where scripts/fetch-models.sh puts them.
pub fn models_dir() -> PathBuf {
    std::env::var_os("CPIPE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/cpipe/models")
        })
}
