//! The `cpipe` command line as a user meets it: the server kinds and their flags come from
//! the registry, and a flag given to a kind that does not take it is refused.

mod common;

use common::*;

#[test]
fn help_lists_every_kind_with_its_flags() {
    let dir = TestDir::new("clihelp");
    let out = dir.run(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for (kind, flag) in [
        ("chat", "--model"),
        ("tts", "--voice"),
        ("stt", "--whisper"),
        ("echo", "--name"),
    ] {
        assert!(
            help.contains(&format!("  {kind} ")),
            "{kind} missing:\n{help}"
        );
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
    let out = dir.run(&["--serve", "stt", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("--whisper") && help.contains("--listen"),
        "{help}"
    );
    assert!(
        !help.contains("--model"),
        "chat's flag in stt's help:\n{help}"
    );
}

#[test]
fn a_flag_of_another_kind_is_refused_with_the_kinds_own() {
    let dir = TestDir::new("cliwrong");
    let out = dir.run(&["--serve", "stt", "--model", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let error = text(&out.stderr);
    assert!(error.contains("--model"), "{error}");
    assert!(
        error.contains("The stt server takes:") && error.contains("--whisper"),
        "{error}"
    );

    let out = dir.run(&["--serve", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("chat, tts, stt, search, http, wyoming, echo"),
        "{}",
        text(&out.stderr)
    );

    // The old order still works: a flag before --serve is the kind's.
    let out = dir.run(&["--name", "x", "--serve", "echo", "--stall-timeout", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--stall-timeout must be a positive"));
}

#[test]
fn the_echo_examples_in_help_work_as_written() {
    let dir = TestDir::new("cliexamples");
    let help = text(&dir.run(&["--help"]).stdout);
    let _server = dir.serve("echo", &[]);
    let bin = std::path::Path::new(cpipe_bin()).parent().unwrap();
    let examples: Vec<&str> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("cpipe echo "))
        // An example's comment follows two or more spaces.
        .map(|rest| rest.split("  ").next().unwrap().trim())
        .collect();
    assert!(examples.len() >= 4, "too few echo examples:\n{help}");
    for example in examples {
        // Through a shell, as a user types it; `stop` last, as the help lists it.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpipe echo {example}"))
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("CPIPE_DIR", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`cpipe echo {example}` failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// Ctrl-C during a stream that never pauses cancels the request on the server and exits 130.
#[test]
fn ctrl_c_cancels_a_fast_stream() {
    let dir = TestDir::new("cli-ctrlc");
    let _server = dir.serve("echo", &[]);
    let mut child = dir.streaming(&["echo", "stream", "-j", "n=100000000", "--timeout", "0"]);
    // SAFETY: kill(2) takes no pointers.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut stdout = child.stdout.take().unwrap();
    // Drain what it prints until it exits (the most tokens the echo server streams, 10^8, take minutes).
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let mut status = None;
    assert!(
        eventually(std::time::Duration::from_secs(30), || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "Ctrl-C did not stop the stream"
    );
    drain.join().unwrap().unwrap();
    assert_eq!(status.unwrap().code(), Some(130));
    // The server is free again.
    assert!(dir.run(&["echo", "ping"]).status.success());
}
