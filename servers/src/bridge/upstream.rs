//! One pipe connection per live server, shared by every remote client of a bridge.
//!
//! The protocol allows one connection per process and server, so requests from many HTTP or
//! Wyoming clients travel over one [`pipe_core::Client`] with their own ids. Its thread sends
//! requests as they come and routes each event back to its request by id; it sleeps in
//! `poll(2)` on the event pipe and on a wake-up socket, so neither direction waits on a timer.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use pipe_core::{Client, ConnectOptions, Event, ProtocolEvent};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Mutex};

use super::BridgeError;

/// How long the connection thread sleeps at most before it looks for closed requests.
const IDLE_POLL: Duration = Duration::from_millis(500);

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
        // The old connection's thread has dropped its client (it marks itself dead only
        // after), so this process may connect again.
        servers.remove(name);
        let dir = self.dir.clone();
        let target = name.to_string();
        let upstream = tokio::task::spawn_blocking(move || Upstream::connect(&dir, &target))
            .await
            .map_err(|e| BridgeError::Internal(format!("connecting thread failed: {e}")))??;
        servers.insert(name.to_string(), upstream.clone());
        Ok(upstream)
    }
}

/// A connection to one server, owned by its thread.
pub struct Upstream {
    name: String,
    ops: mpsc::Sender<Op>,
    wake: UnixStream,
    alive: Arc<AtomicBool>,
    /// What the server does and runs, asked once per connection.
    profile: OnceLock<Value>,
}

/// Work for the connection thread.
enum Op {
    Send {
        cmd: String,
        args: Value,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
        sent: oneshot::Sender<Result<u64, BridgeError>>,
    },
    Cancel(u64),
}

impl Upstream {
    fn connect(dir: &Path, name: &str) -> Result<Arc<Self>, BridgeError> {
        let options = ConnectOptions {
            dir: dir.to_path_buf(),
            timeout: Some(pipe_core::DEFAULT_TIMEOUT),
        };
        let client = Client::connect_with(name, &options).map_err(|e| match e {
            pipe_core::Error::NotRunning(_) => BridgeError::NotRunning {
                name: name.into(),
                dir: dir.to_path_buf(),
            },
            other => BridgeError::Lost {
                name: name.into(),
                reason: other.to_string(),
            },
        })?;
        let (wake, wake_reader) = UnixStream::pair()
            .map_err(|e| BridgeError::Internal(format!("cannot make a wake-up socket: {e}")))?;
        for socket in [&wake, &wake_reader] {
            socket
                .set_nonblocking(true)
                .map_err(|e| BridgeError::Internal(format!("wake-up socket: {e}")))?;
        }
        let (ops, inbox) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let thread_name = name.to_string();
        std::thread::Builder::new()
            .name(format!("upstream-{name}"))
            .spawn(move || {
                let reason = Connection {
                    client,
                    inbox,
                    wake: wake_reader,
                    routes: HashMap::new(),
                }
                .run();
                tracing::info!("connection to '{thread_name}' closed: {reason}");
                thread_alive.store(false, Ordering::Release);
            })
            .map_err(|e| BridgeError::Internal(format!("cannot start a thread: {e}")))?;
        Ok(Arc::new(Self {
            name: name.into(),
            ops,
            wake,
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
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
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
        self.ops.send(op).map_err(|_| self.lost())?;
        // A full socket already holds a wake-up; nothing else can fail here that matters.
        let _ = (&self.wake).write(&[1]);
        Ok(())
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
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
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

/// The connection thread's state.
struct Connection {
    client: Client,
    inbox: mpsc::Receiver<Op>,
    wake: UnixStream,
    routes: HashMap<u64, tokio::sync::mpsc::UnboundedSender<Event>>,
}

impl Connection {
    /// Serves until the server goes away or the bridge drops the connection; returns why.
    fn run(mut self) -> String {
        let reason = loop {
            if let Err(reason) = self.take_ops() {
                break reason;
            }
            if let Err(e) = self.route_events() {
                break e.to_string();
            }
            // A request whose remote client left without waiting for the end: cancel it.
            let closed: Vec<u64> = self
                .routes
                .iter()
                .filter(|(_, events)| events.is_closed())
                .map(|(&id, _)| id)
                .collect();
            for id in closed {
                self.routes.remove(&id);
                let _ = self.client.cancel(id);
            }
            if let Err(e) = self.sleep() {
                break e;
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

    /// Sends the requests and cancels waiting; `Err` when the bridge dropped the connection.
    fn take_ops(&mut self) -> Result<(), String> {
        loop {
            match self.inbox.try_recv() {
                Ok(Op::Send {
                    cmd,
                    args,
                    events,
                    sent,
                }) => match self.client.send(&cmd, args) {
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
                            name: self.client.server_path().display().to_string(),
                            reason: reason.clone(),
                        }));
                        return Err(reason);
                    }
                },
                Ok(Op::Cancel(id)) => {
                    if self.routes.remove(&id).is_some() {
                        let _ = self.client.cancel(id);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => return Err("the bridge closed it".into()),
            }
        }
    }

    /// Hands every event that has arrived to its request.
    fn route_events(&mut self) -> pipe_core::Result<()> {
        while let Some(event) = self.client.poll_event()? {
            let Some(id) = event.id().and_then(Value::as_u64) else {
                continue; // a broadcast: the bridges ask for what they need
            };
            if event.is(ProtocolEvent::End) {
                self.routes.remove(&id);
            } else if let Some(events) = self.routes.get(&id) {
                let _ = events.send(event);
            }
        }
        Ok(())
    }

    /// Waits for events, a wake-up, or the idle timeout.
    fn sleep(&mut self) -> Result<(), String> {
        let mut fds = [
            libc::pollfd {
                fd: self.client.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two initialised pollfd structs that outlives the
        // call, and its length is passed with it.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, IDLE_POLL.as_millis() as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("waiting for events failed: {e}"));
            }
        }
        if fds[1].revents != 0 {
            let mut drain = [0u8; 256];
            while matches!((&self.wake).read(&mut drain), Ok(n) if n > 0) {}
        }
        Ok(())
    }
}
