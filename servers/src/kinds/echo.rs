//! `cpipe --serve echo`: a real server with no model, for tests, benchmarks and for trying
//! the protocol by hand.

use pipe_core::{CommandSpec, Event, ProtocolEvent, ToolServer};
use serde_json::json;

use super::Kind;
use crate::vocab::ServerEvent;

/// The echo kind: no flags of its own.
pub const KIND: Kind = Kind {
    name: "echo",
    summary: "Echoes requests and streams test tokens (cpipe's protocol test server).",
    help: include_str!("../../../skills/cpipe/echo.md"),
    args: |command| command,
    build: |_, builder| {
        let mut server = builder.bind()?;
        register(&mut server);
        Ok(server)
    },
};

/// Registers the echo server's commands.
pub fn register(server: &mut ToolServer) {
    server.handle_inline(
        CommandSpec::new(
            "echo",
            "Answers with every field of the request, unchanged.",
        )
        .emits(&[ServerEvent::Echo]),
        |req, out| {
            let mut event = Event::new(ServerEvent::Echo);
            event.set_all(&req.fields);
            out.emit(event)?;
            Ok(())
        },
    );
    server.handle(
        CommandSpec::new(
            "stream",
            "Streams n token events of text, then a done token.",
        )
        .args(json!({
            "type": "object",
            "required": ["n"],
            "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": 100_000_000u64,
                      "description": "How many tokens to send."},
                "text": {"type": "string", "description": "The text of each token (default \"x\")."}
            }
        }))
        .emits(&[ProtocolEvent::Token]),
        |req, out| {
            let n = req.opt_u64("n")?.unwrap_or(0);
            let text = req.opt_str("text")?.unwrap_or("x");
            for i in 0..n {
                out.emit(
                    Event::new(ProtocolEvent::Token)
                        .with("text", text)
                        .with("done", false)
                        .with("i", i),
                )?;
            }
            out.emit(
                Event::new(ProtocolEvent::Token)
                    .with("text", "")
                    .with("done", true),
            )?;
            Ok(())
        },
    );
}
