//! Parser for agents whose output is plain text: each line is an [`AgentEvent::Output`],
//! and the last [`TAIL_LIMIT`] bytes are kept as the run's result text.

use std::collections::VecDeque;

use crate::event::AgentEvent;
use crate::lines::{end, feed, Line, LineAssembler, LineParser};
use crate::redact::Redactor;
use crate::text::{cut, EXCERPT_LIMIT, MAX_LINE};

/// How much of a plain-text agent's output is kept as its result.
pub const TAIL_LIMIT: usize = 8 * 1024;

/// Turns plain-text bytes, fed in chunks of any size, into redacted output events.
#[derive(Debug)]
pub struct PlainTextParser {
    lines: LineAssembler,
    redactor: Redactor,
    /// Redacted lines, most recent last, at most about `TAIL_LIMIT` bytes in all.
    tail: VecDeque<String>,
    tail_bytes: usize,
}

impl PlainTextParser {
    pub fn new(redactor: Redactor) -> PlainTextParser {
        PlainTextParser::with_max_line(redactor, MAX_LINE)
    }

    pub fn with_max_line(redactor: Redactor, max_line: usize) -> PlainTextParser {
        PlainTextParser {
            lines: LineAssembler::new(max_line.max(1)),
            redactor,
            tail: VecDeque::new(),
            tail_bytes: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<AgentEvent> {
        feed(self, chunk)
    }

    pub fn finish(&mut self) -> Vec<AgentEvent> {
        end(self)
    }

    /// The last [`TAIL_LIMIT`] bytes of output (whole lines, redacted), `\n`-joined.
    pub fn tail(&self) -> String {
        let joined = self.tail.iter().cloned().collect::<Vec<_>>().join("\n");
        let mut start = joined.len().saturating_sub(TAIL_LIMIT);
        while !joined.is_char_boundary(start) {
            start += 1;
        }
        joined[start..].to_owned()
    }

    fn remember(&mut self, line: String) {
        self.tail_bytes += line.len() + 1;
        self.tail.push_back(line);
        while self.tail_bytes > TAIL_LIMIT + 1 && self.tail.len() > 1 {
            if let Some(old) = self.tail.pop_front() {
                self.tail_bytes -= old.len() + 1;
            }
        }
    }
}

impl LineParser for PlainTextParser {
    fn events(&mut self, lines: Vec<Line>) -> Vec<AgentEvent> {
        let mut events = Vec::with_capacity(lines.len());
        for line in lines {
            let mut event = match line {
                Line::Complete(bytes) => AgentEvent::Output {
                    line: String::from_utf8_lossy(&bytes).into_owned(),
                },
                Line::TooLong { head, length } => AgentEvent::Malformed {
                    excerpt: cut(
                        &self.redactor.redact_cut(&String::from_utf8_lossy(&head)),
                        EXCERPT_LIMIT,
                    ),
                    error: format!(
                        "line of {length} bytes is longer than the {}-byte limit; skipped",
                        head.len()
                    ),
                },
            };
            event.redact(&self.redactor);
            if let AgentEvent::Output { line } = &event {
                self.remember(line.clone());
            }
            events.push(event);
        }
        events
    }

    fn assembler(&mut self) -> &mut LineAssembler {
        &mut self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_an_output_event() {
        let mut parser = PlainTextParser::new(Redactor::default());
        let mut events = parser.push(b"hello\nwor");
        events.extend(parser.push(b"ld\n\nlast"));
        events.extend(parser.finish());
        let lines: Vec<_> = events
            .iter()
            .map(|e| match e {
                AgentEvent::Output { line } => line.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(lines, ["hello", "world", "", "last"]);
        assert_eq!(parser.tail(), "hello\nworld\n\nlast");
    }

    #[test]
    fn tail_keeps_only_the_end_and_is_redacted() {
        let mut parser = PlainTextParser::new(Redactor::new(["secret-value-42"]));
        for n in 0..5000 {
            parser.push(format!("line {n}\n").as_bytes());
        }
        parser.push(b"key=secret-value-42\n");
        let tail = parser.tail();
        assert!(tail.len() <= TAIL_LIMIT);
        assert!(tail.ends_with("line 4999\nkey=[redacted]"), "{tail}");
        assert!(!tail.contains("line 0\n"));
    }
}
