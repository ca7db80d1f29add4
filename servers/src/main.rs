//! `cpipe`: talk to tool servers over named pipes, list them, and serve them. This binary
//! computes one [`Mode`] from its arguments and dispatches; the work is in the `servers`
//! library.

use std::process::ExitCode;

use servers::cli::{Failure, Mode};
use servers::{assets, bench, dashboard, listing, mcp, query};

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
    let missing = models::device::missing_cpu_features();
    if !missing.is_empty() {
        eprintln!(
            "cpipe: this binary was built for CPUs with {}, which this CPU lacks; build cpipe \
             for it on this machine: RUSTFLAGS=\"-C target-cpu=native\" cargo build --release",
            missing.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let result = Mode::from_args().and_then(|(mode, verbose)| {
        models::device::settle_thread_count();
        // The dashboard owns the terminal: log lines on stderr would tear its screen.
        if !matches!(mode, Mode::Dashboard { .. }) {
            init_logging(verbose);
        }
        match mode {
            Mode::Dashboard { dir } => dashboard::run(dir).map_err(Failure::from),
            Mode::Serve(serve) => serve.run(),
            Mode::Bench(which) => bench::run(&which).map_err(Failure::from),
            Mode::ImportWhisper { folder, output } => {
                assets::import_whisper(&folder, &output).map_err(Failure::from)
            }
            Mode::Mcp { dir } => mcp::run(dir).map_err(Failure::from),
            Mode::List(cli) => listing::list(&cli),
            Mode::Pids(cli) => listing::pids(&cli),
            Mode::Clear(cli) => listing::clear(&cli),
            Mode::Query(cli) => query::run(&cli),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            match &failure {
                Failure::Usage(message) => eprintln!("cpipe: {message}\n(see cpipe --help)"),
                Failure::Other(error) => eprintln!("cpipe: {error:#}"),
                Failure::Remote | Failure::Interrupted => {}
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
