//! The frame layer: the fixed header, typed frame bodies, the encoder and the incremental
//! decoder. Layout and limits are described in the crate docs.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

use crate::message::{Control, ErrorReply, Hello, Request};

/// Bytes of the fixed header: stream id (u32 LE), kind (u8), flags (u8), payload length
/// (u32 LE).
pub const HEADER_LEN: usize = 10;
/// Largest payload of a `DATA` frame.
pub const MAX_DATA_PAYLOAD: usize = 64 * 1024;
/// Largest payload of a JSON frame (`HELLO`, `OPEN`, `CONTROL`, `RESET`).
pub const MAX_CONTROL_PAYLOAD: usize = 128 * 1024;
/// Flag of a `DATA` frame: the bytes belong to the stderr channel.
pub const FLAG_STDERR: u8 = 0x01;

/// A stream id; 0 is the connection itself (only `HELLO` travels on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl StreamId {
    /// The connection-level id.
    pub const CONNECTION: StreamId = StreamId(0);
}

impl fmt::Display for StreamId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// The kind byte of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Open = 2,
    Data = 3,
    WindowUpdate = 4,
    Control = 5,
    Close = 6,
    Reset = 7,
}

impl FrameKind {
    /// The kind for a header byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Hello,
            2 => FrameKind::Open,
            3 => FrameKind::Data,
            4 => FrameKind::WindowUpdate,
            5 => FrameKind::Control,
            6 => FrameKind::Close,
            7 => FrameKind::Reset,
            _ => return None,
        })
    }

    /// The largest payload a frame of this kind may carry.
    pub fn max_payload(self) -> usize {
        match self {
            FrameKind::Data => MAX_DATA_PAYLOAD,
            FrameKind::WindowUpdate => 4,
            FrameKind::Close => 0,
            FrameKind::Hello | FrameKind::Open | FrameKind::Control | FrameKind::Reset => {
                MAX_CONTROL_PAYLOAD
            }
        }
    }

    fn on_connection(self) -> bool {
        self == FrameKind::Hello
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FrameKind::Hello => "hello",
            FrameKind::Open => "open",
            FrameKind::Data => "data",
            FrameKind::WindowUpdate => "window_update",
            FrameKind::Control => "control",
            FrameKind::Close => "close",
            FrameKind::Reset => "reset",
        };
        formatter.write_str(name)
    }
}

/// Which output of a stream data belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Stdin, stdout, file bytes, tunnel bytes.
    Main,
    /// Stderr of an exec (flag [`FLAG_STDERR`]).
    Stderr,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream_id: StreamId,
    pub body: FrameBody,
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameBody {
    Hello(Hello),
    Open(Request),
    Data { channel: Channel, bytes: Vec<u8> },
    WindowUpdate { increment: u32 },
    Control(Control),
    Close,
    Reset(ErrorReply),
}

impl FrameBody {
    pub fn kind(&self) -> FrameKind {
        match self {
            FrameBody::Hello(_) => FrameKind::Hello,
            FrameBody::Open(_) => FrameKind::Open,
            FrameBody::Data { .. } => FrameKind::Data,
            FrameBody::WindowUpdate { .. } => FrameKind::WindowUpdate,
            FrameBody::Control(_) => FrameKind::Control,
            FrameBody::Close => FrameKind::Close,
            FrameBody::Reset(_) => FrameKind::Reset,
        }
    }
}

/// Why a frame could not be encoded (our own bug or an oversized request, never sent).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{kind} frame payload of {length} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        kind: FrameKind,
        length: usize,
        max: usize,
    },
    #[error("{kind} frame cannot travel on stream {stream_id}")]
    WrongStream {
        kind: FrameKind,
        stream_id: StreamId,
    },
    #[error("window update of zero on stream {stream_id}")]
    ZeroWindowIncrement { stream_id: StreamId },
    #[error("serializing the {kind} payload of stream {stream_id}")]
    Serialize {
        kind: FrameKind,
        stream_id: StreamId,
        #[source]
        source: serde_json::Error,
    },
}

impl Frame {
    pub fn new(stream_id: StreamId, body: FrameBody) -> Self {
        Self { stream_id, body }
    }

