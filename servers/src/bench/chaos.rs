//! `cpipe bench chaos`: the servers under hostile and careless use, bounded in time. Sixteen
//! chat clients at once, some cancelled and some killed mid-stream; many sequential requests
//! per model server with resident memory, descriptors, threads and pipes compared before and
//! after; a server stopped (SIGSTOP) and continued; a server killed and started again under its
//! name; and another user trying to reach the pipes. It prints what was tried and what
//! happened, and fails if anything did not hold.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pipe_core::{Client, ConnectOptions};
use serde_json::{json, Value};

use super::{connect_ready, serve, BenchServer};

/// Options of `cpipe bench chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosBench {
    /// The short run CI makes: 20 s of load, 20 requests per server, a 3 s stop.
    #[arg(long)]
    pub short: bool,
    /// Seconds of load from the concurrent chat clients (default 180; --short 20).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Sequential requests per model server (default 200; --short 20).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Seconds a server stays stopped (default 30; --short 3).
    #[arg(long)]
    pub stop_seconds: Option<u64>,
}

/// What was tried, what happened, and whether it held.
struct Outcome {
    tried: String,
    happened: String,
    held: bool,
}

/// Runs the chaos suite and prints its table; an error if anything did not hold.
pub fn run(options: &ChaosBench) -> Result<()> {
    let pick = |given: Option<u64>, full: u64, short: u64| {
        given.unwrap_or(if options.short { short } else { full })
    };
    let seconds = pick(options.seconds, 180, 20);
    let requests = pick(options.requests.map(|r| r as u64), 200, 20) as usize;
    let stop_seconds = pick(options.stop_seconds, 30, 3);
    let dir = std::env::temp_dir().join(format!("cpipe-bench-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut outcomes = Vec::new();
    outcomes.push(concurrent_chat(&dir, seconds)?);
    for (kind, args, cmd, request) in model_servers(&dir)? {
        outcomes.push(sequential(&dir, kind, &args, cmd, &request, requests)?);
    }
    outcomes.extend(stopped_and_continued(&dir, stop_seconds)?);
    outcomes.push(killed_and_restarted(&dir)?);
    outcomes.push(another_user(&dir)?);
    let _ = std::fs::remove_dir_all(&dir);

    println!("{:<58} | {:<66} | held", "tried", "what happened");
    println!("{}", "-".repeat(134));
    for o in &outcomes {
        println!(
            "{:<58} | {:<66} | {}",
            o.tried,
            o.happened,
            if o.held { "yes" } else { "NO" }
        );
    }
    let failed = outcomes.iter().filter(|o| !o.held).count();
    ensure!(
        failed == 0,
        "{failed} of {} checks did not hold",
        outcomes.len()
    );
    println!("all {} checks held", outcomes.len());
    Ok(())
}

/// `cpipe ARGS --dir DIR` of this binary.
fn cpipe(dir: &Path, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args).arg("--dir").arg(dir).env_remove("CPIPE_LOG");
    Ok(cmd)
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) takes no pointers; a pid that is gone gives ESRCH, which is ignored.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// A small deterministic random sequence (xorshift), seeded from the clock and printed.
struct Random(u64);

impl Random {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Sixteen clients asking the chat server at once for `seconds`: a quarter of the requests
/// cancelled (Ctrl-C) and a quarter killed after their first token; every other one must end
/// complete.
fn concurrent_chat(dir: &Path, seconds: u64) -> Result<Outcome> {
    let server = serve(dir, &["chat", "--model", "smollm2", "--name", "chat"])?;
    drop(connect_ready(dir, "chat")?);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // complete, cancelled, killed, lost
    let until = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..16u64)
        .map(|i| {
            let (dir, counts) = (dir.to_path_buf(), Arc::clone(&counts));
            std::thread::spawn(move || -> Result<()> {
                let mut random = Random(seed.wrapping_mul(i + 1) | 1);
                while Instant::now() < until {
                    let fate = random.next(4);
                    let outcome = one_chat(&dir, fate)?;
                    counts[outcome].fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a client thread panicked")?;
    }
    let [complete, cancelled, killed, lost] = counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    // The killed clients' pipes are cleaned up by the server's liveness sweep.
    let clean = wait_for(Duration::from_secs(5), || {
        leftover_client_pipes(dir, "chat") == 0
    });
    let alive = Client::connect_with("chat", &options(dir))
        .and_then(|mut c| c.call("ping", Value::Null))
        .is_ok();
    drop(server);
    Ok(Outcome {
        tried: format!("16 chat clients for {seconds} s, 1/4 cancelled, 1/4 kill -9"),
        happened: format!(
            "{complete} complete, {cancelled} cancelled, {killed} killed, {lost} lost; pipes {}; up: {}",
            if clean { "cleaned" } else { "LEFT" },
            if alive { "yes" } else { "NO" }
        ),
        held: lost == 0 && clean && alive && complete > 0,
    })
}

/// One chat request by a client process: `fate` 0 cancels it after its first token (SIGINT),
/// 1 kills the client then (SIGKILL), else it runs to the end. Returns the index to count.
fn one_chat(dir: &Path, fate: u64) -> Result<usize> {
    let mut child = cpipe(
        dir,
        &[
            "chat",
            "chat",
            "-j",
            "max_tokens=24",
            "--timeout",
            "60",
            "--data",
            "Tell me a story.",
        ],
    )?
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = lines.next().transpose()?;
    match (fate, first) {
        (0, Some(_)) => {
            signal(child.id(), libc::SIGINT);
            let status = child.wait()?;
            // 130: cancelled; 0: it had ended before the cancel came.
            Ok(match status.code() {
                Some(130) => 1,
                Some(0) => 0,
                other => {
                    eprintln!("chaos: a cancelled chat client exited with {other:?}");
                    3
                }
            })
        }
        (1, Some(_)) => {
            signal(child.id(), libc::SIGKILL);
            child.wait()?;
            Ok(2)
        }
        (_, first) => {
            let mut last = first.unwrap_or_default();
            for line in lines {
                last = line?;
            }
            let status = child.wait()?;
            // A stream ends with its done token (and its usage), then the request's end.
            let done = last.contains("\"done\"") && last.contains("usage");
            if !(status.success() && done) {
                eprintln!("chaos: a chat client exited with {status}, its last line: {last}");
                return Ok(3);
            }
            Ok(0)
        }
    }
}

fn options(dir: &Path) -> ConnectOptions {
    ConnectOptions {
        dir: dir.to_path_buf(),
        timeout: Some(Duration::from_secs(60)),
    }
}

fn wait_for(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Client pipes of server `name` left in `dir`.
fn leftover_client_pipes(dir: &Path, name: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(pipe_core::paths::parse_client_pipe)
                        .is_some_and(|(server, _)| server == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// The model servers to load, as (kind, flags, command, request) for each whose offline model
/// is installed.
type Load = (&'static str, Vec<String>, &'static str, Value);

fn model_servers(dir: &Path) -> Result<Vec<Load>> {
    // The search database lives apart from the pipes, whose count is compared.
    let db = dir.join("store").join("chaos.db");
    std::fs::create_dir_all(db.parent().expect("a parent"))?;
    let mut servers: Vec<Load> = vec![(
        "chat",
        vec!["--model".into(), "smollm2".into()],
        "chat_blocking",
        json!({"data": "Hi", "max_tokens": 8}),
    )];
    #[cfg(feature = "tts")]
    servers.push((
        "tts",
        vec![
            "--voice".into(),
            "joe".into(),
            "--playback".into(),
            "none".into(),
        ],
        "synthesize",
        json!({"text": "Hello there."}),
    ));
    let jfk = crate::assets::offline("jfk.wav", "jfk.wav", "whisper")?;
    servers.push((
        "stt",
        vec![
            "--whisper".into(),
            "tiny.en".into(),
            "--listen".into(),
            "none".into(),
        ],
        "transcribe",
        json!({"wav": jfk}),
    ));
    servers.push((
        "search",
        vec![
            "--model".into(),
            "minilm".into(),
            "--db".into(),
            db.display().to_string(),
        ],
        "embed",
        json!({"texts": ["a careless client", "a hostile one"]}),
    ));
    Ok(servers)
}

/// The FIFOs in `dir`: servers' and clients' pipes.
fn fifos(dir: &Path) -> usize {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_fifo()))
                .count()
        })
        .unwrap_or(0)
}

/// What a process holds: resident kB, open descriptors, threads.
fn holdings(pid: u32) -> Result<(u64, usize, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((field("VmRSS:"), fds, field("Threads:")))
}

/// `requests` requests one after another, each from a new connection, with what the server
/// holds compared before and after (after one warm-up request).
fn sequential(
    dir: &Path,
    kind: &str,
    args: &[String],
    cmd: &str,
    request: &Value,
    requests: usize,
) -> Result<Outcome> {
    let mut flags: Vec<&str> = vec![kind];
    flags.extend(args.iter().map(String::as_str));
    flags.extend(["--name", kind]);
    let server: BenchServer = serve(dir, &flags)?;
    let ask = || -> Result<()> {
        let mut client = Client::connect_with(kind, &options(dir))?;
        client.call(cmd, request.clone())?;
        Ok(())
    };
    drop(connect_ready(dir, kind)?);
    ask()?;
    std::thread::sleep(Duration::from_millis(500));
    let before = holdings(server.pid())?;
    let pipes_before = fifos(dir);
    let mut failed = 0;
    let mut first_error = None;
    for _ in 0..requests {
        if let Err(e) = ask() {
            failed += 1;
            first_error.get_or_insert(e.to_string());
        }
    }
    if let Some(e) = &first_error {
        eprintln!("chaos: {kind} {cmd}: {e}");
    }
    // Dropped connections are swept within a second; freed memory is given back at rest.
    std::thread::sleep(Duration::from_millis(1500));
    let after = holdings(server.pid())?;
    let pipes_after = fifos(dir);
    drop(server);
    let grown_mb = (after.0 as f64 - before.0 as f64) / 1024.0;
    // Resident memory may settle a little (allocator arenas, caches warming); a leak grows
    // with the requests.
    let held = failed == 0
        && after.1 <= before.1
        && after.2 <= before.2
        && pipes_after <= pipes_before
        && grown_mb < (before.0 as f64 / 1024.0 * 0.05).max(20.0);
    Ok(Outcome {
        tried: format!("{requests} sequential {kind} {cmd} requests"),
        happened: format!(
            "{failed} failed; RSS {:.0}→{:.0} MB, fds {}→{}, threads {}→{}, pipes {}→{}",
            before.0 as f64 / 1024.0,
            after.0 as f64 / 1024.0,
            before.1,
            after.1,
            before.2,
            after.2,
            pipes_before,
            pipes_after
        ),
        held,
    })
}

/// A server stopped with SIGSTOP for `seconds`: a request to it, `cpipe --list` and an MCP
/// client's list_servers give up within their timeouts; once continued, it answers again.
fn stopped_and_continued(dir: &Path, seconds: u64) -> Result<Vec<Outcome>> {
    let server = serve(dir, &["echo", "--name", "frozen"])?;
    drop(connect_ready(dir, "frozen")?);
    signal(server.pid(), libc::SIGSTOP);
    let started = Instant::now();
    let ping = cpipe(dir, &["frozen", "ping", "--timeout", "1"])?.output()?;
    let ping_took = started.elapsed();
    let list = cpipe(dir, &["--list"])?.output()?;
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    let mcp_ok = mcp_lists_servers(dir, "unresponsive")?;
    let rest = Duration::from_secs(seconds).saturating_sub(started.elapsed());
    std::thread::sleep(rest);
    signal(server.pid(), libc::SIGCONT);
    let back = wait_for(Duration::from_secs(10), || {
        cpipe(dir, &["frozen", "ping", "--timeout", "1"])
            .and_then(|mut c| Ok(c.output()?.status.success()))
            .unwrap_or(false)
    });
    let mcp_back = mcp_lists_servers(dir, "alive")?;
    drop(server);
    Ok(vec![
        Outcome {
            tried: format!("server stopped (SIGSTOP) {seconds} s: ping, --list, mcp"),
            happened: format!(
                "ping gave up in {:.1} s (exit {:?}); --list: {}; mcp: {}",
                ping_took.as_secs_f64(),
                ping.status.code(),
                if listed.contains("unresponsive") {
                    "unresponsive"
                } else {
                    "WRONG"
                },
                if mcp_ok { "unresponsive" } else { "WRONG" }
            ),
            held: ping.status.code() == Some(4)
                && ping_took < Duration::from_secs(5)
                && listed.contains("unresponsive")
                && mcp_ok,
        },
        Outcome {
            tried: "the stopped server continued (SIGCONT)".into(),
            happened: format!(
                "ping: {}; mcp: {}",
                if back { "answered" } else { "NO ANSWER" },
                if mcp_back { "alive" } else { "WRONG" }
            ),
            held: back && mcp_back,
        },
    ])
}

/// Whether `cpipe mcp`'s list_servers reports the server `frozen` with `status`.
fn mcp_lists_servers(dir: &Path, status: &str) -> Result<bool> {
    let mut mcp = cpipe(dir, &["mcp"])?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "chaos", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "list_servers", "arguments": {}}}),
    ];
    // Its input stays open until the answer: at end of input an MCP server is done.
    let mut stdin = mcp.stdin.take().context("stdin")?;
    for line in lines {
        use std::io::Write;
        writeln!(stdin, "{line}")?;
    }
    let reply = answer(&mut mcp, 2);
    drop(stdin);
    let _ = mcp.kill();
    let _ = mcp.wait();
    let found = reply.is_some_and(|r| {
        r["result"]["structuredContent"]["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "frozen" && s["status"] == status)
    });
    Ok(found)
}

/// The JSON-RPC answer with `id` from an MCP server's stdout, within 30 s.
fn answer(child: &mut Child, id: u64) -> Option<Value> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["id"] == id {
                    let _ = tx.send(v);
                    return;
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).ok()
}

