//! Bounded line assembly from arbitrary byte chunks.

use crate::event::AgentEvent;
/// A line cut out of the byte stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A whole line without its `\n` (and without a trailing `\r`).
    Complete(Vec<u8>),
    /// A line longer than the cap: its first `cap` bytes and its total length.
    TooLong { head: Vec<u8>, length: usize },
}

/// Splits a byte stream into lines, holding at most `max_line` bytes of any one line.
#[derive(Debug)]
pub(crate) struct LineAssembler {
    buffer: Vec<u8>,
    max_line: usize,
    /// Bytes of the current over-long line seen so far, once it went past the cap.
    overflow: Option<usize>,
}

impl LineAssembler {
    pub(crate) fn new(max_line: usize) -> LineAssembler {
        LineAssembler {
            buffer: Vec::new(),
            max_line,
            overflow: None,
        }
    }

    pub(crate) fn push(&mut self, mut chunk: &[u8], lines: &mut Vec<Line>) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            let (part, rest, ends_line) = match newline {
                Some(index) => (&chunk[..index], &chunk[index + 1..], true),
                None => (chunk, &[][..], false),
            };
            self.append(part);
            if ends_line {
                lines.push(self.take_line());
            }
            chunk = rest;
        }
    }

    /// The last line when the stream ended without a newline.
    pub(crate) fn finish(&mut self) -> Option<Line> {
        if self.buffer.is_empty() && self.overflow.is_none() {
            return None;
        }
        Some(self.take_line())
    }

    fn append(&mut self, part: &[u8]) {
        if let Some(seen) = &mut self.overflow {
            *seen += part.len();
            return;
        }
        let room = self.max_line - self.buffer.len();
        if part.len() > room {
            self.buffer.extend_from_slice(&part[..room]);
            self.overflow = Some(self.buffer.len() + part.len() - room);
        } else {
            self.buffer.extend_from_slice(part);
        }
    }

    fn take_line(&mut self) -> Line {
        let mut line = std::mem::take(&mut self.buffer);
        match self.overflow.take() {
            Some(length) => Line::TooLong { head: line, length },
            None => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Line::Complete(line)
            }
        }
    }
}

/// A parser of whole lines (every output format is one): bytes are fed to it the same way.
pub(crate) trait LineParser {
    fn assembler(&mut self) -> &mut LineAssembler;
    /// The events of lines just completed.
    fn events(&mut self, lines: Vec<Line>) -> Vec<AgentEvent>;
}

/// Feeds a chunk; returns the events of the lines it completed.
pub(crate) fn feed(parser: &mut impl LineParser, chunk: &[u8]) -> Vec<AgentEvent> {
    let mut lines = Vec::new();
    parser.assembler().push(chunk, &mut lines);
    parser.events(lines)
}

/// Ends the stream: a last line without a newline counts too.
pub(crate) fn end(parser: &mut impl LineParser) -> Vec<AgentEvent> {
    let lines = parser.assembler().finish().into_iter().collect();
    parser.events(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max_line: usize) -> Vec<Line> {
        let mut assembler = LineAssembler::new(max_line);
        let mut lines = Vec::new();
        for chunk in chunks {
            assembler.push(chunk, &mut lines);
        }
        lines.extend(assembler.finish());
        lines
    }

    #[test]
    fn lines_split_anywhere_are_joined() {
        assert_eq!(
            split(&[b"ab", b"c\r\nd", b"", b"e\n\nf"], 100),
            [
                Line::Complete(b"abc".to_vec()),
                Line::Complete(b"de".to_vec()),
                Line::Complete(Vec::new()),
                Line::Complete(b"f".to_vec()),
            ]
        );
    }

    #[test]
    fn long_lines_are_capped_and_the_next_line_survives() {
        assert_eq!(
            split(&[b"0123", b"456789\nok\n"], 4),
            [
                Line::TooLong {
                    head: b"0123".to_vec(),
                    length: 10
                },
                Line::Complete(b"ok".to_vec()),
            ]
        );
        assert_eq!(
            split(&[b"0123456"], 4),
            [Line::TooLong {
                head: b"0123".to_vec(),
                length: 7
            }]
        );
    }

    #[test]
    fn a_line_exactly_at_the_cap_is_complete() {
        assert_eq!(split(&[b"0123\n"], 4), [Line::Complete(b"0123".to_vec())]);
    }
}
