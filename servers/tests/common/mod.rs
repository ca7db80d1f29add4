//! Shared helpers for the end-to-end tests: real `cpipe` processes, real FIFOs, each test in
//! its own pipe directory.

#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cpipe binary under test.
pub fn cpipe_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cpipe")
}

/// A fresh pipe directory, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Not under /tmp: a named-pipes server scans all of /tmp at start and trips over
        // pipes that other tests create and remove meanwhile.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cpipe-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `cpipe` with `--dir` set to this directory.
    pub fn cpipe(&self) -> Command {
        self.command(cpipe_bin())
    }

    /// `program` in this directory's environment (`CPIPE_DIR` set, no `CPIPE_LOG`).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("CPIPE_DIR", &self.0).env_remove("CPIPE_LOG");
        cmd
    }

    /// Runs `cpipe ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cpipe()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `cpipe ARGS` (a streaming request) and returns once it has printed output.
    pub fn streaming(&self, args: &[&str]) -> Child {
        let mut child = self
            .cpipe()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = [0u8; 32];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        child
    }

    /// Starts `cpipe --serve KIND ARGS` and waits until it answers ping.
    pub fn serve(&self, kind: &str, args: &[&str]) -> Server {
        self.serve_under(&[], kind, args)
    }

    /// Starts `WRAPPER... cpipe --serve KIND ARGS` (a command that ends by running the rest,
    /// such as `unshare`) and waits until the server answers ping.
    pub fn serve_under(&self, wrapper: &[&str], kind: &str, args: &[&str]) -> Server {
        let name = args
            .windows(2)
            .find(|w| w[0] == "--name")
            .map_or(kind.to_string(), |w| w[1].to_string());
        let mut command = match wrapper {
            [] => self.cpipe(),
            [program, rest @ ..] => {
                let mut command = self.command(program);
                command.args(rest).arg(cpipe_bin());
                command
            }
        };
        let child = command
            .args(["--serve", kind])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let server = Server { child, name };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(&[&server.name, "ping", "--timeout", "2"]);
            if out.status.success() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "server {} did not come up: {}",
                server.name,
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl TestDir {
    /// Starts `cpipe --serve KIND ARGS` and waits until its model has loaded (any state but
    /// `loading` and `error`).
    pub fn serve_loaded(&self, kind: &str, args: &[&str]) -> Server {
        let server = self.serve(kind, args);
        let name = server.name.clone();
        assert!(
            eventually(Duration::from_secs(120), || !matches!(
                self.state_of(&name).as_str(),
                "loading" | "error"
            )),
            "the {kind} server did not load its model: state {}",
            self.state_of(&name)
        );
        server
    }

    /// Server `name`'s state, as `get_state` answers it.
    pub fn state_of(&self, name: &str) -> String {
        let out = self.run(&[name, "get_state"]);
        json_lines(&out)
            .first()
            .and_then(|e| e["state"].as_str())
            .unwrap_or("")
            .to_string()
    }

    /// A client of server `name` that waits up to `timeout` for each reply.
    pub fn client_of(&self, name: &str, timeout: Duration) -> pipe_core::Client {
        let options = pipe_core::ConnectOptions {
            dir: self.0.clone(),
            timeout: Some(timeout),
        };
        pipe_core::Client::connect_with(name, &options).unwrap()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub name: String,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses each stdout line as JSON.
pub fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Polls `check` until it holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// The server's subscriber count, from `get_state`.
pub fn subscribers(dir: &TestDir, name: &str) -> u64 {
    let out = dir.run(&[name, "get_state"]);
    let events = json_lines(&out);
    events[0]["subscribers"].as_u64().unwrap()
}

pub fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
}

/// A hand-made named-pipes client speaking raw bytes, like the Python library does: it
/// reads its own `tool-NAME-PID` and writes to the shared pipe. `pid` is this test process.
pub struct RawClient {
    pub pid: u32,
    pub events: File,
    pub upstream: File,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(dir: &Path, name: &str) -> Self {
        let pid = std::process::id();
        let down = dir.join(format!("tool-{name}-{pid}"));
        mkfifo(&down);
        let events = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&down)
            .unwrap();
        let upstream = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(format!("tool-{name}")))
            .unwrap();
        let mut c = Self {
            pid,
            events,
            upstream,
            buf: Vec::new(),
        };
        c.write_raw(format!("{{\"pid\": {pid}, \"cmd\": \"subscribe\"}}\n").as_bytes());
        assert_eq!(
            c.next(Duration::from_secs(5)).unwrap()["event"],
            "subscribed"
        );
        c
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.upstream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, value: Value) {
        let mut line = serde_json::to_vec(&value).unwrap();
        line.push(b'\n');
        self.write_raw(&line);
    }

    /// The next event within `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<Value> {
        let line = self.next_line(wait)?;
        Some(serde_json::from_slice(&line).unwrap())
    }

    /// The next event's line as the server wrote it (its keys in their order), within `wait`.
    pub fn next_line(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=end).collect());
            }
            let mut chunk = [0u8; 65536];
            match self.events.read(&mut chunk) {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

/// A Python that has `package==version` installed: `CPIPE_PYTHON`, else `python3`.
/// scripts/setup-test-deps.sh makes one (.venv) and `.ci/run` sets CPIPE_PYTHON to it.
pub fn python_with(package: &str, version: &str) -> String {
    python_from("CPIPE_PYTHON", package, version)
}

/// A Python that has `package==version` installed, named by the environment variable `var`
/// (else `python3`).
pub fn python_from(var: &str, package: &str, version: &str) -> String {
    let python = std::env::var(var).unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python)
        .args([
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{package}'))"),
        ])
        .output();
    match check {
        Ok(out) if out.status.success() && text(&out.stdout).trim() == version => python,
        _ => panic!(
            "this test needs {package}=={version} in {python}: run scripts/setup-test-deps.sh \
             and set {var} to the venv's python (.ci/run does both)"
        ),
    }
}

/// The path of a helper script in tests/python.
pub fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
        .to_string_lossy()
        .into_owned()
}
