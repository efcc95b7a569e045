//! Agent runs end to end through the API, with the stand-in agent (`cthulu-fake-agent`)
//! replaying recorded transcripts slowly, in pieces, and misbehaving on request.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use cthulu_runs::{AgentEvent, OutputFormat, OutputParser, Redactor};
use cthulu_test_support::{fake_agent, transcripts_dir, TestServer};
use cthulu_types::{Run, RunEvent, RunEventBody, RunStatus};
use serde_json::{json, Value};

use crate::support::{code, Api};

const MATH_BEFORE: &str = "pub fn add(a: i32, b: i32) -> i32 {\n    a - b\n}\n";
const MATH_AFTER: &str = "pub fn add(a: i32, b: i32) -> i32 { a + b }";

fn transcript(name: &str) -> String {
    transcripts_dir().join(name).display().to_string()
}

/// A stand-in agent definition for the host backend (which sees host paths).
fn fake(name: &str, transcript_name: &str, extra: &[&str]) -> Value {
    let mut args: Vec<Value> = vec![
        json!("--transcript"),
        json!(transcript(transcript_name)),
        json!("--chunk-size"),
        json!("97"),
        json!("--delay-ms"),
        json!("15"),
    ];
    // Literal braces in a definition's arguments are written doubled.
    args.extend(
        extra
            .iter()
            .map(|arg| json!(arg.replace('{', "{{").replace('}', "}}"))),
    );
    args.extend([json!("--"), json!("{prompt}")]);
    json!({
        "name": name,
        "program": fake_agent().display().to_string(),
        "args": args,
        "output_format": "claude-stream-json",
    })
}

fn agents() -> Value {
    json!([
        fake(
            "fake-success",
            "success.jsonl",
            &[
                "--write",
                &format!("src/math.rs={MATH_AFTER}"),
                "--delete",
                "notes.txt"
            ]
        ),
        fake("fake-hang", "truncated.jsonl", &["--spawn-sleep", "--hang"]),
        fake(
            "fake-exit",
            "success.jsonl",
            &["--require-env", "CTHULU_NEVER_PASSED"]
        ),
        fake("fake-garbage", "truncated.jsonl", &["--garbage-every", "1"]),
        fake(
            "fake-env",
            "success.jsonl",
            &[
                "--print-env",
                "CTHULU_TEST_SECRET",
                "--write",
                "out.txt=done"
            ]
        ),
    ])
}

/// A gzipped tar of `files` (path, contents), base64-encoded as the API takes it.
fn input_archive(files: &[(&str, &[u8], u32)]) -> String {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_size(contents.len() as u64);
        builder.append_data(&mut header, path, *contents).unwrap();
    }
    let gz = builder.into_inner().unwrap().finish().unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz)
}

fn workdir() -> String {
    input_archive(&[
        ("src/math.rs", MATH_BEFORE.as_bytes(), 0o644),
        ("notes.txt", b"delete me\n", 0o644),
        ("README", b"unchanged\n", 0o644),
    ])
}

async fn start(api: &Api, body: Value) -> Run {
    let (status, run) = api.post("/api/v1/runs", body).await;
    assert_eq!(status, 201, "{run}");
    serde_json::from_value(run).unwrap()
}

/// Reads an SSE response: events until `end` (its run), or until `stop_after` events.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

enum Item {
    Event(RunEvent),
    End(Box<Run>),
}

