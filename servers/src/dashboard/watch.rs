//! One thread per server shown: a subscribed client that reports the server's state each
//! second, its model and commands once, and every event it sends (broadcasts, and the events
//! of commands sent from the dashboard), until the server goes or the dashboard forgets it.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use pipe_core::{Client, ConnectOptions, Event, ProtocolEvent};
use serde_json::Value;

/// What a watcher tells the dashboard.
pub enum Report {
    /// `get_state`'s answer.
    State(Event),
    /// The model (or voice) from `get_config`, and the commands from [`Client::describe`].
    Described {
        /// What the server runs, if it says.
        model: Option<String>,
        /// Its commands, in the form of cpipe's `get_interface`.
        commands: Vec<Value>,
    },
    /// A line for the events panel.
    Line(String),
    /// The server cannot be reached any more.
    Gone(String),
}

/// A running watcher; dropping it ends its thread (which unsubscribes).
pub struct Watcher {
    commands: Sender<(String, Value)>,
}

impl Watcher {
    /// Starts watching server `name` in `dir`: reports come on `reports`, tagged with `name`.
    pub fn start(dir: PathBuf, name: String, reports: Sender<(String, Report)>) -> Self {
        let (commands, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("watch-{name}"))
            .spawn(move || {
                let report = |r: Report| reports.send((name.clone(), r)).is_ok();
                let options = ConnectOptions {
                    dir,
                    timeout: Some(Duration::from_secs(2)),
                };
                match Client::connect_with(&name, &options) {
                    Ok(client) => {
                        let reason = watch(client, &inbox, &report);
                        report(Report::Gone(reason));
                    }
                    Err(e) => {
                        report(Report::Gone(e.to_string()));
                    }
                }
            })
            .expect("a thread can be started");
        Self { commands }
    }

    /// Sends `cmd` with `args` to the server; its events come back as lines.
    pub fn send(&self, cmd: &str, args: Value) {
        let _ = self.commands.send((cmd.to_string(), args));
    }
}

/// Watches until the server goes (returns why) or the dashboard drops the watcher.
fn watch(
    mut client: Client,
    inbox: &Receiver<(String, Value)>,
    report: &dyn Fn(Report) -> bool,
) -> String {
    let model = client
        .call("get_config", Value::Null)
        .ok()
        .and_then(|events| {
            let config = events.first()?;
            ["model", "voice"]
                .iter()
                .find_map(|k| config.str(k))
                .map(|m| short_model(m).to_string())
        });
    let commands = match client.describe() {
        Ok(Some(interface)) => interface
            .get("commands")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Ok(None) => Vec::new(),
        Err(e) => return e.to_string(),
    };
    if !report(Report::Described { model, commands }) {
        return String::new();
    }
    let mut asked = Instant::now() - Duration::from_secs(1);
    loop {
        loop {
            match inbox.try_recv() {
                Ok((cmd, args)) => {
                    let shown = format!("→ {cmd} {}", compact(&args));
                    let line = match client.send(&cmd, args) {
                        Ok(_) => shown,
                        Err(e) => format!("{shown}: {e}"),
                    };
                    if !report(Report::Line(line)) {
                        return String::new();
                    }
                }
                Err(TryRecvError::Empty) => break,
                // The dashboard forgot this server.
                Err(TryRecvError::Disconnected) => return String::new(),
            }
        }
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            match client.call("get_state", Value::Null) {
                Ok(events) => {
                    if let Some(state) = events.into_iter().next() {
                        if !report(Report::State(state)) {
                            return String::new();
                        }
                    }
                }
                Err(pipe_core::Error::Remote { .. }) => {}
                Err(e) => return e.to_string(),
            }
        }
        match client.try_next_event(Duration::from_millis(100)) {
            Ok(Some(event)) if event.is(ProtocolEvent::End) => {}
            Ok(Some(event)) => {
                if !report(Report::Line(describe_event(&event))) {
                    return String::new();
                }
            }
            Ok(None) => {}
            Err(e) => return e.to_string(),
        }
    }
}

/// An event as one line of the panel: its name, then its fields (audio data left out).
fn describe_event(event: &Event) -> String {
    let fields: Vec<String> = event
        .fields()
        .iter()
        .filter(|(k, _)| !matches!(*k, "event" | "id"))
        .map(|(k, v)| match (k, v) {
            ("data", Value::String(s)) if s.len() > 64 => format!("data=<{} bytes>", s.len()),
            (_, Value::String(s)) => format!("{k}={s}"),
            _ => format!("{k}={}", compact(v)),
        })
        .collect();
    format!("{} {}", event.name(), fields.join(" "))
}

fn compact(value: &Value) -> String {
    if value.is_null() {
        return String::new();
    }
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// A model's file name rather than its whole path.
fn short_model(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}
