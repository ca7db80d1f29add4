//! `cpipe bench bridges`: what the bridges add and how they compare. The same requests,
//! alternating, straight through the pipe and through `--serve http` (time to first token,
//! gap between tokens, transcription and speech round trips); the http bridge against
//! llama-server's own `/v1/chat/completions` on the same GGUF and threads; and the Wyoming
//! bridge against wyoming-faster-whisper and wyoming-piper on the same models, timed by the
//! `wyoming` package's own client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use models::llm::KvFormat;
use pipe_core::audio::AudioChunk;
use pipe_core::Client;
use serde_json::{json, Value};

use super::{connect_ready, median, resident_mb, serve};

/// Options of `cpipe bench bridges`.
#[derive(Debug, clap::Args)]
pub struct BridgesBench {
    /// The chat model (as for `--serve chat --model`).
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Requests per measurement and side (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub repetitions: usize,
    /// llama.cpp's llama-server (default: what scripts/build-llama-server.sh built).
    #[arg(long, env = "LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// A Python with wyoming-faster-whisper 3.8.1 and wyoming-piper 2.5.2 (scripts/bench-bridges.sh
    /// makes .venv-wyoming); without it the Wyoming peers are left out.
    #[arg(long)]
    pub wyoming_python: Option<PathBuf>,
}

/// The chat request both sides get: greedy, so both generate the same tokens.
fn chat_request(round: usize) -> Value {
    json!({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": format!("Question {round}: name three rivers of Europe and say one thing about each.")}
        ],
        "max_tokens": 64,
        "temperature": 0,
    })
}

/// [`chat_request`] run cold (`cache_prompt: false`), for the overhead pairs: the pipe and
/// the bridge send the same request in turn, and neither may start from what the other left
/// in the chat server's cache.
fn uncached_chat_request(round: usize) -> Value {
    let mut request = chat_request(round);
    request["cache_prompt"] = false.into();
    request
}

/// One streamed reply: time to first token, then the gaps between tokens (seconds).
pub(super) struct Stream {
    pub(super) first: f64,
    pub(super) gaps: Vec<f64>,
    /// The reply's text.
    pub(super) text: String,
}

impl Stream {
    pub(super) fn from_times(start: Instant, times: &[Instant], text: String) -> Result<Self> {
        ensure!(!times.is_empty(), "the reply had no tokens");
        Ok(Self {
            text,
            first: (times[0] - start).as_secs_f64(),
            gaps: times
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64())
                .collect(),
        })
    }

    fn tokens_per_second(&self) -> f64 {
        let total: f64 = self.gaps.iter().sum();
        if total > 0.0 {
            self.gaps.len() as f64 / total
        } else {
            0.0
        }
    }
}

/// A reply straight through the pipe.
pub(super) fn pipe_chat(client: &mut Client, request: Value) -> Result<Stream> {
    let start = Instant::now();
    let (mut times, mut reply) = (Vec::new(), String::new());
    for event in client.request("chat", request)? {
        let event = event?;
        if let Some(e) = event.as_error() {
            bail!("chat failed: {}", e.message);
        }
        if let Some(text) = event.str("text").filter(|t| !t.is_empty()) {
            times.push(Instant::now());
            reply.push_str(text);
        }
    }
    Stream::from_times(start, &times, reply)
}

/// A keep-alive HTTP/1.1 connection, just enough of a client to time responses as their
/// bytes arrive.
pub(super) struct Http {
    address: String,
    reader: BufReader<TcpStream>,
}

impl Http {
    pub(super) fn connect(address: &str) -> Result<Self> {
        let stream =
            TcpStream::connect(address).with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        Ok(Self {
            address: address.into(),
            reader: BufReader::new(stream),
        })
    }

