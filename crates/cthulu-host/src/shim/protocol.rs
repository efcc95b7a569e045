//! The framed protocol between a shim and its clients, over the Unix socket
//! `procs/<process_id>/sock`.
//!
//! Every frame is
//!
//! ```text
//! u32 big-endian N   length of what follows (1 ..= MAX_FRAME_LEN)
//! u8  kind
//! N-1 bytes          payload
//! ```
//!
//! Client → shim (the first frame must be `Hello`):
//!
//! | kind | frame | payload |
//! |---|---|---|
//! | `0x01` | `Hello` | u32 BE protocol version, u8 role (0 attach, 1 control) |
//! | `0x10` | `Stdin` | bytes for the process's stdin |
//! | `0x11` | `CloseStdin` | none (a PTY gets the EOF character instead) |
//! | `0x12` | `Signal` | i32 BE signal number, sent to the process group |
//! | `0x13` | `Resize` | u16 BE cols, u16 BE rows |
//!
//! Shim → client (attach clients only; control clients get nothing back):
//!
//! | kind | frame | payload |
//! |---|---|---|
//! | `0x02` | `Output` | u8 channel (1 stdout, 2 stderr), bytes |
//! | `0x03` | `Exit` | JSON [`ExitInfo`] |
//! | `0x04` | `Refused` | UTF-8 reason (wrong version, too many clients), then close |
//!
//! An attach client first receives the output the shim kept (the last 1 MiB of each
//! channel, stdout first), then live output, then `Exit` after the last output. The first
//! attach client gets the whole output live (the shim reads none before it connects). A
//! shim that is about to exit closes new connections without a frame: the client replays
//! the recorded files then, which are complete. Closing an attach connection of a process
//! that was not started detached, when it was the last one, kills the process group.

use std::io::{self, Read, Write};

use cthulu_core::ExitInfo;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bumped whenever a frame changes meaning; a shim refuses clients of another version
/// (a detached shim can outlive an upgrade of the server).
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame accepted (kind byte included). Senders chunk data well below it.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Data chunks are at most this long, so a frame never comes near the maximum.
pub const CHUNK_LEN: usize = 256 * 1024;

const HELLO: u8 = 0x01;
const OUTPUT: u8 = 0x02;
const EXIT: u8 = 0x03;
const REFUSED: u8 = 0x04;
const STDIN: u8 = 0x10;
const CLOSE_STDIN: u8 = 0x11;
const SIGNAL: u8 = 0x12;
const RESIZE: u8 = 0x13;

/// What a client connects for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Output replay, live output and exit; stdin, signals and resizes.
    Attach,
    /// Signals and resizes only; not counted as a client of the process.
    Control,
}

/// An output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Stdout,
    Stderr,
}

