//! The chaos suite's short run (`cpipe bench chaos --short`): sixteen chat clients with cancels
//! and kills, leaks over sequential requests to every model server, SIGSTOP and SIGCONT,
//! kill -9 and restart, another user. The full run's figures are in the README.

mod common;

use common::*;

#[test]
fn the_short_chaos_run_holds() {
    let out = std::process::Command::new(cpipe_bin())
        .args(["bench", "chaos", "--short"])
        .env_remove("CPIPE_DIR")
        .output()
        .unwrap();
    let table = text(&out.stdout);
    println!("{table}");
    assert!(
        out.status.success(),
        "the chaos run did not hold:\n{table}\n{}",
        text(&out.stderr)
    );
    assert!(table.contains("checks held"), "{table}");
}
