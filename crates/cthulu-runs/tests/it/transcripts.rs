//! Recorded stream-json transcripts, parsed whole, byte by byte and in random chunks.

use cthulu_runs::{
    summarize, AgentEvent, OutputFormat, PlainTextParser, ProcessEnd, Redactor, RunOutcome,
    StreamJsonParser,
};
use proptest::prelude::*;
use serde_json::json;

use crate::{transcript, API_KEY};

const ALL: [&str; 5] = [
    "success.jsonl",
    "max_turns.jsonl",
    "garbage.jsonl",
    "truncated.jsonl",
    "api_key.jsonl",
];

fn redactor() -> Redactor {
    Redactor::from_env([("ANTHROPIC_API_KEY", API_KEY), ("LANG", "C.UTF-8")])
}

/// Calls `push` with `bytes` split at the given chunk sizes (cycled; each at least 1).
fn in_chunks(bytes: &[u8], sizes: &[usize], mut push: impl FnMut(&[u8])) {
    let mut rest = bytes;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((*size).clamp(1, rest.len()));
        push(chunk);
        rest = tail;
    }
}

/// Parses `bytes` split at the given chunk sizes (cycled), then finishes.
fn parse_chunked(bytes: &[u8], sizes: &[usize]) -> Vec<AgentEvent> {
    let mut parser = StreamJsonParser::new(redactor());
    let mut events = Vec::new();
    in_chunks(bytes, sizes, |chunk| events.extend(parser.push(chunk)));
    events.extend(parser.finish());
    events
}

fn parse_whole(name: &str) -> Vec<AgentEvent> {
    parse_chunked(&transcript(name), &[usize::MAX])
}

#[test]
fn success_transcript_gives_every_event_in_order() {
    let events = parse_whole("success.jsonl");
    let session = "5f0c8a2e-1b7d-4c1e-9a55-0d2f3b9c7e11";
    assert_eq!(
        events,
        [
            AgentEvent::Init {
                session_id: Some(session.to_owned()),
                model: Some("claude-sonnet-4-5".to_owned()),
                cwd: Some("/workspace".to_owned()),
                tools: vec!["Bash".to_owned(), "Read".to_owned(), "Edit".to_owned()],
            },
            AgentEvent::AssistantText {
                text: "I'll run the tests first — café ☕ 🚀".to_owned()
            },
            AgentEvent::ToolUse {
                id: "toolu_01".to_owned(),
                name: "Bash".to_owned(),
                input: json!({"command": "cargo test 2>&1 | tail -5", "description": "Run the tests"}),
            },
            AgentEvent::ToolResult {
                id: "toolu_01".to_owned(),
                is_error: true,
                summary: "test math::adds ... FAILED\n\nfailures:\n    math::adds\n\ntest result: FAILED. 3 passed; 1 failed".to_owned(),
            },
            AgentEvent::ToolUse {
                id: "toolu_02".to_owned(),
                name: "Read".to_owned(),
                input: json!({"file_path": "/workspace/src/math.rs"}),
            },
            AgentEvent::ToolResult {
                id: "toolu_02".to_owned(),
                is_error: false,
                summary: "     1\tpub fn add(a: i32, b: i32) -> i32 {\n     2\t    a - b\n     3\t}".to_owned(),
            },
            AgentEvent::AssistantText {
                text: "`add` subtracts; the fix is `a + b`.".to_owned()
            },
            AgentEvent::Result {
                success: true,
                subtype: "success".to_owned(),
                text: Some("`add` subtracts; the fix is `a + b`.".to_owned()),
                cost_usd: Some(0.04213),
                turns: Some(4),
                duration_ms: Some(18234),
                session_id: Some(session.to_owned()),
            },
        ]
    );
    let summary = summarize(
        OutputFormat::ClaudeStreamJson,
        &events,
        ProcessEnd::Exited(0),
        None,
    );
    assert_eq!(summary.outcome, RunOutcome::Succeeded);
    assert_eq!((summary.cost_usd, summary.turns), (Some(0.04213), Some(4)));
}

#[test]
fn max_turns_transcript_fails_with_the_turn_count() {
    let events = parse_whole("max_turns.jsonl");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, AgentEvent::ToolUse { .. }))
            .count(),
        2
    );
    let summary = summarize(
        OutputFormat::ClaudeStreamJson,
        &events,
        ProcessEnd::Exited(1),
        None,
    );
    assert_eq!(
        summary.outcome,
        RunOutcome::Failed {
            message: "the agent stopped at its turn limit after 2 turns".to_owned()
        }
    );
    assert_eq!(summary.cost_usd, Some(0.0123));
}