/// A server killed with SIGKILL, then started again under the same name.
fn killed_and_restarted(dir: &Path) -> Result<Outcome> {
    let first = serve(dir, &["echo", "--name", "phoenix"])?;
    drop(connect_ready(dir, "phoenix")?);
    signal(first.pid(), libc::SIGKILL);
    drop(first); // reaped: its pipe and lock are left as a crash leaves them
    let second = serve(dir, &["echo", "--name", "phoenix"])?;
    let answered = connect_ready(dir, "phoenix")
        .and_then(|mut c| Ok(c.call("ping", Value::Null)?))
        .is_ok();
    drop(second);
    Ok(Outcome {
        tried: "kill -9 a server, start it again under its name".into(),
        happened: if answered {
            "the new one took the name and answers".into()
        } else {
            "the new one did NOT answer".into()
        },
        held: answered,
    })
}

/// Another user (nobody, through setpriv) can neither send to a server nor plant a pipe.
fn another_user(dir: &Path) -> Result<Outcome> {
    let tried = "another user (setpriv nobody): ping, plant a client pipe".to_string();
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || Command::new("setpriv").arg("--version").output().is_err() {
        return Ok(Outcome {
            tried,
            happened: "skipped: needs root and setpriv to act as another user".into(),
            held: true,
        });
    }
    let server = serve(dir, &["echo", "--name", "private"])?;
    drop(connect_ready(dir, "private")?);
    let as_nobody = |program: &Path, args: &[&str]| -> Result<bool> {
        Ok(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success())
    };
    let exe = std::env::current_exe()?;
    let dir_arg = dir.to_string_lossy().into_owned();
    let pinged = as_nobody(
        &exe,
        &["private", "ping", "--timeout", "2", "--dir", &dir_arg],
    )?;
    let planted_path: PathBuf = dir.join("tool-private-424242");
    let planted = as_nobody(
        Path::new("/usr/bin/mkfifo"),
        &[&planted_path.to_string_lossy()],
    )?;
    let served = Client::connect_with("private", &options(dir))
        .and_then(|mut c| c.call("ping", Value::Null))
        .is_ok();
    drop(server);
    Ok(Outcome {
        tried,
        happened: format!(
            "ping {}; pipe {}; the owner still served: {}",
            if pinged { "ANSWERED" } else { "refused" },
            if planted { "PLANTED" } else { "refused" },
            if served { "yes" } else { "NO" }
        ),
        held: !pinged && !planted && served,
    })
}
