//! `cpipe bench pipes`: pipe-core's transport benchmark, with its anchors measured in the same
//! run: a raw FIFO ping-pong, a Unix socket and HTTP/1.1 keep-alive on loopback; then
//! streamed events per second to 1, 16 and 64 subscriber processes, checking that nothing is
//! lost.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pipe_core::{Client, ConnectOptions};
use serde_json::{json, Value};

use crate::kinds::echo;

/// Options of `cpipe bench pipes`.
#[derive(Debug, clap::Args)]
pub struct PipesBench {
    /// Round trips timed per transport (after 10% warm-up).
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: usize,
    /// Events streamed in total in each throughput run, split among the subscribers.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Subscriber counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub subscribers: Vec<usize>,
}

/// Latency figures of one transport, in microseconds.
#[derive(Clone, Copy)]
struct Latency {
    median: f64,
    p99: f64,
}

/// One timed round trip: sends a request and returns the time to its first reply.
type RoundTrip = Box<dyn FnMut() -> Result<Duration>>;

/// Round trips timed back to back before the next transport takes a turn.
const BLOCK: usize = 500;

/// Times every transport `n` times, interleaved in blocks (each turn visits all of them, in a
/// rotating order) so that they all see the same machine conditions, while each block is long
/// enough that how the previous transport left the scheduler fades (a spinning client keeps
/// a CPU awake, which speeds up whatever runs next) before the untimed start of the block ends.
fn measure(transports: &mut [(&str, RoundTrip)], n: usize) -> Result<Vec<Latency>> {
    let warm_up = BLOCK / 10;
    let mut samples = vec![Vec::with_capacity(n); transports.len()];
    for turn in 0..n.div_ceil(BLOCK) {
        for k in 0..transports.len() {
            let j = (turn + k) % transports.len();
            let round_trip = &mut transports[j].1;
            for _ in 0..warm_up {
                round_trip()?;
            }
            for _ in 0..BLOCK.min(n - samples[j].len()) {
                samples[j].push(round_trip()?.as_secs_f64() * 1e6);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            Latency {
                median: s[n / 2],
                p99: s[(n * 99 / 100).min(n - 1)],
            }
        })
        .collect())
}

/// Times a line-in, line-out exchange over any reader/writer pair.
fn line_round_trip(
    mut writer: impl Write + 'static,
    mut reader: impl BufRead + 'static,
) -> RoundTrip {
    let mut line = String::new();
    Box::new(move || {
        let start = Instant::now();
        writer.write_all(b"{\"pid\":1,\"cmd\":\"ping\"}\n")?;
        line.clear();
        ensure!(reader.read_line(&mut line)? > 0, "the echo side closed");
        Ok(start.elapsed())
    })
}

/// Answers each line read with a pong line, until the reader closes.
fn echo_lines(reader: impl BufRead, mut writer: impl Write) -> Result<()> {
    for line in reader.lines() {
        line?;
        writer.write_all(b"{\"event\":\"pong\"}\n")?;
    }
    Ok(())
}

fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cpipe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn mkfifo(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0;
    ensure!(made, "mkfifo {}", path.display());
    Ok(())
}

/// One line each way over two FIFOs, with an echo thread on the other side.
fn raw_fifo(dir: &Path, tag: usize, cpus: Vec<usize>) -> Result<RoundTrip> {
    let (up, down) = (
        dir.join(format!("raw-up-{tag}")),
        dir.join(format!("raw-down-{tag}")),
    );
    mkfifo(&up)?;
    mkfifo(&down)?;
    let (up2, down2) = (up.clone(), down.clone());
    std::thread::spawn(move || -> Result<()> {
        run_on(&cpus)?;
        let reader = BufReader::new(std::fs::File::open(&up2)?);
        let writer = std::fs::OpenOptions::new().write(true).open(&down2)?;
        echo_lines(reader, writer)
    });
    let writer = std::fs::OpenOptions::new().write(true).open(&up)?;
    let reader = BufReader::new(std::fs::File::open(&down)?);
    Ok(line_round_trip(writer, reader))
}