impl Sse {
    async fn open(api: &Api, run_id: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = api.request(
            reqwest::Method::GET,
            &format!("/api/v1/runs/{run_id}/events"),
        );
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> Item {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                let mut fields = BTreeMap::new();
                for line in block.lines() {
                    if let Some((field, value)) = line.split_once(": ") {
                        fields.insert(field.to_owned(), value.to_owned());
                    }
                }
                let Some(data) = fields.get("data") else {
                    continue;
                };
                if fields.get("event").map(String::as_str) == Some("end") {
                    assert!(!fields.contains_key("id"), "the end event has no id");
                    return Item::End(Box::new(serde_json::from_str(data).unwrap()));
                }
                let event: RunEvent = serde_json::from_str(data).unwrap();
                assert_eq!(fields["id"], event.seq.to_string());
                assert_eq!(fields["event"], event.body.name());
                return Item::Event(event);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .expect("an SSE event within a minute")
                .unwrap()
                .expect("the stream goes on until the end event");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every event until the end, and the run.
    async fn collect_all(mut self) -> (Vec<RunEvent>, Run) {
        let mut events = Vec::new();
        loop {
            match self.next().await {
                Item::Event(event) => events.push(event),
                Item::End(run) => return (events, *run),
            }
        }
    }

    /// The next event that satisfies `wanted`.
    async fn until(&mut self, wanted: impl Fn(&RunEvent) -> bool) -> RunEvent {
        loop {
            match self.next().await {
                Item::Event(event) if wanted(&event) => return event,
                Item::Event(_) => {}
                Item::End(run) => panic!("the run ended first: {run:?}"),
            }
        }
    }
}

fn agent_events(events: &[RunEvent]) -> Vec<AgentEvent> {
    events
        .iter()
        .filter_map(|event| match &event.body {
            RunEventBody::Agent { event } => Some(serde_json::from_value(event.clone()).unwrap()),
            _ => None,
        })
        .collect()
}

fn statuses(events: &[RunEvent]) -> Vec<RunStatus> {
    events
        .iter()
        .filter_map(|event| match &event.body {
            RunEventBody::Status { status, .. } => Some(*status),
            _ => None,
        })
        .collect()
}

fn assistant_text(event: &RunEvent, prefix: &str) -> Option<String> {
    match &event.body {
        RunEventBody::Agent { event } if event["kind"] == "assistant_text" => event["text"]
            .as_str()
            .filter(|text| text.starts_with(prefix))
            .map(str::to_owned),
        _ => None,
    }
}

async fn wait_final(api: &Api, run_id: &str) -> Run {
    let (events, run) = Sse::open(api, run_id, None).await.collect_all().await;
    assert!(!events.is_empty());
    run
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

async fn wait_gone(pid: u32) -> bool {
    for _ in 0..100 {
        if gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn sandbox_destroyed(api: &Api, run_id: &str) -> bool {
    let (status, list) = api
        .get(&format!(
            "/api/v1/sandboxes?label=cthulu.run%3D{run_id}&status=destroyed"
        ))
        .await;
    assert_eq!(status, 200, "{list}");
    list["sandboxes"].as_array().unwrap().len() == 1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_streams_live_events_and_reports_result_cost_turns_and_changes() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let run = start(
        &api,
        json!({"prompt": "fix add", "agent": "fake-success", "backend": "host",
               "input_archive": workdir(), "allowed_tools": ["Bash", "Read", "Edit"]}),
    )
    .await;
    assert!(matches!(
        run.status,
        RunStatus::Queued | RunStatus::Provisioning | RunStatus::Running
    ));
    let mut sse = Sse::open(&api, &run.id, None).await;
    // The first agent event arrives while the run is still running: events are live.
    sse.until(|event| matches!(event.body, RunEventBody::Agent { .. }))
        .await;
    let (status, live) = api.get(&format!("/api/v1/runs/{}", run.id)).await;
    assert_eq!(status, 200);
    assert_eq!(live["status"], "running", "{live}");
    drop(sse);

    let (events, finished) = Sse::open(&api, &run.id, None).await.collect_all().await;
    let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        statuses(&events),
        [
            RunStatus::Queued,
            RunStatus::Provisioning,
            RunStatus::Running,
            RunStatus::Succeeded
        ]
    );
    let mut parser = OutputParser::new(OutputFormat::ClaudeStreamJson, Redactor::default());
    let mut expected =
        parser.push(&std::fs::read(transcripts_dir().join("success.jsonl")).unwrap());
    expected.extend(parser.finish());
    assert_eq!(agent_events(&events), expected);

    assert_eq!(finished.status, RunStatus::Succeeded, "{finished:?}");
    assert_eq!(
        finished.result.as_deref(),
        Some("`add` subtracts; the fix is `a + b`.")
    );
    assert_eq!(finished.cost_usd, Some(0.04213));
    assert_eq!(finished.turns, Some(4));
    assert_eq!(finished.event_count, events.len() as u64);
    assert!(finished.error.is_none());
    let changes = finished.changes.clone().expect("changes");
    assert_eq!(changes.changed, ["src/math.rs"]);
    assert_eq!(changes.deleted, ["notes.txt"]);
    assert!(changes.diff.contains("-    a - b\n"), "{}", changes.diff);
    assert!(
        changes.diff.contains(&format!("+{MATH_AFTER}\n")),
        "{}",
        changes.diff
    );
    assert!(
        changes.diff.contains("deleted file mode 100644\n"),
        "{}",
        changes.diff
    );
    assert!(!changes.diff.contains("README"));
    // The changed file, exactly, in the archive.
    let (status, archive) = api
        .get_bytes(&format!("/api/v1/runs/{}/changes.tar", run.id))
        .await;
    assert_eq!(status, 200);
    let mut archive = tar::Archive::new(archive.as_slice());
    let mut entries: Vec<(String, String)> = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        entries.push((entry.path().unwrap().display().to_string(), text));
    }
    assert_eq!(
        entries,
        [("src/math.rs".to_owned(), format!("{MATH_AFTER}\n"))]
    );
    // The sandbox is gone, and the run no longer names it.
    assert!(finished.sandbox_id.is_none());
    assert!(sandbox_destroyed(&api, &run.id).await);
    let timings = finished.timings.expect("timings");
    assert!(timings.agent_ms > 0.0);
    // Listed, newest first.
    let (_, list) = api.get("/api/v1/runs").await;
    assert_eq!(list["runs"][0]["id"], run.id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_with_last_event_id_gets_exactly_the_rest() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-success", "backend": "host"}),
    )
    .await;
    // Mid-run: read three events, drop the connection, resume after the third.
    let mut first = Sse::open(&api, &run.id, None).await;
    let mut head = Vec::new();
    while head.len() < 3 {
        if let Item::Event(event) = first.next().await {
            head.push(event);
        }
    }
    drop(first);
    let (rest, _) = Sse::open(&api, &run.id, Some(3)).await.collect_all().await;
    assert_eq!(rest.first().map(|event| event.seq), Some(4));
    let (all, run) = Sse::open(&api, &run.id, None).await.collect_all().await;
    head.extend(rest);
    assert_eq!(head, all);
    // After the end: exactly the events after the id, then the end.
    let (tail, _) = Sse::open(&api, &run.id, Some(all.len() as u64 - 2))
        .await
        .collect_all()
        .await;
    assert_eq!(tail, all[all.len() - 2..]);
    let (nothing, end) = Sse::open(&api, &run.id, Some(all.len() as u64))
        .await
        .collect_all()
        .await;
    assert!(nothing.is_empty());
    assert_eq!(end, run);
    // The same through ?after=.
    let (status, _) = api
        .get(&format!("/api/v1/runs/{}/events?after=x", run.id))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_the_agents_process_tree_and_destroys_the_sandbox() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-hang", "backend": "host"}),
    )
    .await;
    let mut sse = Sse::open(&api, &run.id, None).await;
    let child = sse
        .until(|event| assistant_text(event, "child pid ").is_some())
        .await;
    let pid: u32 = assistant_text(&child, "child pid ").unwrap()["child pid ".len()..]
        .parse()
        .unwrap();
    assert!(!gone(pid), "the agent's child runs");
    let (status, cancelled) = api.delete(&format!("/api/v1/runs/{}", run.id)).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        wait_gone(pid).await,
        "the agent's child {pid} survived the cancel"
    );
    assert!(sandbox_destroyed(&api, &run.id).await);
    let (events, end) = sse.collect_all().await;
    assert_eq!(statuses(&events).last(), Some(&RunStatus::Cancelled));
    assert_eq!(end.status, RunStatus::Cancelled);
    // Cancelling again changes nothing.
    let (status, again) = api.delete(&format!("/api/v1/runs/{}", run.id)).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("cancelled")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_timeout_is_killed_and_timed_out() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-hang", "backend": "host", "timeout_secs": 1}),
    )
    .await;
    let (events, end) = Sse::open(&api, &run.id, None).await.collect_all().await;
    assert_eq!(end.status, RunStatus::TimedOut, "{end:?}");
    assert!(
        end.error.as_deref().unwrap().contains("timed out"),
        "{end:?}"
    );
    let child = events
        .iter()
        .find_map(|event| assistant_text(event, "child pid "))
        .expect("the child's pid");
    let pid: u32 = child["child pid ".len()..].parse().unwrap();
    assert!(
        wait_gone(pid).await,
        "the agent's child {pid} survived the timeout"
    );
    assert!(sandbox_destroyed(&api, &run.id).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_exiting_non_zero_fails_with_its_stderr() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-exit", "backend": "host"}),
    )
    .await;
    let (events, end) = Sse::open(&api, &run.id, None).await.collect_all().await;
    assert_eq!(end.status, RunStatus::Failed);
    let error = end.error.unwrap();
    assert!(error.contains("exited with code 3"), "{error}");
    assert!(error.contains("CTHULU_NEVER_PASSED is not set"), "{error}");
    assert!(events
        .iter()
        .any(|event| matches!(&event.body, RunEventBody::Stderr { line } if line.contains("CTHULU_NEVER_PASSED"))));
    assert!(sandbox_destroyed(&api, &run.id).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_output_is_tolerated_and_the_run_still_ends_with_a_status() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-garbage", "backend": "host"}),
    )
    .await;
    let (events, end) = Sse::open(&api, &run.id, None).await.collect_all().await;
    assert!(end.status.is_final());
    assert_eq!(end.status, RunStatus::Failed, "{end:?}");
    assert!(
        end.error
            .as_deref()
            .unwrap()
            .contains("without a result event"),
        "{end:?}"
    );
    let malformed = agent_events(&events)
        .iter()
        .filter(|event| matches!(event, AgentEvent::Malformed { .. }))
        .count();
    assert!(malformed >= 2, "{malformed} malformed events");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_the_reason() {
    let server = TestServer::start_configured(&agents(), |config| {
        config.runs.max_input_bytes = 64 * 1024;
    })
    .await;
    let api = Api::new(&server);
    let (status, body) = api
        .post("/api/v1/runs", json!({"prompt": "p", "agent": "nope"}))
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown agent `nope`"), "{message}");
    assert!(
        message.contains("claude-code") && message.contains("fake-success"),
        "{message}"
    );

    let big: Vec<u8> = (0..200 * 1024)
        .map(|index| (index * 7919 % 251) as u8)
        .collect();
    let (status, body) = api
        .post(
            "/api/v1/runs",
            json!({"prompt": "p", "agent": "fake-success",
                   "input_archive": input_archive(&[("big.bin", &big, 0o644)])}),
        )
        .await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("65536"),
        "{body}"
    );

