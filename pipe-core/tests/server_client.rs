//! pipe-core's two sides together, in one process: a `ToolServer` with real handlers on real
//! FIFOs, driven by the crate's own `Client`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipe_core::{
    vocabulary, Client, CommandSpec, ConnectOptions, ErrorCode, Event, ServerHandle, Step,
    ToolError, ToolServer,
};
use serde_json::{json, Value};

vocabulary! {
    /// What the test server emits.
    enum TestEvent: EventName {
        /// One streamed piece.
        Tick = "tick",
        /// The answer to `add`.
        Sum = "sum",
    }
}

vocabulary! {
    /// The states the state test moves through.
    enum TestState: StateName {
        /// Busy with something of its own.
        Listening = "listening",
        /// At rest.
        Ready = "ready",
        /// Stopped on purpose.
        Paused = "paused",
    }
}

/// A server on its own thread in a private directory; stopped and removed on drop.
struct Running {
    dir: PathBuf,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<pipe_core::Result<()>>>,
    /// Set when the `wait` handler saw its request cancelled.
    saw_cancel: Arc<AtomicBool>,
}

impl Running {
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pipe-core-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = ToolServer::builder(name)
            .dir(&dir)
            .description("A test server.")
            .bind()
            .unwrap();
        server.handle(
            CommandSpec::new("ticks", "Streams n ticks.")
                .args(json!({"type": "object", "required": ["n"],
                    "properties": {"n": {"type": "integer", "minimum": 0}}}))
                .emits(&[TestEvent::Tick]),
            |req, out| {
                for i in 0..req.opt_u64("n")?.unwrap_or(0) {
                    out.emit(Event::new(TestEvent::Tick).with("i", i))?;
                }
                Ok(())
            },
        );
        server.handle_inline(
            CommandSpec::new("add", "Adds a and b.").emits(&[TestEvent::Sum]),
            |req, out| {
                let (a, b) = (req.opt_f64("a")?, req.opt_f64("b")?);
                let sum = a
                    .zip(b)
                    .map(|(a, b)| a + b)
                    .ok_or_else(|| ToolError::invalid("add needs numbers a and b"))?;
                out.emit(Event::new(TestEvent::Sum).with("sum", sum))?;
                Ok(())
            },
        );
        server.handle(CommandSpec::new("crash", "Panics."), |_, _| {
            panic!("on purpose")
        });
        let saw_cancel = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&saw_cancel);
        server.handle(
            CommandSpec::new("wait", "Waits until cancelled."),
            move |_, out| {
                let started = Instant::now();
                while out.check().is_ok() && started.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                seen.store(out.check().is_err(), Ordering::SeqCst);
                Ok(out.check()?)
            },
        );
        let handle = server.handle_ref();
        let thread = Some(std::thread::spawn(move || server.run()));
        Self {
            dir,
            handle,
            thread,
            saw_cancel,
        }
    }

    fn client(&self, name: &str) -> Client {
        let options = ConnectOptions {
            dir: self.dir.clone(),
            timeout: Some(Duration::from_secs(10)),
        };
        Client::connect_with(name, &options).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap().unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn requests_stream_in_order_and_end() {
    let server = Running::start("stream");
    let mut client = server.client("stream");
    let events = client.call("ticks", json!({"n": 500})).unwrap();
    let ticks: Vec<u64> = events
        .iter()
        .map(|e| {
            assert!(e.is(TestEvent::Tick), "{e}");
            e.get("i").and_then(Value::as_u64).unwrap()
        })
        .collect();
    assert_eq!(ticks, (0..500).collect::<Vec<_>>());
    let sum = client.call("add", json!({"a": 2, "b": 3.5})).unwrap();
    assert_eq!(sum[0].get("sum"), Some(&json!(5.5)));
}

#[test]
fn bad_arguments_and_a_panicking_handler_get_errors_and_the_server_goes_on() {
    let server = Running::start("errors");
    let mut client = server.client("errors");
    let error = client.call("ticks", json!({"n": "three"})).unwrap_err();
    assert!(
        matches!(error, pipe_core::Error::Remote { ref code, .. } if *code == ErrorCode::InvalidRequest),
        "{error}"
    );
    let error = client.call("add", json!({"a": 1})).unwrap_err();
    assert!(error.to_string().contains("add needs numbers"), "{error}");
    let error = client.call("crash", Value::Null).unwrap_err();
    assert!(
        matches!(error, pipe_core::Error::Remote { ref code, .. } if *code == ErrorCode::Internal),
        "{error}"
    );
    let error = client.call("nosuch", Value::Null).unwrap_err();
    assert!(error.to_string().contains("nosuch"), "{error}");
    assert_eq!(client.call("ticks", json!({"n": 2})).unwrap().len(), 2);
}

#[test]
fn a_cancel_reaches_the_handler_and_ends_the_request() {
    let server = Running::start("cancel");
    let mut client = server.client("cancel");
    let id = client.send("wait", Value::Null).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    client.cancel(id).unwrap();
    let mut events = client.events_of(id);
    let mut seen = Vec::new();
    loop {
        match events.next_within(Duration::from_secs(10)).unwrap() {
            Step::Event(e) => seen.push(e),
            Step::End => break,
            Step::Pending => panic!("the cancelled request never ended"),
        }
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].as_error().unwrap().code, ErrorCode::Cancelled);
    assert!(server.saw_cancel.load(Ordering::SeqCst));
}

