//! The command line: one [`Mode`] computed from the arguments, which the `cpipe` binary
//! dispatches on. `--serve KIND` has flags of its own kind's ([`crate::serve`]); everything
//! else is parsed here.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::{bench, kinds, serve};

/// Examples and exit codes, shown in `--help` after the server kinds.
const EXAMPLES_AND_EXIT_CODES: &str = "\
Examples:
  cpipe --serve chat --model smollm2 --system 'You are a helpful assistant.' &
                                               a resident LLM (installed by scripts/fetch-models.sh)
  cpipe chat chat --text --data 'What is the capital of France? Answer in one word.'
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
  cpipe echo stream -j n=3 -j text=hi --text
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
#[command(name = "cpipe", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A subcommand, instead of a request.
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

    /// Run a server of this kind until `stop`, Ctrl-C or SIGTERM; the kinds are listed below,
    /// and `cpipe --serve KIND --help` shows each one's flags.
    #[arg(long, value_name = "KIND", value_parser = kinds::names())]
    pub serve: Option<String>,

    /// More logging on stderr (-v: debug, -vv: trace). CPIPE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Subcommands (a server named like one is reached by its path, e.g. /tmp/tool-bench).
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// A live terminal view of every server: state, model, requests and tokens per second,
    /// their events; send any command, start new servers. `cpipe` alone in a terminal opens it.
    Dashboard {
        /// Directory holding the pipes.
        #[arg(long, env = "CPIPE_DIR", default_value = pipe_core::paths::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Benchmarks that compare cpipe against anchors measured in the same run.
    Bench {
        /// Which benchmark.
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

impl Failure {
    /// The process exit code for this failure (listed in `--help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Remote => 1,
            Self::Usage(_) => 2,
            Self::Interrupted => 130,
            Self::Other(error) => other_exit_code(error),
        }
    }
}

fn other_exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<pipe_core::Error>() {
        Some(pipe_core::Error::NotRunning(_) | pipe_core::Error::Orphaned(_)) => 3,
        Some(pipe_core::Error::InvalidName(_)) => 2,
        Some(pipe_core::Error::Timeout { .. }) => 4,
        Some(pipe_core::Error::Remote { .. }) => 1,
        _ => 5,
    }
}

/// What one run of `cpipe` does.
pub enum Mode {
    /// `--serve KIND`: run a server.
    Serve(serve::Serve),
    /// `bench ...`.
    Bench(bench::BenchKind),
    /// `import-whisper FOLDER OUTPUT`.
    ImportWhisper {
        /// The CTranslate2 folder.
        folder: PathBuf,
        /// The GGML file to write.
        output: PathBuf,
    },
    /// `dashboard`, or no arguments in a terminal: the terminal UI.
    Dashboard {
        /// The pipe directory.
        dir: PathBuf,
    },
    /// `mcp`: serve the live servers to an agent.
    Mcp {
        /// The pipe directory.
        dir: PathBuf,
    },
    /// `--list`.
    List(Cli),
    /// `--pid`.
    Pids(Cli),
    /// `--clear`.
    Clear(Cli),
    /// `NAME CMD`: one request.
    Query(Cli),
}

impl Mode {
    /// Parses the process's arguments; `--help`, `--version` and usage errors print and exit,
    /// as clap does.
    pub fn from_args() -> Result<(Self, u8), Failure> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let command = command();
        if let Some(kind) = serve::kind_in(&command, &args) {
            let serve = serve::Serve::parse(&kind, &args)?;
            let verbose = serve.verbose();
            return Ok((Self::Serve(serve), verbose));
        }
        let matches = command.get_matches_from(args);
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let verbose = cli.verbose;
        let mode = match cli.command {
            Some(Subcommand::Bench { which }) => Self::Bench(which),
            Some(Subcommand::ImportWhisper { folder, output }) => {
                Self::ImportWhisper { folder, output }
            }
            Some(Subcommand::Mcp { dir }) => Self::Mcp { dir },
            Some(Subcommand::Dashboard { dir }) => Self::Dashboard { dir },
            None if cli.list => Self::List(cli),
            None if cli.pid => Self::Pids(cli),
            None if cli.clear => Self::Clear(cli),
            None if cli.target.is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stdout()) =>
            {
                Self::Dashboard { dir: cli.dir }
            }
            None => Self::Query(cli),
        };
        Ok((mode, verbose))
    }
}

/// The clap command, with the server kinds listed from the registry after the options.
pub fn command() -> clap::Command {
    Cli::command().after_help(format!("{}\n{EXAMPLES_AND_EXIT_CODES}", kinds::overview()))
}
