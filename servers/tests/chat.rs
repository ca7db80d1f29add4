//! End-to-end tests of `cpipe --serve chat` on the real SmolLM2-135M-Instruct (installed by
//! scripts/fetch-models.sh).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use pipe_core::{Client, ErrorCode, Event, Step};
use serde_json::{json, Value};

fn start(dir: &TestDir) -> Server {
    dir.serve_loaded(
        "chat",
        &[
            "--model",
            "smollm2",
            "--system",
            "You are a helpful assistant.",
        ],
    )
}

fn state(dir: &TestDir) -> String {
    dir.state_of("chat")
}

fn client(dir: &TestDir) -> Client {
    dir.client_of("chat", Duration::from_secs(60))
}

fn question(q: &str) -> Value {
    json!({"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": q}
    ], "max_tokens": 48})
}

/// The streamed text of a `chat` reply, and its final token event.
fn stream(c: &mut Client, args: Value) -> (String, Event) {
    let mut text = String::new();
    let mut last = None;
    for event in c.request("chat", args).unwrap() {
        let event = event.unwrap();
        assert!(event.as_error().is_none(), "{event}");
        if event.name() == "token" {
            text.push_str(event.str("text").unwrap());
            if event.get("done") == Some(&json!(true)) {
                last = Some(event);
            }
        }
    }
    (text, last.expect("no done token"))
}