    /// Appends the frame's bytes to `out`; nothing is appended when it fails.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let kind = self.body.kind();
        if kind.on_connection() != (self.stream_id == StreamId::CONNECTION) {
            return Err(EncodeError::WrongStream {
                kind,
                stream_id: self.stream_id,
            });
        }
        let json = |value: &dyn ErasedSerialize| {
            value.to_json().map_err(|source| EncodeError::Serialize {
                kind,
                stream_id: self.stream_id,
                source,
            })
        };
        let (flags, payload): (u8, std::borrow::Cow<'_, [u8]>) = match &self.body {
            FrameBody::Hello(hello) => (0, json(hello)?.into()),
            FrameBody::Open(request) => (0, json(request)?.into()),
            FrameBody::Control(control) => (0, json(control)?.into()),
            FrameBody::Reset(error) => (0, json(error)?.into()),
            FrameBody::Data { channel, bytes } => {
                let flags = match channel {
                    Channel::Main => 0,
                    Channel::Stderr => FLAG_STDERR,
                };
                (flags, bytes.as_slice().into())
            }
            FrameBody::WindowUpdate { increment } => {
                if *increment == 0 {
                    return Err(EncodeError::ZeroWindowIncrement {
                        stream_id: self.stream_id,
                    });
                }
                (0, increment.to_le_bytes().to_vec().into())
            }
            FrameBody::Close => (0, Vec::new().into()),
        };
        if payload.len() > kind.max_payload() {
            return Err(EncodeError::PayloadTooLarge {
                kind,
                length: payload.len(),
                max: kind.max_payload(),
            });
        }
        out.reserve(HEADER_LEN + payload.len());
        out.extend_from_slice(&self.stream_id.0.to_le_bytes());
        out.push(kind as u8);
        out.push(flags);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(())
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }
}

/// Object-safe JSON serialization, so `encode` can share one error mapping.
trait ErasedSerialize {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
}

impl<T: Serialize> ErasedSerialize for T {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Why the byte stream is not a valid sequence of frames. Once the decoder reports one, the
/// stream is out of sync and the decoder keeps reporting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown frame kind {kind:#04x} on stream {stream_id}")]
    UnknownKind { kind: u8, stream_id: StreamId },
    #[error("{kind} frame on stream {stream_id} has unknown flags {flags:#04x}")]
    UnknownFlags {
        kind: FrameKind,
        stream_id: StreamId,
        flags: u8,
    },
    #[error("{kind} frame cannot travel on stream {stream_id}")]
    WrongStream {
        kind: FrameKind,
        stream_id: StreamId,
    },
    #[error(
        "{kind} frame on stream {stream_id} announces {length} payload bytes, the maximum is {max}"
    )]
    PayloadTooLarge {
        kind: FrameKind,
        stream_id: StreamId,
        length: u32,
        max: usize,
    },
    #[error("window update on stream {stream_id} has a {length}-byte payload instead of 4")]
    WindowUpdateLength { stream_id: StreamId, length: u32 },
    #[error("window update of zero on stream {stream_id}")]
    ZeroWindowIncrement { stream_id: StreamId },
    #[error("invalid {kind} payload on stream {stream_id}: {reason}")]
    BadPayload {
        kind: FrameKind,
        stream_id: StreamId,
        reason: String,
    },
    #[error("the byte stream ended inside a frame: {buffered} bytes buffered, {needed} needed")]
    Truncated { buffered: usize, needed: usize },
}

