//! Runs each example binary end to end and checks its exit status and output.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{bin} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

fn assert_lines(stdout: &str, expected: &[&str]) {
    for e in expected {
        assert!(stdout.contains(e), "missing {e:?} in output:\n{stdout}");
    }
}

#[test]
fn p2p_exchanges_typed_messages_both_ways_with_heartbeats() {
    let out = run(env!("CARGO_BIN_EXE_p2p"), &[]);
    assert_lines(
        &out,
        &[
            "alice answered: \"hello bob, all good here\" (7 words in the question)",
            "bob answered: \"hello alice, all good here\" (7 words in the question)",
            "heartbeat rtt:",
            "connection status: connected=true",
            "p2p: ok",
        ],
    );
}

#[test]
fn fanout_delivers_the_same_verified_file_to_three_receivers() {
    let out = run(env!("CARGO_BIN_EXE_fanout"), &["8"]);
    assert_eq!(out.matches("matches the source").count(), 3, "{out}");
    assert_eq!(out.matches("verified by receiver").count(), 3, "{out}");
    assert_lines(
        &out,
        &["fanout: ok: all 3 receivers hold the verified file"],
    );
}

#[test]
fn demo_runs_the_main_job_exchange() {
    let out = run(env!("CARGO_BIN_EXE_demo"), &[]);
    assert_lines(
        &out,
        &[
            "hub: progress task-42 55% (transcribe)",
            "gpu-01: cancel task-42",
            "hub: reply: ok=true \"stopped task-42 at 55%\"",
            "file partial-transcript.txt verified",
            "demo: ok",
        ],
    );
}
