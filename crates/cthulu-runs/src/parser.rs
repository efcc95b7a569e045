//! One parser type for every output format, so a runner need not match on the format.

use crate::definition::OutputFormat;
use crate::event::AgentEvent;
use crate::plain_text::PlainTextParser;
use crate::redact::Redactor;
use crate::stream_json::StreamJsonParser;

/// The parser for an agent's output format.
#[derive(Debug)]
pub enum OutputParser {
    StreamJson(StreamJsonParser),
    PlainText(PlainTextParser),
}

impl OutputParser {
    pub fn new(format: OutputFormat, redactor: Redactor) -> OutputParser {
        match format {
            OutputFormat::ClaudeStreamJson => {
                OutputParser::StreamJson(StreamJsonParser::new(redactor))
            }
            OutputFormat::PlainText => OutputParser::PlainText(PlainTextParser::new(redactor)),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<AgentEvent> {
        match self {
            OutputParser::StreamJson(parser) => parser.push(chunk),
            OutputParser::PlainText(parser) => parser.push(chunk),
        }
    }

    pub fn finish(&mut self) -> Vec<AgentEvent> {
        match self {
            OutputParser::StreamJson(parser) => parser.finish(),
            OutputParser::PlainText(parser) => parser.finish(),
        }
    }

    /// The plain-text tail to pass to [`crate::OutcomeTracker::finish`]; `None` for
    /// stream-json.
    pub fn output_tail(&self) -> Option<String> {
        match self {
            OutputParser::StreamJson(_) => None,
            OutputParser::PlainText(parser) => Some(parser.tail()),
        }
    }
}
