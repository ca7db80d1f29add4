//! A streaming client in a dozen lines: send one command and print each token's text the
//! moment it arrives.
//!
//! ```text
//! cpipe --serve echo &
//! cargo run -p examples --bin stream_client -- echo stream '{"n": 5, "text": "tick "}'
//! ```

use std::io::Write;

use anyhow::{bail, Context};
use pipe_core::Client;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(server), Some(cmd)) = (args.next(), args.next()) else {
        bail!("usage: stream_client SERVER CMD [JSON-ARGS]");
    };
    let request = match args.next() {
        Some(text) => serde_json::from_str(&text).context("JSON-ARGS must be a JSON object")?,
        None => serde_json::Value::Null,
    };
    let mut client = Client::connect(&server)?;
    let mut out = std::io::stdout().lock();
    for event in client.request(&cmd, request)? {
        let event = event?;
        if let Some(error) = event.as_error() {
            bail!("{server} answered: {error}");
        }
        match event.str("text") {
            Some(text) => write!(out, "{text}")?,
            None => writeln!(out, "{event}")?,
        }
        out.flush()?;
    }
    writeln!(out)?;
    Ok(())
}
