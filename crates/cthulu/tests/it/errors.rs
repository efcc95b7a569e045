//! Exit codes of failures: not found (3), unreachable (4), usage (2).

use crate::support::{free_port, TestServer, BINARY};

#[test]
fn unknown_sandbox_exits_3() {
    let server = TestServer::start();
    for args in [
        vec!["sandbox", "get", "nosuchsandbox"],
        vec!["sandbox", "exec", "nosuchsandbox", "--", "true"],
        vec!["sandbox", "stop", "nosuchsandbox"],
    ] {
        let outcome = server.run(&args);
        assert_eq!(outcome.code, 3, "{args:?}: {outcome:?}");
        assert!(outcome.stderr.starts_with("error: "), "{outcome:?}");
        assert!(outcome.stdout.is_empty(), "{outcome:?}");
    }
}

#[test]
fn unreachable_server_exits_4_with_a_hint() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let output = std::process::Command::new(BINARY)
        .args(["--url", &url, "sandbox", "ls"])
        .env_remove("CTHULU_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not reachable"), "{stderr}");
    assert!(
        stderr.contains("hint: start it with `cthulu serve`"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let output = std::process::Command::new(BINARY)
        .args(["sandbox", "create", "--memory", "lots"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
