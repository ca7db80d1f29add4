//! named-pipes 0.7.0, the Python library's current release, against cpipe: its own examples
//! and discovery, unmodified, against our servers, and `cpipe mcp` against a 0.7 server.
//!
//! 0.7 hard-codes `/tmp`. Each of its processes runs in a mount namespace of its own with the
//! test's pipe directory mounted on `/tmp` (needs `unshare`, and root or user namespaces, as
//! CI has), so the servers serve that directory and 0.7 sees it as `/tmp`, while the machine's
//! real `/tmp` is left alone. Needs a Python with `named-pipes==0.7.0`: `CPIPE_PYTHON_NP07`
//! (scripts/setup-test-deps.sh makes `.venv-np07`; `.ci/run` sets it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use models::source::offline_models_dir as models_dir;
use serde_json::{json, Value};

fn python07() -> String {
    python_from("CPIPE_PYTHON_NP07", "named-pipes", "0.7.0")
}

/// Where the machine's /tmp stays reachable inside the namespace: a checkout or venv under
/// /tmp (as a CI clone may be) is reached there once the test's directory covers /tmp.
const HOST_TMP: &str = "/run/cpipe-test-host-tmp";

/// `python ARGS` with `dir` mounted on /tmp, in a mount namespace of its own.
fn with_tmp(dir: &Path, python: &str, args: &[&str]) -> Command {
    let reachable = |path: &str| match path.strip_prefix("/tmp/") {
        Some(rest) => format!("{HOST_TMP}/{rest}"),
        None => path.to_string(),
    };
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            r#"mkdir -p {HOST_TMP} && mount --bind /tmp {HOST_TMP} && mount --bind "$0" /tmp && exec "$@""#
        ))
        .arg(dir)
        .arg(reachable(python))
        .args(args.iter().map(|a| reachable(a)))
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// One of 0.7's own example clients, as its wheel installs it.
fn example(python: &str, name: &str) -> String {
    let out = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .unwrap();
    let path = PathBuf::from(text(&out.stdout).trim())
        .join("examples")
        .join(name);
    assert!(path.exists(), "named-pipes 0.7.0 ships {}", path.display());
    path.to_string_lossy().into_owned()
}

/// Everything `child` prints (stdout and stderr, as it arrives) until `done`
/// holds for it or `within` passes; then the child is killed.
fn output_until(mut child: Child, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);
    let started = Instant::now();
    let mut seen = String::new();
    while started.elapsed() < within && !done(&seen) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => seen.push_str(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

/// One at a time: the chat and tts test's models would starve the live stt test's whisper, whose
/// partial text only shows when it keeps up with the clip.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn jfk_wav() -> PathBuf {
    models_dir().join("jfk.wav")
}

/// jfk.wav after two seconds of silence (time for the client to attach), with the pauses after
/// "ask not" and "do for you" cut to a tenth of a second, shorter than the VAD's 300 ms: "ask
/// not … your country" becomes one utterance of about six seconds. Partial text is asked for
/// each second of an utterance and dropped when the utterance ends first, so on a loaded
/// machine the clip's own utterances of about two seconds can each end before a partial is out.
fn jfk_with_a_long_utterance(dir: &Path) -> PathBuf {
    let mut reader = hound::WavReader::open(jfk_wav()).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1), "jfk.wav");
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    // The words' times in whisper's transcript put the pauses at 4.42–5.21 s and 7.59–7.99 s;
    // 50 ms of each is kept either side.
    let kept = [
        (0.0, 4.47),
        (5.16, 7.64),
        (7.94, samples.len() as f64 / 16_000.0),
    ];
    let out = dir.join("jfk-long-utterance.wav");
    let mut writer = hound::WavWriter::create(&out, spec).unwrap();
    for _ in 0..2 * 16_000 {
        writer.write_sample(0i16).unwrap();
    }
    for (start, end) in kept {
        let range = (start * 16_000.0) as usize..(end * 16_000.0) as usize;
        for &x in &samples[range] {
            writer.write_sample(x).unwrap();
        }
    }
    writer.finalize().unwrap();
    out
}

fn stt_server(dir: &TestDir) -> Server {
    dir.serve_loaded(
        "stt",
        &["--name", "stt", "--whisper", "tiny.en", "--listen", "none"],
    )
}