    /// Sends a request; calls `on_data` with each piece of the body as it arrives; returns the
    /// status and the whole body. A keep-alive connection the server closed while idle is
    /// opened again.
    fn send(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<(u16, Vec<u8>)> {
        match self.exchange(path, content_type, body, &mut on_data) {
            Err(e) if e.downcast_ref::<std::io::Error>().is_some() => {
                *self = Self::connect(&self.address)?;
                self.exchange(path, content_type, body, &mut on_data)
            }
            other => other,
        }
    }

    fn exchange(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
        on_data: &mut impl FnMut(&[u8]),
    ) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into());
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("a bad status line")?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        let mut all = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                chunk.truncate(size);
                if size == 0 {
                    break;
                }
                on_data(&chunk);
                all.extend_from_slice(&chunk);
            }
        } else {
            let mut body = vec![0; length.unwrap_or(0)];
            self.reader.read_exact(&mut body)?;
            on_data(&body);
            all = body;
        }
        Ok((status, all))
    }

    /// A streamed chat completion: the times its content-bearing events arrived.
    pub(super) fn chat(&mut self, model: &str, request: Value) -> Result<Stream> {
        let mut body = request;
        body["model"] = model.into();
        body["stream"] = true.into();
        let body = serde_json::to_vec(&body)?;
        let start = Instant::now();
        let (mut times, mut reply) = (Vec::new(), String::new());
        let mut pending = Vec::new();
        let (status, all) =
            self.send("/v1/chat/completions", "application/json", &body, |data| {
                pending.extend_from_slice(data);
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&event);
                    let Some(data) = text.trim().strip_prefix("data: ") else {
                        continue;
                    };
                    let content = serde_json::from_str::<Value>(data).ok().and_then(|v| {
                        v.pointer("/choices/0/delta/content")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                    });
                    if let Some(content) = content {
                        times.push(Instant::now());
                        reply.push_str(&content);
                    }
                }
            })?;
        ensure!(
            status == 200,
            "HTTP {status}: {}",
            String::from_utf8_lossy(&all)
        );
        Stream::from_times(start, &times, reply)
    }
}

/// One row of the overhead table: each side's median, and the median of the differences
/// between requests sent one after the other (pairs cancel the model's own drift, which is
/// larger than what the bridge adds).
fn overhead_row(name: &str, pipe: &[f64], http: &[f64]) {
    let added = median(http.iter().zip(pipe).map(|(h, p)| h - p).collect());
    println!(
        "{name:<38} {:>10.2} {:>10.2} {added:>+10.2}",
        median(pipe.to_vec()),
        median(http.to_vec())
    );
}

/// The medians of several streams: first token (ms), gap (ms), tokens per second.
fn summary(streams: &[Stream]) -> (f64, f64, f64) {
    let first = median(streams.iter().map(|s| s.first * 1000.0).collect());
    let gap = median(
        streams
            .iter()
            .flat_map(|s| s.gaps.iter().map(|g| g * 1000.0))
            .collect(),
    );
    let rate = median(streams.iter().map(Stream::tokens_per_second).collect());
    (first, gap, rate)
}

/// A multipart/form-data body with a WAV file and text fields.
fn multipart(wav: &[u8], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "cpipe-bench-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes());
    }
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").bytes());
    body.extend_from_slice(wav);
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A config field of server `name` in `dir`.
fn config(dir: &Path, name: &str, field: &str) -> Result<String> {
    let mut client = connect_ready(dir, name)?;
    let config = client.call("get_config", Value::Null)?;
    config
        .first()
        .and_then(|c| c.str(field))
        .map(String::from)
        .with_context(|| format!("{name} reports no {field}"))
}

