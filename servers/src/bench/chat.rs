//! `cpipe bench chat`: the LLM engine against llama.cpp on the same GGUF and thread count
//! (prompt processing at 128 and 512 tokens, generation of 128 tokens after no context and
//! after 2,048 tokens of it, as llama-bench's `-d 2048`), time to first token of
//! a short chat, and a warm server request against a fresh process that loads the model for
//! one answer, with the warm server's resident memory.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{median, resident_mb};
use anyhow::{bail, ensure, Context, Result};
use models::llm::{ChatMessage, GenerationParams, KvFormat, Llm, LoadOptions};
use pipe_core::{Client, ConnectOptions};
use serde_json::{json, Value};

/// Options of `cpipe bench chat`.
#[derive(Debug, clap::Args)]
pub struct ChatBench {
    /// The model (as for `--serve chat --model`).
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// llama.cpp's llama-bench (default: what scripts/build-llama-bench.sh built).
    #[arg(long, env = "LLAMA_BENCH")]
    pub llama_bench: Option<PathBuf>,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repetitions: usize,
    /// Instead: N clients asking at once, one client alone, and a 10-turn conversation,
    /// against llama-server --parallel N (continuous batching) on the same GGUF.
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// llama.cpp's llama-server, for --clients and the memory comparison (default: what
    /// scripts/build-llama-server.sh built).
    #[arg(long, env = "LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// How both engines hold keys and values: f16, or q8_0 (llama.cpp's -ctk/-ctv q8_0).
    #[arg(long, value_name = "FORMAT", default_value = "f16")]
    pub kv_cache: KvFormat,
}

/// A prompt of exactly `n` tokens of ordinary text.
fn prompt_tokens(llm: &Llm, n: usize) -> Result<Vec<u32>> {
    let text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. ";
    let mut tokens = Vec::new();
    while tokens.len() < n {
        tokens.extend(llm.encode(text)?);
    }
    tokens.truncate(n);
    Ok(tokens)
}

/// Time to first token of a short chat on the warm engine: the median in ms, the prompt's
/// tokens, and how many of them were run ahead.
struct FirstToken {
    ms: f64,
    prompt_tokens: usize,
    cached: usize,
}

/// Context tokens before the deep generation measurement.
const DEPTH: usize = 2048;

/// The context both servers are given for the memory comparison (`--ctx`, llama-server's
/// `-c`).
const MEMORY_CONTEXT: usize = 4096;

/// Our engine: (prompt tokens/s at 128, at 512, generation tokens/s at depth 0 and at
/// `DEPTH`), and the short chat's time to first token.
fn ours(path: &Path, kv_cache: KvFormat, repetitions: usize) -> Result<([f64; 4], FirstToken)> {
    let options = LoadOptions {
        kv_cache,
        ..LoadOptions::default()
    };
    let mut llm = Llm::load_with(path, &models::device::best_device(), &options)?;
    // Every run cold, as llama-bench's are: nothing of the run before is reused.
    let one = GenerationParams {
        max_tokens: 1,
        ignore_eos: true,
        cache_prompt: false,
        ..GenerationParams::default()
    };
    let mut prefill = |n: usize| -> Result<f64> {
        let prompt = prompt_tokens(&llm, n)?;
        llm.generate(&prompt, &one, |_| ControlFlow::Continue(()))?; // warm-up
        let mut rates = Vec::new();
        for _ in 0..repetitions {
            let usage = llm.generate(&prompt, &one, |_| ControlFlow::Continue(()))?;
            rates.push(n as f64 / usage.time_to_first_token.as_secs_f64());
        }
        Ok(median(rates))
    };
    let pp128 = prefill(128)?;
    let pp512 = prefill(512)?;
    let generate = GenerationParams {
        max_tokens: 129,
        ignore_eos: true,
        cache_prompt: false,
        ..GenerationParams::default()
    };
    // Generation only: `tokens_per_second` leaves the prompt's time out.
    let mut generation = |context: usize| -> Result<f64> {
        let start = prompt_tokens(&llm, context + 1)?;
        let mut rates = Vec::new();
        for _ in 0..repetitions {
            let usage = llm.generate(&start, &generate, |_| ControlFlow::Continue(()))?;
            rates.push(usage.tokens_per_second);
        }
        Ok(median(rates))
    };
    let tg128 = generation(0)?;
    let tg128_deep = generation(DEPTH)?;
    // A server started with a system prompt runs its start ahead, as `--system` does.
    llm.share_prefix(Some("You are a helpful assistant."))?;
    let chat = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("What is the capital of France?"),
    ];
    let ttft_params = GenerationParams {
        max_tokens: 1,
        cache_prompt: false,
        ..GenerationParams::default()
    };
    let mut ttfts = Vec::new();
    let mut usage = None;
    for _ in 0..repetitions.max(3) {
        let u = llm.chat(&chat, &ttft_params, |_| ControlFlow::Continue(()))?;
        ttfts.push(u.time_to_first_token.as_secs_f64() * 1000.0);
        usage = Some(u);
    }
    let usage = usage.expect("at least one run");
    let first = FirstToken {
        ms: median(ttfts),
        prompt_tokens: usage.prompt_tokens,
        cached: usage.cached_prompt_tokens,
    };
    Ok(([pp128, pp512, tg128, tg128_deep], first))
}