fn unix_socket(dir: &Path, tag: usize, cpus: Vec<usize>) -> Result<RoundTrip> {
    let path = dir.join(format!("bench-{tag}.sock"));
    let listener = UnixListener::bind(&path)?;
    std::thread::spawn(move || -> Result<()> {
        run_on(&cpus)?;
        let (stream, _) = listener.accept()?;
        echo_lines(BufReader::new(stream.try_clone()?), stream)
    });
    let stream = UnixStream::connect(&path)?;
    Ok(line_round_trip(stream.try_clone()?, BufReader::new(stream)))
}

/// Reads one HTTP/1.1 message (headers, then a Content-Length body) from `reader`.
fn read_http(reader: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> Result<bool> {
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            }
        }
    }
    body.resize(length, 0);
    reader.read_exact(body)?;
    Ok(true)
}

fn http_keep_alive(cpus: Vec<usize>) -> Result<RoundTrip> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || -> Result<()> {
        run_on(&cpus)?;
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut body = Vec::new();
        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"event\":\"pong\"}";
        while read_http(&mut reader, &mut body)? {
            writer.write_all(reply)?;
        }
        Ok(())
    });
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let request = format!(
        "POST /ping HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{{\"pid\":1,\"cmd\":\"ping\"}}"
    );
    let mut body = Vec::new();
    Ok(Box::new(move || {
        let start = Instant::now();
        writer.write_all(request.as_bytes())?;
        ensure!(read_http(&mut reader, &mut body)?, "HTTP server closed");
        Ok(start.elapsed())
    }))
}

/// Request -> first event through pipe-core; the rest of the request is read untimed.
fn pipe_core(client: Rc<RefCell<Client>>, cmd: &'static str) -> RoundTrip {
    Box::new(move || {
        let mut client = client.borrow_mut();
        let start = Instant::now();
        let mut events = client.request(cmd, Value::Null)?;
        let first = events.next().context("no reply")??;
        let took = start.elapsed();
        ensure!(first.as_error().is_none(), "error reply: {first}");
        for rest in events {
            rest?;
        }
        Ok(took)
    })
}