#[test]
fn answers_streams_and_blocks_consistently() {
    let dir = TestDir::new("chat");
    let _server = start(&dir);
    let mut c = client(&dir);
    let (streamed, done) = stream(
        &mut c,
        question("What is the capital of France? Answer in one word."),
    );
    assert!(streamed.contains("Paris"), "{streamed:?}");
    let usage = done.get("usage").unwrap();
    assert_eq!(usage["finish_reason"], "stop");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(usage["time_to_first_token_ms"].as_f64().unwrap() > 0.0);

    let reply = c
        .call(
            "chat_blocking",
            question("What is the capital of France? Answer in one word."),
        )
        .unwrap();
    assert_eq!(reply[0].name(), "reply");
    assert_eq!(reply[0].str("text").unwrap(), streamed);

    // The CLI, with the question as plain data: the server's --system prompt applies.
    let out = dir.run(&[
        "chat",
        "chat",
        "--text",
        "--data",
        "What is the capital of France? Answer in one word.",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Paris"), "{}", text(&out.stdout));

    // max_tokens and stop sequences.
    let mut args = question("Count from 1 to 30, separated by commas.");
    args["max_tokens"] = json!(6);
    let (_, done) = stream(&mut c, args.clone());
    assert_eq!(done.get("usage").unwrap()["finish_reason"], "length");
    assert_eq!(done.get("usage").unwrap()["completion_tokens"], 6);
    args["max_tokens"] = json!(100);
    args["stop"] = json!(["5"]);
    let (text, done) = stream(&mut c, args);
    assert_eq!(done.get("usage").unwrap()["finish_reason"], "stop");
    assert!(!text.contains('5'), "{text:?}");

    // Requests with ids also get a done event with usage.
    let events: Vec<Event> = c
        .request("chat", question("Hi"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(events.last().unwrap().name(), "done");
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_stays_up() {
    let dir = TestDir::new("chatbad");
    let _server = start(&dir);
    let mut c = client(&dir);
    let cases = [
        (json!({}), "missing messages"),
        (json!({"messages": "x", "data": 1}), "must be an array"),
        (json!({"messages": []}), "messages is empty"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "must be one of",
        ),
        (
            json!({"messages": [{"role": "user", "content": ""}]}),
            "empty content",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "must be a string",
        ),
        (
            json!({"messages": [{"role": "user"}]}),
            "missing required field \"content\"",
        ),
        (json!({"data": "hi", "temperature": 1e9}), "at most 100"),
        (json!({"data": "hi", "top_p": 0}), "top_p"),
        (json!({"data": "hi", "max_tokens": 0}), "at least 1"),
        (json!({"data": "word ".repeat(9000)}), "context window"),
    ];
    for (args, expected) in cases {
        let shown: String = args.to_string().chars().take(80).collect();
        match c.call("chat", args) {
            Err(pipe_core::Error::Remote { code, message }) => {
                assert_eq!(code, ErrorCode::InvalidRequest, "{shown}: {message}");
                assert!(message.contains(expected), "{shown}: {message}");
            }
            other => panic!("{shown}: expected an error, got {other:?}"),
        }
    }
    assert!(c
        .call("chat_blocking", json!({"data": "Say hi", "max_tokens": 4}))
        .is_ok());
}

#[test]
fn cancel_and_client_death_stop_generation() {
    let dir = TestDir::new("chatcancel");
    let _server = start(&dir);
    let mut c = client(&dir);
    let mut args = question("Write a very long story about a dragon.");
    args["max_tokens"] = json!(4000);
    args["temperature"] = json!(0.8);
    args["ignore_eos"] = json!(true);
    let id = c.send("chat", args).unwrap();
    let mut tokens = 0;
    let mut events = c.events_of(id);
    while tokens < 3 {
        if let Step::Event(e) = events.next_within(Duration::from_secs(30)).unwrap() {
            assert_eq!(e.name(), "token");
            tokens += 1;
        }
    }
    c.cancel(id).unwrap();
    let rest: Vec<Event> = c.events_of(id).map(|e| e.unwrap()).collect();
    assert_eq!(
        rest.last().unwrap().as_error().unwrap().code,
        ErrorCode::Cancelled,
        "{rest:?}"
    );
    assert!(eventually(Duration::from_secs(5), || state(&dir) == "idle"));

    // A client killed mid-reply cancels its own generation.
    let mut child = dir.streaming(&[
        "chat",
        "chat",
        "--data",
        "Write a very long story about a castle.",
        "-j",
        "max_tokens=4000",
        "-j",
        "temperature=0.8",
        // A sampled reply may end early; this one must outlast the test.
        "-j",
        "ignore_eos=true",
    ]);
    assert_eq!(state(&dir), "inferring");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || state(&dir) == "idle"),
        "generation went on"
    );
}

#[test]
fn a_queued_request_that_is_cancelled_gets_cancelled_at_once() {
    let dir = TestDir::new("chatqueued");
    let _server = dir.serve_loaded("chat", &["--model", "smollm2", "--parallel", "1"]);
    // Another client keeps the model busy, so this client's request waits in line.
    let mut busy = dir.streaming(&[
        "chat",
        "chat",
        "--data",
        "Write a very long story about a lighthouse.",
        "-j",
        "max_tokens=4000",
        "-j",
        "temperature=0.8",
        // A sampled reply may end early; this one must outlast the test.
        "-j",
        "ignore_eos=true",
    ]);
    assert!(eventually(Duration::from_secs(10), || state(&dir) == "inferring"));
    let mut c = client(&dir);
    let id = c.send("chat", question("Say hi")).unwrap();
    // It is told its place in line (on a loaded machine that can take a while: the cancel
    // waits for it, or it would cancel a request not yet in line).
    let queued = match c
        .events_of(id)
        .next_within(Duration::from_secs(30))
        .unwrap()
    {
        Step::Event(e) => e,
        other => panic!("no queued event: {other:?}"),
    };
    assert_eq!(queued.name(), "queued", "{queued:?}");
    assert_eq!(queued.get("position"), Some(&json!(1)), "{queued:?}");
    let asked = std::time::Instant::now();
    c.cancel(id).unwrap();
    // It streamed nothing: the cancel is its answer.
    let events: Vec<Event> = c.events_of(id).map(|e| e.unwrap()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].as_error().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{events:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(state(&dir), "inferring", "the other client's reply goes on");
    busy.kill().unwrap();
    busy.wait().unwrap();
}

#[test]
fn eight_clients_at_once_each_get_their_own_complete_reply() {
    let dir = TestDir::new("chat8");
    let _server = start(&dir);
    let questions: Vec<String> = (1..=8).map(|i| format!("What is {i} plus {i}?")).collect();
    // Each reply alone, first: greedy decoding makes them reproducible.
    let mut c = client(&dir);
    let expected: Vec<String> = questions
        .iter()
        .map(|q| stream(&mut c, question(q)).0)
        .collect();
    drop(c);
    let children: Vec<_> = questions
        .iter()
        .map(|q| {
            let args = question(q).to_string();
            dir.cpipe()
                .args(["chat", "chat", "--text", "--timeout", "120", "-j", &args])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (child, want) in children.into_iter().zip(expected) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("{want}\n"),
            "a reply was mixed with another"
        );
    }
}

#[test]
fn states_go_loading_idle_inferring_idle_and_a_bad_model_is_reported() {
    let dir = TestDir::new("chatstate");
    let _server = dir.serve("chat", &["--model", "smollm2"]);
    let mut c = client(&dir);
    // A request sent while loading waits for the model instead of being lost.
    let reply = c
        .call("chat_blocking", json!({"data": "Say hi", "max_tokens": 3}))
        .unwrap();
    assert_eq!(reply[0].name(), "reply");
    let mut seen = Vec::new();
    while let Some(e) = c.try_next_event(Duration::from_millis(200)).unwrap() {
        if e.name() == "state_changed" {
            seen.push(e.str("state").unwrap().to_string());
        }
    }
    assert!(
        seen.ends_with(&["inferring".to_string(), "idle".to_string()]),
        "{seen:?}"
    );

    let bad = TestDir::new("chatcorrupt");
    let model = bad.path().join("broken.gguf");
    std::fs::write(&model, b"GGUF not really").unwrap();
    let _broken = bad.serve("chat", &["--model", model.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(10), || {
        json_lines(&bad.run(&["chat", "get_state"]))[0]["state"] == "error"
    }));
    let out = bad.run(&["chat", "chat", "--data", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let error = &json_lines(&out)[0];
    assert_eq!(error["code"], "unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a valid GGUF"),
        "{error}"
    );

    // A hub model that is not cached, offline: the server says so instead of hanging.
    let hub = TestDir::new("chathub");
    let mut cmd = hub.cpipe();
    cmd.args([
        "--serve",
        "chat",
        "--model",
        "cpipe-test/absent-GGUF:absent.gguf",
    ])
    .env("HF_HUB_OFFLINE", "1")
    .env("HF_HOME", hub.path().join("hf"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut offline = Server {
        child: cmd.spawn().unwrap(),
        name: "chat".into(),
    };
    assert!(eventually(Duration::from_secs(10), || {
        hub.run(&["chat", "get_state"]).status.success()
            && json_lines(&hub.run(&["chat", "get_state"]))[0]["state"] == "error"
    }));
    let out = hub.run(&["chat", "chat", "--data", "hi"]);
    let error = &json_lines(&out)[0];
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not in the Hugging Face cache"),
        "{error}"
    );
    offline.kill();

    let out = bad.run(&["--serve", "chat", "--model", "/no/such/model.gguf"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stderr).contains("no such file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_vanishing_top_p_samples_the_top_token_instead_of_failing() {
    let dir = TestDir::new("chattopp");
    let _server = start(&dir);
    let mut c = client(&dir);
    for top_p in [1e-300, 1e-45] {
        let mut args = question("Say hi");
        args["top_p"] = json!(top_p);
        args["temperature"] = json!(0.8);
        args["max_tokens"] = json!(4);
        let (text, _) = stream(&mut c, args);
        assert!(!text.is_empty(), "top_p {top_p}");
    }
    let mut args = question("Say hi");
    args["top_p"] = json!(0);
    let error = c.call("chat", args).unwrap_err().to_string();
    assert!(error.contains("top_p must be in (0, 1]"), "{error}");
    assert!(
        !error.contains("backtrace") && !error.contains(".rs:"),
        "{error}"
    );
}

/// Resident memory (kB) of process `pid`.
fn resident_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// After a long prompt, resident memory comes back to about its size after load: the cache
/// a long prompt grew is let go, and the heap it freed is given back.
#[test]
fn memory_comes_back_after_a_long_prompt() {
    let dir = TestDir::new("chat-memory");
    let server = start(&dir);
    let mut c = client(&dir);
    // A short request first: what every request allocates is part of the resting size.
    c.call("chat_blocking", question("Hi")).unwrap();
    assert!(eventually(Duration::from_secs(10), || state(&dir) == "idle"));
    let resting = resident_kb(server.pid());
    let long = "Tell me about the history of Paris. ".repeat(300);
    let reply = c
        .call("chat_blocking", json!({"data": long, "max_tokens": 4}))
        .unwrap();
    let prompt = reply[0].get("usage").unwrap()["prompt_tokens"]
        .as_u64()
        .unwrap();
    assert!(prompt > 2048, "{prompt} tokens");
    let mut after = 0;
    let back = eventually(Duration::from_secs(10), || {
        after = resident_kb(server.pid());
        state(&dir) == "idle" && after < resting + 30_000
    });
    assert!(
        back,
        "resident {resting} kB at rest, {after} kB after a {prompt}-token prompt"
    );
}

/// Absurd `--parallel` and `--ctx` values are refused at start with what to give instead; a
/// request that can never fit the context budget gets an error saying so, and `get_state`
/// shows the slots.
#[test]
fn slots_and_the_context_budget_are_checked_and_shown() {
    let dir = TestDir::new("chatslots");
    for (flag, value, says) in [
        ("--parallel", "0", "--parallel"),
        ("--parallel", "100000", "--parallel"),
        ("--ctx", "3", "--ctx must be at least 16"),
    ] {
        let out = dir.run(&["--serve", "chat", "--model", "smollm2", flag, value]);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(
            text(&out.stderr).contains(says),
            "{flag} {value}: {}",
            text(&out.stderr)
        );
    }
    let _server = dir.serve_loaded(
        "chat",
        &["--model", "smollm2", "--parallel", "2", "--ctx", "200"],
    );
    let mut c = client(&dir);
    let state = c.call("get_state", json!({})).unwrap();
    assert_eq!(state[0].get("slots"), Some(&json!(2)), "{state:?}");
    let mut args = question("Hi");
    args["max_tokens"] = json!(500);
    let error = c.call("chat", args).unwrap_err().to_string();
    assert!(error.contains("--ctx"), "{error}");
    let reply = c.call("chat_blocking", question("Hi")).unwrap();
    assert!(reply[0].str("text").is_some(), "{reply:?}");
    // The engine publishes its slots just after it answers.
    let mut state = Vec::new();
    let freed = eventually(Duration::from_secs(5), || {
        state = c.call("get_state", json!({})).unwrap();
        state[0].get("slots_busy") == Some(&json!(0))
    });
    assert!(freed, "{state:?}");
    let config = c.call("get_config", json!({})).unwrap();
    assert_eq!(config[0].get("parallel"), Some(&json!(2)), "{config:?}");
    assert_eq!(config[0].get("ctx"), Some(&json!(200)), "{config:?}");
    assert_eq!(config[0].get("kv_cache"), Some(&json!("f16")), "{config:?}");
    // The kernels' SIMD form, picked at run time; on x86-64 the build assumes AVX2.
    let kernels = config[0].str("kernels").unwrap_or_default();
    let expected: &[&str] = if cfg!(target_arch = "x86_64") {
        &["avx2", "avx-vnni", "avx512-vnni"]
    } else {
        &["portable"]
    };
    assert!(expected.contains(&kernels), "{config:?}");
}

/// `--kv-cache q8_0` holds keys and values in 8-bit blocks: `get_config` says so and the model
/// still answers; a format there is no cache for is refused at start, naming the ones there
/// are.
#[test]
fn a_q8_0_key_value_cache_is_taken_shown_and_answers() {
    let dir = TestDir::new("chatq8");
    let out = dir.run(&[
        "--serve",
        "chat",
        "--model",
        "smollm2",
        "--kv-cache",
        "q4_0",
    ]);
    assert!(!out.status.success(), "--kv-cache q4_0 was accepted");
    assert!(
        text(&out.stderr).contains("f16 or q8_0"),
        "{}",
        text(&out.stderr)
    );
    let _server = dir.serve_loaded(
        "chat",
        &[
            "--model",
            "smollm2",
            "--system",
            "You are a helpful assistant.",
            "--kv-cache",
            "q8_0",
        ],
    );
    let mut c = client(&dir);
    let config = c.call("get_config", json!({})).unwrap();
    assert_eq!(
        config[0].get("kv_cache"),
        Some(&json!("q8_0")),
        "{config:?}"
    );
    let (streamed, _) = stream(
        &mut c,
        question("What is the capital of France? Answer in one word."),
    );
    assert!(streamed.contains("Paris"), "{streamed:?}");
}
