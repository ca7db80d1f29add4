//! Routing of each request line: the built-in commands of named-pipes (answered on the
//! listener, never blocking) and cpipe's extensions, then dispatch of registered commands.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::lanes::Job;
use super::listener::{Listener, Source};
use super::subscriber::{DropReason, Subscriber, Wait};
use super::{CancelReason, CancelToken, InFlight, Responder};
use crate::interface::CommandSpec;
use crate::message::{ErrorCode, Event, ParseOutcome, Request, ToolError};
use crate::sync::{lock, read};
use crate::vocabulary::ProtocolEvent;
use crate::{fifo, named_interface, PROTOCOL_VERSION};

/// The commands every server answers itself.
pub(crate) fn builtin_specs() -> Vec<CommandSpec> {
    let no_args = json!({"type": "object"});
    let specs = vec![
        CommandSpec::new(
            "subscribe",
            "Start receiving events on <dir>/tool-<name>-<pid>.",
        )
        .args(json!({"type": "object", "properties": {
                "request_pipe": {"type": "boolean", "description":
                    "Also open a private request pipe, for requests of any size."}}}))
        .emits(&[ProtocolEvent::Subscribed]),
        CommandSpec::new("unsubscribe", "Stop receiving events; no reply.").args(no_args.clone()),
        CommandSpec::new("ping", "Liveness check.")
            .args(no_args.clone())
            .emits(&[ProtocolEvent::Pong]),
        CommandSpec::new("get_state", "The server's state, pid and subscriber count.")
            .args(no_args.clone())
            .emits(&[ProtocolEvent::State]),
        CommandSpec::new("get_description", "One line on what the server does.")
            .args(no_args.clone())
            .emits(&[ProtocolEvent::Description]),
        CommandSpec::new("get_help", "How to use the server.")
            .args(no_args.clone())
            .emits(&[ProtocolEvent::Help]),
        CommandSpec::new("get_config", "The server's configuration.")
            .args(no_args.clone())
            .emits(&[ProtocolEvent::Config]),
        CommandSpec::new(
            "get_interface",
            "Every command with its argument schema and events; with a name, that named \
             interface in named-pipes 0.7's shape.",
        )
        .args(json!({"type": "object", "properties": {
            "name": {"type": "string", "description":
                "A named interface (list_interfaces names them)."}}}))
        .emits(&[ProtocolEvent::Interface]),
        CommandSpec::new(
            "list_interfaces",
            "The named interfaces this server implements (named-pipes 0.7).",
        )
        .args(no_args.clone())
        .emits(&[ProtocolEvent::Interfaces]),
        CommandSpec::new("cancel", "Cancel one of your own requests by its id.")
            .args(
                json!({"type": "object", "required": ["target"], "properties": {
                "target": {"type": ["string", "integer"], "description":
                    "The id of the request to cancel."}}}),
            )
            .emits(&[ProtocolEvent::Error]),
        CommandSpec::new(
            "stop",
            "Stop the server; subscribers get state_changed: stopping.",
        )
        .args(no_args),
    ];
    specs
        .into_iter()
        .map(|spec| CommandSpec {
            builtin: true,
            ..spec
        })
        .collect()
}