impl Channel {
    pub fn index(self) -> usize {
        match self {
            Channel::Stdout => 0,
            Channel::Stderr => 1,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Channel::Stdout => 1,
            Channel::Stderr => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Channel> {
        match byte {
            1 => Some(Channel::Stdout),
            2 => Some(Channel::Stderr),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Hello { version: u32, role: Role },
    Stdin(Vec<u8>),
    CloseStdin,
    Signal(i32),
    Resize { cols: u16, rows: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimFrame {
    Output { channel: Channel, data: Vec<u8> },
    Exit(ExitInfo),
    Refused(String),
}

/// A frame that does not follow the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame length {length} is outside 1..={MAX_FRAME_LEN}")]
    BadLength { length: usize },
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    #[error("malformed frame of kind {kind:#04x}")]
    Malformed { kind: u8 },
    #[error("malformed exit frame")]
    BadExit(#[source] serde_json::Error),
    #[error("connection failed")]
    Io(#[from] io::Error),
}

fn frame(kind: u8, payload: &[&[u8]]) -> Vec<u8> {
    let length = 1 + payload.iter().map(|part| part.len()).sum::<usize>();
    let mut bytes = Vec::with_capacity(4 + length);
    bytes.extend_from_slice(&(length as u32).to_be_bytes());
    bytes.push(kind);
    for part in payload {
        bytes.extend_from_slice(part);
    }
    bytes
}

impl ClientFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientFrame::Hello { version, role } => {
                let role = match role {
                    Role::Attach => 0u8,
                    Role::Control => 1u8,
                };
                frame(HELLO, &[&version.to_be_bytes(), &[role]])
            }
            ClientFrame::Stdin(data) => frame(STDIN, &[data]),
            ClientFrame::CloseStdin => frame(CLOSE_STDIN, &[]),
            ClientFrame::Signal(number) => frame(SIGNAL, &[&number.to_be_bytes()]),
            ClientFrame::Resize { cols, rows } => {
                frame(RESIZE, &[&cols.to_be_bytes(), &rows.to_be_bytes()])
            }
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<ClientFrame, ProtocolError> {
        let malformed = || ProtocolError::Malformed { kind };
        match kind {
            HELLO => {
                let [a, b, c, d, role] = payload else {
                    return Err(malformed());
                };
                let role = match role {
                    0 => Role::Attach,
                    1 => Role::Control,
                    _ => return Err(malformed()),
                };
                Ok(ClientFrame::Hello {
                    version: u32::from_be_bytes([*a, *b, *c, *d]),
                    role,
                })
            }
            STDIN => Ok(ClientFrame::Stdin(payload.to_vec())),
            CLOSE_STDIN if payload.is_empty() => Ok(ClientFrame::CloseStdin),
            SIGNAL => {
                let number: [u8; 4] = payload.try_into().map_err(|_| malformed())?;
                Ok(ClientFrame::Signal(i32::from_be_bytes(number)))
            }
            RESIZE => {
                let [c0, c1, r0, r1] = payload else {
                    return Err(malformed());
                };
                Ok(ClientFrame::Resize {
                    cols: u16::from_be_bytes([*c0, *c1]),
                    rows: u16::from_be_bytes([*r0, *r1]),
                })
            }
            CLOSE_STDIN => Err(malformed()),
            _ => Err(ProtocolError::UnknownKind { kind }),
        }
    }
}

impl ShimFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ShimFrame::Output { channel, data } => encode_output(*channel, data),
            ShimFrame::Exit(exit) => {
                let json = serde_json::to_vec(exit).expect("ExitInfo serializes");
                frame(EXIT, &[&json])
            }
            ShimFrame::Refused(reason) => frame(REFUSED, &[reason.as_bytes()]),
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<ShimFrame, ProtocolError> {
        match kind {
            OUTPUT => {
                let (channel, data) = payload
                    .split_first()
                    .ok_or(ProtocolError::Malformed { kind })?;
                let channel =
                    Channel::from_byte(*channel).ok_or(ProtocolError::Malformed { kind })?;
                Ok(ShimFrame::Output {
                    channel,
                    data: data.to_vec(),
                })
            }
            EXIT => serde_json::from_slice(payload)
                .map(ShimFrame::Exit)
                .map_err(ProtocolError::BadExit),
            REFUSED => Ok(ShimFrame::Refused(
                String::from_utf8_lossy(payload).into_owned(),
            )),
            _ => Err(ProtocolError::UnknownKind { kind }),
        }
    }
}

/// An output frame, without building a [`ShimFrame`] (and copying the data) first.
pub fn encode_output(channel: Channel, data: &[u8]) -> Vec<u8> {
    frame(OUTPUT, &[&[channel.byte()], data])
}

fn check_length(length: usize) -> Result<(), ProtocolError> {
    if length == 0 || length > MAX_FRAME_LEN {
        return Err(ProtocolError::BadLength { length });
    }
    Ok(())
}

/// Reads one frame: `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(reader: &mut impl Read) -> Result<Option<(u8, Vec<u8>)>, ProtocolError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    let length = u32::from_be_bytes(header) as usize;
    check_length(length)?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let kind = body.remove(0);
    Ok(Some((kind, body)))
}

/// The async twin of [`read_frame`].
pub async fn read_frame_async(
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<Option<(u8, Vec<u8>)>, ProtocolError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            read => filled += read,
        }
    }
    let length = u32::from_be_bytes(header) as usize;
    check_length(length)?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    let kind = body.remove(0);
    Ok(Some((kind, body)))
}

/// Writes an encoded frame.
pub fn write_frame(writer: &mut impl Write, encoded: &[u8]) -> io::Result<()> {
    writer.write_all(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_client(frame: ClientFrame) {
        let bytes = frame.encode();
        let (kind, payload) = read_frame(&mut bytes.as_slice()).unwrap().unwrap();
        assert_eq!(ClientFrame::decode(kind, &payload).unwrap(), frame);
    }

    fn round_trip_shim(frame: ShimFrame) {
        let bytes = frame.encode();
        let (kind, payload) = read_frame(&mut bytes.as_slice()).unwrap().unwrap();
        assert_eq!(ShimFrame::decode(kind, &payload).unwrap(), frame);
    }

    #[test]
    fn frames_round_trip() {
        round_trip_client(ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Attach,
        });
        round_trip_client(ClientFrame::Hello {
            version: 7,
            role: Role::Control,
        });
        round_trip_client(ClientFrame::Stdin((0..=255).collect()));
        round_trip_client(ClientFrame::Stdin(Vec::new()));
        round_trip_client(ClientFrame::CloseStdin);
        round_trip_client(ClientFrame::Signal(-3));
        round_trip_client(ClientFrame::Resize {
            cols: 120,
            rows: 40,
        });
        round_trip_shim(ShimFrame::Output {
            channel: Channel::Stderr,
            data: b"\0x\xff".to_vec(),
        });
        round_trip_shim(ShimFrame::Exit(ExitInfo {
            exit_code: None,
            signal: Some(9),
            timed_out: true,
            truncated: true,
            oom_killed: false,
        }));
        round_trip_shim(ShimFrame::Refused("version 2".into()));
    }

    #[test]
    fn end_of_stream_between_frames_is_clean() {
        let mut bytes = ClientFrame::CloseStdin.encode();
        bytes.extend(ClientFrame::Signal(15).encode());
        let mut reader = bytes.as_slice();
        assert!(read_frame(&mut reader).unwrap().is_some());
        assert!(read_frame(&mut reader).unwrap().is_some());
        assert!(read_frame(&mut reader).unwrap().is_none());
        // Cut inside a frame: an error, not a clean end.
        let bytes = ClientFrame::Signal(15).encode();
        assert!(read_frame(&mut &bytes[..6]).is_err());
        assert!(read_frame(&mut &bytes[..2]).is_err());
    }

    #[test]
    fn hostile_frames_are_refused() {
        // Zero length, and a length past the maximum (no allocation of it happens).
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 0][..]),
            Err(ProtocolError::BadLength { length: 0 })
        ));
        assert!(matches!(
            read_frame(&mut &[0xffu8, 0xff, 0xff, 0xff, 1][..]),
            Err(ProtocolError::BadLength { .. })
        ));
        assert!(ClientFrame::decode(0x7f, b"").is_err());
        assert!(ClientFrame::decode(SIGNAL, b"abc").is_err());
        assert!(ClientFrame::decode(HELLO, &[0, 0, 0, 1, 9]).is_err());
        assert!(ClientFrame::decode(CLOSE_STDIN, b"x").is_err());
        assert!(ShimFrame::decode(OUTPUT, b"").is_err());
        assert!(ShimFrame::decode(OUTPUT, b"\x09abc").is_err());
        assert!(ShimFrame::decode(EXIT, b"{").is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: every prefix of a mix of valid and garbage frames.
        let mut bytes = Vec::new();
        bytes.extend(ClientFrame::Stdin(b"hello".to_vec()).encode());
        bytes.extend([0, 0, 0, 3, SIGNAL, 1, 2]);
        bytes.extend(ClientFrame::Resize { cols: 1, rows: 2 }.encode());
        bytes.extend((0u8..=255).rev());
        for end in 0..bytes.len() {
            for start in 0..end.min(12) {
                let mut reader = &bytes[start..end];
                while let Ok(Some((kind, payload))) = read_frame(&mut reader) {
                    let _ = ClientFrame::decode(kind, &payload);
                    let _ = ShimFrame::decode(kind, &payload);
                }
            }
        }
    }

    #[tokio::test]
    async fn async_reader_matches_sync_reader() {
        let mut bytes = ShimFrame::Output {
            channel: Channel::Stdout,
            data: vec![7; 100_000],
        }
        .encode();
        bytes.extend(ShimFrame::Exit(ExitInfo::default()).encode());
        let mut reader = bytes.as_slice();
        let (kind, payload) = read_frame_async(&mut reader).await.unwrap().unwrap();
        assert!(matches!(
            ShimFrame::decode(kind, &payload).unwrap(),
            ShimFrame::Output { data, .. } if data.len() == 100_000
        ));
        let (kind, payload) = read_frame_async(&mut reader).await.unwrap().unwrap();
        assert_eq!(
            ShimFrame::decode(kind, &payload).unwrap(),
            ShimFrame::Exit(ExitInfo::default())
        );
        assert!(read_frame_async(&mut reader).await.unwrap().is_none());
    }
}