/// llama-bench on the same file with the same threads: (pp128, pp512, tg128, tg128 at
/// `DEPTH`) tokens/s.
fn llama_cpp(
    bin: &Path,
    model: &Path,
    threads: usize,
    kv_cache: KvFormat,
    repetitions: usize,
) -> Result<[f64; 4]> {
    // Two runs: one `-d` would apply to every test of a run.
    let run = |tests: &[&str]| -> Result<Vec<Value>> {
        let out = Command::new(bin)
            .args(["-m".as_ref(), model.as_os_str()])
            .args(["-t", &threads.to_string()])
            .args(["-ctk", kv_cache.name(), "-ctv", kv_cache.name()])
            .args(tests)
            .args(["-r", &repetitions.to_string(), "-o", "json"])
            .stderr(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        ensure!(out.status.success(), "llama-bench failed");
        serde_json::from_slice(&out.stdout).context("reading llama-bench's JSON")
    };
    let rate = |rows: &[Value], p: u64, g: u64| -> Result<f64> {
        rows.iter()
            .find(|r| r["n_prompt"] == p && r["n_gen"] == g)
            .and_then(|r| r["avg_ts"].as_f64())
            .with_context(|| format!("no pp{p}/tg{g} row from llama-bench"))
    };
    let shallow = run(&["-p", "128,512", "-n", "128"])?;
    let deep = run(&["-p", "0", "-n", "128", "-d", &DEPTH.to_string()])?;
    Ok([
        rate(&shallow, 128, 0)?,
        rate(&shallow, 512, 0)?,
        rate(&shallow, 0, 128)?,
        rate(&deep, 0, 128)?,
    ])
}

/// One answer from a warm server and from a fresh process.
struct Answers {
    /// Seconds for one `chat_blocking` answer from a warm server.
    warm: f64,
    /// Seconds for a fresh process to start, load the model and answer once.
    fresh: f64,
    /// The warm server's resident memory after its answers, in MB.
    resident_mb: f64,
}

/// The question both servers answer: a short chat, 16 tokens.
fn question() -> Value {
    json!({"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16})
}

fn warm_versus_fresh(model: &str, kv_cache: KvFormat, repetitions: usize) -> Result<Answers> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("cpipe-bench-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let question = question();
    // Seconds, and resident MB (measured on the warm server only).
    let one_answer = |warm: bool| -> Result<(f64, f64)> {
        let start = Instant::now();
        let mut server = Command::new(&exe)
            .args(["--serve", "chat", "--model", model])
            .args(["--ctx", &MEMORY_CONTEXT.to_string()])
            .args(["--kv-cache", kv_cache.name()])
            .arg("--dir")
            .arg(&dir)
            .stderr(Stdio::null())
            .spawn()?;
        let options = ConnectOptions {
            dir: dir.clone(),
            timeout: Some(Duration::from_secs(120)),
        };
        let mut client = loop {
            match Client::connect_with("chat", &options) {
                Ok(c) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => bail!("the chat server did not start: {e}"),
            }
        };
        let mut took = Vec::new();
        let mut resident = 0.0;
        if warm {
            client.call("chat_blocking", question.clone())?; // loads the model
            for _ in 0..repetitions {
                let t = Instant::now();
                client.call("chat_blocking", question.clone())?;
                took.push(t.elapsed().as_secs_f64());
            }
            resident = resident_mb(server.id());
        } else {
            client.call("chat_blocking", question.clone())?;
            took.push(start.elapsed().as_secs_f64());
        }
        let _ = client.call("stop", Value::Null);
        drop(client);
        server.wait()?;
        Ok((median(took), resident))
    };
    let (warm, resident_mb) = one_answer(true)?;
    let fresh = median(
        (0..repetitions)
            .map(|_| one_answer(false).map(|(seconds, _)| seconds))
            .collect::<Result<_>>()?,
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Answers {
        warm,
        fresh,
        resident_mb,
    })
}

fn default_llama_bench() -> PathBuf {
    super::tools_dir().join("llama.cpp/build/bin/llama-bench")
}

/// Runs the benchmark and prints the tables.
pub fn run(options: &ChatBench) -> Result<()> {
    let repetitions = options.repetitions.max(1);
    if let Some(clients) = options.clients {
        let llama = options
            .llama_server
            .clone()
            .unwrap_or_else(super::bridges::default_llama_server);
        return super::clients::run(&options.model, clients, repetitions, &llama);
    }
    let source = crate::kinds::chat::model_source(&options.model)?;
    let path = source.resolve()?;
    let bench = options
        .llama_bench
        .clone()
        .unwrap_or_else(default_llama_bench);
    ensure!(
        bench.exists(),
        "llama-bench not found at {}: build it with scripts/build-llama-bench.sh (or pass --llama-bench)",
        bench.display()
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Model {} on {threads} threads, median of {repetitions}; cpipe's kernels: {}; key/value cache: {}",
        path.display(),
        models::llm::kernels(&models::device::best_device()),
        options.kv_cache.name()
    );
    // Rounds alternate between the two engines, so both meet the machine's moods alike.
    let (mut ours_rounds, mut anchor_rounds, mut first_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut first = None;
    for _ in 0..repetitions {
        let (rates, round_first) = ours(&path, options.kv_cache, 1)?;
        ours_rounds.push(rates);
        first_ms.push(round_first.ms);
        first = Some(round_first);
        anchor_rounds.push(llama_cpp(&bench, &path, threads, options.kv_cache, 1)?);
    }
    let column = |rounds: &[[f64; 4]], i: usize| median(rounds.iter().map(|r| r[i]).collect());
    let [pp128, pp512, tg128, tg128_deep] = [0, 1, 2, 3].map(|i| column(&ours_rounds, i));
    let [a_pp128, a_pp512, a_tg128, a_tg128_deep] = [0, 1, 2, 3].map(|i| column(&anchor_rounds, i));
    let first = FirstToken {
        ms: median(first_ms),
        ..first.expect("at least one round")
    };
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "tokens/s", "cpipe", "llama.cpp", "ratio"
    );
    for (name, ours, anchor) in [
        ("prompt processing, 128", pp128, a_pp128),
        ("prompt processing, 512", pp512, a_pp512),
        ("generation, 128", tg128, a_tg128),
        ("generation, 128 at 2048", tg128_deep, a_tg128_deep),
    ] {
        println!(
            "{name:<28} {ours:>12.1} {anchor:>12.1} {:>9.2}x",
            ours / anchor
        );
    }
    println!(
        "time to first token, short chat (engine): {:.1} ms ({} prompt tokens, {} of them run ahead at start-up)",
        first.ms, first.prompt_tokens, first.cached
    );
    let answers = warm_versus_fresh(&options.model, options.kv_cache, repetitions)?;
    println!(
        "one answer: warm server {:.0} ms, fresh process {:.0} ms ({:.1}x)",
        answers.warm * 1000.0,
        answers.fresh * 1000.0,
        answers.fresh / answers.warm
    );
    let llama_server = options
        .llama_server
        .clone()
        .unwrap_or_else(super::bridges::default_llama_server);
    if !llama_server.exists() {
        println!(
            "resident memory of the warm server after its answers: {:.0} MB (llama-server not found at {}: build it with scripts/build-llama-server.sh, or pass --llama-server, to compare)",
            answers.resident_mb,
            llama_server.display()
        );
        return Ok(());
    }
    let theirs = llama_server_memory(&llama_server, &path, threads, options.kv_cache)?;
    println!(
        "resident memory after load and answers, context {MEMORY_CONTEXT}: cpipe {:.0} MB, llama-server {theirs:.0} MB ({:.2}x)",
        answers.resident_mb,
        answers.resident_mb / theirs
    );
    Ok(())
}

/// llama-server's resident memory in MB after it loaded `model` with a context of
/// [`MEMORY_CONTEXT`] and one slot, and answered the warm server's question.
fn llama_server_memory(
    llama_server: &Path,
    model: &Path,
    threads: usize,
    kv_cache: KvFormat,
) -> Result<f64> {
    let (server, _) = super::bridges::start_llama_server(
        llama_server,
        model,
        threads,
        MEMORY_CONTEXT,
        1,
        kv_cache,
        question(),
    )?;
    Ok(resident_mb(server.0.id()))
}
