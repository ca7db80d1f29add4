//! pipe-core: the named-pipe ToolServer protocol, both sides.
//!
//! Wire-compatible with the Python library named-pipes 0.4: a server reads newline-delimited
//! JSON requests from `<dir>/tool-<name>`; each client reads events from its own
//! `<dir>/tool-<name>-<pid>`. cpipe's extensions (request ids, `end`, `cancel`, error codes,
//! `get_interface`, private request pipes, audio chunks) are optional fields and commands
//! that old peers ignore. `PROTOCOL.md` at the repository root is the specification.
//!
//! - [`ToolServer`]: bind a name, register handlers, run.
//! - [`Client`]: subscribe, send, iterate a request's events.
//! - [`discovery`]: list servers, clear orphaned pipes.
//!
//! Processes using this crate must not die of `SIGPIPE`; Rust binaries ignore it by default.

pub mod audio;
mod client;
pub mod discovery;
mod error;
mod fields;
mod fifo;
pub mod framing;
mod interface;
mod message;
mod name_lock;
pub mod named_interface;
pub mod paths;
mod poll;
mod processes;
mod server;
mod sync;
mod vocabulary;

pub use client::{Client, ConnectOptions, RequestEvents, Step, DEFAULT_TIMEOUT};
pub use error::{Error, Result};
pub use fields::Fields;
pub use fifo::has_reader;
pub use interface::CommandSpec;
pub use message::{ErrorCode, Event, ParseOutcome, Request, ToolError};
pub use server::{
    Builder, CancelReason, CancelToken, CancelWatch, Handler, Interrupted, Limits, Responder,
    ServerHandle, ToolServer,
};
pub use vocabulary::{EventName, ProtocolEvent, ProtocolState, StateName};

/// The version of cpipe's protocol extensions, announced in `subscribed` and `get_interface`.
pub const PROTOCOL_VERSION: u32 = 1;