/// 0.7's stt client finds the server listening, attaches, and shows the speech as it grows,
/// then each utterance's timed words.
#[test]
fn its_stt_client_attaches_to_a_listening_server_and_shows_the_speech() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let python = python07();
    let dir = TestDir::new("np07-stt-attach");
    let _stt = dir.serve_loaded(
        "stt",
        &[
            "--name",
            "stt",
            "--whisper",
            "tiny.en",
            "--listen",
            "none",
            "--word-timestamps",
        ],
    );
    let listen = dir.run(&[
        "stt",
        "listen",
        "-j",
        &format!("file={}", jfk_with_a_long_utterance(dir.path()).display()),
    ]);
    assert!(listen.status.success(), "{}", text(&listen.stderr));
    let client = with_tmp(dir.path(), &python, &[&example(&python, "stt_client.py")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the clip has played and been transcribed: the server is ready again.
    let seen = output_until(client, Duration::from_secs(90), |s| {
        s.contains("[state_changed] ready")
    });
    assert!(seen.contains("attaching to the existing session"), "{seen}");
    assert!(
        seen.contains("[speech_start]") && seen.contains("[speech_end]"),
        "{seen}"
    );
    // The speech as it grew, printed in place, then the utterance's words with their times:
    // "… [9.3–9.5] your [9.5–9.8] country."
    assert!(seen.contains("\x1b[2K"), "{seen}");
    for word in ["] your", "] country"] {
        assert!(seen.contains(word), "no timed {word}: {seen}");
    }
    assert!(!seen.contains("Traceback"), "{seen}");
}

/// 0.7's stt client, finding the server not listening, lists the devices, sets the one chosen
/// (blank: the default) and sends `start`; without a microphone it shows the server's error.
#[test]
fn its_stt_client_lists_devices_and_starts_with_a_clear_answer() {
    let python = python07();
    let dir = TestDir::new("np07-stt-start");
    let _stt = stt_server(&dir);
    let mut client = with_tmp(dir.path(), &python, &[&example(&python, "stt_client.py")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(client.stdin.take().unwrap(),).unwrap();
    // The client prints the `device` answer from its event thread, so that line can come
    // after the answer to `start`: wait for both.
    let seen = output_until(client, Duration::from_secs(30), |s| {
        (s.contains("[error]") || s.contains("[state_changed] listening")) && s.contains("[device]")
    });
    assert!(seen.contains("Available input devices:"), "{seen}");
    assert!(seen.contains("[device] using index None"), "{seen}");
    // With a microphone it listens; without one (or with only ALSA's null device, as on CI
    // machines) the server says why and what to do instead.
    assert!(
        seen.contains("[state_changed] listening")
            || (seen.contains("[error]") && seen.contains("list_devices")),
        "{seen}"
    );
    assert!(!seen.contains("Traceback"), "{seen}");
}

/// 0.7's chat and tts examples against our chat and tts servers.
#[test]
fn its_chat_and_tts_examples_run_against_our_servers() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let python = python07();
    let dir = TestDir::new("np07-chat-tts");
    let _chat = dir.serve_loaded("chat", &["--name", "chat", "--model", "smollm2"]);
    let _tts = dir.serve_loaded(
        "tts",
        &["--name", "tts", "--voice", "joe", "--playback", "none"],
    );
    let run = |name: &str, finished: fn(&str) -> bool| {
        let child = with_tmp(dir.path(), &python, &[&example(&python, name)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        output_until(child, Duration::from_secs(240), finished)
    };
    let blocking_reply = |s: &str| {
        s.split("Blocking query")
            .nth(1)
            .is_some_and(|b| b.contains("Response: "))
    };
    let chat = run("chat_client.py", blocking_reply);
    assert!(blocking_reply(&chat), "{chat}");
    assert!(!chat.contains("Traceback"), "{chat}");
    let tts = run("tts_client.py", |s| s.contains("[tts] speaking ended"));
    assert!(tts.contains("[tts] speaking started"), "{tts}");
    assert!(tts.contains("[tts] speaking ended"), "{tts}");
}

/// 0.7's discovery and its `cpipe --list` see our servers, not our clients' request pipes.
#[test]
fn its_discovery_lists_only_servers_while_our_clients_are_connected() {
    let python = python07();
    let dir = TestDir::new("np07-discovery");
    let _echo = dir.serve("echo", &[]);
    // A cpipe client, connected with its private request pipe.
    let _client = dir.client_of("echo", Duration::from_secs(10));
    let out = with_tmp(
        dir.path(),
        &python,
        &[
            "-c",
            "from named_pipes.system import get_tools_info\n\
             for t in get_tools_info(): print(t.name, t.running, t.description)",
        ],
    )
    .output()
    .unwrap();
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{listed}{}", text(&out.stderr));
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["echo True Echoes requests and streams test tokens (cpipe's protocol test server)."],
        "{listed}"
    );
    let cli = with_tmp(
        dir.path(),
        &python,
        &["-m", "named_pipes.app.cli", "--list"],
    )
    .output()
    .unwrap();
    let table = text(&cli.stdout);
    assert!(table.contains("/tmp/tool-echo"), "{table}");
    assert!(!table.contains(".req"), "{table}");
    // Its CLI drives our server, new built-ins included.
    let interfaces = with_tmp(
        dir.path(),
        &python,
        &["-m", "named_pipes.app.cli", "echo", "list_interfaces"],
    )
    .output()
    .unwrap();
    assert!(
        text(&interfaces.stdout).contains("echo"),
        "{}{}",
        text(&interfaces.stdout),
        text(&interfaces.stderr)
    );
}

/// `cpipe mcp` reads a 0.7 server's named interfaces: its commands become tools with schemas.
#[test]
fn cpipe_mcp_makes_tools_of_a_0_7_servers_named_interfaces() {
    let python = python07();
    let dir = TestDir::new("np07-mcp");
    let mut server = with_tmp(
        dir.path(),
        &python,
        &[&script("np07_tts_server.py"), "speaker"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    let mut mcp = dir
        .cpipe()
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = mcp.stdin.take().unwrap();
    for line in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    ] {
        writeln!(stdin, "{line}").unwrap();
    }
    let mut replies = BufReader::new(mcp.stdout.take().unwrap()).lines();
    let listed: Value = loop {
        let reply: Value = serde_json::from_str(&replies.next().unwrap().unwrap()).unwrap();
        if reply["id"] == 2 {
            break reply;
        }
    };
    drop(stdin);
    let _ = mcp.wait();
    let _ = server.kill();
    let _ = server.wait();
    let tools = listed["result"]["tools"].as_array().unwrap();
    let tool = |name: &str| tools.iter().find(|t| t["name"] == name).cloned();
    let text_tool = tool("speaker.text").unwrap_or_else(|| panic!("no speaker.text in {tools:?}"));
    assert_eq!(
        text_tool["inputSchema"]["properties"]["data"]["type"],
        "string"
    );
    assert_eq!(text_tool["inputSchema"]["required"], json!(["data"]));
    assert!(tool("speaker.flush").is_some() && tool("speaker.is_speaking").is_some());
    assert!(
        tool("speaker.ping").is_none(),
        "base commands are not tools"
    );
}
