//! `cpipe bench chat --clients N`: N clients asking one chat server at once, and a 10-turn
//! conversation, against llama-server `--parallel N` (continuous batching) on the same GGUF,
//! threads and context, in the same run; with both servers' resident memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use models::llm::KvFormat;
use pipe_core::Client;
use serde_json::{json, Value};

use super::bridges::{pipe_chat, start_llama_server, Http, Peer, Stream};
use super::{connect_ready, median, resident_mb, serve, BenchServer};

/// Tokens each client asks for.
const REPLY_TOKENS: usize = 128;
/// Context tokens per slot, on both servers (llama-server splits `-c` evenly).
const CONTEXT_PER_SLOT: usize = 1024;
/// Turns of the conversation, and tokens per reply in it.
const TURNS: usize = 10;
const TURN_TOKENS: usize = 32;

/// Client `i`'s question (each differs, so no reply is another's).
fn question(i: usize) -> String {
    format!("Question {i}: name three rivers of Europe and say one thing about each.")
}

fn request(messages: &[Value], max_tokens: usize) -> Value {
    json!({
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
    })
}

fn system() -> Value {
    json!({"role": "system", "content": "You are a helpful assistant."})
}

/// One way to stream a reply: a pipe client or an HTTP connection.
trait Chat: Send {
    fn chat(&mut self, request: Value) -> Result<Stream>;
}

impl Chat for Client {
    fn chat(&mut self, request: Value) -> Result<Stream> {
        pipe_chat(self, request)
    }
}

/// A client process of its own (`cpipe chat chat`): the protocol allows one connection per
/// process and server, so clients at once are processes, as they are in real use. Timing
/// starts before the process does, so its start-up counts against cpipe.
struct ProcessClient {
    dir: PathBuf,
}

impl Chat for ProcessClient {
    fn chat(&mut self, request: Value) -> Result<Stream> {
        use std::io::BufRead;
        let start = Instant::now();
        let mut child = Peer(
            Command::new(std::env::current_exe()?)
                .env("CPIPE_DIR", &self.dir)
                .env_remove("CPIPE_LOG")
                .args(["chat", "chat", "--timeout", "300", "-j"])
                .arg(request.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?,
        );
        let stdout = child.0.stdout.take().context("no stdout")?;
        let (mut times, mut reply) = (Vec::new(), String::new());
        for line in std::io::BufReader::new(stdout).lines() {
            let event: Value = serde_json::from_str(&line?)?;
            if event["event"] == "error" {
                bail!("chat failed: {}", event["message"]);
            }
            if let Some(text) = event["text"].as_str().filter(|t| !t.is_empty()) {
                times.push(Instant::now());
                reply.push_str(text);
            }
        }
        ensure!(child.0.wait()?.success(), "the client process failed");
        Stream::from_times(start, &times, reply)
    }
}

impl Chat for Http {
    fn chat(&mut self, request: Value) -> Result<Stream> {
        Http::chat(self, "model", request)
    }
}

/// What all clients at once saw.
struct Round {
    /// Tokens of all replies over the time from the common start to the last reply's end.
    total_per_second: f64,
    first_median: f64,
    first_last: f64,
    gap_median: f64,
}

/// Every connection asks its own question at the same moment.
fn all_at_once<C: Chat + 'static>(connections: Vec<C>, round: usize) -> Result<(Round, Vec<C>)> {
    let barrier = Arc::new(Barrier::new(connections.len()));
    let threads: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, mut connection)| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let messages = [
                    system(),
                    json!({"role": "user", "content": question(round * 100 + i)}),
                ];
                barrier.wait();
                let start = Instant::now();
                let stream = connection.chat(request(&messages, REPLY_TOKENS));
                (start, stream, connection)
            })
        })
        .collect();
    let mut streams = Vec::new();
    let mut connections = Vec::new();
    let mut start = None;
    for thread in threads {
        let (started, stream, connection) = thread.join().expect("a client thread panicked");
        start = Some(start.map_or(started, |s: Instant| s.min(started)));
        streams.push((started, stream?));
        connections.push(connection);
    }
    let start = start.context("no clients")?;
    let offset = |started: Instant| (started - start).as_secs_f64();
    let tokens: usize = streams.iter().map(|(_, s)| s.gaps.len() + 1).sum();
    let end = streams
        .iter()
        .map(|(t, s)| offset(*t) + s.first + s.gaps.iter().sum::<f64>())
        .fold(0.0, f64::max);
    let firsts: Vec<f64> = streams.iter().map(|(t, s)| offset(*t) + s.first).collect();
    let gaps: Vec<f64> = streams.iter().flat_map(|(_, s)| s.gaps.clone()).collect();
    Ok((
        Round {
            total_per_second: tokens as f64 / end,
            first_median: median(firsts.clone()),
            first_last: firsts.iter().copied().fold(0.0, f64::max),
            gap_median: median(gaps),
        },
        connections,
    ))
}

/// Times to first token of each turn of one conversation.
fn conversation(connection: &mut dyn Chat, topic: usize) -> Result<Vec<f64>> {
    let mut messages = vec![system()];
    let mut firsts = Vec::new();
    for turn in 1..=TURNS {
        messages.push(json!({"role": "user", "content":
            format!("Conversation {topic}, turn {turn}: tell me one more fact about rivers.")}));
        let stream = connection.chat(request(&messages, TURN_TOKENS))?;
        firsts.push(stream.first);
        messages.push(json!({"role": "assistant", "content": stream.text}));
    }
    Ok(firsts)
}

