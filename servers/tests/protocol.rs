//! End-to-end tests of the protocol against `cpipe --serve echo`: real processes, real FIFOs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use pipe_core::{Client, ConnectOptions, ErrorCode, Step};
use serde_json::{json, Value};

fn client(dir: &TestDir, name: &str) -> Client {
    let options = ConnectOptions {
        dir: dir.path().into(),
        timeout: Some(Duration::from_secs(10)),
    };
    Client::connect_with(name, &options).unwrap()
}

#[test]
fn builtins_and_echo_answer_like_named_pipes() {
    let dir = TestDir::new("builtins");
    let _server = dir.serve("echo", &[]);
    let mut c = client(&dir, "echo");
    assert!(!c.is_legacy());

    let pong = c.call("PING", Value::Null).unwrap();
    assert_eq!(pong.len(), 1);
    assert_eq!(pong[0].name(), "pong");

    let echo = c
        .call("echo", json!({"data": {"a": [1, 2]}, "x": "é\u{1F600}"}))
        .unwrap();
    let fields = echo[0].fields();
    assert_eq!(fields["event"], "echo");
    assert_eq!(fields["data"], json!({"a": [1, 2]}));
    assert_eq!(fields["x"], "é\u{1F600}");
    assert_eq!(fields["cmd"], "echo");
    assert_eq!(fields["pid"], std::process::id());

    let state = &c.call("get_state", Value::Null).unwrap()[0];
    assert_eq!(state.str("state"), Some("running"));
    assert_eq!(state.get("subscribers"), Some(&json!(1)));
    assert!(c.call("get_description", Value::Null).unwrap()[0]
        .str("description")
        .is_some());
    assert!(c.call("get_help", Value::Null).unwrap()[0]
        .str("help")
        .unwrap()
        .contains("stream"));
    assert_eq!(
        c.call("get_config", Value::Null).unwrap()[0].name(),
        "config"
    );

    let interface = &c.call("get_interface", Value::Null).unwrap()[0];
    let commands = interface.get("commands").unwrap().as_array().unwrap();
    let stream = commands.iter().find(|c| c["name"] == "stream").unwrap();
    assert_eq!(stream["args"]["properties"]["n"]["type"], "integer");
    assert_eq!(stream["emits"], json!(["token"]));
    for builtin in ["subscribe", "ping", "cancel", "stop", "get_interface"] {
        assert!(
            commands.iter().any(|c| c["name"] == builtin),
            "{builtin} missing"
        );
    }

    c.unsubscribe().unwrap();
    assert_eq!(
        subscribers(&dir, "echo"),
        1,
        "only the CLI asking is subscribed"
    );
    let event_pipe = dir.path().join(format!("tool-echo-{}", std::process::id()));
    assert!(!event_pipe.exists());
}

#[test]
fn a_wide_request_is_echoed_whole_and_in_order() {
    let dir = TestDir::new("wide");
    let _server = dir.serve("echo", &[]);
    let mut c = RawClient::connect(dir.path(), "echo");
    // Keys in an order that is not sorted (7919 is prime to 100,000: a permutation), written
    // by hand, so that only a server that keeps the order it read can pass.
    let keys: Vec<String> = (0..100_000u64)
        .map(|i| format!("k{:06}", i * 7919 % 100_000))
        .collect();
    let mut line = format!("{{\"pid\":{},\"cmd\":\"echo\"", c.pid);
    for (i, key) in keys.iter().enumerate() {
        line += &format!(",\"{key}\":{i}");
    }
    line += "}\n";
    c.write_raw(line.as_bytes());
    let echo = c.next_line(Duration::from_secs(30)).expect("no echo");
    let echo = String::from_utf8(echo).unwrap();
    assert!(echo.starts_with("{\"event\":\"echo\""), "{}", &echo[..80]);
    let echoed: Vec<&str> = echo.split("\"k").skip(1).map(|rest| &rest[..6]).collect();
    assert_eq!(echoed.len(), keys.len());
    assert!(
        echoed.iter().zip(&keys).all(|(e, k)| *e == &k[1..]),
        "the keys came back in another order"
    );
    let value: Value = serde_json::from_str(&echo).unwrap();
    assert_eq!(
        value["k054321"],
        Value::from(keys.iter().position(|k| k == "k054321").unwrap())
    );
}