/// An incremental frame decoder: feed it bytes as they arrive, in chunks of any size, and
/// take frames out.
///
/// The header is checked as soon as its 10 bytes are in, so an oversized or unknown frame is
/// reported before any of its payload is buffered; a payload is copied out only once it is
/// complete and never exceeds its kind's maximum. The buffer holds at most one incomplete
/// frame plus the bytes of the last push not decoded yet.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already consumed; compacted lazily.
    start: usize,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes. Memory held is what was pushed and not yet decoded; call
    /// [`Decoder::next_frame`] until it returns `None` after each push to keep it at most one
    /// frame.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes pushed and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// The next complete frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match self.decode_one() {
            Ok(frame) => Ok(frame),
            Err(error) => {
                self.failed = Some(error.clone());
                self.buffer = Vec::new();
                self.start = 0;
                Err(error)
            }
        }
    }

    /// Call when the byte stream ended: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let buffered = self.buffered();
        if buffered == 0 {
            return Ok(());
        }
        let needed = match self.buffer.get(self.start..self.start + HEADER_LEN) {
            Some(header) => HEADER_LEN + u32_at(header, 6) as usize,
            None => HEADER_LEN,
        };
        Err(DecodeError::Truncated { buffered, needed })
    }

    fn decode_one(&mut self) -> Result<Option<Frame>, DecodeError> {
        let available = &self.buffer[self.start..];
        let Some(header) = available.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let stream_id = StreamId(u32_at(header, 0));
        let kind_byte = header[4];
        let flags = header[5];
        let length = u32_at(header, 6);
        let kind = FrameKind::from_byte(kind_byte).ok_or(DecodeError::UnknownKind {
            kind: kind_byte,
            stream_id,
        })?;
        check_header(stream_id, kind, flags, length)?;
        let end = HEADER_LEN + length as usize;
        let Some(payload) = available.get(HEADER_LEN..end) else {
            // Make room for exactly this frame, so the pushes completing it do not grow the
            // buffer beyond it.
            let missing = end - available.len();
            self.buffer.reserve_exact(missing);
            return Ok(None);
        };
        let body = decode_body(stream_id, kind, flags, payload)?;
        self.start += end;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > MAX_CONTROL_PAYLOAD {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Frame { stream_id, body }))
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_header(
    stream_id: StreamId,
    kind: FrameKind,
    flags: u8,
    length: u32,
) -> Result<(), DecodeError> {
    let allowed_flags = if kind == FrameKind::Data {
        FLAG_STDERR
    } else {
        0
    };
    if flags & !allowed_flags != 0 {
        return Err(DecodeError::UnknownFlags {
            kind,
            stream_id,
            flags,
        });
    }
    if kind.on_connection() != (stream_id == StreamId::CONNECTION) {
        return Err(DecodeError::WrongStream { kind, stream_id });
    }
    if kind == FrameKind::WindowUpdate && length != 4 {
        return Err(DecodeError::WindowUpdateLength { stream_id, length });
    }
    if length as usize > kind.max_payload() {
        return Err(DecodeError::PayloadTooLarge {
            kind,
            stream_id,
            length,
            max: kind.max_payload(),
        });
    }
    Ok(())
}

