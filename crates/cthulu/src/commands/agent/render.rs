//! A run's events and outcome as concise text for a person.

use cthulu_types::{Run, RunEvent, RunEventBody, RunStatus};
use serde_json::Value;

/// Longest line shown for a tool's input or result.
const LINE: usize = 160;

fn one_line(text: &str, limit: usize) -> String {
    let first = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("");
    let more = text.lines().filter(|line| !line.trim().is_empty()).count() > 1;
    let mut line: String = first.trim().chars().take(limit).collect();
    if more || first.trim().chars().count() > limit {
        line.push_str(" …");
    }
    line
}

/// What a tool was asked, in a few words: the usual argument of the usual tools, else
/// the input as compact JSON.
fn tool_input(input: &Value) -> String {
    for key in [
        "command",
        "file_path",
        "path",
        "pattern",
        "url",
        "description",
    ] {
        if let Some(text) = input.get(key).and_then(Value::as_str) {
            return one_line(text, LINE);
        }
    }
    one_line(&input.to_string(), LINE)
}

pub fn cost(cost_usd: Option<f64>) -> Option<String> {
    cost_usd.map(|cost| format!("${cost:.4}"))
}

/// An event as lines of text; `None` for what is not worth showing.
pub fn event(event: &RunEvent) -> Option<String> {
    match &event.body {
        RunEventBody::Status { status, message } => Some(match message {
            Some(message) => format!("[{status}] {message}"),
            None => format!("[{status}]"),
        }),
        RunEventBody::Stderr { line } => Some(format!("stderr: {line}")),
        RunEventBody::Notice { message } => Some(format!("note: {message}")),
        RunEventBody::Agent { event } => agent_event(event),
    }
}

fn agent_event(event: &Value) -> Option<String> {
    let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default();
    match text("kind") {
        "init" => {
            let model = event.get("model").and_then(Value::as_str).unwrap_or("?");
            let tools = event
                .get("tools")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Some(format!("● session started: model {model}, {tools} tools"))
        }
        "assistant_text" => Some(text("text").trim_end().to_owned()),
        "tool_use" => Some(format!(
            "→ {}: {}",
            text("name"),
            tool_input(event.get("input").unwrap_or(&Value::Null))
        )),
        "tool_result" => {
            let mark = if event.get("is_error").and_then(Value::as_bool) == Some(true) {
                "✗"
            } else {
                "✓"
            };
            Some(format!("  {mark} {}", one_line(text("summary"), LINE)))
        }
        "result" => {
            let mut line = format!("■ result: {}", text("subtype"));
            if let Some(turns) = event.get("turns").and_then(Value::as_u64) {
                line.push_str(&format!(" · {turns} turns"));
            }
            if let Some(cost) = cost(event.get("cost_usd").and_then(Value::as_f64)) {
                line.push_str(&format!(" · {cost}"));
            }
            Some(line)
        }
        "output" => Some(text("line").to_owned()),
        "malformed" => Some(format!(
            "! unparsed output: {}",
            one_line(text("excerpt"), LINE)
        )),
        _ => None,
    }
}

/// The status line of a finished run: `succeeded · 4 turns · $0.0421 · 18.2 s`.
pub fn summary_line(run: &Run) -> String {
    let mut parts = vec![run.status.to_string()];
    if let Some(turns) = run.turns {
        parts.push(format!("{turns} turns"));
    }
    if let Some(cost) = cost(run.cost_usd) {
        parts.push(cost);
    }
    if let Some(duration) = run.duration_ms {
        parts.push(format!("{:.1} s", duration as f64 / 1000.0));
    }
    parts.join(" · ")
}

/// The outcome of a run: status line, error, result, the changes and their diff.
pub fn outcome(run: &Run) -> String {
    let mut text = format!("run {}: {}\n", run.id, summary_line(run));
    if let Some(error) = &run.error {
        text.push_str(&format!("error: {error}\n"));
    }
    if let Some(result) = &run.result {
        text.push_str(&format!("result:\n{}\n", result.trim_end()));
    }
    if let Some(sandbox_id) = &run.sandbox_id {
        if run.status.is_final() {
            text.push_str(&format!("sandbox kept: {sandbox_id}\n"));
        }
    }
    match &run.changes {
        Some(changes) if changes.changed.is_empty() && changes.deleted.is_empty() => {
            text.push_str("changes: none\n");
        }
        Some(changes) => {
            text.push_str(&format!(
                "changes: {} added or modified, {} deleted\n",
                changes.changed.len(),
                changes.deleted.len()
            ));
            text.push_str(&changes.diff);
            if changes.diff_truncated {
                text.push_str("… (diff cut at the server's limit)\n");
            }
        }
        None if run.status.is_final() && run.status != RunStatus::Cancelled => {
            text.push_str("changes: unknown\n");
        }
        None => {}
    }
    text
}

/// The exit code a run's status maps to (docs/cli.md).
pub fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded => crate::exit::SUCCESS,
        RunStatus::TimedOut => crate::exit::TIMED_OUT,
        RunStatus::Cancelled => crate::exit::INTERRUPTED,
        _ => crate::exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(value: Value) -> RunEvent {
        RunEvent {
            seq: 1,
            at_ms: 0,
            body: RunEventBody::Agent { event: value },
        }
    }

    #[test]
    fn agent_events_read_as_one_line_each() {
        assert_eq!(
            event(&agent(
                json!({"kind": "tool_use", "id": "t", "name": "Bash",
                "input": {"command": "cargo test\nmore", "description": "x"}})
            )),
            Some("→ Bash: cargo test …".to_owned())
        );
        assert_eq!(
            event(&agent(
                json!({"kind": "tool_result", "id": "t", "is_error": true,
                "summary": "FAILED"})
            )),
            Some("  ✗ FAILED".to_owned())
        );
        assert_eq!(
            event(&agent(
                json!({"kind": "result", "success": true, "subtype": "success",
                "turns": 4, "cost_usd": 0.04213})
            )),
            Some("■ result: success · 4 turns · $0.0421".to_owned())
        );
        assert_eq!(
            event(&agent(json!({"kind": "unknown", "event_type": "x"}))),
            None
        );
    }

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        assert_eq!(exit_code(RunStatus::Succeeded), 0);
        assert_eq!(exit_code(RunStatus::Failed), 1);
        assert_eq!(exit_code(RunStatus::Interrupted), 1);
        assert_eq!(exit_code(RunStatus::TimedOut), 124);
        assert_eq!(exit_code(RunStatus::Cancelled), 130);
    }
}
