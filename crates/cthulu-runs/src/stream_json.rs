//! Incremental parser of Claude Code's `--output-format stream-json`.
//!
//! One JSON object per line, told apart by `type` (and `subtype`): `system`/`init`,
//! `assistant` (content blocks `text` and `tool_use`), `user` (content blocks
//! `tool_result`) and `result`. Tolerant by design: unknown fields are ignored, unknown
//! types become [`AgentEvent::Unknown`], lines that are not events become
//! [`AgentEvent::Malformed`], and nothing fails the stream.

use serde_json::{Map, Value};

use crate::event::AgentEvent;
use crate::lines::{end, feed, Line, LineAssembler, LineParser};
use crate::redact::Redactor;
use crate::text::{cut, EXCERPT_LIMIT, MAX_LINE, SUMMARY_LIMIT};

/// Turns stream-json bytes, fed in chunks of any size, into redacted [`AgentEvent`]s.
#[derive(Debug)]
pub struct StreamJsonParser {
    lines: LineAssembler,
    redactor: Redactor,
}

impl StreamJsonParser {
    pub fn new(redactor: Redactor) -> StreamJsonParser {
        StreamJsonParser::with_max_line(redactor, MAX_LINE)
    }

    /// A parser that reports lines longer than `max_line` bytes as malformed.
    pub fn with_max_line(redactor: Redactor, max_line: usize) -> StreamJsonParser {
        StreamJsonParser {
            lines: LineAssembler::new(max_line.max(1)),
            redactor,
        }
    }

    /// Feeds a chunk; returns the events of the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<AgentEvent> {
        feed(self, chunk)
    }

    /// Ends the stream: a last line without a newline is parsed too.
    pub fn finish(&mut self) -> Vec<AgentEvent> {
        end(self)
    }
}

