//! The dashboard's state, and what each key does to it (drawing is `ui`'s). The servers are the
//! pipes in the directory, looked at each second; each live one has a [`Watcher`] whose
//! reports fill its row and its events.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::{Map, Value};

use super::launch;
use super::watch::{Report, Watcher};
use crate::kinds::KINDS;
use crate::query::field_value;

/// Events kept per server.
const KEPT_EVENTS: usize = 1000;

/// One server as the table shows it.
#[derive(Debug, Default)]
pub struct Row {
    /// Its name.
    pub name: String,
    /// Whether a process reads its pipe.
    pub alive: bool,
    /// Its state, from `get_state`.
    pub state: Option<String>,
    /// Its process.
    pub pid: Option<u64>,
    /// Its subscribers, the dashboard included.
    pub subscribers: Option<u64>,
    /// What it runs.
    pub model: Option<String>,
    /// Requests handled per second, over the last second.
    pub requests_per_s: Option<f64>,
    /// Tokens streamed per second, over the last second.
    pub tokens_per_s: Option<f64>,
    /// Why its watcher lost it.
    pub gone: Option<String>,
    /// The last request and token counts, and when they were read.
    counted: Option<(u64, u64, Instant)>,
}

/// A field of the command form.
#[derive(Debug)]
pub struct Field {
    /// The argument's name.
    pub name: String,
    /// Its type and whether it is required, as a hint.
    pub hint: String,
    /// What was typed.
    pub value: String,
    /// Typed text is sent as is (a string argument), not read as JSON.
    text: bool,
}

/// A window over the table, if one is open.
#[derive(Debug)]
pub enum Overlay {
    /// Nothing open.
    None,
    /// Choosing a command of the selected server: typed letters filter the list.
    Commands {
        /// The filter typed.
        filter: String,
        /// The highlighted command among those the filter leaves.
        selected: usize,
    },
    /// Filling in a command's arguments.
    Form {
        /// The command.
        command: String,
        /// Its arguments.
        fields: Vec<Field>,
        /// The field being typed in.
        focus: usize,
    },
    /// Starting a server.
    Launch {
        /// The kind, as an index into the registry.
        kind: usize,
        /// Its flags, typed as in a shell.
        flags: String,
    },
}

/// Everything the dashboard shows.
pub struct App {
    /// The pipe directory.
    pub dir: PathBuf,
    /// The servers, by name.
    pub rows: Vec<Row>,
    /// The highlighted row.
    pub selected: usize,
    /// What is open over the table.
    pub overlay: Overlay,
    /// The last message for the user.
    pub status: String,
    /// The user asked to quit.
    pub quit: bool,
    watchers: HashMap<String, Watcher>,
    commands: HashMap<String, Vec<Value>>,
    events: HashMap<String, VecDeque<String>>,
    reports: Receiver<(String, Report)>,
    report_to: Sender<(String, Report)>,
    scanned: Option<Instant>,
}

impl App {
    /// A dashboard over the servers of `dir`.
    pub fn new(dir: PathBuf) -> Self {
        let (report_to, reports) = mpsc::channel();
        Self {
            dir,
            rows: Vec::new(),
            selected: 0,
            overlay: Overlay::None,
            status: String::new(),
            quit: false,
            watchers: HashMap::new(),
            commands: HashMap::new(),
            events: HashMap::new(),
            reports,
            report_to,
            scanned: None,
        }
    }