/// A child process killed on drop.
pub(super) struct Peer(pub(super) Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `address`.
pub(super) fn wait_listening(address: &str, what: &str, within: Duration) -> Result<()> {
    let start = Instant::now();
    while TcpStream::connect(address).is_err() {
        ensure!(
            start.elapsed() < within,
            "{what} did not start listening on {address}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// llama-server where `scripts/build-llama-server.sh` builds it.
pub(super) fn default_llama_server() -> PathBuf {
    super::tools_dir().join("llama.cpp/build/bin/llama-server")
}

/// Starts llama-server on `model` with `threads`, a context of `ctx` tokens split over
/// `slots` parallel sequences, on a free loopback port; returns once it answers `warm` (it
/// listens before its model is loaded, and answers 503 until then), with its address.
pub(super) fn start_llama_server(
    llama: &Path,
    model: &Path,
    threads: usize,
    ctx: usize,
    slots: usize,
    kv_cache: KvFormat,
    warm: Value,
) -> Result<(Peer, String)> {
    let port = free_port()?;
    let server = Peer(
        Command::new(llama)
            .arg("-m")
            .arg(model)
            .args(["-t", &threads.to_string()])
            .args(["-c", &ctx.to_string()])
            .args(["-np", &slots.to_string()])
            .args(["-ctk", kv_cache.name(), "-ctv", kv_cache.name()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", llama.display()))?,
    );
    let address = format!("127.0.0.1:{port}");
    wait_listening(&address, "llama-server", Duration::from_secs(60))?;
    let started = Instant::now();
    while Http::connect(&address)?
        .chat("model", warm.clone())
        .is_err()
    {
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "llama-server did not load the model"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((server, address))
}

/// A free TCP port on loopback.
pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The Wyoming timing script's medians (ms) against the server on `port`.
fn wyoming_ms(
    python: &Path,
    port: u16,
    mode: &str,
    arg: &str,
    repetitions: usize,
) -> Result<(f64, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-wyoming.py");
    let out = Command::new(python)
        .arg(&script)
        .args([&port.to_string(), mode, arg, &repetitions.to_string()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    ensure!(
        out.status.success(),
        "the wyoming timing failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout)?;
    let ms: Vec<f64> = result["ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    ensure!(!ms.is_empty(), "the wyoming timing measured nothing");
    Ok((
        median(ms),
        result["text"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Runs the benchmark and prints the tables.
pub fn run(options: &BridgesBench) -> Result<()> {
    let repetitions = options.repetitions.max(1);
    let models = models::source::offline_models_dir();
    let jfk_path = models.join("jfk.wav");
    let jfk = std::fs::read(&jfk_path).with_context(|| {
        format!(
            "{} is missing: run scripts/fetch-models.sh all",
            jfk_path.display()
        )
    })?;
    let dir = std::env::temp_dir().join(format!("cpipe-bench-bridges-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let chat_server = serve(&dir, &["chat", "--model", &options.model])?;
    let _stt = serve(&dir, &["stt", "--whisper", "tiny.en", "--listen", "none"])?;
    let _tts = serve(&dir, &["tts", "--voice", "joe", "--playback", "none"])?;
    let http_server = serve(&dir, &["http", "--listen", "127.0.0.1:0"])?;
    let wyoming_server = serve(&dir, &["wyoming", "--uri", "tcp://127.0.0.1:0"])?;
    let mut chat = connect_ready(&dir, "chat")?;
    let mut stt = connect_ready(&dir, "stt")?;
    let mut tts = connect_ready(&dir, "tts")?;
    let address = config(&dir, "http", "listen")?;
    let wyoming_uri = config(&dir, "wyoming", "uri")?;
    let wyoming_port: u16 = wyoming_uri.rsplit(':').next().unwrap_or_default().parse()?;
    let mut http = Http::connect(&address)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpipe bench bridges: {} on {threads} threads, median of {repetitions} per side, requests alternating", options.model);

    // Warm both paths (the bridge's first request connects to the servers).
    pipe_chat(&mut chat, uncached_chat_request(0))?;
    http.chat("chat", uncached_chat_request(0))?;
    let (mut piped, mut bridged) = (Vec::new(), Vec::new());
    for round in 1..=repetitions {
        piped.push(pipe_chat(&mut chat, uncached_chat_request(round))?);
        bridged.push(http.chat("chat", uncached_chat_request(round))?);
    }
    println!("\nOverhead of the http bridge (same requests, alternating; target: at most 1 ms / 2 ms added)");
    println!(
        "{:<38} {:>10} {:>10} {:>10}",
        "median, ms", "pipe", "http", "added"
    );
    let firsts = |streams: &[Stream]| streams.iter().map(|s| s.first * 1000.0).collect::<Vec<_>>();
    let gaps = |streams: &[Stream]| {
        streams
            .iter()
            .map(|s| median(s.gaps.iter().map(|g| g * 1000.0).collect()))
            .collect::<Vec<_>>()
    };
    overhead_row(
        "chat: time to first token",
        &firsts(&piped),
        &firsts(&bridged),
    );
    overhead_row("chat: gap between tokens", &gaps(&piped), &gaps(&bridged));

    // The very samples the bridge sends on (jfk.wav is 16 kHz mono 16-bit, passed on as it
    // is): audio that differed by a bit could make whisper decode other tokens, in other time.
    let chunk = {
        let mut reader = hound::WavReader::new(std::io::Cursor::new(&jfk))?;
        let spec = reader.spec();
        ensure!(
            (spec.sample_rate, spec.channels, spec.bits_per_sample) == (16_000, 1, 16),
            "jfk.wav is expected to be 16 kHz mono 16-bit"
        );
        let pcm = reader.samples::<i16>().collect::<Result<Vec<_>, _>>()?;
        AudioChunk::from_i16(16_000, 1, &pcm)
    };
    let mut transcribe_args: serde_json::Map<String, Value> = chunk.to_event().into_fields().into();
    transcribe_args.remove("event");
    let (form_type, form) = multipart(&jfk, &[("model", "stt")]);
    let (mut p_stt, mut h_stt) = (Vec::new(), Vec::new());
    for _ in 0..=repetitions {
        let start = Instant::now();
        stt.call("transcribe", Value::Object(transcribe_args.clone()))?;
        p_stt.push(start.elapsed().as_secs_f64() * 1000.0);
        let start = Instant::now();
        let (status, body) = http.send("/v1/audio/transcriptions", &form_type, &form, |_| {})?;
        ensure!(
            status == 200,
            "transcription: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        h_stt.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    overhead_row("transcription of jfk.wav (11 s)", &p_stt[1..], &h_stt[1..]);

    let text = "The quick brown fox jumps over the lazy dog. It was a sunny day.";
    let speech = serde_json::to_vec(
        &json!({"model": "tts", "input": text, "voice": "alloy", "response_format": "wav"}),
    )?;
    let (mut p_tts, mut h_tts) = (Vec::new(), Vec::new());
    for _ in 0..=repetitions {
        let start = Instant::now();
        tts.call(
            "synthesize",
            json!({"text": text, "audio": true, "play": false}),
        )?;
        p_tts.push(start.elapsed().as_secs_f64() * 1000.0);
        let start = Instant::now();
        let (status, body) = http.send("/v1/audio/speech", "application/json", &speech, |_| {})?;
        ensure!(
            status == 200,
            "speech: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        h_tts.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    overhead_row("speech of two sentences, whole", &p_tts[1..], &h_tts[1..]);

    let llama = options
        .llama_server
        .clone()
        .unwrap_or_else(default_llama_server);
    if llama.exists() {
        let path = crate::kinds::chat::model_source(&options.model)?.resolve()?;
        let (peer, llama_address) = start_llama_server(
            &llama,
            &path,
            threads,
            4096,
            1,
            KvFormat::F16,
            chat_request(0),
        )?;
        let mut anchor = Http::connect(&llama_address)?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 1..=repetitions {
            ours.push(http.chat("chat", chat_request(round + 1000))?);
            theirs.push(anchor.chat("model", chat_request(round + 1000))?);
        }
        let (o_first, _, o_rate) = summary(&ours);
        let (l_first, _, l_rate) = summary(&theirs);
        println!("\nThe http bridge against llama-server's own /v1/chat/completions (same GGUF, {threads} threads, streamed, 64 tokens)");
        println!(
            "{:<38} {:>10} {:>12} {:>10}",
            "median", "cpipe http", "llama-server", "ratio"
        );
        println!(
            "{:<38} {o_first:>10.1} {l_first:>12.1} {:>9.2}x",
            "time to first token, ms (lower wins)",
            l_first / o_first
        );
        println!(
            "{:<38} {o_rate:>10.1} {l_rate:>12.1} {:>9.2}x",
            "tokens/s",
            o_rate / l_rate
        );
        println!(
            "{:<38} {:>10.0} {:>12.0}",
            "resident memory, MB (chat server)",
            resident_mb(chat_server.pid()),
            resident_mb(peer.0.id())
        );
    } else {
        println!("\n(llama-server not found at {}: build it with scripts/build-llama-server.sh for the comparison)", llama.display());
    }

    println!("\nWyoming, timed by the wyoming package's client (median ms)");
    let sentence = "Turn on the kitchen lights, please.";
    let jfk_arg = jfk_path.to_string_lossy().to_string();
    let Some(client_python) = options
        .wyoming_python
        .clone()
        .or_else(|| std::env::var_os("CPIPE_PYTHON").map(PathBuf::from))
    else {
        println!(
            "(skipped: give --wyoming-python, or CPIPE_PYTHON, a Python with the wyoming package)"
        );
        return Ok(());
    };
    let (ours_asr, heard) = wyoming_ms(&client_python, wyoming_port, "asr", &jfk_arg, repetitions)?;
    let (ours_tts, _) = wyoming_ms(&client_python, wyoming_port, "tts", sentence, repetitions)?;
    let mut asr_row = format!(
        "{:<40} {ours_asr:>10.1}",
        "audio-stop → transcript (jfk.wav)"
    );
    let mut tts_row = format!("{:<40} {ours_tts:>10.1}", "synthesize → first audio-chunk");
    let mut header = format!("{:<40} {:>10}", "", "cpipe");
    if let Some(python) = &options.wyoming_python {
        let asr_port = free_port()?;
        let _whisper = Peer(
            Command::new(python)
                .args([
                    "-m",
                    "wyoming_faster_whisper",
                    "--uri",
                    &format!("tcp://127.0.0.1:{asr_port}"),
                    "--model",
                ])
                .arg(models.join("faster-whisper-tiny.en"))
                .args(["--data-dir"])
                .arg(&dir)
                .args([
                    "--local-files-only",
                    "--language",
                    "en",
                    "--cpu-threads",
                    &threads.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let tts_port = free_port()?;
        let _piper = Peer(
            Command::new(python)
                .args([
                    "-m",
                    "wyoming_piper",
                    "--uri",
                    &format!("tcp://127.0.0.1:{tts_port}"),
                    "--voice",
                    "en_US-joe-medium",
                    "--data-dir",
                ])
                .arg(&models)
                .arg("--download-dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_listening(
            &format!("127.0.0.1:{asr_port}"),
            "wyoming-faster-whisper",
            Duration::from_secs(120),
        )?;
        wait_listening(
            &format!("127.0.0.1:{tts_port}"),
            "wyoming-piper",
            Duration::from_secs(120),
        )?;
        let (their_asr, _) = wyoming_ms(python, asr_port, "asr", &jfk_arg, repetitions)?;
        let (their_tts, _) = wyoming_ms(python, tts_port, "tts", sentence, repetitions)?;
        header += &format!(" {:>12} {:>10}", "wyoming-*", "ratio");
        asr_row += &format!(" {their_asr:>12.1} {:>9.2}x", their_asr / ours_asr);
        tts_row += &format!(" {their_tts:>12.1} {:>9.2}x", their_tts / ours_tts);
        println!("(peers: wyoming-faster-whisper 3.8.1 on the same CTranslate2 tiny.en, wyoming-piper 2.5.2 on the same voice; ratio = theirs / ours)");
    } else {
        println!("(no --wyoming-python: wyoming-faster-whisper and wyoming-piper left out; scripts/bench-bridges.sh installs them)");
    }
    println!("{header}\n{asr_row}\n{tts_row}");
    println!("transcript heard: {heard}");
    println!(
        "\nbridges' resident memory: http {:.0} MB, wyoming {:.0} MB",
        resident_mb(http_server.pid()),
        resident_mb(wyoming_server.pid())
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
