//! `cpipe --serve KIND`: parse the flags every server takes plus the kind's own (from the
//! registry, [`crate::kinds`]), build the server, and run it until `stop`, Ctrl-C or SIGTERM.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, FromArgMatches};
use pipe_core::Limits;

use crate::cli::Failure;
use crate::kinds::{self, Kind};

/// The flags every server kind takes.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The kind of server to run.
    #[arg(long, value_name = "KIND")]
    pub serve: String,

    /// The name to serve under (default: the kind).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Directory holding the pipes.
    #[arg(long, env = "CPIPE_DIR", default_value = pipe_core::paths::DEFAULT_DIR)]
    pub dir: PathBuf,

    /// Seconds a client may read nothing while events wait before it is dropped.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub stall_timeout: f64,

    /// The longest request line accepted, in bytes; longer ones get a too_large error.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_request_bytes: usize,

    /// More logging on stderr (-v: debug, -vv: trace). CPIPE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// A parsed `--serve` command line, ready to run.
pub struct Serve {
    kind: &'static Kind,
    common: ServeArgs,
    matches: clap::ArgMatches,
}

/// The kind named by `--serve KIND` (or `--serve=KIND`) in `args`, if it is there as a flag
/// and not as the value of another one; `Some("")` when `--serve` has no value.
pub fn kind_in(command: &clap::Command, args: &[OsString]) -> Option<String> {
    let takes_value = |flag: &str| {
        command.get_arguments().any(|arg| {
            arg.get_action().takes_values()
                && match flag.strip_prefix("--") {
                    Some(long) => arg.get_long() == Some(long),
                    None => {
                        flag.len() == 2
                            && arg.get_short().map(String::from) == Some(flag[1..].into())
                    }
                }
        })
    };
    let mut tokens = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(token) = tokens.next() {
        if token == "--" {
            return None;
        }
        if token == "--serve" {
            return Some(tokens.next().map(|k| k.into_owned()).unwrap_or_default());
        }
        if let Some(kind) = token.strip_prefix("--serve=") {
            return Some(kind.into());
        }
        if token.starts_with('-') && !token.contains('=') && takes_value(&token) {
            tokens.next();
        }
    }
    None
}

impl Serve {
    /// Parses `args` as a server of `kind`: the common flags and the kind's own. A flag the
    /// kind does not take is an error that lists the flags it does.
    pub fn parse(kind: &str, args: &[OsString]) -> Result<Self, Failure> {
        let kind = kinds::find(kind).ok_or_else(|| {
            Failure::Usage(format!(
                "--serve needs a server kind; {}: {}",
                if kind.is_empty() {
                    "none was given".to_string()
                } else {
                    format!("'{kind}' is not one")
                },
                kinds::names().join(", ")
            ))
        })?;
        let command = kind.command();
        let matches = match command.clone().try_get_matches_from(args) {
            Ok(matches) => matches,
            Err(error) if error.kind() == clap::error::ErrorKind::UnknownArgument => {
                eprint!("{}", error.render().ansi());
                eprintln!(
                    "\nThe {} server takes: {}\n(see cpipe --serve {} --help)",
                    kind.name,
                    kinds::flags(&command).join(", "),
                    kind.name
                );
                std::process::exit(2);
            }
            Err(error) => error.exit(),
        };
        let common = ServeArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        Ok(Self {
            kind,
            common,
            matches,
        })
    }

    /// The `-v` count.
    pub fn verbose(&self) -> u8 {
        self.common.verbose
    }

    /// Builds the server and blocks until it stops.
    pub fn run(self) -> Result<(), Failure> {
        let Self {
            kind,
            common,
            matches,
        } = self;
        if !common.stall_timeout.is_finite() || common.stall_timeout <= 0.0 {
            return Err(Failure::Usage(format!(
                "--stall-timeout must be a positive number of seconds, got {}",
                common.stall_timeout
            )));
        }
        crate::engine::allocate_from_one_arena();
        let name = common.name.as_deref().unwrap_or(kind.name);
        let limits = Limits {
            stall_timeout: Duration::from_secs_f64(common.stall_timeout),
            max_request_bytes: common.max_request_bytes,
            ..Limits::default()
        };
        let builder = pipe_core::ToolServer::builder(name)
            .dir(&common.dir)
            .limits(limits)
            .description(kind.summary)
            .help(kind.help)
            .interface(kind.name);
        let server = (kind.build)(&matches, builder)?;
        let handle = server.handle_ref();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])
        .context("cannot install signal handlers")?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "stopping on signal");
                    handle.stop();
                }
            })
            .context("cannot start the signal thread")?;
        eprintln!(
            "{} server listening on {}",
            kind.name,
            server.pipe_path().display()
        );
        server.run()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn serve_is_found_as_a_flag_not_as_a_value() {
        let command = crate::cli::command();
        let kind = |line: &str| kind_in(&command, &args(line));
        assert_eq!(
            kind("cpipe --serve chat --model x").as_deref(),
            Some("chat")
        );
        assert_eq!(kind("cpipe -v --serve=tts").as_deref(), Some("tts"));
        assert_eq!(kind("cpipe --serve").as_deref(), Some(""));
        assert_eq!(kind("cpipe echo echo --data --serve"), None);
        assert_eq!(kind("cpipe echo echo -j --serve"), None);
        assert_eq!(kind("cpipe echo echo -- --serve"), None);
        assert_eq!(kind("cpipe --list"), None);
    }

    #[test]
    fn a_flag_of_another_kind_is_refused_and_the_kinds_own_are_taken() {
        let kind = kinds::find("stt").unwrap();
        let error = kind
            .command()
            .try_get_matches_from(args("cpipe --serve stt --model x"))
            .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
        let matches = kind
            .command()
            .try_get_matches_from(args("cpipe --serve stt --whisper tiny.en --name s2"))
            .unwrap();
        let common = ServeArgs::from_arg_matches(&matches).unwrap();
        assert_eq!(common.name.as_deref(), Some("s2"));
    }
}
