//! `cpipe bench`: benchmarks that measure cpipe against an anchor in the same run and print
//! the ratios.

pub mod chat;
pub mod pipes;
pub mod stt;
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
    Tts(tts::TtsBench),
    /// The stt server against whisper.cpp's CLI (same GGML) and faster-whisper int8 (same
    /// CTranslate2 folder): real-time factor on the same clips; end of speech → transcript.
    Stt(stt::SttBench),
    /// One subscriber process of the pipes benchmark (internal).
    #[command(hide = true)]
    Subscriber {
        /// Events to stream and verify.
        #[arg(long)]
        events: u64,
    },
}

/// Runs the chosen benchmark.
pub fn run(which: &BenchKind) -> anyhow::Result<()> {
    match which {
        BenchKind::Pipes(options) => pipes::run(options),
        BenchKind::Chat(options) => chat::run(options),
        BenchKind::Tts(options) => tts::run(options),
        BenchKind::Stt(options) => stt::run(options),
        BenchKind::Subscriber { events } => pipes::subscriber(*events),
    }
}
