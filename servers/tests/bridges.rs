//! The bridges against clients no one here wrote: the official `openai` SDK and `curl`
//! against `cpipe --serve http`, the `wyoming` package's own client against `cpipe --serve
//! wyoming`, all over real servers with the offline models (scripts/fetch-models.sh all).
//! Needs a Python with `openai==3.51.0` and `wyoming==1.10.2`: `CPIPE_PYTHON`
//! (scripts/setup-test-deps.sh installs them in `.venv`; `.ci/run` sets it).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use models::source::offline_models_dir as models_dir;
use serde_json::Value;

/// A bridge's address, read from its `get_config` (it listens on a port the OS picked).
fn config_field(dir: &TestDir, name: &str, field: &str) -> String {
    let out = dir.run(&[name, "get_config"]);
    json_lines(&out)
        .first()
        .and_then(|c| c[field].as_str().map(String::from))
        .unwrap_or_else(|| panic!("{name} has no {field} in get_config: {}", text(&out.stdout)))
}

fn http_bridge(dir: &TestDir, extra: &[&str]) -> (Server, String) {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = dir.serve("http", &args);
    let listen = config_field(dir, "http", "listen");
    (server, listen)
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl runs (scripts/install-system-deps.sh installs it)")
}

/// `curl`'s body and, with `-w '\n%{http_code}'`, the status.
fn curl_status(args: &[&str]) -> (u16, String) {
    let mut all = vec!["-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = text(&curl(&all).stdout);
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// Runs a client script of tests/python, which prints a line per check and `all ok` at the end.
fn run_checks(python: &str, name: &str, args: &[&str]) {
    let out = Command::new(python)
        .arg(script(name))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out.stdout).contains("all ok"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn python() -> String {
    let python = python_with("openai", "3.51.0");
    python_with("wyoming", "1.10.2");
    python
}

#[test]
fn the_openai_sdk_uses_every_endpoint_and_gets_its_own_errors() {
    let python = python();
    let dir = TestDir::new("http-sdk");
    let db = dir.path().join("search.db");
    let _chat = dir.serve_loaded("chat", &["--model", "smollm2"]);
    let _stt = dir.serve_loaded("stt", &["--whisper", "tiny.en", "--listen", "none"]);
    let _tts = dir.serve_loaded("tts", &["--voice", "joe", "--playback", "none"]);
    let _search = dir.serve_loaded(
        "search",
        &["--model", "minilm", "--db", db.to_str().unwrap()],
    );
    let (_http, listen) = http_bridge(&dir, &[]);
    let jfk = models_dir().join("jfk.wav");
    run_checks(
        &python,
        "openai_client.py",
        &[
            &format!("http://{listen}/v1"),
            jfk.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
    );

    // curl, as a monitoring system would.
    let (status, body) = curl_status(&[&format!("http://{listen}/health")]);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    assert_eq!(
        health["servers"].as_array().map(Vec::len),
        Some(4),
        "{body}"
    );
    let (status, metrics) = curl_status(&[&format!("http://{listen}/metrics")]);
    assert_eq!(status, 200);
    let chat = "server=\"chat\",endpoint=\"/v1/chat/completions\"";
    let requests = metrics
        .lines()
        .find(|l| l.starts_with(&format!("cpipe_http_requests_total{{{chat}}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no chat requests counted:\n{metrics}"));
    assert!(requests >= 3, "{metrics}");
    assert!(metrics.contains(&format!("cpipe_http_tokens_total{{{chat}}}")));
    assert!(metrics.contains("cpipe_http_request_duration_seconds_bucket{server=\"stt\""));
}

#[test]
fn an_api_key_is_required_when_set_and_beyond_loopback() {
    let dir = TestDir::new("http-key");
    let _echo = dir.serve("echo", &[]);
    let (_http, listen) = http_bridge(&dir, &["--api-key", "s3cret"]);
    let models = format!("http://{listen}/v1/models");
    let (status, body) = curl_status(&[&models]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (status, _) = curl_status(&["-H", "Authorization: Bearer wrong", &models]);
    assert_eq!(status, 401);
    let (status, body) = curl_status(&["-H", "Authorization: Bearer s3cret", &models]);
    assert_eq!(status, 200, "{body}");
    let (status, _) = curl_status(&[&format!("http://{listen}/metrics")]);
    assert_eq!(status, 401, "metrics need the key too");
    let (status, _) = curl_status(&[&format!("http://{listen}/health")]);
    assert_eq!(status, 200, "health never needs the key");

    let refused = dir.run(&["--serve", "http", "--name", "open", "--listen", "0.0.0.0:0"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("--api-key"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn bad_http_input_gets_openai_errors_and_the_bridge_stays_up() {
    let dir = TestDir::new("http-bad");
    let (_http, listen) = http_bridge(&dir, &["--max-upload-mb", "1", "--client-timeout", "1"]);
    let url = |path: &str| format!("http://{listen}{path}");

    // No chat server is running: a 503 that says what to start.
    let (status, body) = curl_status(&[
        "-d",
        r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#,
        &url("/v1/chat/completions"),
    ]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cpipe --serve chat"), "{body}");
    let (status, body) = curl_status(&[&url("/v2/nothing")]);
    assert_eq!(status, 404);
    assert!(body.contains("/v1/chat/completions"), "{body}");

    // A slow client that never finishes its headers is dropped; others are served meanwhile.
    let mut slow = TcpStream::connect(&listen).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (status, _) = curl_status(&[&url("/health")]);
    assert_eq!(status, 200);
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the slow client was not dropped"
    );

    // A gigabyte upload is refused once it passes the limit, long before its end.
    let mut upload = TcpStream::connect(&listen).unwrap();
    upload
        .write_all(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1073741824\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n",
        )
        .unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut sent = 0usize;
    while sent < 64 << 20 && upload.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    upload
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = upload.read_to_end(&mut answer);
    let answer = text(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("--max-upload-mb"),
        "after {sent} bytes: {answer}"
    );
    assert!(sent < 64 << 20, "the server read all {sent} bytes");

    let (status, _) = curl_status(&[&url("/health")]);
    assert_eq!(status, 200, "the bridge stays up");
}

#[test]
fn the_wyoming_client_does_what_home_assistant_does() {
    let python = python();
    let dir = TestDir::new("wyoming");
    let _stt = dir.serve_loaded("stt", &["--whisper", "tiny.en", "--listen", "none"]);
    let _tts = dir.serve_loaded("tts", &["--voice", "joe", "--playback", "none"]);
    let _wyoming = dir.serve("wyoming", &["--uri", "tcp://127.0.0.1:0"]);
    let uri = config_field(&dir, "wyoming", "uri");
    let port = uri.rsplit(':').next().unwrap();
    let jfk = models_dir().join("jfk.wav");
    run_checks(&python, "wyoming_client.py", &[port, jfk.to_str().unwrap()]);
}

/// What Home Assistant's discovery does: python-zeroconf finds the bridge by the name it was
/// announced under, and the wyoming client describes it at the announced address and port.
#[test]
fn home_assistant_discovers_the_wyoming_bridge_over_zeroconf() {
    let python = python();
    python_with("zeroconf", "0.154.0");
    let dir = TestDir::new("zeroconf");
    let name = format!("cpipe-test-{}", std::process::id());
    let _wyoming = dir.serve(
        "wyoming",
        &["--uri", "tcp://0.0.0.0:0", "--zeroconf", &name],
    );
    run_checks(&python, "zeroconf_discover.py", &[&name]);
    // Loopback only is refused: no other machine could use what is announced.
    let out = dir.run(&[
        "--serve",
        "wyoming",
        "--uri",
        "tcp://127.0.0.1:0",
        "--zeroconf",
        "--name",
        "nowhere",
    ]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("tcp://0.0.0.0"),
        "{stderr}"
    );
}

#[test]
fn an_http_client_that_leaves_mid_stream_frees_the_chat_server() {
    let dir = TestDir::new("http-leave");
    let _chat = dir.serve_loaded("chat", &["--model", "smollm2"]);
    let (_http, listen) = http_bridge(&dir, &[]);
    // Counting to a thousand takes thousands of tokens: far longer than the second curl waits.
    let body = r#"{"model":"chat","stream":true,"max_tokens":4000,"temperature":0,"messages":[{"role":"user","content":"Count from 1 to 1000, one number per line."}]}"#;
    let out = curl(&[
        "--max-time",
        "1",
        "-N",
        "-d",
        body,
        &format!("http://{listen}/v1/chat/completions"),
    ]);
    assert!(
        text(&out.stdout).contains("chat.completion.chunk"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        eventually(Duration::from_secs(5), || dir.state_of("chat") == "idle"),
        "the chat server still generates for a client that left"
    );
}
