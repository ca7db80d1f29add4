//! `cpipe NAME CMD`: send one request and print its events as they arrive.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pipe_core::{Client, ConnectOptions, Event, Fields, Step};
use serde_json::Value;

use crate::cli::{Cli, Failure};
use crate::text::TextWriter;

/// How often a waiting request checks for Ctrl-C.
const TICK: Duration = Duration::from_millis(100);

/// The timeout option as an optional duration (0 = forever).
pub fn timeout(cli: &Cli) -> Result<Option<Duration>, Failure> {
    if !cli.timeout.is_finite() || cli.timeout < 0.0 {
        return Err(Failure::Usage(format!(
            "--timeout must be a number of seconds >= 0, got {}",
            cli.timeout
        )));
    }
    Ok((cli.timeout > 0.0).then(|| Duration::from_secs_f64(cli.timeout)))
}

/// A field's value as a user types it: JSON when it parses as JSON, else the text itself.
pub fn field_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()))
}

/// Builds the request fields from --data and -j.
fn request_fields(cli: &Cli) -> Result<Fields, Failure> {
    let mut fields = Fields::new();
    if let Some(data) = &cli.data {
        fields.insert("data", field_value(data));
    }
    for item in &cli.fields {
        if let Ok(Value::Object(object)) = serde_json::from_str(item) {
            fields.extend(object);
            continue;
        }
        let (key, raw) = item.split_once('=').ok_or_else(|| {
            Failure::Usage(format!(
                "-j takes KEY=VALUE or a JSON object, got {item:?} (e.g. -j n=3 -j 'text=hi there')"
            ))
        })?;
        if key.is_empty() {
            return Err(Failure::Usage(format!("-j {item:?}: the key is empty")));
        }
        fields.insert(key.to_owned(), field_value(raw));
    }
    for reserved in ["pid", "cmd", "id"] {
        if fields.contains_key(reserved) {
            return Err(Failure::Usage(format!(
                "\"{reserved}\" is set by cpipe itself; leave it out of -j"
            )));
        }
    }
    Ok(fields)
}

/// Prints events as JSON lines, or as plain text the way named-pipes' cpipe does.
struct Printer {
    text: Option<TextWriter>,
}

impl Printer {
    fn print(&mut self, event: &Event) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        let Some(writer) = &mut self.text else {
            writeln!(out, "{event}")?;
            return out.flush();
        };
        let mut text = String::new();
        if let Some(error) = event.as_error() {
            writer.end_line(&mut text);
            out.write_all(text.as_bytes())?;
            out.flush()?;
            eprintln!("cpipe: error ({}): {}", error.code, error.message);
            return Ok(());
        }
        writer.push(event, &mut text);
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// Closes a line left open by streamed text.
    fn finish(&mut self) -> std::io::Result<()> {
        let mut text = String::new();
        if let Some(writer) = &mut self.text {
            writer.end_line(&mut text);
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

/// Sends `cli.cmd` to `cli.target` and prints the events until the request ends.
pub fn run(cli: &Cli) -> Result<(), Failure> {
    let (Some(target), Some(cmd)) = (&cli.target, &cli.cmd) else {
        return Err(Failure::Usage(
            "say which server and which command: cpipe NAME CMD (or --list, --serve KIND, or dashboard for the terminal UI)".into(),
        ));
    };
    let fields = request_fields(cli)?;
    let idle_timeout = timeout(cli)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("cannot install the Ctrl-C handler")?;
    }
    let options = ConnectOptions {
        dir: cli.dir.clone(),
        timeout: idle_timeout,
    };
    let mut client = Client::connect_with(target, &options)?;
    let server = client.server_path();
    let mut printer = Printer {
        text: cli.text.then(TextWriter::default),
    };
    let mut failed = false;
    let mut last_event = Instant::now();
    let mut events = client.request(cmd, Value::from(fields))?;
    loop {
        // Checked before each event, not only between them: a fast stream has no pauses.
        if interrupted.load(Ordering::Relaxed) {
            let id = events.id();
            let _ = client.cancel(id);
            printer.finish().context("writing output")?;
            eprintln!("cpipe: interrupted; cancelled the request");
            return Err(Failure::Interrupted);
        }
        match events.next_within(TICK) {
            Ok(Step::End) => break,
            Ok(Step::Event(event)) => {
                last_event = Instant::now();
                failed |= event.as_error().is_some();
                if let Err(e) = printer.print(&event) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        let id = events.id();
                        let _ = client.cancel(id);
                        return Ok(());
                    }
                    return Err(anyhow::Error::new(e).context("writing output").into());
                }
            }
            Ok(Step::Pending) => {
                if let Some(limit) = idle_timeout {
                    if last_event.elapsed() >= limit {
                        return Err(pipe_core::Error::Timeout {
                            what: format!("'{cmd}' from {}", server.display()),
                            after: limit,
                        }
                        .into());
                    }
                }
            }
            // named-pipes servers never answer `stop`: they just close the pipe.
            Err(pipe_core::Error::Disconnected { .. }) if cmd.eq_ignore_ascii_case("stop") => break,
            Err(e) => return Err(e.into()),
        }
    }
    printer.finish().context("writing output")?;
    if failed {
        Err(Failure::Remote)
    } else {
        Ok(())
    }
}