/// Runs `subscribers` processes that each stream `events / subscribers` events and verify
/// them; returns (events per second overall, events verified).
fn stream_throughput(dir: &Path, subscribers: usize, events: u64) -> Result<(f64, u64)> {
    let per = events / subscribers as u64;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for _ in 0..subscribers {
        let child = Command::new(&exe)
            .args(["bench", "subscriber", "--events", &per.to_string()])
            .env("CPIPE_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        children.push(child);
    }
    // Each child says "ready" once subscribed; then all start together.
    let mut outputs = Vec::new();
    for child in &mut children {
        let mut out = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        ensure!(
            line.trim() == "ready",
            "subscriber failed to start: {line:?}"
        );
        outputs.push(out);
    }
    let start = Instant::now();
    for child in &mut children {
        child
            .stdin
            .take()
            .context("child stdin")?
            .write_all(b"go\n")?;
    }
    let mut verified = 0;
    for (child, mut out) in children.iter_mut().zip(outputs) {
        let mut line = String::new();
        out.read_line(&mut line)?;
        ensure!(child.wait()?.success(), "a subscriber failed: {line}");
        verified += line
            .trim()
            .strip_prefix("verified ")
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("bad subscriber report {line:?}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((verified as f64 / secs, verified))
}

/// The subscriber process of the throughput runs.
pub fn subscriber(events: u64) -> Result<()> {
    let options = ConnectOptions {
        timeout: Some(Duration::from_secs(60)),
        ..ConnectOptions::default()
    };
    let mut client = Client::connect_with("bench", &options)?;
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let mut expected = 0u64;
    let mut done = false;
    for event in client.request("stream", json!({"n": events, "text": "tok"}))? {
        let event = event?;
        match event.get("i").and_then(Value::as_u64) {
            Some(i) if i == expected => expected += 1,
            Some(i) => bail!("event {i} arrived when {expected} was due"),
            None if event.get("done") == Some(&json!(true)) => done = true,
            None => bail!("unexpected event {event}"),
        }
    }
    ensure!(
        done && expected == events,
        "got {expected} of {events} events"
    );
    println!("verified {expected}");
    Ok(())
}

/// Runs the whole benchmark and prints the tables.
pub fn run(options: &PipesBench) -> Result<()> {
    let dir = scratch_dir()?;
    let result = run_in(&dir, options);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Restricts the calling thread (and the threads it starts later) to `cpus`.
fn run_on(cpus: &[usize]) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "cannot pin a thread to CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The CPUs the client side and the server sides of the round trips may run on.
struct Placement {
    label: &'static str,
    client: Vec<usize>,
    server: Vec<usize>,
}

/// Measures every transport in `placement`, and prints the table.
fn round_trips(dir: &Path, n: usize, tag: usize, placement: &Placement) -> Result<()> {
    let name = format!("bench-rt-{tag}");
    let mut server = pipe_core::ToolServer::builder(&name).dir(dir).bind()?;
    echo::register(&mut server);
    let handle = server.handle_ref();
    let server_cpus = placement.server.clone();
    let server_thread = std::thread::spawn(move || {
        run_on(&server_cpus)?;
        server.run().map_err(anyhow::Error::from)
    });
    run_on(&placement.client)?;
    let connect = ConnectOptions {
        dir: dir.into(),
        ..ConnectOptions::default()
    };
    let client = Rc::new(RefCell::new(Client::connect_with(&name, &connect)?));
    let mut transports: Vec<(&str, RoundTrip)> = vec![
        (
            "raw FIFO ping-pong (anchor)",
            raw_fifo(dir, tag, placement.server.clone())?,
        ),
        (
            "Unix socket",
            unix_socket(dir, tag, placement.server.clone())?,
        ),
        (
            "HTTP/1.1 keep-alive, loopback",
            http_keep_alive(placement.server.clone())?,
        ),
        (
            "pipe-core ping (built-in)",
            pipe_core(Rc::clone(&client), "ping"),
        ),
        (
            "pipe-core echo (handler)",
            pipe_core(Rc::clone(&client), "echo"),
        ),
    ];
    let latencies = measure(&mut transports, n)?;
    let raw = latencies[0];
    for ((name, _), l) in transports.iter().zip(&latencies) {
        println!(
            "{name:<34} {:>9.1} {:>9.1} {:>13.2}x",
            l.median,
            l.p99,
            l.median / raw.median
        );
    }
    drop(transports);
    drop(client);
    handle.stop();
    server_thread
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(())
}

fn run_in(dir: &Path, options: &PipesBench) -> Result<()> {
    let n = options.round_trips.max(100);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all: Vec<usize> = (0..cpus).collect();
    let mut placements = vec![Placement {
        label: "client and server on one CPU",
        client: vec![0],
        server: vec![0],
    }];
    if cpus > 1 {
        placements.push(Placement {
            label: "client and server on different CPUs",
            client: vec![0],
            server: vec![1],
        });
        placements.push(Placement {
            label: "not pinned, placed by the scheduler",
            client: all.clone(),
            server: all.clone(),
        });
    }
    for (tag, placement) in placements.iter().enumerate() {
        println!(
            "Round trip, request -> first event: {} ({n} each, interleaved; microseconds)",
            placement.label
        );
        println!(
            "{:<34} {:>9} {:>9} {:>14}",
            "transport", "median", "p99", "vs raw FIFO"
        );
        round_trips(dir, n, tag, placement)?;
        println!();
    }
    // The throughput runs use every CPU.
    run_on(&all)?;
    let mut server = pipe_core::ToolServer::builder("bench").dir(dir).bind()?;
    echo::register(&mut server);
    let handle = server.handle_ref();
    let server_thread = std::thread::spawn(move || server.run());

    println!(
        "Streamed events to subscriber processes ({} events per run)",
        options.events
    );
    println!(
        "{:<12} {:>14} {:>12} {:>10}",
        "subscribers", "events/s", "verified", "lost"
    );
    for &subscribers in &options.subscribers {
        let (rate, verified) = stream_throughput(dir, subscribers.max(1), options.events)?;
        let expected = options.events / subscribers.max(1) as u64 * subscribers.max(1) as u64;
        println!(
            "{subscribers:<12} {rate:>14.0} {verified:>12} {:>10}",
            expected - verified
        );
    }
    handle.stop();
    server_thread
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok(())
}
