//! What a server does when its model cannot load: it stays up in state `error`, says why in
//! `get_config`, and answers every request with that reason instead of hanging or dying.

use std::sync::mpsc::Receiver;

use pipe_core::{ErrorCode, Fields, ServerHandle, ToolError};

/// Reports that the `what` (model, voice, ...) failed to load with `message`, then fails every
/// job that arrives, through `fail`, until the server stops.
pub fn failed<J>(
    server: &ServerHandle,
    what: &str,
    message: &str,
    jobs: Receiver<J>,
    fail: impl Fn(J, ToolError),
) {
    tracing::error!("cannot load the {what}: {message}");
    server.set_state("error");
    server.set_config(Fields::from_iter([("error", message.into())]));
    for job in jobs {
        fail(
            job,
            ToolError::new(
                ErrorCode::Unavailable,
                format!("the {what} failed to load: {message}"),
            ),
        );
    }
}
