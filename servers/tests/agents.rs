//! What agents use: `cpipe mcp` driven by the official MCP Python SDK (PyPI `mcp`, installed by
//! scripts/setup-test-deps.sh), and the commands of skills/cpipe/SKILL.md run as written.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MCP_SDK_VERSION: &str = "2.3.0";

/// One at a time: the skill's test loads a chat model, which on a small machine would slow the
/// MCP clients' servers past their timeouts.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_sdk_client(mode: &str) {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let python = python_with("mcp", MCP_SDK_VERSION);
    let dir = TestDir::new(&format!("mcp-{mode}"));
    let _echo = dir.serve("echo", &[]);
    let out = Command::new(python)
        .args([
            &script("mcp_client.py"),
            cpipe_bin(),
            &dir.path().to_string_lossy(),
            mode,
        ])
        .env_remove("CPIPE_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the MCP SDK client failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("all checks passed"));
}

/// The SDK's default: the 2026-07-28 revision, found through `server/discover`.
#[test]
fn mcp_sdk_client_drives_cpipe_mcp() {
    run_sdk_client("auto");
}

/// Older clients: the `initialize` handshake.
#[test]
fn mcp_sdk_client_drives_cpipe_mcp_through_the_initialize_handshake() {
    run_sdk_client("legacy");
}

/// Malformed JSON-RPC gets JSON-RPC errors, and the server keeps serving.
#[test]
fn mcp_answers_garbage_with_errors_and_keeps_going() {
    let dir = TestDir::new("mcp-garbage");
    let mut child = dir
        .cpipe()
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut replies = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ask = |line: &str| -> Value {
        writeln!(stdin, "{line}").unwrap();
        serde_json::from_str(&replies.next().unwrap().unwrap()).unwrap()
    };
    assert_eq!(ask("{not json")["error"]["code"], -32700);
    assert_eq!(ask("[1, 2]")["error"]["code"], -32600);
    let unknown = ask(r#"{"jsonrpc":"2.0","id":1,"method":"resources/list"}"#);
    assert_eq!(unknown["error"]["code"], -32601);
    let version = ask(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"1999-01-01"}}}"#,
    );
    assert_eq!(version["error"]["code"], -32022);
    assert!(version["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));
    let no_name = ask(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{}}"#);
    assert_eq!(no_name["error"]["code"], -32602);
    let bad_args = ask(
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"call","arguments":[1]}}"#,
    );
    assert_eq!(bad_args["result"]["isError"], true);
    let ping = ask(r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#);
    assert_eq!(ping, json!({"jsonrpc": "2.0", "id": 5, "result": {}}));
    drop(stdin);
    assert!(
        child.wait().unwrap().success(),
        "cpipe mcp exits when stdin closes"
    );
}

/// The fenced blocks of SKILL.md in `lang`.
fn skill_blocks(lang: &str) -> Vec<String> {
    let skill = Path::new(env!("CARGO_MANIFEST_DIR")).join("../skills/cpipe/SKILL.md");
    let skill = std::fs::read_to_string(skill).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in skill.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(tag)) if tag == lang => current = Some(String::new()),
            (Some(block), Some("")) => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), None) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Every shell command in the skill, run as written against live echo and chat servers.
#[test]
fn skill_commands_run_as_written() {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("skill");
    let mut echo = dir.serve("echo", &[]);
    let _chat = dir.serve(
        "chat",
        &[
            "--model",
            "smollm2",
            "--system",
            "You are a helpful assistant.",
        ],
    );
    assert!(eventually(Duration::from_secs(60), || {
        json_lines(&dir.run(&["chat", "get_state"]))[0]["state"] == "idle"
    }));
    assert_eq!(help_of(&dir, "chat"), guide("chat"));
    let bin_dir = Path::new(cpipe_bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let commands: Vec<String> = skill_blocks("sh")
        .iter()
        .flat_map(|b| b.lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(commands.len() >= 10, "SKILL.md lost its commands");
    for command in &commands {
        let out = Command::new("bash")
            .args(["-c", command])
            .env("CPIPE_DIR", dir.path())
            .env("PATH", &path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success() && (!out.stdout.is_empty() || command.ends_with(" stop")),
            "SKILL.md command failed: {command}\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    assert!(
        commands.last().unwrap().ends_with("echo stop"),
        "the skill ends by stopping the echo server"
    );
    assert!(echo.wait_exit(Duration::from_secs(10)).success());

    // The MCP configuration it shows starts a working `cpipe mcp`.
    let config: Value = serde_json::from_str(&skill_blocks("json")[0]).unwrap();
    let server = &config["mcpServers"]["cpipe"];
    let args: Vec<&str> = server["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut mcp = Command::new(server["command"].as_str().unwrap())
        .args(args)
        .env("PATH", &path)
        .env("CPIPE_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}"#;
    writeln!(mcp.stdin.take().unwrap(), "{init}").unwrap();
    let reply = mcp.wait_with_output().unwrap();
    let reply: Value = serde_json::from_slice(&reply.stdout).unwrap();
    assert_eq!(reply["result"]["serverInfo"]["name"], "cpipe");
}

/// Each server's `get_help` is its part of the skill.
#[test]
fn servers_answer_get_help_with_their_part_of_the_skill() {
    let dir = TestDir::new("skill-help");
    let _echo = dir.serve("echo", &[]);
    assert_eq!(help_of(&dir, "echo"), guide("echo"));
    let skill_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../skills/cpipe");
    let skill = std::fs::read_to_string(skill_dir.join("SKILL.md")).unwrap();
    for entry in std::fs::read_dir(&skill_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "SKILL.md" {
            assert!(
                skill.contains(&format!("]({name})")),
                "SKILL.md does not link {name}"
            );
        }
    }
}

fn help_of(dir: &TestDir, server: &str) -> Value {
    json_lines(&dir.run(&[server, "get_help"]))[0]["help"].clone()
}

/// A server's guide in skills/cpipe.
fn guide(server: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../skills/cpipe/{server}.md"));
    json!(std::fs::read_to_string(path).unwrap())
}
