//! Compatibility both ways with the Python library named-pipes 0.4.0, which hard-codes
//! `/tmp`: its ToolClient against our server, and our client against its ToolServer.
//!
//! Needs a Python with `named-pipes==0.4.0`: `CPIPE_PYTHON`, else `python3`. `.ci/run`
//! installs one (scripts/setup-test-deps.sh).

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pipe_core::{Client, ConnectOptions};
use serde_json::{json, Value};

fn python() -> String {
    python_with("named-pipes", "0.4.0")
}

/// Runs `cpipe ARGS --dir /tmp`.
fn in_tmp(args: &[&str]) -> std::process::Output {
    Command::new(cpipe_bin())
        .args(args)
        .args(["--dir", "/tmp"])
        .output()
        .unwrap()
}

/// Serialises the tests: a named-pipes server scans every FIFO under /tmp when it starts and
/// dies if one vanishes during the scan, as the other test's pipes do.
static IN_TMP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A server name unique to this run, since named-pipes always uses /tmp.
fn unique(tag: &str) -> String {
    format!("cpipe-compat-{tag}-{}", std::process::id())
}

#[test]
fn named_pipes_tool_clients_work_against_our_server() {
    let _serial = IN_TMP.lock().unwrap_or_else(|p| p.into_inner());
    let python = python();
    let name = unique("ours");
    let mut server = Command::new(cpipe_bin())
        .args(["--serve", "echo", "--name", &name, "--dir", "/tmp"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || in_tmp(&[
        &name,
        "ping",
        "--timeout",
        "1"
    ])
    .status
    .success()));

    // Eight Python clients at once.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            Command::new(&python)
                .args([script("tool_client.py"), name.clone()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in clients {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python client failed: {}",
            text(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["pong"], json!({"event": "pong"}));
        assert_eq!(r["echo"]["event"], "echo");
        assert_eq!(r["echo"]["data"], json!({"n": [1, 2]}));
        assert_eq!(r["echo"]["text"], "héllo");
        assert_eq!(r["state"]["state"], "running");
        assert!(r["help"]["help"].as_str().unwrap().contains("stream"));
        assert_eq!(r["error"]["event"], "error");
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown command 'no_such_command'"));
        let tokens = r["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 6);
        assert_eq!(
            tokens[0],
            json!({"event": "token", "text": "tok", "done": false, "i": 0})
        );
        assert_eq!(
            tokens[5],
            json!({"event": "token", "text": "", "done": true})
        );
    }

    let stop = in_tmp(&[&name, "stop"]);
    assert!(stop.status.success());
    assert!(server.wait().unwrap().success());
    assert!(!Path::new(&format!("/tmp/tool-{name}")).exists());
}

#[test]
fn our_client_works_against_a_named_pipes_server() {
    let _serial = IN_TMP.lock().unwrap_or_else(|p| p.into_inner());
    let python = python();
    let name = unique("theirs");
    let mut server = Command::new(&python)
        .args([script("tool_server.py"), name.clone()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    if ready.trim() != "ready" {
        let mut stderr = String::new();
        std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        panic!("the named-pipes server did not start: {stderr}");
    }

    let run = in_tmp;
    let out = run(&[&name, "ping"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_lines(&out), [json!({"event": "pong"})]);
    let out = run(&[&name, "echo", "-j", "a=1"]);
    assert_eq!(json_lines(&out)[0]["a"], 1);
    let out = run(&[&name, "stream", "-j", "n=3", "-j", "text=ab", "--text"]);
    assert_eq!(text(&out.stdout), "ababab\n");
    let out = run(&[&name, "nope"]);
    assert_eq!(out.status.code(), Some(1));

    {
        let options = ConnectOptions {
            dir: "/tmp".into(),
            timeout: Some(Duration::from_secs(10)),
        };
        let mut client = Client::connect_with(&name, &options).unwrap();
        assert!(client.is_legacy());
        let events = client.call("stream", json!({"n": 4})).unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(
            client.call("get_state", Value::Null).unwrap()[0].str("state"),
            Some("running")
        );
        client.unsubscribe().unwrap();
    }

    let list = run(&["--list", "--json"]);
    let servers: Value = serde_json::from_slice(&list.stdout).unwrap();
    let entry = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap();
    assert_eq!(entry["status"], "alive");
    assert_eq!(entry["pid"], server.id());

    let out = run(&[&name, "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(server.wait().unwrap().success());
}

/// named-pipes' tts client flow (text in pieces, flush, wait for the speech to end) against
/// our tts server on the real joe voice, headless.
#[test]
fn named_pipes_tts_client_works_against_our_tts_server() {
    let _serial = IN_TMP.lock().unwrap_or_else(|p| p.into_inner());
    let python = python();
    let name = unique("tts");
    let mut server = Command::new(cpipe_bin())
        .args(["--serve", "tts", "--voice", "joe", "--playback", "none"])
        .args(["--name", &name, "--dir", "/tmp"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || {
        let out = in_tmp(&[&name, "get_state", "--timeout", "1"]);
        out.status.success() && text(&out.stdout).contains("\"idle\"")
    }));
    let out = Command::new(&python)
        .args([script("tts_client.py"), name.clone()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        text(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen,
        json!(["speech_start", "speech_end", {"is_speaking": false}]),
        "{seen}"
    );
    assert!(in_tmp(&[&name, "stop"]).status.success());
    assert!(server.wait().unwrap().success());
}
