//! `cpipe dashboard` (or `cpipe` alone in a terminal): a live view of every server in the pipe
//! directory, their events, a way to send any of their commands and to start new servers.
//! Keyboard-driven, on crossterm, so it works in any terminal and over ssh.

mod app;
mod launch;
mod ui;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use app::App;

/// Runs the dashboard over the servers of `dir` until the user quits.
pub fn run(dir: PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        "the dashboard needs a terminal; for scripts, cpipe --list and cpipe NAME CMD"
    );
    // Restores the terminal on the way out, a panic included (ratatui's hook).
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let mut app = App::new(dir);
    let result = (|| -> anyhow::Result<()> {
        while !app.quit {
            app.update();
            terminal.draw(|frame| ui::draw(frame, &app))?;
            // A resize is redrawn on the next pass; keys are taken as they come.
            if event::poll(Duration::from_millis(200))? {
                if let Event::Key(key) = event::read()? {
                    if key.kind == KeyEventKind::Press {
                        app.key(key);
                    }
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}
