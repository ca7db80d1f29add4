//! The microphone transcription subscriber: starts the stt server listening (to the microphone,
//! or with `--file` to a WAV file played in real time), then prints partial text as it comes,
//! rewritten in place, and each final transcript with its times.
//!
//! ```text
//! cpipe --serve stt --whisper tiny.en --listen none &
//! cargo run --release -p examples --bin stt_client                 # the default microphone
//! cargo run --release -p examples --bin stt_client -- --file clip.wav
//! ```
//!
//! With `--file`, it exits when the file has been transcribed; otherwise on Ctrl-C.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use pipe_core::{Client, ConnectOptions};
use serde_json::{json, Value};

fn main() -> anyhow::Result<()> {
    let mut file = None;
    let mut device = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--file" => file = Some(args.next().context("--file needs a WAV file")?),
            "--device" => device = Some(args.next().context("--device needs a name")?),
            "-h" | "--help" => {
                println!("usage: stt_client [--file CLIP.wav | --device NAME]");
                return Ok(());
            }
            other => bail!(
                "unknown argument {other:?}; usage: stt_client [--file CLIP.wav | --device NAME]"
            ),
        }
    }
    let options = ConnectOptions {
        timeout: Some(Duration::from_secs(120)),
        ..ConnectOptions::default()
    };
    let mut stt =
        Client::connect_with("stt", &options).context("is `cpipe --serve stt` running?")?;
    let source = match (&file, &device) {
        (Some(path), _) => {
            let path =
                std::fs::canonicalize(path).with_context(|| format!("cannot find {path}"))?;
            json!({"file": path})
        }
        (None, Some(name)) => json!({"device": name}),
        (None, None) => json!({}),
    };
    for event in stt.request("listen", source)? {
        let event = event?;
        if let Some(error) = event.as_error() {
            bail!("the stt server cannot listen: {error}");
        }
        if let Some(source) = event.str("source") {
            eprintln!("[listening to {source}]");
        }
    }
    let mut out = std::io::stdout().lock();
    let mut heard_any = false;
    loop {
        let Some(event) = stt.try_next_event(Duration::from_millis(500))? else {
            continue;
        };
        match event.name() {
            "partial" => {
                write!(out, "\r\x1b[2K… {}", event.str("text").unwrap_or_default())?;
                out.flush()?;
            }
            "transcript" => {
                heard_any = true;
                let time = |k: &str| event.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                writeln!(
                    out,
                    "\r\x1b[2K[{:6.2} – {:6.2}] {}",
                    time("start"),
                    time("end"),
                    event.str("text").unwrap_or_default()
                )?;
            }
            "error" => eprintln!("[error: {}]", event.str("message").unwrap_or_default()),
            // A file has been played and transcribed to its end: the server is ready again.
            "state_changed" if file.is_some() && event.str("state") == Some("ready") => break,
            _ => {}
        }
    }
    if !heard_any {
        eprintln!("[no speech heard]");
    }
    Ok(())
}