impl Listener {
    pub(super) fn on_line(&mut self, line: &[u8], source: Source) {
        let mut request = match Request::parse(line) {
            ParseOutcome::Request(r) => r,
            ParseOutcome::Empty => return,
            ParseOutcome::Invalid { pid, id, error } => {
                let pid = match source {
                    Source::Private(owner) => Some(owner),
                    Source::Shared => pid,
                };
                tracing::debug!(?pid, "invalid request: {}", error.message);
                self.reply_error(pid, id, error);
                return;
            }
        };
        // A client with a private request pipe speaks only through it: a line on the shared
        // pipe naming it was written by another process posing as it (PROTOCOL.md §1.1).
        if let (Source::Shared, Some(pid)) = (source, request.pid) {
            // Except the same process subscribing again after closing its client, whose old
            // pipe's end is not read yet: the subscribe replaces it.
            let resubscribe = request.cmd == "subscribe" && self.request_writer_gone(pid);
            if self.request_pipes.contains_key(&pid) && !resubscribe {
                tracing::warn!(
                    pid,
                    cmd = %request.cmd,
                    "refused a request on the shared pipe in the name of a client that has a private one"
                );
                return;
            }
        }
        if let Source::Private(owner) = source {
            // Only its owner writes a request pipe; a line naming another sender came from a
            // process that took the pipe for something else (a discovery that mistook it for
            // a server's), and obeying it would act for a client that never asked.
            if request.pid.is_some_and(|pid| pid != owner) {
                tracing::warn!(
                    owner,
                    sender = request.pid,
                    cmd = %request.cmd,
                    "refused a request written into another client's request pipe"
                );
                return;
            }
            request.pid = Some(owner);
        }
        let pid = request.pid;
        let id = request.id.clone();
        match request.cmd.as_str() {
            "subscribe" => self.subscribe(&request),
            "unsubscribe" => {
                if let Some(pid) = pid {
                    let sub = self.shared.subscriber(Some(pid));
                    if let (Some(sub), Some(id)) = (sub, &id) {
                        let _ = sub.send(
                            &Event::new(ProtocolEvent::End)
                                .with("id", id.clone())
                                .to_line(),
                            Wait::Never,
                        );
                    }
                    self.drop_subscriber(pid, DropReason::Unsubscribed);
                }
            }
            "ping" => self.reply(pid, id, Event::new(ProtocolEvent::Pong)),
            "get_state" => {
                let mut event = Event::new(ProtocolEvent::State);
                event.set_all(&read(&self.shared.status));
                let event = event
                    .with("state", lock(&self.shared.state).as_str())
                    .with("pid", std::process::id())
                    .with("subscribers", lock(&self.shared.subscribers).len())
                    .with("name", self.shared.paths.name())
                    .with("requests", self.shared.requests.load(Ordering::Relaxed))
                    .with("tokens", self.shared.tokens.load(Ordering::Relaxed));
                self.reply(pid, id, event);
            }
            "get_description" => {
                let text = self.shared.description.clone();
                self.reply(
                    pid,
                    id,
                    Event::new(ProtocolEvent::Description).with("description", text),
                );
            }
            "get_help" => {
                let text = self.shared.help.clone();
                self.reply(pid, id, Event::new(ProtocolEvent::Help).with("help", text));
            }
            "get_config" => {
                let mut event = Event::new(ProtocolEvent::Config);
                event.set_all(&read(&self.shared.config));
                self.reply(pid, id, event);
            }
            "get_interface" => match request.get("name") {
                None | Some(Value::Null) => {
                    let event = self.interface();
                    self.reply(pid, id, event);
                }
                Some(name) => match self.named_interface(name) {
                    Ok(event) => self.reply(pid, id, event),
                    Err(error) => self.reply_error(pid, id, error),
                },
            },
            "list_interfaces" => {
                let names = self.interface_names();
                let event = Event::new(ProtocolEvent::Interfaces).with("interfaces", names);
                self.reply(pid, id, event);
            }
            "cancel" => self.cancel(&request),
            "stop" => {
                tracing::info!(from = pid.unwrap_or(0), "stop requested");
                self.shared.request_stop();
                self.reply_end(pid, id);
            }
            _ => self.dispatch(request),
        }
    }