#[test]
fn streams_keep_order_and_end_with_done() {
    let dir = TestDir::new("stream");
    let _server = dir.serve("echo", &[]);
    let mut c = client(&dir, "echo");
    let events = c.call("stream", json!({"n": 1000, "text": "ab"})).unwrap();
    assert_eq!(events.len(), 1001);
    for (i, e) in events[..1000].iter().enumerate() {
        assert_eq!(e.get("i"), Some(&json!(i)));
        assert_eq!(e.str("text"), Some("ab"));
        assert_eq!(e.get("done"), Some(&json!(false)));
    }
    assert_eq!(events[1000].get("done"), Some(&json!(true)));
    assert_eq!(events[1000].str("text"), Some(""));

    let out = dir.run(&["echo", "stream", "-j", "n=3", "-j", "text=hi ", "--text"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "hi hi hi \n");
}

#[test]
fn errors_carry_codes_and_the_server_stays_up() {
    let dir = TestDir::new("errors");
    let _server = dir.serve("echo", &[]);
    let mut c = client(&dir, "echo");
    let remote = |r: pipe_core::Result<Vec<pipe_core::Event>>| match r {
        Err(pipe_core::Error::Remote { code, message }) => (code, message),
        other => panic!("expected an error event, got {other:?}"),
    };
    let (code, message) = remote(c.call("frobnicate", Value::Null));
    assert_eq!(code, ErrorCode::UnknownCommand);
    assert!(message.starts_with("unknown command 'frobnicate'"));
    let (code, message) = remote(c.call("stream", json!({"n": "ten"})));
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert_eq!(message, "stream: \"n\" must be an integer, got \"ten\"");
    let (code, _) = remote(c.call("stream", json!({"text": "x"})));
    assert_eq!(code, ErrorCode::InvalidRequest);
    let (code, _) = remote(c.call("cancel", json!({"target": 999})));
    assert_eq!(code, ErrorCode::NotFound);

    let out = dir.run(&["echo", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_lines(&out)[0]["code"], "unknown_command");
    let out = dir.run(&["echo", "echo", "-j", "oops"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("KEY=VALUE"));

    assert_eq!(c.call("ping", Value::Null).unwrap()[0].name(), "pong");
}

#[test]
fn garbage_on_the_shared_pipe_is_answered_not_fatal() {
    let dir = TestDir::new("garbage");
    let _server = dir.serve("echo", &[]);
    let mut raw = RawClient::connect(dir.path(), "echo");
    let pid = raw.pid;
    let wait = Duration::from_secs(5);

    raw.write_raw(format!("{{\"pid\": {pid}, \"cmd\": \"ping\", oops\n").as_bytes());
    let e = raw.next(wait).unwrap();
    assert_eq!(
        (e["event"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_request"))
    );
    assert!(e["message"].as_str().unwrap().contains("malformed JSON"));

    // Binary garbage, NUL bytes, invalid UTF-8, non-objects, blank lines and {} have no
    // sender to tell: they are logged and skipped.
    raw.write_raw(b"\x00\x01\x02\xff\xfe garbage\n[1,2,3]\n\"str\"\n42\n\n   \n{}\n");
    raw.write_raw(b"{\"pid\": \"nope\", \"cmd\": \"ping\"}\n");
    raw.send(json!({"pid": 999_999_999u64, "cmd": "unsubscribe"}));
    raw.send(json!({"pid": 123_456, "cmd": "unsubscribe"}));
    raw.send(json!({"pid": pid, "cmd": 7}));
    let e = raw.next(wait).unwrap();
    assert_eq!(e["code"], "invalid_request");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("\"cmd\" must be a string"));

    // One request written in pieces, with pauses between them.
    let line = format!("{{\"pid\": {pid}, \"cmd\": \"echo\", \"part\": \"split\"}}\n");
    for piece in line.as_bytes().chunks(7) {
        raw.write_raw(piece);
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = raw.next(wait).unwrap();
    assert_eq!(
        (e["event"].as_str(), e["part"].as_str()),
        (Some("echo"), Some("split"))
    );

    // A 10 MB line is under the default limit (16 MiB): it must come back whole.
    let writer = send_big_echo(&raw, 10 << 20);
    let e = raw.next(Duration::from_secs(20)).unwrap();
    writer.join().unwrap();
    assert_eq!(e["event"], "echo");
    assert_eq!(e["blob"].as_str().unwrap().len(), 10 << 20);

    raw.send(json!({"pid": pid, "cmd": "ping"}));
    assert_eq!(raw.next(wait).unwrap()["event"], "pong");
}

/// Writes an echo request with a `blob` of `len` bytes from another thread (the pipe holds far
/// less, so the write only completes while the server reads).
fn send_big_echo(raw: &RawClient, len: usize) -> std::thread::JoinHandle<()> {
    let pid = raw.pid;
    let mut big = format!("{{\"pid\": {pid}, \"cmd\": \"echo\", \"blob\": \"").into_bytes();
    big.extend(std::iter::repeat_n(b'a', len));
    big.extend_from_slice(b"\"}\n");
    let mut up = raw.upstream.try_clone().unwrap();
    std::thread::spawn(move || std::io::Write::write_all(&mut up, &big).unwrap())
}

#[test]
fn oversized_requests_get_too_large() {
    let dir = TestDir::new("toolarge");
    let _server = dir.serve("echo", &["--max-request-bytes", "1000000"]);
    let mut raw = RawClient::connect(dir.path(), "echo");
    let pid = raw.pid;
    let writer = send_big_echo(&raw, 10 << 20);
    let e = raw.next(Duration::from_secs(20)).unwrap();
    writer.join().unwrap();
    assert_eq!(e["code"], "too_large");
    raw.send(json!({"pid": pid, "cmd": "ping"}));
    assert_eq!(raw.next(Duration::from_secs(5)).unwrap()["event"], "pong");
}

#[test]
fn requests_without_a_subscription_or_pid_do_not_misroute() {
    let dir = TestDir::new("nopid");
    let _server = dir.serve("echo", &[]);
    let mut raw = RawClient::connect(dir.path(), "echo");
    // named-pipes broadcasts replies to pid-less requests; cpipe sends them nowhere.
    raw.write_raw(b"{\"cmd\": \"ping\"}\n");
    raw.write_raw(b"{\"pid\": 4000000, \"cmd\": \"ping\"}\n");
    assert_eq!(raw.next(Duration::from_millis(500)), None);
    raw.send(json!({"pid": raw.pid, "cmd": "ping"}));
    assert_eq!(raw.next(Duration::from_secs(5)).unwrap()["event"], "pong");
}

#[test]
fn cancel_stops_a_stream_with_a_cancelled_error() {
    let dir = TestDir::new("cancel");
    let _server = dir.serve("echo", &[]);
    let mut c = client(&dir, "echo");
    let id = c.send("stream", json!({"n": 100_000_000u64})).unwrap();
    let mut seen = 0;
    let mut events = c.events_of(id);
    while seen < 10 {
        if let Step::Event(_) = events.next_within(Duration::from_secs(5)).unwrap() {
            seen += 1;
        }
    }
    c.cancel(id).unwrap();
    let mut last = None;
    for event in c.events_of(id) {
        last = Some(event.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.as_error().unwrap().code, ErrorCode::Cancelled);
    assert_eq!(c.call("ping", Value::Null).unwrap()[0].name(), "pong");
}

#[test]
fn a_killed_client_is_noticed_and_its_stream_stopped() {
    let dir = TestDir::new("killed");
    let _server = dir.serve("echo", &[]);
    let mut child = dir.streaming(&["echo", "stream", "-j", "n=100000000"]);
    assert_eq!(subscribers(&dir, "echo"), 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(eventually(Duration::from_secs(5), || subscribers(
        &dir, "echo"
    ) == 1));
    let killed_pipe = dir.path().join(format!(".tool-echo-{}.req", child.id()));
    assert!(
        eventually(Duration::from_secs(5), || !killed_pipe.exists()),
        "the killed client's request pipe was left behind"
    );
    let event_pipe = dir.path().join(format!("tool-echo-{}", child.id()));
    assert!(
        eventually(Duration::from_secs(5), || !event_pipe.exists()),
        "the killed client's event pipe was left behind"
    );
}

#[test]
fn a_client_that_never_reads_is_dropped_and_others_keep_going() {
    let dir = TestDir::new("slow");
    let _server = dir.serve("echo", &["--stall-timeout", "1"]);
    let mut raw = RawClient::connect(dir.path(), "echo");
    raw.send(json!({"pid": raw.pid, "cmd": "stream", "n": 100_000_000u64, "text": "never read"}));
    // While its backlog is full, everyone else is served.
    for _ in 0..20 {
        let out = dir.run(&["echo", "ping", "--timeout", "2"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert!(eventually(Duration::from_secs(10), || subscribers(
        &dir, "echo"
    ) == 1));
    // Its event pipe was closed: after draining what was written, reads hit end-of-file.
    let mut buf = vec![0u8; 1 << 16];
    let closed = eventually(Duration::from_secs(10), || {
        matches!(std::io::Read::read(&mut raw.events, &mut buf), Ok(0))
    });
    assert!(closed);
}

#[test]
fn many_clients_in_parallel_get_exactly_their_own_replies() {
    let dir = TestDir::new("load");
    let _server = dir.serve("echo", &[]);
    let children: Vec<_> = (0..64)
        .map(|i| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "load_client_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("CPIPE_DIR", dir.path())
                .env("LOAD_CLIENT_SEED", i.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "client failed: {stdout}\n{}",
            text(&out.stderr)
        );
        let n: usize = stdout
            .lines()
            .find_map(|l| l.split_once("verified ").map(|(_, n)| n))
            .and_then(|n| n.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no count in {stdout}"));
        total += n;
    }
    assert_eq!(total, 64 * 100);
}

/// One client of the load test, run as its own process by the test above.
#[test]
#[ignore = "run by many_clients_in_parallel_get_exactly_their_own_replies"]
fn load_client_child() {
    let seed: usize = std::env::var("LOAD_CLIENT_SEED").unwrap().parse().unwrap();
    let mut c = Client::connect("echo").unwrap();
    let mut verified = 0;
    for k in 0..100 {
        // Every tenth request is far over PIPE_BUF, so concurrent writes would interleave
        // on a shared pipe.
        let size = if k % 10 == 0 { 9000 + seed } else { 20 + k };
        let payload: String = (0..size)
            .map(|j| char::from(b'a' + ((seed * 7 + k * 13 + j) % 26) as u8))
            .collect();
        let events = c
            .call("echo", json!({"seed": seed, "k": k, "payload": payload}))
            .unwrap();
        assert_eq!(events.len(), 1, "exactly one reply");
        let e = events[0].fields();
        assert_eq!(e["event"], "echo");
        assert_eq!(
            (e["seed"].as_u64(), e["k"].as_u64()),
            (Some(seed as u64), Some(k as u64))
        );
        assert_eq!(e["payload"].as_str(), Some(payload.as_str()));
        assert_eq!(e["pid"], std::process::id());
        verified += 1;
    }
    println!("verified {verified}");
}

#[test]
fn one_server_per_name_and_restart_after_a_kill() {
    let dir = TestDir::new("lock");
    let mut first = dir.serve("echo", &[]);
    let second = dir.run(&["--serve", "echo"]);
    assert_eq!(second.status.code(), Some(5));
    let message = text(&second.stderr);
    assert!(message.contains("already running"), "{message}");
    assert!(
        message.contains(&format!("pid {}", first.pid())),
        "{message}"
    );

    first.kill();
    let out = dir.run(&["echo", "ping", "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is gone"));
    let list = dir.run(&["--list", "--json"]);
    let servers: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(servers[0]["status"], "orphaned");

    let _again = dir.serve("echo", &[]);
    let out = dir.run(&["echo", "ping"]);
    assert!(out.status.success());
}

#[test]
fn pipes_are_private_and_impostors_refused() {
    let dir = TestDir::new("perms");
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("tool-evil")).unwrap();
    let out = dir.run(&["--serve", "echo", "--name", "evil"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(dir.path().join("tool-plain"), "x").unwrap();
    let out = dir.run(&["--serve", "echo", "--name", "plain"]);
    assert!(
        text(&out.stderr).contains("not a named pipe"),
        "{}",
        text(&out.stderr)
    );

    let _server = dir.serve("echo", &[]);
    let meta = std::fs::symlink_metadata(dir.path().join("tool-echo")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(meta.uid(), uid);

    // A planted symlink where a client's event pipe goes is refused, not followed.
    let pid = std::process::id();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join(format!("tool-echo-{pid}")))
        .unwrap();
    let options = ConnectOptions {
        dir: dir.path().into(),
        timeout: Some(Duration::from_secs(2)),
    };
    match Client::connect_with("echo", &options) {
        Err(pipe_core::Error::UnsafePath { reason, .. }) => {
            assert!(reason.contains("symbolic link"))
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("connected through a symlink"),
    }
}

#[test]
fn list_and_clear_touch_only_orphans() {
    let dir = TestDir::new("list");
    let _server = dir.serve("echo", &[]);
    mkfifo(&dir.path().join("tool-ghost"));
    mkfifo(&dir.path().join("tool-ghost-12345"));

    let list = dir.run(&["--list", "--json"]);
    let servers: Value = serde_json::from_slice(&list.stdout).unwrap();
    let by_name = |n: &str| {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(servers.as_array().unwrap().len(), 2, "{servers}");
    let echo = by_name("echo");
    assert_eq!(
        (echo["status"].as_str(), echo["state"].as_str()),
        (Some("alive"), Some("running"))
    );
    assert_eq!(echo["pid"], _server.pid());
    assert_eq!(by_name("ghost")["status"], "orphaned");

    let table = text(&dir.run(&["--list"]).stdout);
    assert!(table.contains("echo") && table.contains("alive") && table.contains("orphaned"));

    let cleared = text(&dir.run(&["--clear"]).stdout);
    assert!(
        cleared.contains("tool-ghost") && cleared.contains("tool-ghost-12345"),
        "{cleared}"
    );
    assert!(!dir.path().join("tool-ghost").exists());
    assert!(dir.path().join("tool-echo").exists());
    assert!(dir.run(&["echo", "ping"]).status.success());

    let pids = text(&dir.run(&["--pid"]).stdout);
    assert!(pids.contains(&_server.pid().to_string()), "{pids}");
}

#[test]
fn stop_broadcasts_stopping_and_removes_the_pipes() {
    let dir = TestDir::new("stop");
    let mut server = dir.serve("echo", &[]);
    let mut raw = RawClient::connect(dir.path(), "echo");
    assert!(dir.run(&["echo", "stop"]).status.success());
    let e = raw.next(Duration::from_secs(5)).unwrap();
    assert_eq!(e, json!({"event": "state_changed", "state": "stopping"}));
    assert!(server.wait_exit(Duration::from_secs(5)).success());
    assert!(!dir.path().join("tool-echo").exists());
    assert!(!dir.path().join(".tool-echo.lock").exists());
}

/// Any process of the user can write the shared pipe and put any pid in a line. Against a
/// client that speaks only on the shared pipe (named-pipes' way) that is enough to act in its
/// name; a client with a private request pipe is safe from it: the server refuses lines on the
/// shared pipe in its name (PROTOCOL.md, the threat model).
#[test]
fn a_pid_spoofed_on_the_shared_pipe_reaches_only_clients_without_a_private_pipe() {
    let dir = TestDir::new("spoof");
    let _server = dir.serve("echo", &[]);
    let forge = |line: String| {
        let pipe = dir.path().join("tool-echo");
        // Another process writes it, as an attacker would.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' '{line}' > '{}'", pipe.display()))
            .status()
            .unwrap();
        assert!(status.success());
    };

    // A named-pipes style client: a forged ping in its name is answered to it.
    let mut legacy = RawClient::connect(dir.path(), "echo");
    forge(format!("{{\"pid\": {}, \"cmd\": \"ping\"}}", legacy.pid));
    let reply = legacy
        .next(Duration::from_secs(5))
        .expect("the forged ping is answered");
    assert_eq!(reply["event"], "pong");

    // A cpipe client with its private pipe, streaming: a forged cancel and unsubscribe in its
    // name are refused, and its stream goes on.
    let mut child = dir
        .cpipe()
        .args(["echo", "stream", "-j", "n=100000000", "--timeout", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.contains("token"), "{line}");
    let victim = child.id();
    let request: Value = serde_json::from_str(&line).unwrap();
    let before = subscribers(&dir, "echo");
    forge(format!(
        "{{\"pid\": {victim}, \"cmd\": \"cancel\", \"target\": {}}}",
        request["id"]
    ));
    forge(format!("{{\"pid\": {victim}, \"cmd\": \"unsubscribe\"}}"));
    // The shared pipe is read in order: once this ping is answered, the forged lines were seen.
    legacy.send(json!({"pid": legacy.pid, "cmd": "ping"}));
    assert_eq!(
        legacy.next(Duration::from_secs(5)).unwrap()["event"],
        "pong"
    );
    assert_eq!(
        subscribers(&dir, "echo"),
        before,
        "the forged unsubscribe was obeyed"
    );
    // Past what the pipe held when the lines were forged, the stream goes on.
    for _ in 0..5000 {
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.contains("\"token\""), "the stream was cut: {line}");
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the client was cut off"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
