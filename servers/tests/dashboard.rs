//! `cpipe dashboard` in a real terminal: tmux runs it, keys are sent as a user types them, and
//! the screen is read back (tmux is installed by scripts/install-system-deps.sh).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmux server of this test's own, so the machine's sessions are left alone.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(dir: &TestDir, width: u16, height: u16) -> Self {
        let tmux = Self {
            socket: format!("cpipe-dashboard-{}", std::process::id()),
        };
        let exit = dir.path().join("exit");
        let shell = format!(
            "CPIPE_DIR={} {} dashboard; echo $? > {}; sleep 60",
            dir.path().display(),
            cpipe_bin(),
            exit.display()
        );
        let (w, h) = (width.to_string(), height.to_string());
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "dash",
            "-x",
            &w,
            "-y",
            &h,
            &shell,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs (apt-get install tmux)");
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn keys(&self, keys: &[&str]) {
        for key in keys {
            self.run(&["send-keys", "-t", "dash", key]);
        }
    }

    fn typed(&self, text: &str) {
        self.run(&["send-keys", "-t", "dash", "-l", "--", text]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "dash"])
    }

    /// Waits until the screen shows `what`; the screen otherwise.
    fn shows(&self, what: &str) -> Result<String, String> {
        let mut screen = String::new();
        if eventually(Duration::from_secs(15), || {
            screen = self.screen();
            screen.contains(what)
        }) {
            Ok(screen)
        } else {
            Err(screen)
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[test]
fn the_dashboard_shows_servers_sends_commands_starts_servers_and_survives_a_death() {
    let dir = TestDir::new("dashboard");
    let mut echo = dir.serve("echo", &[]);
    let tmux = Tmux::start(&dir, 120, 35);
    let screen = tmux
        .shows("running")
        .unwrap_or_else(|s| panic!("no live server:\n{s}"));
    assert!(
        screen.contains("echo") && screen.contains("alive"),
        "{screen}"
    );

    // A command from the list, its arguments from the form, its events in the panel.
    tmux.keys(&["Enter"]);
    tmux.shows("Streams n token events")
        .unwrap_or_else(|s| panic!("no command list:\n{s}"));
    tmux.typed("stre");
    tmux.keys(&["Enter"]);
    tmux.shows("(integer, required)")
        .unwrap_or_else(|s| panic!("no form:\n{s}"));
    tmux.typed("3");
    tmux.keys(&["Tab"]);
    tmux.typed("hi");
    tmux.keys(&["Enter"]);
    let screen = tmux
        .shows("done=true")
        .unwrap_or_else(|s| panic!("no events:\n{s}"));
    assert!(screen.contains("token text=hi done=false i=2"), "{screen}");

    // A new server, started from the dashboard, with its log shown.
    // The launch window lists the kinds in the registry's order, as `--serve` names them.
    let kinds = text(&dir.run(&["--serve", "nosuch"]).stderr);
    let before_echo = kinds
        .split(": ")
        .last()
        .and_then(|list| list.lines().next())
        .and_then(|list| list.split(", ").position(|k| k == "echo"))
        .unwrap_or_else(|| panic!("no kinds listed: {kinds}"));
    tmux.keys(&["n"]);
    tmux.keys(&vec!["Right"; before_echo]);
    tmux.typed("--name second");
    tmux.keys(&["Enter"]);
    tmux.shows("started a echo server named second")
        .unwrap_or_else(|s| panic!("not started:\n{s}"));
    // Its row, once the dashboard has found its pipe (a second at most).
    tmux.shows("│  second")
        .unwrap_or_else(|s| panic!("no row:\n{s}"));
    tmux.keys(&["Down"]);
    tmux.shows("log: second").unwrap_or_else(|s| panic!("{s}"));
    tmux.shows("listening on")
        .unwrap_or_else(|s| panic!("no log:\n{s}"));

    // A server that dies while shown is shown dead; the dashboard goes on.
    echo.kill();
    tmux.shows("dead (orphaned pipe)")
        .unwrap_or_else(|s| panic!("death not shown:\n{s}"));

    // A smaller terminal, then quitting cleanly.
    tmux.run(&["resize-window", "-t", "dash", "-x", "70", "-y", "20"]);
    tmux.shows("second")
        .unwrap_or_else(|s| panic!("after a resize:\n{s}"));
    tmux.keys(&["s"]);
    tmux.shows("sent stop to second")
        .unwrap_or_else(|s| panic!("{s}"));
    // The server it started stops: nothing is alive any more.
    let mut screen = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            screen = tmux.screen();
            !screen.contains("alive")
        }),
        "the started server did not stop:\n{screen}"
    );
    tmux.keys(&["q"]);
    let exit = dir.path().join("exit");
    assert!(
        eventually(Duration::from_secs(10), || exit.exists()),
        "the dashboard did not quit:\n{}",
        tmux.screen()
    );
    assert_eq!(std::fs::read_to_string(exit).unwrap().trim(), "0");
}
