//! One pipe connection per live server, shared by every remote client of a bridge.
//!
//! The protocol allows one connection per process and server, so requests from many HTTP or
//! Wyoming clients travel over one [`pipe_core::Client`] with their own ids. A task of the
//! bridge's runtime owns it: it sends requests as they come and routes each event back to
//! its request by id, woken by the runtime's epoll when the event pipe has data. The worker
//! thread that reads an event then runs the remote client's task too (tokio runs a task
//! woken from a worker next on that worker), so an event reaches the remote client in one
//! wake-up. A hand-over to another thread would wait for a core: while a model generates,
//! its threads keep every core busy, and a woken thread may wait for the next scheduler tick
//! (4 ms at 250 Hz). A dedicated connection thread cost about 2 ms per first token.
//!
//! Sending a request writes to the server's request pipe without waiting while the pipe has
//! room, which is always so for small requests; a large one (an uploaded recording) may wait
//! for the server to read, within the client's timeout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use pipe_core::{Client, ConnectOptions, Event, ProtocolEvent};
use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::BridgeError;

/// The bridge's connections to live servers, by name, made on first use and made again when
/// a server restarts.
pub struct Upstreams {
    dir: PathBuf,
    servers: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    /// Connections to the servers in pipe directory `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            servers: Mutex::new(HashMap::new()),
        }
    }

    /// The pipe directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection to server `name`: the open one, or a new one if there is none or it
    /// was lost.
    pub async fn get(&self, name: &str) -> Result<Arc<Upstream>, BridgeError> {
        let mut servers = self.servers.lock().await;
        if let Some(upstream) = servers.get(name).filter(|u| u.is_alive()) {
            return Ok(upstream.clone());
        }
        // The old connection's task has dropped its client (it marks itself dead only
        // after), so this process may connect again.
        servers.remove(name);
        let dir = self.dir.clone();
        let target = name.to_string();
        let client = tokio::task::spawn_blocking(move || connect(&dir, &target))
            .await
            .map_err(|e| BridgeError::Internal(format!("connecting thread failed: {e}")))??;
        let upstream = Upstream::start(client, name)?;
        servers.insert(name.to_string(), upstream.clone());
        Ok(upstream)
    }
}

/// Opens a connection to server `name` (blocking: it waits for the server's welcome).
fn connect(dir: &Path, name: &str) -> Result<Client, BridgeError> {
    let options = ConnectOptions {
        dir: dir.to_path_buf(),
        timeout: Some(pipe_core::DEFAULT_TIMEOUT),
    };
    Client::connect_with(name, &options).map_err(|e| match e {
        pipe_core::Error::NotRunning(_) => BridgeError::NotRunning {
            name: name.into(),
            dir: dir.to_path_buf(),
        },
        other => BridgeError::Lost {
            name: name.into(),
            reason: other.to_string(),
        },
    })
}

/// A connection to one server, owned by its task.
pub struct Upstream {
    name: String,
    ops: mpsc::UnboundedSender<Op>,
    alive: Arc<AtomicBool>,
    /// What the server does and runs, asked once per connection.
    profile: OnceLock<Value>,
}

/// Work for the connection task.
enum Op {
    Send {
        cmd: String,
        args: Value,
        events: mpsc::UnboundedSender<Event>,
        sent: oneshot::Sender<Result<u64, BridgeError>>,
    },
    Cancel(u64),
}

impl Upstream {
    /// Hands `client` to a task of the current runtime.
    fn start(client: Client, name: &str) -> Result<Arc<Self>, BridgeError> {
        // SAFETY: the client owns its event pipe for its whole life and always returns that
        // pipe's descriptor; the AsyncFd owns the client, so the pipe outlives the watch.
        let client = unsafe { AsyncFd::register_with_interest(client, Interest::READABLE) }
            .map_err(|e| BridgeError::Internal(format!("cannot watch the event pipe: {e}")))?;
        let (ops, inbox) = mpsc::unbounded_channel();
        let alive = Arc::new(AtomicBool::new(true));
        let task_alive = alive.clone();
        let task_name = name.to_string();
        tokio::spawn(async move {
            let reason = Connection {
                client,
                inbox,
                routes: HashMap::new(),
            }
            .run()
            .await;
            tracing::info!("connection to '{task_name}' closed: {reason}");
            task_alive.store(false, Ordering::Release);
        });
        Ok(Arc::new(Self {
            name: name.into(),
            ops,
            alive,
            profile: OnceLock::new(),
        }))
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the connection still stands.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Sends a request; its events come through the returned [`Call`].
    pub async fn call(self: &Arc<Self>, cmd: &str, args: Value) -> Result<Call, BridgeError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let (sent, id) = oneshot::channel();
        self.submit(Op::Send {
            cmd: cmd.into(),
            args,
            events,
            sent,
        })?;
        let id = id.await.map_err(|_| self.lost())??;
        Ok(Call {
            id,
            events: receiver,
            upstream: self.clone(),
            over: false,
        })
    }

    /// Sends a request and collects its events; an error event becomes
    /// [`BridgeError::Remote`].
    pub async fn collect(
        self: &Arc<Self>,
        cmd: &str,
        args: Value,
    ) -> Result<Vec<Event>, BridgeError> {
        let mut call = self.call(cmd, args).await?;
        let mut events = Vec::new();
        while let Some(event) = call.next().await {
            events.push(remote_error(event)?);
        }
        Ok(events)
    }