#[test]
fn garbage_transcript_reports_garbage_and_still_succeeds() {
    let events = parse_whole("garbage.jsonl");
    let malformed: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Malformed { error, .. } => Some(error.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(malformed.len(), 5, "{events:#?}");
    assert!(malformed[0].starts_with("not JSON"), "{}", malformed[0]);
    assert_eq!(malformed[1], "not a JSON object");
    assert_eq!(malformed[2], "no string `type` field");
    let unknown: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Unknown { event_type } => Some(event_type.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(unknown, ["stream_event", "system/compact_boundary"]);
    assert!(events.contains(&AgentEvent::AssistantText {
        text: "Done: ünïcödé ✓".to_owned()
    }));
    let summary = summarize(
        OutputFormat::ClaudeStreamJson,
        &events,
        ProcessEnd::Exited(0),
        None,
    );
    assert_eq!(summary.outcome, RunOutcome::Succeeded);
    assert_eq!(summary.malformed_lines, 5);
}

#[test]
fn truncated_transcript_has_no_result() {
    let events = parse_whole("truncated.jsonl");
    assert!(
        matches!(events.last(), Some(AgentEvent::Malformed { error, .. }) if error.contains("EOF")),
        "{events:#?}"
    );
    let summary = summarize(
        OutputFormat::ClaudeStreamJson,
        &events,
        ProcessEnd::Exited(0),
        None,
    );
    let RunOutcome::NoResult { message } = summary.outcome else {
        panic!("{summary:?}");
    };
    assert!(
        message
            .starts_with("the agent exited with code 0 without a result event; 1 malformed lines"),
        "{message}"
    );
}

#[test]
fn api_key_never_appears_in_any_event() {
    let events = parse_whole("api_key.jsonl");
    let serialized = serde_json::to_string(&events).unwrap();
    assert!(!serialized.contains(API_KEY), "{serialized}");
    assert!(!serialized.contains("FAKEKEY"), "{serialized}");
    assert!(events.contains(&AgentEvent::ToolResult {
        id: "toolu_21".to_owned(),
        is_error: false,
        summary: "ANTHROPIC_API_KEY=[redacted]\nHOME=/root".to_owned(),
    }));
    assert!(events.contains(&AgentEvent::Unknown {
        event_type: "[redacted]".to_owned()
    }));
    // Short values passed alongside (`C.UTF-8`) are left alone.
    assert!(serialized.contains("[redacted]"));
}

#[test]
fn byte_by_byte_equals_whole() {
    for name in ALL {
        assert_eq!(
            parse_chunked(&transcript(name), &[1]),
            parse_whole(name),
            "{name}"
        );
    }
}

#[test]
fn long_lines_are_skipped_with_a_bounded_excerpt() {
    let mut bytes = format!("{{\"type\":\"assistant\",\"text\":\"{API_KEY}").into_bytes();
    bytes.resize(3 * 1024 * 1024, b'x');
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(&transcript("success.jsonl"));
    let events = parse_chunked(&bytes, &[64 * 1024]);
    let AgentEvent::Malformed { excerpt, error } = &events[0] else {
        panic!("{:?}", events[0]);
    };
    assert!(excerpt.len() < 300, "{excerpt}");
    assert!(!excerpt.contains("FAKEKEY"), "{excerpt}");
    assert_eq!(
        error,
        "line of 3145728 bytes is longer than the 1048576-byte limit; skipped"
    );
    assert_eq!(&events[1..], parse_whole("success.jsonl"));
}

#[test]
fn key_cut_by_the_line_limit_does_not_leak() {
    let line = format!("garbage {API_KEY} more\n");
    for max_line in 1..line.len() {
        let mut parser = StreamJsonParser::with_max_line(redactor(), max_line);
        let mut events = parser.push(line.as_bytes());
        events.extend(parser.finish());
        let serialized = serde_json::to_string(&events).unwrap();
        // Any 8 consecutive characters of the key would be a leak.
        for start in 0..API_KEY.len() - 8 {
            assert!(
                !serialized.contains(&API_KEY[start..start + 8]),
                "{max_line}: {serialized}"
            );
        }
    }
}

/// Plain-text parsing of the same bytes, split at the given chunk sizes (cycled).
fn parse_plain(bytes: &[u8], sizes: &[usize]) -> (Vec<AgentEvent>, String) {
    let mut parser = PlainTextParser::new(redactor());
    let mut events = Vec::new();
    in_chunks(bytes, sizes, |chunk| events.extend(parser.push(chunk)));
    events.extend(parser.finish());
    let tail = parser.tail();
    (events, tail)
}

#[test]
fn plain_text_parser_redacts_the_key_split_across_chunks() {
    let (events, tail) = parse_plain(&transcript("api_key.jsonl"), &[5]);
    assert_eq!(events.len(), 7);
    assert!(events
        .iter()
        .all(|e| matches!(e, AgentEvent::Output { .. })));
    let serialized = serde_json::to_string(&events).unwrap();
    assert!(!serialized.contains("FAKEKEY"), "{serialized}");
    assert!(!tail.contains("FAKEKEY"), "{tail}");
    let summary = summarize(
        OutputFormat::PlainText,
        &events,
        ProcessEnd::Exited(0),
        Some(tail),
    );
    assert_eq!(summary.outcome, RunOutcome::Succeeded);
    assert!(summary
        .text
        .unwrap()
        .ends_with("\"Printed [redacted]\",\"session_id\":\"k-1\",\"total_cost_usd\":0.002}"));
}

proptest! {
    #[test]
    fn plain_text_random_chunks_equal_whole(
        index in 0..ALL.len(),
        sizes in proptest::collection::vec(1usize..64, 1..20),
    ) {
        let bytes = transcript(ALL[index]);
        prop_assert_eq!(parse_plain(&bytes, &sizes), parse_plain(&bytes, &[usize::MAX]));
    }

    #[test]
    fn random_chunks_equal_whole(
        index in 0..ALL.len(),
        sizes in proptest::collection::vec(1usize..64, 1..20),
    ) {
        let name = ALL[index];
        prop_assert_eq!(parse_chunked(&transcript(name), &sizes), parse_whole(name));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_leak(
        noise in proptest::collection::vec(any::<u8>(), 0..512),
        at in 0usize..512,
        sizes in proptest::collection::vec(1usize..32, 1..8),
    ) {
        let mut bytes = noise;
        let at = at.min(bytes.len());
        bytes.splice(at..at, API_KEY.bytes());
        let serialized = serde_json::to_string(&parse_chunked(&bytes, &sizes)).unwrap();
        prop_assert!(!serialized.contains(API_KEY));
    }
}