    /// Looks at the directory (once a second) and takes in the watchers' reports.
    pub fn update(&mut self) {
        if self
            .scanned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.scanned = Some(Instant::now());
            self.scan();
        }
        while let Ok((name, report)) = self.reports.try_recv() {
            self.apply(&name, report);
        }
    }

    /// The selected server's row.
    pub fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }

    /// The selected server's latest events, oldest first.
    pub fn events(&self) -> Vec<&str> {
        self.selected_row()
            .and_then(|r| self.events.get(&r.name))
            .map(|e| e.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The commands the filter leaves, for the command list.
    pub fn visible_commands(&self) -> Vec<(&str, &str)> {
        let Overlay::Commands { filter, .. } = &self.overlay else {
            return Vec::new();
        };
        self.matching(filter)
            .into_iter()
            .map(|(name, c)| (name, c.get("summary").and_then(Value::as_str).unwrap_or("")))
            .collect()
    }

    /// The selected server's commands whose names contain `filter`, with their names, in the
    /// order the list shows them.
    fn matching(&self, filter: &str) -> Vec<(&str, &Value)> {
        self.selected_commands()
            .iter()
            .filter_map(|c| Some((c.get("name")?.as_str()?, c)))
            .filter(|(name, _)| name.contains(filter))
            .collect()
    }

    fn selected_commands(&self) -> &[Value] {
        self.selected_row()
            .and_then(|r| self.commands.get(&r.name))
            .map_or(&[], Vec::as_slice)
    }

    fn scan(&mut self) {
        let pipes = match pipe_core::discovery::server_pipes(&self.dir) {
            Ok(pipes) => pipes,
            Err(e) => {
                self.status = e.to_string();
                return;
            }
        };
        let selected = self.selected_row().map(|r| r.name.clone());
        self.rows
            .retain(|r| pipes.iter().any(|(n, _)| n == &r.name));
        for (name, path) in pipes {
            let alive = pipe_core::has_reader(&path).unwrap_or(false);
            let row = match self.rows.iter_mut().position(|r| r.name == name) {
                Some(i) => &mut self.rows[i],
                None => {
                    self.rows.push(Row {
                        name: name.clone(),
                        ..Row::default()
                    });
                    self.rows.last_mut().expect("pushed")
                }
            };
            row.alive = alive;
            if alive && !self.watchers.contains_key(&name) {
                row.gone = None;
                let watcher =
                    Watcher::start(self.dir.clone(), name.clone(), self.report_to.clone());
                self.watchers.insert(name, watcher);
            } else if !alive {
                self.watchers.remove(&name);
                row.state = None;
                row.subscribers = None;
                row.requests_per_s = None;
                row.tokens_per_s = None;
            }
        }
        self.rows.sort_by(|a, b| a.name.cmp(&b.name));
        self.watchers
            .retain(|name, _| self.rows.iter().any(|r| &r.name == name));
        self.selected = selected
            .and_then(|name| self.rows.iter().position(|r| r.name == name))
            .unwrap_or(self.selected)
            .min(self.rows.len().saturating_sub(1));
    }

    fn apply(&mut self, name: &str, report: Report) {
        let Some(row) = self.rows.iter_mut().find(|r| r.name == name) else {
            return;
        };
        match report {
            Report::State(event) => {
                row.state = event.str("state").map(String::from);
                row.pid = event.get("pid").and_then(Value::as_u64);
                row.subscribers = event.get("subscribers").and_then(Value::as_u64);
                let counts = event
                    .get("requests")
                    .and_then(Value::as_u64)
                    .zip(event.get("tokens").and_then(Value::as_u64));
                if let (Some((requests, tokens)), Some((r0, t0, at))) = (counts, row.counted) {
                    let seconds = at.elapsed().as_secs_f64().max(1e-3);
                    row.requests_per_s = Some(requests.saturating_sub(r0) as f64 / seconds);
                    row.tokens_per_s = Some(tokens.saturating_sub(t0) as f64 / seconds);
                }
                row.counted = counts.map(|(r, t)| (r, t, Instant::now()));
            }
            Report::Described {
                model,
                mut commands,
            } => {
                row.model = model;
                // These connect rather than command: the dashboard is subscribed already.
                commands.retain(|c| {
                    !matches!(
                        c.get("name").and_then(Value::as_str),
                        Some("subscribe" | "unsubscribe")
                    )
                });
                self.commands.insert(name.to_string(), commands);
            }
            Report::Line(line) => self.log(name, line),
            Report::Gone(reason) => {
                row.gone = Some(reason.clone());
                row.state = None;
                self.watchers.remove(name);
                if !reason.is_empty() {
                    self.log(name, format!("— lost the server: {reason}"));
                }
            }
        }
    }

    fn log(&mut self, name: &str, line: String) {
        let events = self.events.entry(name.to_string()).or_default();
        if events.len() == KEPT_EVENTS {
            events.pop_front();
        }
        events.push_back(line);
    }

    /// Does what `key` means in the current view.
    pub fn key(&mut self, key: KeyEvent) {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        match std::mem::replace(&mut self.overlay, Overlay::None) {
            Overlay::None => self.browse(key.code),
            Overlay::Commands { filter, selected } => {
                self.choose_command(key.code, filter, selected)
            }
            Overlay::Form {
                command,
                fields,
                focus,
            } => self.fill_form(key.code, command, fields, focus),
            Overlay::Launch { kind, flags } => self.launch(key.code, kind, flags),
        }
    }

    fn browse(&mut self, code: KeyCode) {
        match code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.rows.len().saturating_sub(1));
            }
            KeyCode::Enter => match self.selected_row() {
                None => self.status = "no server to send to: start one with n".into(),
                Some(row) if !self.watchers.contains_key(&row.name) => {
                    self.status = format!("{} is not running", row.name);
                }
                Some(_) if self.selected_commands().is_empty() => {
                    self.status = "this server lists no commands (yet)".into();
                }
                Some(_) => {
                    self.overlay = Overlay::Commands {
                        filter: String::new(),
                        selected: 0,
                    }
                }
            },
            KeyCode::Char('n') => {
                self.overlay = Overlay::Launch {
                    kind: 0,
                    flags: String::new(),
                }
            }
            KeyCode::Char('s') => self.send("stop", Value::Null),
            _ => {}
        }
    }

    fn choose_command(&mut self, code: KeyCode, mut filter: String, mut selected: usize) {
        match code {
            KeyCode::Esc => return,
            KeyCode::Up => selected = selected.saturating_sub(1),
            KeyCode::Down => {
                selected = (selected + 1).min(self.matching(&filter).len().saturating_sub(1));
            }
            KeyCode::Backspace => {
                filter.pop();
                selected = 0;
            }
            KeyCode::Char(c) => {
                filter.push(c);
                selected = 0;
            }
            KeyCode::Enter => {
                let chosen = self
                    .matching(&filter)
                    .get(selected)
                    .map(|(_, command)| (*command).clone());
                if let Some(command) = chosen {
                    self.open_form(&command);
                }
                return;
            }
            _ => {}
        }
        self.overlay = Overlay::Commands { filter, selected };
    }

    /// Opens the form of `command`'s arguments, or sends it at once if it takes none.
    fn open_form(&mut self, command: &Value) {
        let name = command
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let args = command.get("args");
        let required: Vec<&str> = args
            .and_then(|a| a.get("required"))
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let fields: Vec<Field> = args
            .and_then(|a| a.get("properties"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(field, schema)| {
                let kind = match schema.get("type") {
                    Some(Value::String(t)) => t.clone(),
                    Some(Value::Array(ts)) => ts
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("|"),
                    _ => "any".into(),
                };
                let needed = if required.contains(&field.as_str()) {
                    ", required"
                } else {
                    ""
                };
                Field {
                    name: field.clone(),
                    hint: format!("{kind}{needed}"),
                    value: String::new(),
                    text: kind == "string",
                }
            })
            .collect();
        if fields.is_empty() {
            self.send(&name, Value::Null);
        } else {
            self.overlay = Overlay::Form {
                command: name,
                fields,
                focus: 0,
            };
        }
    }

    fn fill_form(
        &mut self,
        code: KeyCode,
        command: String,
        mut fields: Vec<Field>,
        mut focus: usize,
    ) {
        match code {
            KeyCode::Esc => return,
            KeyCode::Tab | KeyCode::Down => focus = (focus + 1) % fields.len(),
            KeyCode::BackTab | KeyCode::Up => focus = (focus + fields.len() - 1) % fields.len(),
            KeyCode::Backspace => {
                fields[focus].value.pop();
            }
            KeyCode::Char(c) => fields[focus].value.push(c),
            KeyCode::Enter => {
                let args: Map<String, Value> = fields
                    .iter()
                    .filter(|f| !f.value.is_empty())
                    .map(|f| {
                        let value = if f.text {
                            Value::String(f.value.clone())
                        } else {
                            field_value(&f.value)
                        };
                        (f.name.clone(), value)
                    })
                    .collect();
                self.send(&command, Value::Object(args));
                return;
            }
            _ => {}
        }
        self.overlay = Overlay::Form {
            command,
            fields,
            focus,
        };
    }

    fn launch(&mut self, code: KeyCode, mut kind: usize, mut flags: String) {
        match code {
            KeyCode::Esc => return,
            KeyCode::Left => kind = (kind + KINDS.len() - 1) % KINDS.len(),
            KeyCode::Right => kind = (kind + 1) % KINDS.len(),
            KeyCode::Backspace => {
                flags.pop();
            }
            KeyCode::Char(c) => flags.push(c),
            KeyCode::Enter => {
                let kind = KINDS[kind].name;
                self.status = match launch::start(&self.dir, kind, &flags) {
                    Ok(name) => format!(
                        "started a {kind} server named {name}; its log: {}",
                        launch::log_file(&self.dir, &name).display()
                    ),
                    Err(e) => format!("cannot start it: {e:#}"),
                };
                self.scanned = None;
                return;
            }
            _ => {}
        }
        self.overlay = Overlay::Launch { kind, flags };
    }

    /// Sends a command to the selected server; its events show in the events panel.
    fn send(&mut self, cmd: &str, args: Value) {
        let Some(name) = self.selected_row().map(|r| r.name.clone()) else {
            self.status = "no server selected".into();
            return;
        };
        match self.watchers.get(&name) {
            Some(watcher) => {
                watcher.send(cmd, args);
                self.status = format!("sent {cmd} to {name}");
            }
            None => self.status = format!("{name} is not running"),
        }
    }
}