    fn subscribe(&mut self, request: &Request) {
        let Some(pid) = request.pid else {
            tracing::warn!("subscribe without a pid ignored: there is no pipe to answer on");
            return;
        };
        let path = self.shared.paths.downstream(pid);
        let pipe = match fifo::open_fifo(&path, fifo::Access::Write) {
            Ok(pipe) => pipe,
            Err(e) => {
                tracing::warn!(pid, "cannot subscribe: {e}");
                return;
            }
        };
        if self.shared.subscriber(Some(pid)).is_some() {
            self.drop_subscriber(pid, DropReason::Replaced);
        }
        let sub = Arc::new(Subscriber::new(
            pid,
            pipe,
            self.shared.limits.max_backlog_bytes,
            Arc::clone(&self.shared.waker),
        ));
        lock(&self.shared.subscribers).insert(pid, sub);
        tracing::debug!(pid, "client subscribed");
        let mut event = Event::new(ProtocolEvent::Subscribed).with("protocol", PROTOCOL_VERSION);
        if request.opt_bool("request_pipe").ok().flatten() == Some(true) {
            match self.open_request_pipe(pid) {
                Ok(path) => {
                    event.set("request_pipe", path.to_string_lossy().into_owned());
                    event.set("max_request_bytes", self.shared.limits.max_request_bytes);
                }
                Err(e) => tracing::warn!(pid, "no private request pipe: {e}"),
            }
        }
        self.reply(Some(pid), request.id.clone(), event);
    }

    fn interface(&self) -> Event {
        let mut commands: Vec<Value> = builtin_specs().iter().map(CommandSpec::to_json).collect();
        let registered = read(&self.shared.commands);
        let mut names: Vec<&String> = registered.keys().collect();
        names.sort();
        commands.extend(names.into_iter().map(|n| registered[n].spec.to_json()));
        Event::new(ProtocolEvent::Interface)
            .with("name", self.shared.paths.name())
            .with("description", self.shared.description.clone())
            .with("protocol", PROTOCOL_VERSION)
            .with("commands", commands)
    }

    /// The named interfaces (named-pipes 0.7): `base`, and the server's own if it has
    /// commands.
    fn interface_names(&self) -> Vec<String> {
        let mut names = vec![named_interface::BASE.to_string()];
        if !read(&self.shared.commands).is_empty() {
            names.push(self.shared.interface.clone());
        }
        names
    }

    /// `get_interface {"name": ...}`: one named interface in named-pipes 0.7's shape. The
    /// built-ins that only connect (`subscribe`, `unsubscribe`) are the protocol's, not
    /// commands to offer, and are left out of `base`.
    fn named_interface(&self, name: &Value) -> Result<Event, ToolError> {
        let known = self.interface_names();
        let interface = match name.as_str() {
            Some(named_interface::BASE) => {
                let specs = builtin_specs();
                let commands: Vec<&CommandSpec> = specs
                    .iter()
                    .filter(|s| !matches!(s.name.as_str(), "subscribe" | "unsubscribe"))
                    .collect();
                named_interface::describe(
                    named_interface::BASE,
                    "Built-in commands every server answers.",
                    &commands,
                    &[
                        ProtocolEvent::StateChanged.into(),
                        ProtocolEvent::Error.into(),
                    ],
                )
            }
            Some(own) if known.iter().any(|k| k == own) => {
                let registered = read(&self.shared.commands);
                let mut commands: Vec<&CommandSpec> =
                    registered.values().map(|c| &c.spec).collect();
                commands.sort_by(|a, b| a.name.cmp(&b.name));
                named_interface::describe(
                    own,
                    &self.shared.description,
                    &commands,
                    &self.shared.broadcasts,
                )
            }
            _ => {
                return Err(ToolError::new(
                    ErrorCode::NotFound,
                    format!(
                        "unknown interface '{}': this server implements {} (list_interfaces); \
                         without a name, get_interface describes every command",
                        name.as_str().map_or_else(|| name.to_string(), String::from),
                        known.join(", ")
                    ),
                ))
            }
        };
        Ok(Event::new(ProtocolEvent::Interface).with("interface", interface))
    }