#[test]
fn get_interface_describes_the_registered_commands() {
    let server = Running::start("iface");
    let mut client = server.client("iface");
    let interface = client.call("get_interface", Value::Null).unwrap();
    let commands = interface[0]
        .get("commands")
        .and_then(Value::as_array)
        .unwrap();
    let ticks = commands.iter().find(|c| c["name"] == "ticks").unwrap();
    assert_eq!(ticks["emits"], json!(["tick"]));
    assert_eq!(ticks["args"]["required"], json!(["n"]));
    assert!(commands
        .iter()
        .any(|c| c["name"] == "ping" && c["builtin"] == true));
}

#[test]
fn a_line_naming_another_sender_in_a_request_pipe_is_refused() {
    let server = Running::start("foreign");
    let mut client = server.client("foreign");
    let pipe = server
        .dir
        .join(format!(".tool-foreign-{}.req", std::process::id()));
    assert!(pipe.exists(), "no request pipe at {}", pipe.display());
    // What a discovery that took this pipe for a server's would write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pipe)
        .unwrap()
        .write_all(b"{\"pid\": 999999, \"cmd\": \"stop\"}\n")
        .unwrap();
    let pong = client.call("ping", Value::Null).unwrap();
    assert!(pong[0].is(pipe_core::ProtocolEvent::Pong), "{:?}", pong);
    assert!(!server.handle.is_stopping(), "the foreign stop was obeyed");
}

#[test]
fn named_interfaces_answer_in_named_pipes_0_7_shape() {
    let server = Running::start("named");
    let mut client = server.client("named");
    let listed = client.call("list_interfaces", Value::Null).unwrap();
    assert_eq!(listed[0].get("interfaces"), Some(&json!(["base", "named"])));

    let own = client
        .call("get_interface", json!({"name": "named"}))
        .unwrap();
    let interface = own[0].get("interface").unwrap();
    assert_eq!(interface["name"], "named");
    let ticks = interface["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ticks")
        .unwrap();
    assert_eq!(
        ticks["args"],
        json!([{"name": "n", "description": "", "type": "int", "required": true, "default": null}])
    );
    assert!(interface["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "tick" && e["description"] == "One streamed piece."));

    let base = client
        .call("get_interface", json!({"name": "base"}))
        .unwrap();
    let names: Vec<&str> = base[0].get("interface").unwrap()["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ping") && names.contains(&"list_interfaces"));
    assert!(!names.contains(&"subscribe"), "{names:?}");

    // An unknown name is an error that says what there is; a bare get_interface is cpipe's.
    let error = client
        .call("get_interface", json!({"name": "tts"}))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown interface 'tts'") && error.contains("base, named"),
        "{error}"
    );
    let bare = client.call("get_interface", Value::Null).unwrap();
    assert!(bare[0].get("commands").is_some());
}

#[test]
fn a_request_over_the_servers_limit_is_refused_before_it_is_sent() {
    let dir = std::env::temp_dir().join(format!("pipe-core-it-limit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let limits = pipe_core::Limits {
        max_request_bytes: 1000,
        ..pipe_core::Limits::default()
    };
    let mut server = ToolServer::builder("limit")
        .dir(&dir)
        .limits(limits)
        .bind()
        .unwrap();
    server.handle(CommandSpec::new("take", "Takes anything."), |_, _| Ok(()));
    let handle = server.handle_ref();
    let thread = std::thread::spawn(move || server.run());
    let options = ConnectOptions {
        dir: dir.clone(),
        timeout: Some(Duration::from_secs(10)),
    };
    let mut client = Client::connect_with("limit", &options).unwrap();
    let error = client
        .call("take", json!({"data": "x".repeat(2000)}))
        .unwrap_err();
    assert!(
        matches!(error, pipe_core::Error::RequestTooLarge { limit: 1000, .. }),
        "{error}"
    );
    // Refused by the client, not a reply timeout: the server never saw it.
    assert!(client.call("take", json!({"data": "small"})).is_ok());
    drop(client);
    handle.stop();
    thread.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_state_update_sees_the_current_state_and_may_leave_it() {
    let server = Running::start("states");
    let mut client = server.client("states");
    let state = |client: &mut Client| {
        let events = client.call("get_state", Value::Null).unwrap();
        events[0]
            .get("state")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    server.handle.set_state(TestState::Listening);
    server.handle.update_state(|current| {
        assert!(current == TestState::Listening.into());
        None
    });
    assert_eq!(state(&mut client), "listening");
    server.handle.update_state(|current| {
        (current == TestState::Listening.into()).then_some(TestState::Ready.into())
    });
    assert_eq!(state(&mut client), "ready");
    server.handle.update_state(|current| {
        (current == TestState::Listening.into()).then_some(TestState::Paused.into())
    });
    assert_eq!(state(&mut client), "ready");
}
