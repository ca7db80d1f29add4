//! A streaming chat client: asks the chat server a question and prints the reply as it is
//! generated, then the usage figures.
//!
//! ```text
//! cpipe --serve chat --model smollm2 &
//! cargo run --release -p examples --bin chat_client -- "What is the capital of France? Answer in one word."
//! ```

use std::io::Write;

use anyhow::{bail, Context};
use pipe_core::{Client, ConnectOptions};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let question = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if question.trim().is_empty() {
        bail!("usage: chat_client QUESTION");
    }
    let options = ConnectOptions {
        // The first reply may wait for the model to load.
        timeout: Some(std::time::Duration::from_secs(120)),
        ..ConnectOptions::default()
    };
    let mut client =
        Client::connect_with("chat", &options).context("is `cpipe --serve chat` running?")?;
    let request = json!({"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question},
    ]});
    let mut out = std::io::stdout().lock();
    for event in client.request("chat", request)? {
        let event = event?;
        if let Some(error) = event.as_error() {
            bail!("the chat server answered: {error}");
        }
        match event.name() {
            "token" => write!(out, "{}", event.str("text").unwrap_or_default())?,
            "done" => {
                let usage = &event.get("usage").cloned().unwrap_or_default();
                writeln!(out)?;
                eprintln!(
                    "[{} prompt + {} reply tokens, first token after {} ms, {} tokens/s, {}]",
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                    usage["time_to_first_token_ms"],
                    usage["tokens_per_second"],
                    usage["finish_reason"].as_str().unwrap_or("?")
                );
            }
            _ => {}
        }
        out.flush()?;
    }
    Ok(())
}