/// The cpipe chat server under test, and a client of this process once the model loaded.
fn start_cpipe(model: &str, slots: usize, dir: &Path) -> Result<(BenchServer, Client)> {
    let ctx = (slots * CONTEXT_PER_SLOT).to_string();
    let slots = slots.to_string();
    let args = [
        "chat",
        "--model",
        model,
        "--parallel",
        &slots,
        "--ctx",
        &ctx,
    ];
    let server = serve(dir, &args)?;
    let client = connect_ready(dir, "chat")?;
    Ok((server, client))
}

/// llama-server with `slots` parallel sequences, and a connection per client.
fn start_llama(
    llama: &Path,
    model: &Path,
    threads: usize,
    slots: usize,
) -> Result<(Peer, Vec<Http>)> {
    let warm = request(&[system()], 1);
    let (server, address) = start_llama_server(
        llama,
        model,
        threads,
        slots * CONTEXT_PER_SLOT,
        slots,
        KvFormat::F16,
        warm,
    )?;
    let connections = (0..slots)
        .map(|_| Http::connect(&address))
        .collect::<Result<_>>()?;
    Ok((server, connections))
}

/// Medians over rounds of each figure.
fn medians(rounds: &[Round]) -> [f64; 4] {
    let column = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    [
        column(|r| r.total_per_second),
        column(|r| r.first_median * 1000.0),
        column(|r| r.first_last * 1000.0),
        column(|r| r.gap_median * 1000.0),
    ]
}

/// Runs the many-clients and conversation benchmarks and prints their table.
pub fn run(model: &str, clients: usize, repetitions: usize, llama: &Path) -> Result<()> {
    ensure!(
        (1..=64).contains(&clients),
        "--clients must be from 1 to 64, got {clients}"
    );
    ensure!(
        llama.exists(),
        "llama-server not found at {}: build it with scripts/build-llama-server.sh (or pass --llama-server)",
        llama.display()
    );
    let path = crate::kinds::chat::model_source(model)?.resolve()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = std::env::temp_dir().join(format!("cpipe-bench-clients-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "Model {} on {threads} threads; {clients} clients × {REPLY_TOKENS} tokens, {} context tokens per slot on both; median of {repetitions}; cpipe's kernels: {}",
        path.display(),
        CONTEXT_PER_SLOT,
        models::llm::kernels(&models::device::best_device())
    );

    let (cpipe_server, mut our_client) = start_cpipe(model, clients, &dir)?;
    let mut ours: Vec<ProcessClient> = (0..clients)
        .map(|_| ProcessClient { dir: dir.clone() })
        .collect();
    let (llama_server, mut theirs) = start_llama(llama, &path, threads, clients)?;
    // Rounds alternate between the servers, so both meet the machine's moods alike. Only
    // one server works at a time: the other idles.
    let (mut our_rounds, mut their_rounds) = (Vec::new(), Vec::new());
    let (mut our_single, mut their_single) = (Vec::new(), Vec::new());
    for round in 0..repetitions {
        let (r, back) = all_at_once(ours, round)?;
        ours = back;
        our_rounds.push(r);
        let (r, back) = all_at_once(theirs, round)?;
        theirs = back;
        their_rounds.push(r);
        let (r, back) = all_at_once(vec![our_client], round + 1000)?;
        our_client = back.into_iter().next().expect("the client");
        our_single.push(r);
        let one = vec![theirs.pop().expect("a connection")];
        let (r, mut back) = all_at_once(one, round + 1000)?;
        theirs.append(&mut back);
        their_single.push(r);
    }
    let (mut our_turns, mut their_turns) = (Vec::new(), Vec::new());
    for round in 0..repetitions {
        our_turns.push(conversation(&mut our_client, round)?);
        their_turns.push(conversation(&mut theirs[0], round)?);
    }
    let our_memory = resident_mb(cpipe_server.pid());
    let their_memory = resident_mb(llama_server.0.id());
    drop((cpipe_server, llama_server));
    let _ = std::fs::remove_dir_all(&dir);

    let ours = medians(&our_rounds);
    let theirs = medians(&their_rounds);
    println!(
        "{:<34} {:>12} {:>13} {:>8}",
        format!("{clients} clients at once"),
        "cpipe",
        "llama-server",
        "ratio"
    );
    let row = |name: &str, a: f64, b: f64, unit: &str| {
        println!("{name:<34} {a:>12.1} {b:>13.1} {:>7.2}x  {unit}", a / b);
    };
    row("total tokens/s", ours[0], theirs[0], "(higher is better)");
    row(
        "first token, median ms",
        ours[1],
        theirs[1],
        "(lower is better)",
    );
    row(
        "first token, last client ms",
        ours[2],
        theirs[2],
        "(lower is better)",
    );
    row(
        "gap between tokens, median ms",
        ours[3],
        theirs[3],
        "(lower is better)",
    );
    let single = |rounds: &[Round]| medians(rounds)[0];
    row(
        "one client alone, tokens/s",
        single(&our_single),
        single(&their_single),
        "(higher is better)",
    );
    let turn = |turns: &[Vec<f64>], i: usize| median(turns.iter().map(|t| t[i] * 1000.0).collect());
    row(
        "conversation: turn 1 first token ms",
        turn(&our_turns, 0),
        turn(&their_turns, 0),
        "(lower is better)",
    );
    row(
        &format!("conversation: turn {TURNS} first token ms"),
        turn(&our_turns, TURNS - 1),
        turn(&their_turns, TURNS - 1),
        "(lower is better)",
    );
    println!(
        "turn {TURNS} against turn 1: cpipe {:.2}x, llama-server {:.2}x",
        turn(&our_turns, TURNS - 1) / turn(&our_turns, 0),
        turn(&their_turns, TURNS - 1) / turn(&their_turns, 0)
    );
    row(
        "resident memory MB",
        our_memory,
        their_memory,
        "(lower is better)",
    );
    Ok(())
}
