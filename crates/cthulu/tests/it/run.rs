//! `cthulu run`: a throwaway sandbox per command.

use std::io::Write as _;
use std::process::Stdio;

use cthulu_types::SandboxList;

use crate::support::TestServer;

#[test]
fn run_streams_output_and_exits_with_the_command_code() {
    let server = TestServer::start();
    let outcome = server.run(&["run", "--", "sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    assert_eq!(outcome.code, 3, "{outcome:?}");
    assert_eq!(outcome.stdout, "hello\n");
    assert!(outcome.stderr.contains("oops"), "{outcome:?}");

    // The sandbox is gone afterwards.
    let listing = server.ok(&["sandbox", "ls", "--json"]);
    let list: SandboxList = serde_json::from_str(&listing).unwrap();
    assert!(
        list.sandboxes
            .iter()
            .all(|sandbox| sandbox.status == cthulu_types::SandboxStatus::Destroyed),
        "{listing}"
    );
}

#[test]
fn run_forwards_piped_stdin() {
    let server = TestServer::start();
    let mut child = server
        .command(&["run", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"shout\nlouder\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "SHOUT\nLOUDER\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn run_reports_timeouts_as_124() {
    let server = TestServer::start();
    let outcome = server.run(&["run", "--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(outcome.code, 124, "{outcome:?}");
}