fn parse_line(bytes: &[u8], redactor: &Redactor, events: &mut Vec<AgentEvent>) {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let malformed = |error: String| AgentEvent::Malformed {
        // Redact the whole line before cutting it, so a cut cannot split a secret.
        excerpt: cut(
            &redactor.redact(&String::from_utf8_lossy(bytes)),
            EXCERPT_LIMIT,
        ),
        error,
    };
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => return events.push(malformed(format!("not JSON: {error}"))),
    };
    let Value::Object(object) = value else {
        return events.push(malformed("not a JSON object".to_owned()));
    };
    let Some(event_type) = str_field(&object, "type") else {
        return events.push(malformed("no string `type` field".to_owned()));
    };
    let subtype = str_field(&object, "subtype");
    match (event_type.as_str(), subtype.as_deref()) {
        ("system", Some("init")) => events.push(AgentEvent::Init {
            session_id: str_field(&object, "session_id"),
            model: str_field(&object, "model"),
            cwd: str_field(&object, "cwd"),
            tools: object
                .get("tools")
                .and_then(Value::as_array)
                .map(|tools| {
                    tools
                        .iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        ("assistant", _) | ("user", _) => match content_blocks(&object) {
            Some(blocks) => {
                for block in blocks {
                    content_block(block, events);
                }
            }
            None => events.push(malformed(format!(
                "`{event_type}` event without a `message.content` array"
            ))),
        },
        ("result", _) => events.push(result_event(&object, subtype)),
        (_, subtype) => events.push(AgentEvent::Unknown {
            event_type: match subtype {
                Some(subtype) => format!("{event_type}/{subtype}"),
                None => event_type,
            },
        }),
    }
}

fn str_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    object.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// `message.content`; a plain string content counts as one text block.
fn content_blocks(object: &Map<String, Value>) -> Option<Vec<Value>> {
    match object.get("message")?.get("content")? {
        Value::Array(blocks) => Some(blocks.clone()),
        Value::String(text) => Some(vec![serde_json::json!({"type": "text", "text": text})]),
        _ => None,
    }
}

fn content_block(block: Value, events: &mut Vec<AgentEvent>) {
    let Value::Object(mut block) = block else {
        return;
    };
    let text_of =
        |block: &Map<String, Value>, name: &str| str_field(block, name).unwrap_or_default();
    match block.get("type").and_then(Value::as_str) {
        Some("text") => events.push(AgentEvent::AssistantText {
            text: text_of(&block, "text"),
        }),
        Some("tool_use") => events.push(AgentEvent::ToolUse {
            id: text_of(&block, "id"),
            name: text_of(&block, "name"),
            input: block.remove("input").unwrap_or(Value::Null),
        }),
        Some("tool_result") => events.push(AgentEvent::ToolResult {
            id: text_of(&block, "tool_use_id"),
            is_error: block
                .get("is_error")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            summary: tool_result_text(block.get("content")),
        }),
        // Thinking blocks, images and future block types carry nothing we report.
        _ => {}
    }
}

/// The text of a tool result: a string, or the `text` of its content blocks.
fn tool_result_text(content: Option<&Value>) -> String {
    let text = match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|block| match block {
                Value::String(text) => Some(text.as_str()),
                other => other.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    // Not cut here: `StreamJsonParser::events` cuts it after redaction, so the cut
    // cannot split a secret and leak its first half.
    text
}

fn result_event(object: &Map<String, Value>, subtype: Option<String>) -> AgentEvent {
    let subtype = subtype.unwrap_or_default();
    let is_error = object
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let text = str_field(object, "result").or_else(|| {
        let errors: Vec<&str> = object
            .get("errors")?
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    });
    AgentEvent::Result {
        success: subtype == "success" && !is_error,
        subtype,
        text,
        // Older Claude Code versions wrote `cost_usd`.
        cost_usd: object
            .get("total_cost_usd")
            .or_else(|| object.get("cost_usd"))
            .and_then(Value::as_f64),
        turns: object.get("num_turns").and_then(Value::as_u64),
        duration_ms: object.get("duration_ms").and_then(Value::as_u64),
        session_id: str_field(object, "session_id"),
    }
}

/// Cuts tool-result summaries to [`SUMMARY_LIMIT`], after redaction.
fn cut_summaries(events: &mut [AgentEvent]) {
    for event in events {
        if let AgentEvent::ToolResult { summary, .. } = event {
            *summary = cut(summary, SUMMARY_LIMIT);
        }
    }
}

impl LineParser for StreamJsonParser {
    fn events(&mut self, lines: Vec<Line>) -> Vec<AgentEvent> {
        let mut events = Vec::new();
        for line in lines {
            match line {
                Line::Complete(bytes) => parse_line(&bytes, &self.redactor, &mut events),
                Line::TooLong { head, length } => events.push(AgentEvent::Malformed {
                    excerpt: cut(
                        &self.redactor.redact_cut(&String::from_utf8_lossy(&head)),
                        EXCERPT_LIMIT,
                    ),
                    error: format!(
                        "line of {length} bytes is longer than the {}-byte limit; skipped",
                        head.len()
                    ),
                }),
            }
        }
        // The single place events leave the parser: redact them all here.
        for event in &mut events {
            event.redact(&self.redactor);
        }
        cut_summaries(&mut events);
        events
    }

    fn assembler(&mut self) -> &mut LineAssembler {
        &mut self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<AgentEvent> {
        let mut parser = StreamJsonParser::new(Redactor::default());
        let mut events = parser.push(text.as_bytes());
        events.extend(parser.finish());
        events
    }

    #[test]
    fn error_result_takes_its_text_from_errors_and_legacy_cost() {
        let events = parse(
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,"errors":["tool crashed","no network"],"cost_usd":0.5,"extra":{"x":1}}"#,
        );
        assert_eq!(
            events,
            [AgentEvent::Result {
                success: false,
                subtype: "error_during_execution".to_owned(),
                text: Some("tool crashed; no network".to_owned()),
                cost_usd: Some(0.5),
                turns: None,
                duration_ms: None,
                session_id: None,
            }]
        );
    }

    #[test]
    fn success_subtype_with_is_error_is_not_a_success() {
        let events = parse(
            r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 401"}"#,
        );
        assert!(matches!(
            &events[0],
            AgentEvent::Result { success: false, .. }
        ));
    }

    #[test]
    fn string_content_is_one_text_block_and_missing_content_is_malformed() {
        let events = parse(concat!(
            r#"{"type":"user","message":{"role":"user","content":"hello"}}"#,
            "\n",
            r#"{"type":"assistant","message":{}}"#,
        ));
        assert_eq!(
            events[0],
            AgentEvent::AssistantText {
                text: "hello".to_owned()
            }
        );
        assert!(
            matches!(&events[1], AgentEvent::Malformed { error, .. } if error == "`assistant` event without a `message.content` array")
        );
    }

    #[test]
    fn long_tool_results_are_cut_after_redaction() {
        let key = "sk-ant-0123456789";
        let mut content = "a".repeat(SUMMARY_LIMIT - 5);
        content.push_str(key);
        let line = serde_json::json!({"type":"user","message":{"content":[
            {"type":"tool_result","tool_use_id":"t","content":content}]}});
        let mut parser = StreamJsonParser::new(Redactor::new([key]));
        let events = parser.push(format!("{line}\n").as_bytes());
        let AgentEvent::ToolResult { summary, .. } = &events[0] else {
            panic!("{events:?}");
        };
        assert!(summary.ends_with("a[reda… (5 more bytes)"));
        assert!(!summary.contains("sk-ant"));
    }
}
