//! The stand-in agent, run as a process and read through the parsers.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cthulu_runs::{
    AgentDefinition, AgentEvent, ArgTemplate, OutcomeTracker, OutputFormat, OutputParser,
    ProcessEnd, Redactor, RunOutcome, RunRequest,
};

use crate::{transcript, transcript_path};

fn fake_agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cthulu-fake-agent"))
}

/// Runs the fake agent to its end, reading stdout in whatever pieces the pipe gives.
fn run(args: &[&str]) -> (Vec<AgentEvent>, std::process::Output) {
    let mut child = fake_agent()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the fake agent");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut parser = OutputParser::new(OutputFormat::ClaudeStreamJson, Redactor::default());
    let mut events = Vec::new();
    let mut buffer = [0u8; 97];
    loop {
        let read = stdout.read(&mut buffer).expect("read the fake agent");
        if read == 0 {
            break;
        }
        events.extend(parser.push(&buffer[..read]));
    }
    events.extend(parser.finish());
    let output = child.wait_with_output().expect("wait for the fake agent");
    (events, output)
}

fn parsed(name: &str) -> Vec<AgentEvent> {
    let mut parser = OutputParser::new(OutputFormat::ClaudeStreamJson, Redactor::default());
    let mut events = parser.push(&transcript(name));
    events.extend(parser.finish());
    events
}

#[test]
fn replays_in_small_slow_chunks_identically() {
    let path = transcript_path("success.jsonl");
    let (events, output) = run(&[
        "--transcript",
        path.to_str().unwrap(),
        "--chunk-size",
        "7",
        "--delay-ms",
        "1",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(events, parsed("success.jsonl"));
}

#[test]
fn exit_code_and_garbage_are_injected() {
    let path = transcript_path("max_turns.jsonl");
    let (events, output) = run(&[
        "--transcript",
        path.to_str().unwrap(),
        "--exit-code",
        "1",
        "--garbage-every",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let malformed = events
        .iter()
        .filter(|e| matches!(e, AgentEvent::Malformed { .. }))
        .count();
    assert_eq!(malformed, 3);
    let mut tracker = OutcomeTracker::new(OutputFormat::ClaudeStreamJson);
    events.iter().for_each(|e| tracker.observe(e));
    let summary = tracker.finish(ProcessEnd::Exited(1), None);
    assert!(
        matches!(summary.outcome, RunOutcome::Failed { .. }),
        "{summary:?}"
    );
}

#[test]
fn rendered_claude_arguments_arrive_intact() {
    let prompt = "-n \"it's\" $(whoami)\nline two";
    let mut definition = AgentDefinition::claude_code();
    let path = transcript_path("success.jsonl");
    definition.program = env!("CARGO_BIN_EXE_cthulu-fake-agent").to_owned();
    let own: Vec<ArgTemplate> = ["--transcript", path.to_str().unwrap(), "--echo-args", "--"]
        .into_iter()
        .map(|arg| ArgTemplate::Always(arg.to_owned()))
        .collect();
    definition.args.splice(0..0, own);
    let command = definition
        .render(&RunRequest {
            model: Some("sonnet".to_owned()),
            ..RunRequest::new(prompt)
        })
        .unwrap();
    let output = Command::new(&command.program)
        .args(&command.args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let echoed: Vec<String> = serde_json::from_slice(&output.stderr).unwrap();
    assert_eq!(echoed.last().map(String::as_str), Some(prompt));
    assert_eq!(echoed, command.args[4..]);
}

#[test]
fn required_env_missing_exits_3() {
    let path = transcript_path("success.jsonl");
    let output = fake_agent()
        .args([
            "--transcript",
            path.to_str().unwrap(),
            "--require-env",
            "CTHULU_FAKE_KEY",
        ])
        .env_remove("CTHULU_FAKE_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("CTHULU_FAKE_KEY"));
}

#[test]
fn bad_options_are_named() {
    let output = fake_agent().args(["--bogus"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown option `--bogus`"));
    let output = fake_agent()
        .args(["--transcript", "/nonexistent/t.jsonl"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/t.jsonl"));
}

#[test]
fn hang_keeps_running_after_the_transcript() {
    let path = transcript_path("truncated.jsonl");
    let mut child = fake_agent()
        .args(["--transcript", path.to_str().unwrap(), "--hang"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let expected = transcript("truncated.jsonl");
    let mut received = vec![0u8; expected.len()];
    stdout.read_exact(&mut received).unwrap();
    assert_eq!(received, expected);
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "the fake agent ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn acts_before_replaying_and_stamps_after() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.txt"), "old").unwrap();
    let path = transcript_path("success.jsonl");
    let output = fake_agent()
        .current_dir(dir.path())
        .args([
            "--transcript",
            path.to_str().unwrap(),
            "--write",
            "src/new.rs=fn main() {}",
            "--delete",
            "old.txt",
            "--print-env",
            "CTHULU_FAKE_SECRET",
            "--stamps",
            "2",
        ])
        .env("CTHULU_FAKE_SECRET", "sk-fake-secret-1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("src/new.rs")).unwrap(),
        "fn main() {}\n"
    );
    assert!(!dir.path().join("old.txt").exists());
    let mut parser = OutputParser::new(
        OutputFormat::ClaudeStreamJson,
        Redactor::new(["sk-fake-secret-1"]),
    );
    let mut events = parser.push(&output.stdout);
    events.extend(parser.finish());
    let texts: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            AgentEvent::AssistantText { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts.first(), Some(&"env CTHULU_FAKE_SECRET=[redacted]"));
    assert_eq!(
        texts
            .iter()
            .filter(|text| text.starts_with("stamp "))
            .count(),
        2
    );
}
