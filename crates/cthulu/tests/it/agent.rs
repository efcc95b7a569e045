//! `cthulu agent run | ls | show | logs | cancel` with the stand-in agent on the host
//! backend.

use std::path::PathBuf;

use crate::support::{fake_agent, TestServer};

fn transcript(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../cthulu-runs/tests/transcripts")
        .join(name)
        .display()
        .to_string()
}

fn agents() -> String {
    let agent = |name: &str, transcript_name: &str, extra: &[&str]| {
        let mut args = vec![
            "--transcript".to_owned(),
            transcript(transcript_name),
            "--chunk-size".to_owned(),
            "300".to_owned(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args.extend(["--".to_owned(), "{prompt}".to_owned()]);
        serde_json::json!({
            "name": name,
            "program": fake_agent().display().to_string(),
            "args": args,
            "output_format": "claude-stream-json",
        })
    };
    serde_json::to_string(&serde_json::json!([
        agent(
            "fake-fix",
            "success.jsonl",
            &["--write", "src/math.rs=fixed", "--delete", "old.txt"]
        ),
        agent("fake-fail", "max_turns.jsonl", &["--exit-code", "1"]),
    ]))
    .unwrap()
}

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/math.rs"), "broken\n").unwrap();
    std::fs::write(dir.path().join("old.txt"), "old\n").unwrap();
    std::fs::create_dir_all(dir.path().join("target")).unwrap();
    std::fs::write(dir.path().join("target/junk"), "junk\n").unwrap();
    dir
}

#[test]
fn agent_run_follows_the_run_prints_the_diff_and_applies_it() {
    let server = TestServer::start_with_agents(&agents());
    let dir = project();
    let workdir = dir.path().display().to_string();
    let outcome = server.run(&[
        "agent",
        "run",
        "--workdir",
        &workdir,
        "--prompt",
        "fix it",
        "--agent",
        "fake-fix",
        "--backend",
        "host",
        "--allowed-tools",
        "Bash,Read,Edit",
        "--exclude",
        "target",
        "--apply",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}\n{}", server.log());
    // Live progress on stderr: text, tool calls and their outcomes, the result line.
    assert!(
        outcome.stderr.contains("→ Bash: cargo test 2>&1 | tail -5"),
        "{outcome:?}"
    );
    assert!(
        outcome.stderr.contains("  ✗ test math::adds ... FAILED"),
        "{outcome:?}"
    );
    assert!(
        outcome
            .stderr
            .contains("■ result: success · 4 turns · $0.0421"),
        "{outcome:?}"
    );
    // The outcome and the diff on stdout.
    assert!(
        outcome.stdout.contains("succeeded · 4 turns · $0.0421"),
        "{outcome:?}"
    );
    assert!(outcome.stdout.contains("-broken\n+fixed\n"), "{outcome:?}");
    assert!(
        outcome.stdout.contains("deleted file mode 100644"),
        "{outcome:?}"
    );
    assert!(!outcome.stdout.contains("target/junk"), "{outcome:?}");
    // --apply wrote it back.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("src/math.rs")).unwrap(),
        "fixed\n"
    );
    assert!(!dir.path().join("old.txt").exists());
    assert!(dir.path().join("target/junk").exists());

    let listing = server.ok(&["agent", "ls"]);
    let run_id = listing
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        listing.contains("succeeded") && listing.contains("fix it"),
        "{listing}"
    );
    let shown = server.ok(&["agent", "show", &run_id]);
    assert!(shown.contains("result:\n`add` subtracts"), "{shown}");
    let logs = server.ok(&["agent", "logs", &run_id]);
    assert!(
        logs.contains("[succeeded]") && logs.contains("→ Read: /workspace/src/math.rs"),
        "{logs}"
    );
    let cancelled = server.ok(&["agent", "cancel", &run_id]);
    assert!(cancelled.contains("succeeded"), "{cancelled}");
}

#[test]
fn agent_run_exits_non_zero_when_the_agent_fails() {
    let server = TestServer::start_with_agents(&agents());
    let dir = project();
    let workdir = dir.path().display().to_string();
    let outcome = server.run(&[
        "agent",
        "run",
        "--workdir",
        &workdir,
        "--prompt",
        "p",
        "--agent",
        "fake-fail",
        "--backend",
        "host",
        "--apply",
    ]);
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(outcome.stdout.contains("failed"), "{outcome:?}");
    assert!(outcome.stdout.contains("turn limit"), "{outcome:?}");

    let outcome = server.run(&[
        "agent",
        "run",
        "--workdir",
        "/nonexistent/cthulu-workdir",
        "--prompt",
        "p",
        "--agent",
        "fake-fix",
    ]);
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("/nonexistent/cthulu-workdir does not exist"),
        "{outcome:?}"
    );

    let outcome = server.run(&[
        "agent",
        "run",
        "--workdir",
        &workdir,
        "--prompt",
        "p",
        "--agent",
        "nope",
    ]);
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(
        outcome.stderr.contains("unknown agent `nope`"),
        "{outcome:?}"
    );
}
