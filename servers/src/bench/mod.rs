//! `cpipe bench`: benchmarks that measure cpipe against an anchor in the same run and print
//! the ratios.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pipe_core::{Client, ConnectOptions};
use serde_json::Value;

pub mod bridges;
pub mod chaos;
pub mod chat;
pub mod clients;
pub mod pipes;
pub mod search;
pub mod stt;
#[cfg(feature = "tts")]
pub mod tts;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchKind {
    /// pipe-core round trip against a raw FIFO, a Unix socket and HTTP keep-alive; streamed
    /// events per second to 1, 16 and 64 subscribers.
    Pipes(pipes::PipesBench),
    /// The LLM engine against llama.cpp's llama-bench on the same GGUF and thread count, and a
    /// warm server request against a fresh process.
    Chat(chat::ChatBench),
    /// The tts server against piper-tts on the same voice and sentences: real-time factor,
    /// time to first audio; streamed first audio; with --pipeline, chat → tts to first word.
    #[cfg(feature = "tts")]
    Tts(tts::TtsBench),
    /// The stt server against whisper.cpp's CLI (same GGML) and faster-whisper int8 (same
    /// CTranslate2 folder): real-time factor on the same clips; end of speech → transcript.
    Stt(stt::SttBench),
    /// The embedder against sentence-transformers (same weights and sentences), and the search
    /// server against Chroma's embedded client (same vectors): ingest, search latency, recall,
    /// disk and memory.
    Search(search::SearchBench),
    /// The bridges: what `--serve http` adds over the pipe (first token, token gaps,
    /// transcription and speech round trips), the http bridge against llama-server's own API,
    /// and `--serve wyoming` against wyoming-faster-whisper and wyoming-piper.
    Bridges(bridges::BridgesBench),
    /// The servers under hostile and careless use, bounded in time: 16 chat clients with
    /// cancels and kills, leaks over many requests per model server, SIGSTOP, kill -9 and
    /// restart, another user. Prints what was tried and what happened.
    Chaos(chaos::ChaosBench),
    /// One subscriber process of the pipes benchmark (internal).
    #[command(hide = true)]
    Subscriber {
        /// Events to stream and verify.
        #[arg(long)]
        events: u64,
    },
}

/// Where the anchors' build scripts put them: `CPIPE_TOOLS`, else `~/.cache/cpipe/tools`.
pub fn tools_dir() -> std::path::PathBuf {
    std::env::var_os("CPIPE_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/cpipe/tools")
        })
}

/// Runs the chosen benchmark.
pub fn run(which: &BenchKind) -> anyhow::Result<()> {
    match which {
        BenchKind::Pipes(options) => pipes::run(options),
        BenchKind::Chat(options) => chat::run(options),
        #[cfg(feature = "tts")]
        BenchKind::Tts(options) => tts::run(options),
        BenchKind::Stt(options) => stt::run(options),
        BenchKind::Search(options) => search::run(options),
        BenchKind::Bridges(options) => bridges::run(options),
        BenchKind::Chaos(options) => chaos::run(options),
        BenchKind::Subscriber { events } => pipes::subscriber(*events),
    }
}

/// Resident memory of a process, in MB (0 when it cannot be read).
pub fn resident_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The median of some measurements (the upper middle one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A server of this binary in a private directory, stopped on drop.
pub struct BenchServer {
    child: Child,
}

impl BenchServer {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cpipe --serve ARGS` of this binary with its pipes in `dir`.
pub fn serve(dir: &Path, args: &[&str]) -> Result<BenchServer> {
    let child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()?;
    Ok(BenchServer { child })
}

/// Connects to `name` once it has loaded its model (any state but `loading`; stt rests at
/// `ready` or `listening`, the others at `idle`).
pub fn connect_ready(dir: &Path, name: &str) -> Result<Client> {
    let options = ConnectOptions {
        dir: dir.into(),
        timeout: Some(Duration::from_secs(60)),
    };
    let start = Instant::now();
    let mut client = loop {
        match Client::connect_with(name, &options) {
            Ok(c) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => bail!("the {name} server did not start: {e}"),
        }
    };
    loop {
        let state = client.call("get_state", Value::Null)?;
        match state.first().and_then(|e| e.str("state")) {
            Some("error") => bail!("the {name} server failed to load its model"),
            Some("loading") | None => {
                if start.elapsed() > Duration::from_secs(60) {
                    bail!("{name} did not load its model within a minute");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(_) => return Ok(client),
        }
    }
}
