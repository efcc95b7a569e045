//! ttyd's WebSocket protocol (subprotocol `tty`), as the earlier system's clients and the
//! terminal page speak it; pure parsing and framing, no I/O.
//!
//! - The client's first message (text or binary) is the JSON handshake
//!   `{"AuthToken": "...", "columns": N, "rows": N}`.
//! - Then every client frame starts with a command byte: `'0'` input bytes, `'1'` resize
//!   (`{"columns","rows"}`), `'2'` pause and `'3'` resume (flow control, which a PTY's own
//!   back-pressure makes unnecessary here).
//! - Server frames (binary): `'0'` output bytes, `'1'` window title, `'2'` preferences.

use cthulu_types::PtySize;
use serde::Deserialize;

/// Largest handshake accepted: it holds a token and two numbers.
pub const MAX_HANDSHAKE: usize = 4096;

/// The terminal size used when the handshake gives none.
pub const DEFAULT_SIZE: PtySize = PtySize { cols: 80, rows: 24 };

pub const OUTPUT: u8 = b'0';
pub const SET_WINDOW_TITLE: u8 = b'1';
pub const SET_PREFERENCES: u8 = b'2';

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub auth_token: String,
    pub size: PtySize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the handshake is {size} bytes, more than {MAX_HANDSHAKE}")]
    HandshakeTooLarge { size: usize },
    #[error(
        "the handshake is not the JSON object {{\"AuthToken\",\"columns\",\"rows\"}}: {reason}"
    )]
    Handshake { reason: String },
    #[error("a resize frame is not {{\"columns\",\"rows\"}}: {reason}")]
    Resize { reason: String },
}

#[derive(Deserialize)]
struct RawHandshake {
    #[serde(rename = "AuthToken", default)]
    auth_token: String,
    #[serde(default)]
    columns: u32,
    #[serde(default)]
    rows: u32,
}

#[derive(Deserialize)]
struct RawSize {
    columns: u32,
    rows: u32,
}

/// A size from the client: zero or absent is the default, a huge one is clamped.
fn size(columns: u32, rows: u32) -> PtySize {
    let clamp = |value: u32, default: u16| match value {
        0 => default,
        value => u16::try_from(value).unwrap_or(u16::MAX).min(4096),
    };
    PtySize {
        cols: clamp(columns, DEFAULT_SIZE.cols),
        rows: clamp(rows, DEFAULT_SIZE.rows),
    }
}

pub fn parse_handshake(data: &[u8]) -> Result<Handshake, ProtocolError> {
    if data.len() > MAX_HANDSHAKE {
        return Err(ProtocolError::HandshakeTooLarge { size: data.len() });
    }
    let raw: RawHandshake =
        serde_json::from_slice(data).map_err(|error| ProtocolError::Handshake {
            reason: error.to_string(),
        })?;
    Ok(Handshake {
        auth_token: raw.auth_token,
        size: size(raw.columns, raw.rows),
    })
}

/// One frame from the client after the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    Input(&'a [u8]),
    Resize(PtySize),
    Pause,
    Resume,
    /// An empty frame or an unknown command: ignored, as ttyd does.
    Ignored,
}

pub fn parse_client_frame(data: &[u8]) -> Result<ClientFrame<'_>, ProtocolError> {
    let Some((&command, rest)) = data.split_first() else {
        return Ok(ClientFrame::Ignored);
    };
    Ok(match command {
        b'0' => ClientFrame::Input(rest),
        b'1' => {
            let raw: RawSize =
                serde_json::from_slice(rest).map_err(|error| ProtocolError::Resize {
                    reason: error.to_string(),
                })?;
            ClientFrame::Resize(size(raw.columns, raw.rows))
        }
        b'2' => ClientFrame::Pause,
        b'3' => ClientFrame::Resume,
        _ => ClientFrame::Ignored,
    })
}

/// A server frame: the command byte, then `data`.
pub fn server_frame(command: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(command);
    frame.extend_from_slice(data);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_clients_handshake_parses() {
        let handshake = parse_handshake(br#"{"AuthToken":"abc","columns":200,"rows":50}"#).unwrap();
        assert_eq!(handshake.auth_token, "abc");
        assert_eq!(
            handshake.size,
            PtySize {
                cols: 200,
                rows: 50
            }
        );
    }

    #[test]
    fn a_handshake_without_size_or_token_gets_defaults() {
        let handshake = parse_handshake(b"{}").unwrap();
        assert_eq!(handshake.auth_token, "");
        assert_eq!(handshake.size, DEFAULT_SIZE);
        let huge = parse_handshake(br#"{"columns":99999999,"rows":1}"#).unwrap();
        assert_eq!(
            huge.size,
            PtySize {
                cols: 4096,
                rows: 1
            }
        );
    }

    #[test]
    fn bad_handshakes_are_refused() {
        assert!(matches!(
            parse_handshake(b"0echo hello"),
            Err(ProtocolError::Handshake { .. })
        ));
        assert!(matches!(
            parse_handshake(br#"{"AuthToken":7}"#),
            Err(ProtocolError::Handshake { .. })
        ));
        let oversized = vec![b' '; MAX_HANDSHAKE + 1];
        assert!(matches!(
            parse_handshake(&oversized),
            Err(ProtocolError::HandshakeTooLarge { .. })
        ));
    }

    #[test]
    fn client_frames_parse_by_command_byte() {
        assert_eq!(
            parse_client_frame(b"0ls\n").unwrap(),
            ClientFrame::Input(b"ls\n")
        );
        assert_eq!(
            parse_client_frame(br#"1{"columns":120,"rows":40}"#).unwrap(),
            ClientFrame::Resize(PtySize {
                cols: 120,
                rows: 40
            })
        );
        assert_eq!(parse_client_frame(b"2").unwrap(), ClientFrame::Pause);
        assert_eq!(parse_client_frame(b"3").unwrap(), ClientFrame::Resume);
        assert_eq!(parse_client_frame(b"").unwrap(), ClientFrame::Ignored);
        assert_eq!(parse_client_frame(b"9xyz").unwrap(), ClientFrame::Ignored);
        assert!(parse_client_frame(b"1{nope").is_err());
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers (never panics), and a size is never
        /// zero or past the clamp.
        #[test]
        fn any_bytes_parse_or_are_refused(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(handshake) = parse_handshake(&data) {
                proptest::prop_assert!(handshake.size.cols >= 1 && handshake.size.cols <= 4096);
                proptest::prop_assert!(handshake.size.rows >= 1 && handshake.size.rows <= 4096);
            }
            if let Ok(ClientFrame::Resize(size)) = parse_client_frame(&data) {
                proptest::prop_assert!(size.cols >= 1 && size.rows >= 1);
            }
        }

        #[test]
        fn handshakes_round_trip(token in "[ -~]{0,64}", columns in 0u32..100_000, rows in 0u32..100_000) {
            let json = serde_json::json!({"AuthToken": token, "columns": columns, "rows": rows});
            let handshake = parse_handshake(json.to_string().as_bytes()).unwrap();
            proptest::prop_assert_eq!(handshake.auth_token, token);
            proptest::prop_assert_eq!(handshake.size, size(columns, rows));
        }
    }

    #[test]
    fn server_frames_lead_with_their_command() {
        assert_eq!(server_frame(OUTPUT, b"hi"), b"0hi");
        assert_eq!(server_frame(SET_PREFERENCES, b"{}"), b"2{}");
    }
}
