//! `cpipe --serve KIND`: run a server until `stop`, Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::Context;
use pipe_core::Limits;

use crate::{echo, Cli, Failure};

/// Starts the server of `kind` and blocks until it stops.
pub fn run(kind: &str, cli: &Cli) -> Result<(), Failure> {
    if !cli.stall_timeout.is_finite() || cli.stall_timeout <= 0.0 {
        return Err(Failure::Usage(format!(
            "--stall-timeout must be a positive number of seconds, got {}",
            cli.stall_timeout
        )));
    }
    let name = cli.name.as_deref().unwrap_or(kind);
    let limits = Limits {
        stall_timeout: Duration::from_secs_f64(cli.stall_timeout),
        max_request_bytes: cli.max_request_bytes,
        ..Limits::default()
    };
    let mut server = match kind {
        "chat" => {
            let source = crate::chat::model_source(&cli.model)?;
            let builder = pipe_core::ToolServer::builder(name)
                .dir(&cli.dir)
                .limits(limits);
            crate::chat::build(
                builder,
                crate::chat::ChatOptions {
                    source,
                    tokenizer: cli.tokenizer.clone(),
                    system: cli.system.clone(),
                },
            )?
        }
        "tts" => {
            let voice = crate::assets::piper_voice(&cli.voice)?;
            let builder = pipe_core::ToolServer::builder(name)
                .dir(&cli.dir)
                .limits(limits);
            crate::tts::build(
                builder,
                crate::tts::TtsOptions {
                    voice,
                    runtime: Some(crate::assets::onnx_runtime()),
                    playback: cli.playback,
                    wav: cli.wav.clone(),
                },
            )?
        }
        "stt" => {
            let builder = pipe_core::ToolServer::builder(name)
                .dir(&cli.dir)
                .limits(limits);
            crate::stt::build(
                builder,
                crate::stt::SttOptions {
                    model: crate::assets::whisper_model(&cli.whisper)?,
                    vad: match &cli.vad {
                        Some(path) => path.clone(),
                        None => crate::assets::offline("silero-vad", "silero_vad.onnx", "whisper")?,
                    },
                    runtime: crate::assets::onnx_runtime(),
                    language: cli.language.clone(),
                    listen: crate::assets::listen_source(&cli.listen)?,
                },
            )?
        }
        "echo" => {
            let mut server = echo::builder(name).dir(&cli.dir).limits(limits).bind()?;
            echo::register(&mut server);
            server
        }
        other => {
            return Err(Failure::Usage(format!(
                "unknown server kind '{other}'; available: chat, tts, stt, echo"
            )))
        }
    };
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
        "{kind} server listening on {}",
        server.pipe_path().display()
    );
    let _ = &mut server;
    server.run()?;
    Ok(())
}
