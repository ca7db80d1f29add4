//! Retrieval-augmented answers: a question goes to the search server, its best passages go to
//! the chat server as context, and the answer streams back with the sources it came from (and
//! is spoken through the tts server with `--speak`).
//!
//! ```text
//! cpipe --serve search --model minilm &
//! cpipe --serve chat --model smollm2 &
//! cpipe search index -j dir=$PWD/docs
//! cargo run --release -p examples --bin rag -- "How do I cancel a request?"
//! ```
//!
//! `--collection NAME` searches another collection (default "default"), `-k N` passes N
//! passages (default 3), `--speak` also sends the answer to `cpipe --serve tts`.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use pipe_core::{Client, ConnectOptions};
use serde_json::{json, Value};

struct Args {
    question: String,
    collection: String,
    k: u64,
    speak: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let usage = "usage: rag [--collection NAME] [-k N] [--speak] QUESTION";
    let mut args = Args {
        question: String::new(),
        collection: "default".into(),
        k: 3,
        speak: false,
    };
    let mut words = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--collection" => args.collection = it.next().context("--collection needs a name")?,
            "-k" => {
                args.k = it
                    .next()
                    .and_then(|k| k.parse().ok())
                    .filter(|&k| k > 0)
                    .context("-k needs a positive number")?
            }
            "--speak" => args.speak = true,
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            _ => words.push(arg),
        }
    }
    args.question = words.join(" ");
    if args.question.trim().is_empty() {
        bail!("{usage}");
    }
    Ok(args)
}

fn connect(name: &str) -> anyhow::Result<Client> {
    let options = ConnectOptions {
        timeout: Some(Duration::from_secs(120)),
        ..ConnectOptions::default()
    };
    Client::connect_with(name, &options)
        .with_context(|| format!("is `cpipe --serve {name}` running?"))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut search = connect("search")?;
    let hits = search
        .call(
            "search",
            json!({"collection": args.collection, "query": args.question, "k": args.k}),
        )
        .context("searching")?;
    let hits = hits
        .last()
        .and_then(|e| e.get("hits"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if hits.is_empty() {
        bail!(
            "nothing in collection '{}' to answer from: index some files first",
            args.collection
        );
    }
    let mut context = String::new();
    let mut sources = Vec::new();
    for (n, hit) in hits.iter().enumerate() {
        let text = hit["text"].as_str().unwrap_or_default();
        let source = hit["metadata"]["path"].as_str().map_or_else(
            || hit["id"].as_str().unwrap_or("?").to_string(),
            String::from,
        );
        context += &format!("[{}] {text}\n\n", n + 1);
        sources.push(format!("[{}] {source} (score {})", n + 1, hit["score"]));
    }
    let request = json!({"messages": [
        {"role": "system", "content": "Answer the question from the passages given, briefly. If they do not hold the answer, say so."},
        {"role": "user", "content": format!("Passages:\n{context}Question: {}", args.question)},
    ], "temperature": 0, "max_tokens": 200});
    let mut chat = connect("chat")?;
    let mut speech = if args.speak {
        Some(connect("tts")?)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    for event in chat.request("chat", request)? {
        let event = event?;
        if let Some(error) = event.as_error() {
            bail!("the chat server answered: {error}");
        }
        if event.name() == "token" {
            let text = event.str("text").unwrap_or_default();
            write!(out, "{text}")?;
            out.flush()?;
            if let (Some(tts), false) = (&mut speech, text.is_empty()) {
                tts.send("text", json!({"data": text}))?;
            }
        }
    }
    writeln!(out, "\n\nSources:")?;
    for source in sources {
        writeln!(out, "  {source}")?;
    }
    if let Some(tts) = &mut speech {
        tts.call("flush", Value::Null)?;
    }
    Ok(())
}
