//! The WebSocket protocol of streaming exec and process attach (see docs/streaming.md).
//!
//! - Client → server, first frame: a text frame holding an [`ExecRequest`](crate::ExecRequest)
//!   (streaming exec only; attach needs none).
//! - Server → client: a text [`ServerMessage::Started`], then binary frames whose first
//!   byte is the channel ([`STDOUT`], [`STDERR`]) and the rest the data, then a text
//!   [`ServerMessage::Exit`] after the last output, then close.
//! - Client → server afterwards: binary frames starting with [`STDIN`], and text
//!   [`ClientMessage`] frames (close stdin, signal, resize).

use serde::{Deserialize, Serialize};

use crate::{PtySize, Signal};

/// Channel byte of stdin data (client → server).
pub const STDIN: u8 = 0;
/// Channel byte of stdout data (server → client). A PTY's output is all on stdout.
pub const STDOUT: u8 = 1;
/// Channel byte of stderr data (server → client).
pub const STDERR: u8 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// EOF on the process's stdin.
    CloseStdin,
    Signal {
        signal: Signal,
    },
    Resize {
        cols: u16,
        rows: u16,
    },
}

impl ClientMessage {
    pub fn resize(size: PtySize) -> Self {
        ClientMessage::Resize {
            cols: size.cols,
            rows: size.rows,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The process runs; `process_id` names it for attach, signal and kill.
    Started { process_id: String },
    /// The process ended; sent after its last output.
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        /// Output past the cap was dropped.
        truncated: bool,
        #[serde(default)]
        oom_killed: bool,
    },
    /// The request failed before or while running; the connection closes after it.
    Error { error: crate::ApiError },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged() {
        let json = serde_json::to_string(&ClientMessage::Signal {
            signal: Signal::Term,
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"signal","signal":"TERM"}"#);
        let parsed: ClientMessage = serde_json::from_str(r#"{"type":"close_stdin"}"#).unwrap();
        assert_eq!(parsed, ClientMessage::CloseStdin);
    }
}