    fn cancel(&mut self, request: &Request) {
        let (pid, id) = (request.pid, request.id.clone());
        let target = match request.get("target") {
            Some(t @ (Value::String(_) | Value::Number(_))) => t.clone(),
            _ => {
                let error = ToolError::invalid(
                    "cancel: \"target\" must be the id (string or number) of one of your requests",
                );
                return self.reply_error(pid, id, error);
            }
        };
        let found = pid.is_some_and(|pid| {
            lock(&self.shared.inflight)
                .get(&pid)
                .and_then(|list| list.iter().find(|f| f.id.as_ref() == Some(&target)))
                .map(|f| f.token.cancel(CancelReason::Requested))
                .is_some()
        });
        if found {
            self.reply_end(pid, id);
        } else {
            let error = ToolError::new(
                ErrorCode::NotFound,
                format!("cancel: no running or queued request of yours has id {target}"),
            );
            self.reply_error(pid, id, error);
        }
    }

    fn dispatch(&mut self, request: Request) {
        let (pid, id) = (request.pid, request.id.clone());
        let found = read(&self.shared.commands).get(&request.cmd).map(|c| {
            (
                Arc::clone(&c.handler),
                c.inline,
                c.spec.check(&request.fields),
            )
        });
        let (handler, inline) = match found {
            None => {
                let error = ToolError::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "unknown command '{}' (send get_interface or get_help to list the commands)",
                        request.cmd
                    ),
                );
                return self.reply_error(pid, id, error);
            }
            Some((_, _, Err(error))) => return self.reply_error(pid, id, error),
            Some((handler, inline, Ok(()))) => (handler, inline),
        };
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        // An inline handler runs here unless earlier requests of its client are still
        // queued, which must go first.
        if inline && !self.shared.lane_busy(pid) {
            let responder = Responder {
                shared: Arc::clone(&self.shared),
                subscriber: self.shared.subscriber(pid),
                id,
                cancel: CancelToken::new(),
                batch: Some(Mutex::default()),
            };
            return self.shared.run_job(Job {
                handler,
                request,
                responder,
            });
        }
        let token = CancelToken::new();
        if let Some(pid) = pid {
            let mut inflight = lock(&self.shared.inflight);
            let list = inflight.entry(pid).or_default();
            if id.is_some() && list.iter().any(|f| f.id == id) {
                drop(inflight);
                let error = ToolError::invalid(format!(
                    "id {} is already used by one of your running requests; use a fresh id",
                    id.as_ref().map(Value::to_string).unwrap_or_default()
                ));
                return self.reply_error(Some(pid), id, error);
            }
            list.push(InFlight {
                id: id.clone(),
                token: token.clone(),
            });
        }
        let responder = Responder {
            shared: Arc::clone(&self.shared),
            subscriber: self.shared.subscriber(pid),
            id,
            cancel: token,
            batch: None,
        };
        self.shared.submit(Job {
            handler,
            request,
            responder,
        });
    }

    /// Answers on the listener: the event, then `end` if the request had an id.
    fn reply(&mut self, pid: Option<u32>, id: Option<Value>, mut event: Event) {
        let Some(sub) = self.shared.subscriber(pid) else {
            return;
        };
        let mut lines = Vec::with_capacity(128);
        if let Some(id) = id {
            event.set("id", id.clone());
            event.write_line(&mut lines);
            Event::new(ProtocolEvent::End)
                .with("id", id)
                .write_line(&mut lines);
        } else {
            event.write_line(&mut lines);
        }
        // One write for the reply and its `end`, so the client wakes once.
        let _ = sub.send(&lines, Wait::Never);
    }

    fn reply_end(&mut self, pid: Option<u32>, id: Option<Value>) {
        if let (Some(sub), Some(id)) = (self.shared.subscriber(pid), id) {
            let _ = sub.send(
                &Event::new(ProtocolEvent::End).with("id", id).to_line(),
                Wait::Never,
            );
        }
    }

    pub(super) fn reply_error(&mut self, pid: Option<u32>, id: Option<Value>, error: ToolError) {
        if pid.is_none() {
            tracing::warn!(
                "{} (the sender is unknown, so nobody is told)",
                error.message
            );
        }
        self.reply(pid, id, error.to_event());
    }
}