    // Claude Code needs a credential named.
    let (status, body) = api.post("/api/v1/runs", json!({"prompt": "p"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ANTHROPIC_API_KEY"));

    for (request, wanted) in [
        (
            json!({"prompt": " ", "agent": "fake-success"}),
            "prompt is empty",
        ),
        (
            json!({"prompt": "p", "agent": "fake-success", "input_archive": "!!"}),
            "base64",
        ),
        (
            json!({"prompt": "p", "agent": "fake-success", "backend": "host", "sandbox_id": "abc"}),
            "not both",
        ),
    ] {
        let (status, body) = api.post("/api/v1/runs", request).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(wanted),
            "{body}"
        );
    }
    let (status, body) = api
        .post(
            "/api/v1/runs",
            json!({"prompt": "p", "agent": "fake-success", "sandbox_id": "nosuchsandbox"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.get("/api/v1/runs/nosuchrun").await;
    assert_eq!((status, code(&body)), (404, "run_not_found"));
    let (status, _) = api.get("/api/v1/runs/NOT-AN-ID/events").await;
    assert_eq!(status, 404);
}

/// Every file under `dir` whose bytes contain `needle`, except the agent's own raw output
/// as the backend's process shim keeps it for re-attaching (`procs/<id>/stdout.out`,
/// outside the workspace, gone with the sandbox): an agent that prints a credential puts
/// it there itself (docs/api.md, Runs).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file() && !path.ends_with("stdout.out") {
            if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|window| window == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_reach_the_agent_only_as_its_environment() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let secret = format!("sk-test-{}", cthulu_types::SandboxId::generate());
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-env", "backend": "host", "keep": true,
               "env": {"CTHULU_TEST_SECRET": secret}}),
    )
    .await;
    let (events, end) = Sse::open(&api, &run.id, None).await.collect_all().await;
    assert_eq!(end.status, RunStatus::Succeeded, "{end:?}");
    // The agent saw the value: it printed it, and the server redacted it.
    assert!(
        events
            .iter()
            .any(|event| assistant_text(event, "env CTHULU_TEST_SECRET=[redacted]").is_some()),
        "{events:?}"
    );
    let everything =
        serde_json::to_string(&events).unwrap() + &serde_json::to_string(&end).unwrap();
    assert!(!everything.contains(&secret));
    assert_eq!(end.env_names, ["CTHULU_TEST_SECRET"]);
    // Not in the database file (nor its write-ahead log), not in any file of the kept
    // sandbox (workspace and the backend's own records), not anywhere under the home.
    let sandbox_id = end.sandbox_id.clone().expect("the sandbox was kept");
    let sandbox_dir = server
        .home()
        .join("sandboxes/host")
        .join(sandbox_id.as_str());
    assert!(sandbox_dir.join("workspace/out.txt").exists());
    assert_eq!(
        files_containing(&sandbox_dir, secret.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_containing(server.home(), secret.as_bytes()),
        Vec::<PathBuf>::new()
    );
    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_dying_mid_run_fails_the_run() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-hang", "backend": "host"}),
    )
    .await;
    let mut sse = Sse::open(&api, &run.id, None).await;
    sse.until(|event| assistant_text(event, "child pid ").is_some())
        .await;
    let (_, live) = api.get(&format!("/api/v1/runs/{}", run.id)).await;
    let sandbox_id = live["sandbox_id"]
        .as_str()
        .expect("a live run names its sandbox")
        .to_owned();
    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 204);
    let (_, end) = sse.collect_all().await;
    assert_eq!(end.status, RunStatus::Failed, "{end:?}");
    assert!(
        end.error
            .as_deref()
            .unwrap()
            .contains(&format!("sandbox {sandbox_id}")),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_finished_runs_are_readable_and_a_live_one_is_interrupted() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let done = start(
        &api,
        json!({"prompt": "p", "agent": "fake-success", "backend": "host"}),
    )
    .await;
    let done = wait_final(&api, &done.id).await;
    let live = start(
        &api,
        json!({"prompt": "p", "agent": "fake-hang", "backend": "host"}),
    )
    .await;
    let mut sse = Sse::open(&api, &live.id, None).await;
    sse.until(|event| assistant_text(event, "child pid ").is_some())
        .await;
    drop(sse);

    let server = server.restart().await;
    let api = Api::new(&server);
    let (status, again) = api.get(&format!("/api/v1/runs/{}", done.id)).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_value::<Run>(again).unwrap(), done);
    let (events, _) = Sse::open(&api, &done.id, None).await.collect_all().await;
    assert_eq!(events.len() as u64, done.event_count);
    let (events, interrupted) = Sse::open(&api, &live.id, None).await.collect_all().await;
    assert!(!events.is_empty());
    assert_eq!(interrupted.status, RunStatus::Interrupted);
    assert!(
        interrupted
            .error
            .as_deref()
            .unwrap()
            .contains("the server stopped"),
        "{interrupted:?}"
    );
    assert!(sandbox_destroyed(&api, &live.id).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_on_the_namespace_backend_gets_its_agent_through_the_input() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let (_, info) = api.get("/api/v1/info").await;
    let namespace = info["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|backend| backend["kind"] == "namespace")
        .cloned()
        .unwrap();
    if namespace["available"] != true {
        cthulu_core::conformance::report_skip(&format!(
            "SKIP namespace: {}",
            namespace["unavailable_reason"]
        ));
        return;
    }
    drop(server);
    // The namespace sandbox does not see the host's target directory: the agent and its
    // transcript travel in the input archive.
    let agent = json!([{
        "name": "fake-inside",
        "program": "/workspace/.agent/cthulu-fake-agent",
        "args": ["--transcript", "/workspace/.agent/success.jsonl", "--chunk-size", "200",
                 "--write", "src/math.rs=fixed", "--print-env", "CTHULU_TEST_SECRET", "--", "{prompt}"],
        "output_format": "claude-stream-json",
    }]);
    let server = TestServer::start_with_agents(&agent).await;
    let api = Api::new(&server);
    let binary = std::fs::read(fake_agent()).unwrap();
    let transcript = std::fs::read(transcripts_dir().join("success.jsonl")).unwrap();
    let secret = format!("sk-ns-{}", cthulu_types::SandboxId::generate());
    let run = start(
        &api,
        json!({"prompt": "p", "agent": "fake-inside", "backend": "namespace", "keep": true,
        "env": {"CTHULU_TEST_SECRET": secret},
        "input_archive": input_archive(&[
            (".agent/cthulu-fake-agent", &binary, 0o755),
            (".agent/success.jsonl", &transcript, 0o644),
            ("src/math.rs", MATH_BEFORE.as_bytes(), 0o644),
        ])}),
    )
    .await;
    let (events, end) = Sse::open(&api, &run.id, None).await.collect_all().await;
    assert_eq!(end.status, RunStatus::Succeeded, "{end:?} {events:?}");
    assert_eq!(end.changes.unwrap().changed, ["src/math.rs"]);
    assert!(events
        .iter()
        .any(|event| assistant_text(event, "env CTHULU_TEST_SECRET=[redacted]").is_some()));
    assert_eq!(
        files_containing(server.home(), secret.as_bytes()),
        Vec::<PathBuf>::new()
    );
    let sandbox_id = end.sandbox_id.expect("kept");
    let (status, _) = api.delete(&format!("/api/v1/sandboxes/{sandbox_id}")).await;
    assert_eq!(status, 204);
}

/// An input archive whose symlink points out of the workspace, with a file "inside" it:
/// unpacked on the host side (host and namespace backends), nothing may land outside.
#[tokio::test(flavor = "multi_thread")]
async fn an_input_archive_cannot_write_through_its_own_symlink() {
    let server = TestServer::start_with_agents(&agents()).await;
    let api = Api::new(&server);
    let outside = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder
        .append_link(&mut link, "escape", outside.path())
        .unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o644);
    file.set_size(6);
    builder
        .append_data(&mut file, "escape/pwned", &b"pwned\n"[..])
        .unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let (status, body) = api
        .post(
            "/api/v1/runs",
            json!({"prompt": "p", "agent": "fake-success", "backend": "host",
                   "input_archive": base64::engine::general_purpose::STANDARD.encode(archive)}),
        )
        .await;
    if status == 201 {
        let run: Run = serde_json::from_value(body).unwrap();
        let (_, end) = Sse::open(&api, &run.id, None).await.collect_all().await;
        assert_eq!(end.status, RunStatus::Failed, "{end:?}");
        let error = end.error.unwrap_or_default();
        assert!(error.contains("input"), "{error}");
    } else {
        assert_eq!(status, 400, "{body}");
    }
    assert!(
        !outside.path().join("pwned").exists(),
        "the archive wrote through its symlink"
    );
}