    /// The server's `get_interface` and `get_config` answers, asked once per connection:
    /// `{"commands": [names], "config": {...}}`.
    pub async fn profile(self: &Arc<Self>) -> Result<&Value, BridgeError> {
        if let Some(profile) = self.profile.get() {
            return Ok(profile);
        }
        let interface = self.collect("get_interface", Value::Null).await?;
        let commands: Vec<Value> = interface
            .first()
            .and_then(|e| e.get("commands"))
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(|c| c.get("name").cloned()).collect())
            .unwrap_or_default();
        let config = self.collect("get_config", Value::Null).await?;
        let config: serde_json::Map<String, Value> = config
            .first()
            .map(|e| {
                e.fields()
                    .iter()
                    .filter(|(k, _)| !matches!(*k, "event" | "id"))
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let _ = self
            .profile
            .set(json!({"commands": commands, "config": config}));
        Ok(self.profile.get().expect("set just now"))
    }

    fn submit(&self, op: Op) -> Result<(), BridgeError> {
        self.ops.send(op).map_err(|_| self.lost())
    }

    fn lost(&self) -> BridgeError {
        BridgeError::Lost {
            name: self.name.clone(),
            reason: "the connection closed (the server stopped?)".into(),
        }
    }
}

/// An event, or the error it carries.
pub fn remote_error(event: Event) -> Result<Event, BridgeError> {
    match event.as_error() {
        Some(e) => Err(BridgeError::Remote {
            code: e.code.as_str().into(),
            message: e.message,
        }),
        None => Ok(event),
    }
}

/// One request's events as they arrive. Dropping it before its end cancels the request on
/// the server (a remote client that went away frees the model at once).
pub struct Call {
    id: u64,
    events: mpsc::UnboundedReceiver<Event>,
    upstream: Arc<Upstream>,
    over: bool,
}

impl Call {
    /// The request's next event, or `None` after its last. A lost connection ends with an
    /// `unavailable` error event.
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.events.recv().await;
        self.over = event.is_none();
        event
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.over {
            let _ = self.upstream.submit(Op::Cancel(self.id));
        }
    }
}

/// The connection task's state.
struct Connection {
    /// The client, its event pipe watched by the runtime's epoll.
    client: AsyncFd<Client>,
    inbox: mpsc::UnboundedReceiver<Op>,
    routes: Routes,
}

/// Where each running request's events go, by request id.
type Routes = HashMap<u64, mpsc::UnboundedSender<Event>>;

impl Connection {
    /// Serves until the server goes away or the bridge drops the connection; returns why.
    async fn run(mut self) -> String {
        let reason = loop {
            tokio::select! {
                op = self.inbox.recv() => match op {
                    Some(op) => {
                        if let Err(reason) = self.take(op) {
                            break reason;
                        }
                    }
                    None => break "the bridge closed it".to_string(),
                },
                ready = self.client.readable_mut() => {
                    let mut ready = match ready {
                        Ok(ready) => ready,
                        Err(e) => break format!("waiting for events failed: {e}"),
                    };
                    // Every event that has arrived is read, down to an empty pipe, before
                    // the readiness is cleared: epoll reports only new data.
                    if let Err(e) = route_events(ready.get_inner_mut(), &mut self.routes) {
                        break e.to_string();
                    }
                    ready.clear_ready();
                }
            }
        };
        let message = format!("the connection to the server was lost: {reason}");
        for (id, events) in self.routes.drain() {
            let _ = events.send(
                Event::new(ProtocolEvent::Error)
                    .with("message", message.clone())
                    .with("code", "unavailable")
                    .with("id", id),
            );
        }
        reason
    }

    /// Sends a request or a cancel; `Err` when the connection broke.
    fn take(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Send {
                cmd,
                args,
                events,
                sent,
            } => match self.client.get_mut().send(&cmd, args) {
                Ok(id) => {
                    self.routes.insert(id, events);
                    let _ = sent.send(Ok(id));
                }
                Err(pipe_core::Error::RequestTooLarge { bytes, limit }) => {
                    let _ = sent.send(Err(BridgeError::Remote {
                        code: "too_large".into(),
                        message: format!(
                            "the request is {bytes} bytes and the server takes at most \
                             {limit} (its --max-request-bytes): send less at once"
                        ),
                    }));
                }
                Err(e) => {
                    let reason = e.to_string();
                    let _ = sent.send(Err(BridgeError::Lost {
                        name: self.client.get_ref().server_path().display().to_string(),
                        reason: reason.clone(),
                    }));
                    return Err(reason);
                }
            },
            Op::Cancel(id) => self.cancel(id),
        }
        Ok(())
    }

    /// Cancels request `id` on the server, if it is still running.
    fn cancel(&mut self, id: u64) {
        cancel(self.client.get_mut(), &mut self.routes, id);
    }
}

/// Cancels request `id` on the server, if it is still running.
fn cancel(client: &mut Client, routes: &mut Routes, id: u64) {
    if routes.remove(&id).is_some() {
        let _ = client.cancel(id);
    }
}

/// Hands every event that has arrived to its request. A request whose remote client went
/// away without waiting for the end is cancelled.
fn route_events(client: &mut Client, routes: &mut Routes) -> pipe_core::Result<()> {
    while let Some(event) = client.poll_event()? {
        let Some(id) = event.id().and_then(Value::as_u64) else {
            continue; // a broadcast: the bridges ask for what they need
        };
        if event.is(ProtocolEvent::End) {
            routes.remove(&id);
        } else if let Some(events) = routes.get(&id) {
            if events.send(event).is_err() {
                cancel(client, routes, id);
            }
        }
    }
    Ok(())
}
