//! The server kinds, registered in one place ([`KINDS`]). A kind is one module that declares
//! a [`Kind`]: its name, summary, help text (`skills/cpipe/NAME.md`), its own flags, and how
//! it builds its server (commands and engine). `--serve`, `cpipe --help` and
//! `cpipe --serve KIND --help` all read this list.

pub mod chat;
pub mod echo;
pub mod http;
pub mod search;
pub mod stt;
#[cfg(feature = "tts")]
pub mod tts;
pub mod wyoming;

use clap::Args;
use pipe_core::ToolServer;

/// Every server kind `cpipe --serve` can run, in the order `--help` lists them.
pub const KINDS: &[&Kind] = &[
    &chat::KIND,
    #[cfg(feature = "tts")]
    &tts::KIND,
    &stt::KIND,
    &search::KIND,
    &http::KIND,
    &wyoming::KIND,
    &echo::KIND,
];

/// What a server kind declares.
pub struct Kind {
    /// The name `--serve` takes, and the default name to serve under.
    pub name: &'static str,
    /// One line on what it does: `--help` shows it and `get_description` answers it.
    pub summary: &'static str,
    /// What `get_help` answers: this kind's part of the cpipe skill (`skills/cpipe/`).
    pub help: &'static str,
    /// Adds the kind's own flags (a clap `Args` type's `augment_args`).
    pub args: fn(clap::Command) -> clap::Command,
    /// Builds the server from the parsed flags, on a builder already named, placed and
    /// described: bind it, register the commands, start the engine.
    pub build: fn(&clap::ArgMatches, pipe_core::Builder) -> anyhow::Result<ToolServer>,
}

impl Kind {
    /// `cpipe --serve KIND`'s command line: the flags every server takes, then the kind's.
    pub fn command(&self) -> clap::Command {
        let command = clap::Command::new("cpipe")
            .about(self.summary)
            .override_usage(format!("cpipe --serve {} [OPTIONS]", self.name));
        (self.args)(crate::serve::ServeArgs::augment_args(command))
    }
}

/// The kind named `name`.
pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().copied().find(|kind| kind.name == name)
}

/// The kinds' names.
pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|kind| kind.name).collect()
}

/// The long flags of a command (`--model`, ...), without help and version.
pub fn flags(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version"))
        .map(|long| format!("--{long}"))
        .collect()
}

/// The kinds with their summaries and own flags, for `cpipe --help`.
pub fn overview() -> String {
    let common = flags(&crate::serve::ServeArgs::augment_args(clap::Command::new(
        "",
    )));
    let mut text =
        String::from("Server kinds (cpipe --serve KIND --help shows one kind's flags):\n");
    for kind in KINDS {
        let own: Vec<String> = flags(&kind.command())
            .into_iter()
            .filter(|flag| !common.contains(flag))
            .collect();
        text += &format!("  {:<6} {}\n", kind.name, kind.summary);
        if !own.is_empty() {
            text += &format!("         {}\n", own.join(" "));
        }
    }
    text += &format!("  every kind also takes: {}\n", common.join(" "));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_unique_name_help_and_a_valid_command_line() {
        let mut names = names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        for kind in KINDS {
            assert!(!kind.help.trim().is_empty(), "{} has no help", kind.name);
            kind.command().debug_assert();
        }
    }

    #[test]
    fn the_overview_lists_every_kind_with_its_flags() {
        let text = overview();
        for kind in KINDS {
            assert!(text.contains(kind.summary));
        }
        assert!(text.contains("--model") && text.contains("--whisper") && text.contains("--voice"));
    }
}