fn decode_body(
    stream_id: StreamId,
    kind: FrameKind,
    flags: u8,
    payload: &[u8],
) -> Result<FrameBody, DecodeError> {
    fn json<T: DeserializeOwned>(
        stream_id: StreamId,
        kind: FrameKind,
        payload: &[u8],
    ) -> Result<T, DecodeError> {
        serde_json::from_slice(payload).map_err(|error| DecodeError::BadPayload {
            kind,
            stream_id,
            reason: error.to_string(),
        })
    }
    Ok(match kind {
        FrameKind::Hello => FrameBody::Hello(json(stream_id, kind, payload)?),
        FrameKind::Open => FrameBody::Open(json(stream_id, kind, payload)?),
        FrameKind::Control => FrameBody::Control(json(stream_id, kind, payload)?),
        FrameKind::Reset => FrameBody::Reset(json(stream_id, kind, payload)?),
        FrameKind::Data => FrameBody::Data {
            channel: if flags & FLAG_STDERR != 0 {
                Channel::Stderr
            } else {
                Channel::Main
            },
            bytes: payload.to_vec(),
        },
        FrameKind::WindowUpdate => {
            let increment = u32_at(payload, 0);
            if increment == 0 {
                return Err(DecodeError::ZeroWindowIncrement { stream_id });
            }
            FrameBody::WindowUpdate { increment }
        }
        FrameKind::Close => FrameBody::Close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{
        Command, DirEntry, EntryKind, ErrorCode, ExecRequest, ExitStatus, GuestConfig, GuestLimits,
        ProcessEntry, Signal, TtySize,
    };

    fn round_trip(frame: Frame) {
        let bytes = frame.to_bytes().unwrap();
        let mut decoder = Decoder::new();
        decoder.push(&bytes);
        assert_eq!(decoder.next_frame().unwrap(), Some(frame));
        assert_eq!(decoder.next_frame().unwrap(), None);
        decoder.finish().unwrap();
    }

    fn on(stream: u32, body: FrameBody) -> Frame {
        Frame::new(StreamId(stream), body)
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(on(0, FrameBody::Hello(Hello::new(vec!["tty".into()]))));
        round_trip(on(
            1,
            FrameBody::Open(Request::Exec(ExecRequest {
                process_id: "p1".into(),
                command: Command::Argv(vec!["ls".into(), "-l".into()]),
                env: [("A".to_string(), "b".to_string())].into(),
                cwd: Some("/workspace".into()),
                stdin: true,
                timeout_ms: Some(5000),
                output_cap: Some(1 << 20),
                tty: Some(TtySize { rows: 24, cols: 80 }),
                detached: false,
            })),
        ));
        round_trip(on(
            3,
            FrameBody::Open(Request::Exec(ExecRequest {
                process_id: "p2".into(),
                command: Command::Shell("echo hi | wc -c".into()),
                env: Default::default(),
                cwd: None,
                stdin: false,
                timeout_ms: None,
                output_cap: None,
                tty: None,
                detached: true,
            })),
        ));
        round_trip(on(
            5,
            FrameBody::Open(Request::FilePut {
                path: "a".into(),
                mode: 0o644,
                size: 3,
                create_parents: true,
            }),
        ));
        round_trip(on(
            7,
            FrameBody::Open(Request::FileGet { path: "/b".into() }),
        ));
        round_trip(on(
            9,
            FrameBody::Open(Request::DirList { path: "/".into() }),
        ));
        round_trip(on(11, FrameBody::Open(Request::PortTunnel { port: 5432 })));
        round_trip(on(
            13,
            FrameBody::Open(Request::Attach {
                process_id: "p2".into(),
            }),
        ));
        round_trip(on(15, FrameBody::Open(Request::ProcessList)));
        round_trip(on(
            17,
            FrameBody::Open(Request::SignalProcess {
                process_id: "p2".into(),
                signal: Signal::Term,
            }),
        ));
        round_trip(on(
            19,
            FrameBody::Open(Request::Remove {
                path: "tree".into(),
                recursive: true,
            }),
        ));
        round_trip(on(
            21,
            FrameBody::Open(Request::Configure(GuestConfig {
                hostname: Some("sbx".into()),
                clock_unix_ms: Some(1_800_000_000_000),
                entropy_hex: Some("00ff".into()),
                machine_id: Some("0123456789abcdef0123456789abcdef".into()),
                workspace: Some("/workspace".into()),
                env: Some([("A".to_string(), "1".to_string())].into()),
                limits: Some(GuestLimits {
                    memory_bytes: Some(64 << 20),
                    pids: Some(64),
                    cpu_millis: None,
                }),
            })),
        ));
        round_trip(on(
            25,
            FrameBody::Open(Request::Configure(GuestConfig::default())),
        ));
        round_trip(on(23, FrameBody::Open(Request::Sync)));
        round_trip(on(
            15,
            FrameBody::Control(Control::Processes {
                processes: vec![ProcessEntry {
                    process_id: "p2".into(),
                    command: "sleep 9".into(),
                    detached: true,
                    tty: false,
                    exit: None,
                    started_unix_ms: 1,
                }],
            }),
        ));
        round_trip(on(
            1,
            FrameBody::Data {
                channel: Channel::Main,
                bytes: b"stdout".to_vec(),
            },
        ));
        round_trip(on(
            1,
            FrameBody::Data {
                channel: Channel::Stderr,
                bytes: vec![0, 255, 10],
            },
        ));
        round_trip(on(1, FrameBody::WindowUpdate { increment: 65536 }));
        round_trip(on(
            1,
            FrameBody::Control(Control::Exit(ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: true,
                truncated: false,
                oom_killed: false,
            })),
        ));
        round_trip(on(
            1,
            FrameBody::Control(Control::Exit(ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: false,
                truncated: false,
                oom_killed: true,
            })),
        ));
        round_trip(on(
            1,
            FrameBody::Control(Control::Signal {
                signal: Signal::Kill,
            }),
        ));
        round_trip(on(
            1,
            FrameBody::Control(Control::Resize(TtySize {
                rows: 50,
                cols: 200,
            })),
        ));
        round_trip(on(
            7,
            FrameBody::Control(Control::FileInfo {
                mode: 0o755,
                size: 1 << 40,
            }),
        ));
        round_trip(on(
            9,
            FrameBody::Control(Control::DirEntries {
                entries: vec![DirEntry {
                    name: "x".into(),
                    kind: EntryKind::Symlink,
                    size: 1,
                    mode: 0o777,
                    modified_ms: 5,
                    link_target: Some("/etc".into()),
                }],
            }),
        ));
        round_trip(on(5, FrameBody::Control(Control::Done)));
        round_trip(on(1, FrameBody::Close));
        round_trip(on(
            1,
            FrameBody::Reset(ErrorReply {
                code: ErrorCode::NotFound,
                message: "no such file: /b".into(),
            }),
        ));
    }

    #[test]
    fn the_header_layout_is_little_endian() {
        let bytes = on(
            0x0102_0304,
            FrameBody::Data {
                channel: Channel::Stderr,
                bytes: b"hi".to_vec(),
            },
        )
        .to_bytes()
        .unwrap();
        assert_eq!(bytes, [4, 3, 2, 1, 3, 1, 2, 0, 0, 0, b'h', b'i']);
    }

    fn header(stream: u32, kind: u8, flags: u8, length: u32) -> Vec<u8> {
        let mut bytes = stream.to_le_bytes().to_vec();
        bytes.push(kind);
        bytes.push(flags);
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Option<Frame>, DecodeError> {
        let mut decoder = Decoder::new();
        decoder.push(bytes);
        decoder.next_frame()
    }

    #[test]
    fn an_oversized_length_is_rejected_from_the_header_alone() {
        assert_eq!(
            decode(&header(1, 3, 0, u32::MAX)),
            Err(DecodeError::PayloadTooLarge {
                kind: FrameKind::Data,
                stream_id: StreamId(1),
                length: u32::MAX,
                max: MAX_DATA_PAYLOAD
            })
        );
        assert_eq!(
            decode(&header(1, 5, 0, MAX_CONTROL_PAYLOAD as u32 + 1)),
            Err(DecodeError::PayloadTooLarge {
                kind: FrameKind::Control,
                stream_id: StreamId(1),
                length: MAX_CONTROL_PAYLOAD as u32 + 1,
                max: MAX_CONTROL_PAYLOAD
            })
        );
    }

    #[test]
    fn garbage_headers_are_typed_errors() {
        assert_eq!(
            decode(&header(1, 0x42, 0, 0)),
            Err(DecodeError::UnknownKind {
                kind: 0x42,
                stream_id: StreamId(1)
            })
        );
        assert_eq!(
            decode(&header(1, 5, FLAG_STDERR, 0)),
            Err(DecodeError::UnknownFlags {
                kind: FrameKind::Control,
                stream_id: StreamId(1),
                flags: 1
            })
        );
        assert_eq!(
            decode(&header(0, 3, 0, 0)),
            Err(DecodeError::WrongStream {
                kind: FrameKind::Data,
                stream_id: StreamId(0)
            })
        );
        assert_eq!(
            decode(&header(2, 1, 0, 0)),
            Err(DecodeError::WrongStream {
                kind: FrameKind::Hello,
                stream_id: StreamId(2)
            })
        );
        assert_eq!(
            decode(&header(2, 4, 0, 8)),
            Err(DecodeError::WindowUpdateLength {
                stream_id: StreamId(2),
                length: 8
            })
        );
        let mut zero_update = header(2, 4, 0, 4);
        zero_update.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode(&zero_update),
            Err(DecodeError::ZeroWindowIncrement {
                stream_id: StreamId(2)
            })
        );
    }

    #[test]
    fn a_bad_control_payload_is_a_typed_error_and_poisons_the_decoder() {
        let mut bytes = header(1, 5, 0, 9);
        bytes.extend_from_slice(br#"{"rm":{}}"#);
        let mut decoder = Decoder::new();
        decoder.push(&bytes);
        let error = decoder.next_frame().unwrap_err();
        assert!(
            matches!(&error, DecodeError::BadPayload { kind: FrameKind::Control, stream_id: StreamId(1), reason } if reason.contains("rm")),
            "{error:?}"
        );
        decoder.push(&on(1, FrameBody::Close).to_bytes().unwrap());
        assert_eq!(decoder.next_frame(), Err(error));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let bytes = on(1, FrameBody::Open(Request::PortTunnel { port: 1 }))
            .to_bytes()
            .unwrap();
        let mut decoder = Decoder::new();
        decoder.push(&bytes[..4]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(DecodeError::Truncated {
                buffered: 4,
                needed: HEADER_LEN
            })
        );
        decoder.push(&bytes[4..bytes.len() - 1]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(DecodeError::Truncated {
                buffered: bytes.len() - 1,
                needed: bytes.len()
            })
        );
        decoder.push(&bytes[bytes.len() - 1..]);
        assert!(decoder.next_frame().unwrap().is_some());
        decoder.finish().unwrap();
    }

    #[test]
    fn encoding_refuses_what_the_decoder_would_reject() {
        let oversized = on(
            1,
            FrameBody::Data {
                channel: Channel::Main,
                bytes: vec![0; MAX_DATA_PAYLOAD + 1],
            },
        );
        assert!(matches!(
            oversized.to_bytes(),
            Err(EncodeError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            on(0, FrameBody::Close).to_bytes(),
            Err(EncodeError::WrongStream { .. })
        ));
        assert!(matches!(
            on(1, FrameBody::WindowUpdate { increment: 0 }).to_bytes(),
            Err(EncodeError::ZeroWindowIncrement { .. })
        ));
    }
}
