//! The typed events an agent's output turns into, whatever its output format.

use serde::{Deserialize, Serialize};

use crate::redact::Redactor;

/// One thing the agent did or said, as parsed from its stdout (already redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The agent started (`{"type":"system","subtype":"init"}`).
    Init {
        session_id: Option<String>,
        model: Option<String>,
        cwd: Option<String>,
        tools: Vec<String>,
    },
    /// A text block of an assistant message.
    AssistantText { text: String },
    /// The agent called a tool.
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    /// A tool call's outcome; `summary` is its text, cut to [`crate::SUMMARY_LIMIT`] bytes.
    ToolResult {
        id: String,
        is_error: bool,
        summary: String,
    },
    /// The agent's own final report (`{"type":"result"}`).
    Result {
        success: bool,
        subtype: String,
        text: Option<String>,
        cost_usd: Option<f64>,
        turns: Option<u64>,
        duration_ms: Option<u64>,
        session_id: Option<String>,
    },
    /// A line of a plain-text agent's output.
    Output { line: String },
    /// A well-formed event of a type this parser does not know (`type` or `type/subtype`).
    Unknown { event_type: String },
    /// A line that is not an event: not JSON, not an object, no `type`, or too long.
    Malformed { excerpt: String, error: String },
}

impl AgentEvent {
    /// Replaces every secret in every string of the event, nested JSON included.
    pub(crate) fn redact(&mut self, redactor: &Redactor) {
        if redactor.is_empty() {
            return;
        }
        let strings: Vec<&mut String> = match self {
            AgentEvent::Init {
                session_id,
                model,
                cwd,
                tools,
            } => session_id
                .iter_mut()
                .chain(model.iter_mut())
                .chain(cwd.iter_mut())
                .chain(tools.iter_mut())
                .collect(),
            AgentEvent::AssistantText { text } => vec![text],
            AgentEvent::ToolUse { id, name, input } => {
                redactor.redact_json(input);
                vec![id, name]
            }
            AgentEvent::ToolResult { id, summary, .. } => vec![id, summary],
            AgentEvent::Result {
                subtype,
                text,
                session_id,
                ..
            } => std::iter::once(subtype)
                .chain(text.iter_mut())
                .chain(session_id.iter_mut())
                .collect(),
            AgentEvent::Output { line } => vec![line],
            AgentEvent::Unknown { event_type } => vec![event_type],
            AgentEvent::Malformed { excerpt, error } => vec![excerpt, error],
        };
        for string in strings {
            redactor.redact_in_place(string);
        }
    }
}
