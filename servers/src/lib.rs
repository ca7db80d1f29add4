//! The `cpipe` library: the server kinds and their registry, the engine worker they run on,
//! the CLI's modes, `cpipe mcp`, and the benchmarks. The `cpipe` binary (`main.rs`) only
//! computes a [`cli::Mode`] and dispatches on it.

pub mod assets;
pub mod bench;
pub mod bridge;
pub mod cli;
pub mod dashboard;
pub mod engine;
pub mod kinds;
pub mod listing;
pub mod mcp;
pub mod query;
pub mod serve;
pub mod text;
pub mod vocab;
pub mod wav;

use std::sync::{Mutex, MutexGuard};

/// Takes a lock even if a thread panicked while holding it: every critical section in this
/// crate leaves its data consistent, and one crashed request must not take the server down.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
