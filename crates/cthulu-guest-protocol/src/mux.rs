//! The sans-I/O stream multiplexer: handshake, per-stream state, credit-based flow control
//! and fair scheduling of outgoing frames. It never reads or writes a byte itself: feed it
//! decoded frames with [`Mux::receive`] and send what [`Mux::poll_frame`] hands out.

use std::collections::{BTreeMap, VecDeque};

use crate::frame::{Channel, EncodeError, Frame, FrameBody, FrameKind, StreamId, MAX_DATA_PAYLOAD};
use crate::message::{negotiate, Control, ErrorReply, HandshakeError, Hello, Negotiated, Request};

/// The largest flow-control window of one stream direction (2^31 - 1, as in HTTP/2).
pub const MAX_WINDOW: u64 = (1 << 31) - 1;

/// Default limit on streams open at once.
pub const DEFAULT_MAX_STREAMS: usize = 1024;

/// How many ids of streams that ended (reset by us, or closed both ways) are remembered, so
/// frames the peer sent before it saw the end (data crossing our reset, a window update
/// crossing our last close) are dropped instead of treated as violations.
const END_MEMORY: usize = 1024;

/// Which end of the connection this is; it decides the ids of the streams it opens (host:
/// odd, guest: even, never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Guest,
}

impl Role {
    fn first_stream_id(self) -> u32 {
        match self {
            Role::Host => 1,
            Role::Guest => 2,
        }
    }

    fn opens(self, stream_id: StreamId) -> bool {
        stream_id.0 % 2 == self.first_stream_id() % 2
    }
}

/// What a received frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Ready(Negotiated),
    /// The peer opened a stream; its send window starts at zero until we [`Mux::grant`].
    Opened {
        stream_id: StreamId,
        request: Request,
    },
    /// Data within the window we granted; grant more once it is consumed.
    Data {
        stream_id: StreamId,
        channel: Channel,
        bytes: Vec<u8>,
    },
    Control {
        stream_id: StreamId,
        control: Control,
    },
    /// The peer sends nothing more on the stream (half-close).
    Closed { stream_id: StreamId },
    /// The peer abandoned the stream; it is gone.
    Reset {
        stream_id: StreamId,
        error: ErrorReply,
    },
    /// The peer granted credit; `window` is our send window on the stream now.
    Credit { stream_id: StreamId, window: u64 },
}

/// What [`Mux::send_data`] did with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Queued bytes of the stream the current credit covers: [`Mux::poll_frame`] hands them
    /// out now.
    pub sendable_now: usize,
    /// Queued bytes of the stream waiting for the peer to grant credit.
    pub waiting_for_credit: usize,
}

/// A protocol violation by the peer, or a misuse by the caller. After a violation by the
/// peer the connection should be dropped.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("received a {kind} frame before the peer's hello")]
    HelloMissing { kind: FrameKind },
    #[error("received a second hello")]
    DuplicateHello,
    #[error("handshake failed")]
    Handshake(#[from] HandshakeError),
    #[error("{kind} frame for unknown or closed stream {stream_id}")]
    UnknownStream {
        kind: FrameKind,
        stream_id: StreamId,
    },
    #[error("the peer opened stream {stream_id}, which is already open or was used before")]
    DuplicateOpen { stream_id: StreamId },
    #[error("the peer opened stream {stream_id}, an id only this side may open")]
    WrongInitiator { stream_id: StreamId },
    #[error("opening stream {stream_id} would exceed the limit of {limit} open streams")]
    TooManyStreams { stream_id: StreamId, limit: usize },
    #[error("no stream ids left")]
    StreamIdsExhausted,
    #[error("{length} data bytes on stream {stream_id} exceed the {window}-byte window granted")]
    WindowExceeded {
        stream_id: StreamId,
        length: usize,
        window: u64,
    },
    #[error(
        "a {length}-byte data frame on stream {stream_id} exceeds the announced max_frame of {max}"
    )]
    DataFrameTooLarge {
        stream_id: StreamId,
        length: usize,
        max: u32,
    },
    #[error("a window update of {increment} on stream {stream_id} would take the window from {window} beyond {max}", max = MAX_WINDOW)]
    WindowOverflow {
        stream_id: StreamId,
        window: u64,
        increment: u32,
    },
    #[error("{kind} frame on stream {stream_id} after the peer closed it")]
    AfterRemoteClose {
        kind: FrameKind,
        stream_id: StreamId,
    },
    #[error("stream {stream_id} is closed for sending")]
    LocallyClosed { stream_id: StreamId },
    #[error("stream {stream_id} is not open")]
    NotOpen { stream_id: StreamId },
    #[error("encoding a frame for stream {stream_id}")]
    Encode {
        stream_id: StreamId,
        #[source]
        source: EncodeError,
    },
}

/// Where a stream stands, seen from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStatus {
    /// Both directions open.
    Open,
    /// We closed our direction (or queued the close behind our data); the peer still sends.
    HalfClosedLocal,
    /// The peer closed its direction; we still send.
    HalfClosedRemote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalClose {
    Open,
    Queued,
    Sent,
}

#[derive(Debug)]
enum Outgoing {
    Data { channel: Channel, bytes: Vec<u8> },
    Control(Control),
    Close,
}

#[derive(Debug)]
struct Stream {
    /// Credit the peer granted that we have not used.
    send_window: u64,
    /// Credit we granted that the peer has not used.
    receive_window: u64,
    queue: VecDeque<Outgoing>,
    queued_data: usize,
    local_close: LocalClose,
    remote_closed: bool,
}

impl Stream {
    fn new() -> Self {
        Self {
            send_window: 0,
            receive_window: 0,
            queue: VecDeque::new(),
            queued_data: 0,
            local_close: LocalClose::Open,
            remote_closed: false,
        }
    }

    fn fully_closed(&self) -> bool {
        self.local_close == LocalClose::Sent && self.remote_closed
    }
}

/// One end of a multiplexed connection. See the crate docs for the rules it enforces.
#[derive(Debug)]
pub struct Mux {
    role: Role,
    local_hello: Hello,
    negotiated: Option<Negotiated>,
    max_streams: usize,
    next_local_id: Option<u32>,
    highest_peer_id: u32,
    streams: BTreeMap<StreamId, Stream>,
    recently_ended: VecDeque<StreamId>,
    /// Frames that go before any stream's queue: hello, open, window update, reset.
    urgent: VecDeque<Frame>,
    /// Streams with queued items, in round-robin order.
    round_robin: VecDeque<StreamId>,
}

impl Mux {
    /// A multiplexer whose first outgoing frame is `hello`.
    pub fn new(role: Role, hello: Hello) -> Self {
        let mut urgent = VecDeque::new();
        urgent.push_back(Frame::new(
            StreamId::CONNECTION,
            FrameBody::Hello(hello.clone()),
        ));
        Self {
            role,
            local_hello: hello,
            negotiated: None,
            max_streams: DEFAULT_MAX_STREAMS,
            next_local_id: Some(role.first_stream_id()),
            highest_peer_id: 0,
            streams: BTreeMap::new(),
            recently_ended: VecDeque::new(),
            urgent,
            round_robin: VecDeque::new(),
        }
    }

    /// Limits the streams open at once (opened by either side).
    pub fn with_max_streams(mut self, max_streams: usize) -> Self {
        self.max_streams = max_streams;
        self
    }

    /// What the handshake agreed, once it completed.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The state of a stream; `None` once it is fully closed or reset (or never existed).
    pub fn stream_status(&self, stream_id: StreamId) -> Option<StreamStatus> {
        let stream = self.streams.get(&stream_id)?;
        Some(if stream.local_close != LocalClose::Open {
            StreamStatus::HalfClosedLocal
        } else if stream.remote_closed {
            StreamStatus::HalfClosedRemote
        } else {
            StreamStatus::Open
        })
    }

    /// Our unused send credit on a stream.
    pub fn send_window(&self, stream_id: StreamId) -> Option<u64> {
        self.streams
            .get(&stream_id)
            .map(|stream| stream.send_window)
    }

    /// Credit we granted on a stream that the peer has not used yet.
    pub fn receive_window(&self, stream_id: StreamId) -> Option<u64> {
        self.streams
            .get(&stream_id)
            .map(|stream| stream.receive_window)
    }

    /// Data bytes queued on a stream and not yet handed out by [`Mux::poll_frame`]: the
    /// caller's backpressure signal.
    pub fn queued_data(&self, stream_id: StreamId) -> usize {
        self.streams
            .get(&stream_id)
            .map_or(0, |stream| stream.queued_data)
    }

    /// Opens a stream for `request`. Its send window is zero until the peer grants credit.
    pub fn open(&mut self, request: Request) -> Result<StreamId, MuxError> {
        let raw_id = self.next_local_id.ok_or(MuxError::StreamIdsExhausted)?;
        let stream_id = StreamId(raw_id);
        if self.streams.len() >= self.max_streams {
            return Err(MuxError::TooManyStreams {
                stream_id,
                limit: self.max_streams,
            });
        }
        let frame = Frame::new(stream_id, FrameBody::Open(request));
        check_encodes(&frame)?;
        self.next_local_id = raw_id.checked_add(2);
        self.streams.insert(stream_id, Stream::new());
        self.urgent.push_back(frame);
        Ok(stream_id)
    }

    /// Lets the peer send `increment` more data bytes on the stream.
    pub fn grant(&mut self, stream_id: StreamId, increment: u32) -> Result<(), MuxError> {
        if increment == 0 {
            return Ok(());
        }
        let stream = self
            .streams
            .get_mut(&stream_id)
            .ok_or(MuxError::NotOpen { stream_id })?;
        if stream.remote_closed {
            // The peer sends nothing more: credit would be pointless.
            return Ok(());
        }
        let window = stream.receive_window + u64::from(increment);
        if window > MAX_WINDOW {
            return Err(MuxError::WindowOverflow {
                stream_id,
                window: stream.receive_window,
                increment,
            });
        }
        stream.receive_window = window;
        self.urgent
            .push_back(Frame::new(stream_id, FrameBody::WindowUpdate { increment }));
        Ok(())
    }

    /// Queues data on the stream; it leaves through [`Mux::poll_frame`] as credit allows.
    pub fn send_data(
        &mut self,
        stream_id: StreamId,
        channel: Channel,
        bytes: &[u8],
    ) -> Result<SendOutcome, MuxError> {
        let stream = self.sendable_stream(stream_id)?;
        // Queued in pieces of at most one frame, so splitting one to the credit is cheap.
        for piece in bytes.chunks(MAX_DATA_PAYLOAD) {
            stream.queue.push_back(Outgoing::Data {
                channel,
                bytes: piece.to_vec(),
            });
        }
        stream.queued_data += bytes.len();
        let sendable_now = stream
            .queued_data
            .min(usize::try_from(stream.send_window).unwrap_or(usize::MAX));
        let outcome = SendOutcome {
            sendable_now,
            waiting_for_credit: stream.queued_data - sendable_now,
        };
        self.schedule(stream_id);
        Ok(outcome)
    }

    /// Queues a control message behind the stream's queued data.
    pub fn send_control(&mut self, stream_id: StreamId, control: Control) -> Result<(), MuxError> {
        check_encodes(&Frame::new(stream_id, FrameBody::Control(control.clone())))?;
        self.sendable_stream(stream_id)?
            .queue
            .push_back(Outgoing::Control(control));
        self.schedule(stream_id);
        Ok(())
    }

    /// Closes our direction of the stream once its queued data is out.
    pub fn close(&mut self, stream_id: StreamId) -> Result<(), MuxError> {
        let stream = self.sendable_stream(stream_id)?;
        stream.local_close = LocalClose::Queued;
        stream.queue.push_back(Outgoing::Close);
        self.schedule(stream_id);
        Ok(())
    }

    /// Abandons the stream in both directions at once, dropping its queue.
    pub fn reset(&mut self, stream_id: StreamId, error: ErrorReply) -> Result<(), MuxError> {
        if !self.streams.contains_key(&stream_id) {
            return Err(MuxError::NotOpen { stream_id });
        }
        let frame = Frame::new(stream_id, FrameBody::Reset(error));
        check_encodes(&frame)?;
        self.streams.remove(&stream_id);
        self.remember_ended(stream_id);
        self.urgent.push_back(frame);
        Ok(())
    }

    /// Whether [`Mux::poll_frame`] has something to hand out now.
    pub fn has_frame(&self) -> bool {
        !self.urgent.is_empty()
            || self
                .round_robin
                .iter()
                .any(|stream_id| self.streams.get(stream_id).is_some_and(|s| self.ready(s)))
    }

    /// The next frame to send: hello, opens, window updates and resets first, then one frame
    /// per stream with something sendable, round robin.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        if let Some(frame) = self.urgent.pop_front() {
            return Some(frame);
        }
        for _ in 0..self.round_robin.len() {
            let stream_id = self.round_robin.pop_front()?;
            let Some(stream) = self.streams.get(&stream_id) else {
                continue;
            };
            if stream.queue.is_empty() {
                continue;
            }
            if !self.ready(stream) {
                self.round_robin.push_back(stream_id);
                continue;
            }
            let max_frame = self.peer_max_frame();
            let stream = self.streams.get_mut(&stream_id)?;
            let frame = take_frame(stream_id, stream, max_frame)?;
            if stream.fully_closed() {
                self.streams.remove(&stream_id);
                // The peer may still grant credit it sent before it saw this close.
                self.remember_ended(stream_id);
            } else if !stream.queue.is_empty() {
                self.round_robin.push_back(stream_id);
            }
            return Some(frame);
        }
        None
    }

    /// Applies a frame from the peer.
    pub fn receive(&mut self, frame: Frame) -> Result<Option<Event>, MuxError> {
        let stream_id = frame.stream_id;
        let kind = frame.body.kind();
        if self.negotiated.is_none() {
            let FrameBody::Hello(hello) = frame.body else {
                return Err(MuxError::HelloMissing { kind });
            };
            let negotiated = negotiate(&self.local_hello, &hello)?;
            self.negotiated = Some(negotiated.clone());
            return Ok(Some(Event::Ready(negotiated)));
        }
        let local_max_frame = self.local_hello.max_frame.min(MAX_DATA_PAYLOAD as u32);
        match frame.body {
            FrameBody::Hello(_) => Err(MuxError::DuplicateHello),
            FrameBody::Open(request) => self.receive_open(stream_id, request),
            FrameBody::Data { channel, bytes } => {
                let Some(stream) = self.peer_stream(stream_id, kind)? else {
                    return Ok(None);
                };
                if bytes.len() > local_max_frame as usize {
                    return Err(MuxError::DataFrameTooLarge {
                        stream_id,
                        length: bytes.len(),
                        max: local_max_frame,
                    });
                }
                if bytes.len() as u64 > stream.receive_window {
                    return Err(MuxError::WindowExceeded {
                        stream_id,
                        length: bytes.len(),
                        window: stream.receive_window,
                    });
                }
                stream.receive_window -= bytes.len() as u64;
                Ok(Some(Event::Data {
                    stream_id,
                    channel,
                    bytes,
                }))
            }
            FrameBody::WindowUpdate { increment } => {
                let Some(stream) = self.streams.get_mut(&stream_id) else {
                    return self.unknown_stream(stream_id, kind);
                };
                let window = stream.send_window + u64::from(increment);
                if window > MAX_WINDOW {
                    return Err(MuxError::WindowOverflow {
                        stream_id,
                        window: stream.send_window,
                        increment,
                    });
                }
                stream.send_window = window;
                Ok(Some(Event::Credit { stream_id, window }))
            }
            FrameBody::Control(control) => Ok(self
                .peer_stream(stream_id, kind)?
                .map(|_| Event::Control { stream_id, control })),
            FrameBody::Close => {
                let Some(stream) = self.peer_stream(stream_id, kind)? else {
                    return Ok(None);
                };
                stream.remote_closed = true;
                stream.receive_window = 0;
                if stream.fully_closed() {
                    self.streams.remove(&stream_id);
                    self.remember_ended(stream_id);
                }
                Ok(Some(Event::Closed { stream_id }))
            }
            FrameBody::Reset(error) => match self.streams.remove(&stream_id) {
                Some(_) => Ok(Some(Event::Reset { stream_id, error })),
                None => self.unknown_stream(stream_id, kind),
            },
        }
    }

    /// The stream a `DATA`, `CONTROL` or `CLOSE` frame from the peer is for: it must exist
    /// and the peer must not have closed it. `None` for a stream we reset recently.
    fn peer_stream(
        &mut self,
        stream_id: StreamId,
        kind: FrameKind,
    ) -> Result<Option<&mut Stream>, MuxError> {
        if !self.streams.contains_key(&stream_id) {
            return self.unknown_stream(stream_id, kind).map(|_| None);
        }
        let stream = self
            .streams
            .get_mut(&stream_id)
            .ok_or(MuxError::UnknownStream { kind, stream_id })?;
        if stream.remote_closed {
            return Err(MuxError::AfterRemoteClose { kind, stream_id });
        }
        Ok(Some(stream))
    }

    /// A frame for a stream we do not have: dropped if it ended recently (the frame
    /// crossed our reset or our last close), a violation otherwise.
    fn unknown_stream(
        &self,
        stream_id: StreamId,
        kind: FrameKind,
    ) -> Result<Option<Event>, MuxError> {
        if self.recently_ended.contains(&stream_id) {
            Ok(None)
        } else {
            Err(MuxError::UnknownStream { kind, stream_id })
        }
    }

    fn receive_open(
        &mut self,
        stream_id: StreamId,
        request: Request,
    ) -> Result<Option<Event>, MuxError> {
        if self.role.opens(stream_id) {
            return Err(MuxError::WrongInitiator { stream_id });
        }
        if stream_id.0 <= self.highest_peer_id {
            return Err(MuxError::DuplicateOpen { stream_id });
        }
        if self.streams.len() >= self.max_streams {
            return Err(MuxError::TooManyStreams {
                stream_id,
                limit: self.max_streams,
            });
        }
        self.highest_peer_id = stream_id.0;
        self.streams.insert(stream_id, Stream::new());
        Ok(Some(Event::Opened { stream_id, request }))
    }

    fn sendable_stream(&mut self, stream_id: StreamId) -> Result<&mut Stream, MuxError> {
        let stream = self
            .streams
            .get_mut(&stream_id)
            .ok_or(MuxError::NotOpen { stream_id })?;
        if stream.local_close != LocalClose::Open {
            return Err(MuxError::LocallyClosed { stream_id });
        }
        Ok(stream)
    }

    fn schedule(&mut self, stream_id: StreamId) {
        if !self.round_robin.contains(&stream_id) {
            self.round_robin.push_back(stream_id);
        }
    }

    fn remember_ended(&mut self, stream_id: StreamId) {
        if self.recently_ended.len() == END_MEMORY {
            self.recently_ended.pop_front();
        }
        self.recently_ended.push_back(stream_id);
    }

    fn peer_max_frame(&self) -> usize {
        self.negotiated
            .as_ref()
            .map_or(0, |negotiated| negotiated.peer_max_frame as usize)
    }

    /// Whether the head of the stream's queue can leave now.
    fn ready(&self, stream: &Stream) -> bool {
        match stream.queue.front() {
            None => false,
            Some(Outgoing::Data { .. }) => stream.send_window > 0 && self.peer_max_frame() > 0,
            Some(Outgoing::Control(_) | Outgoing::Close) => true,
        }
    }
}

/// Checks a frame we are about to queue encodes, so a too-large request fails at the call.
fn check_encodes(frame: &Frame) -> Result<(), MuxError> {
    frame
        .encode(&mut Vec::new())
        .map_err(|source| MuxError::Encode {
            stream_id: frame.stream_id,
            source,
        })
}

/// Takes the next frame off a ready stream's queue, splitting data to the credit and the
/// peer's max_frame.
fn take_frame(stream_id: StreamId, stream: &mut Stream, max_frame: usize) -> Option<Frame> {
    let body = match stream.queue.pop_front()? {
        Outgoing::Data { channel, mut bytes } => {
            let allowed = max_frame.min(usize::try_from(stream.send_window).unwrap_or(usize::MAX));
            if bytes.len() > allowed {
                // Pieces are at most one frame long, so this copies little.
                let rest = bytes.split_off(allowed);
                stream.queue.push_front(Outgoing::Data {
                    channel,
                    bytes: rest,
                });
            }
            stream.send_window -= bytes.len() as u64;
            stream.queued_data -= bytes.len();
            FrameBody::Data { channel, bytes }
        }
        Outgoing::Control(control) => FrameBody::Control(control),
        Outgoing::Close => {
            stream.local_close = LocalClose::Sent;
            FrameBody::Close
        }
    };
    Some(Frame::new(stream_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Decoder;
    use crate::frame::MAX_DATA_PAYLOAD as MAX_DATA;
    use crate::message::{ErrorCode, ExitStatus};

    /// Moves every pending frame from one side to the other through the real encoder and
    /// decoder, returning the events.
    fn pump(from: &mut Mux, to: &mut Mux) -> Vec<Event> {
        let mut bytes = Vec::new();
        while let Some(frame) = from.poll_frame() {
            frame.encode(&mut bytes).unwrap();
        }
        let mut decoder = Decoder::new();
        decoder.push(&bytes);
        let mut events = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            events.extend(to.receive(frame).unwrap());
        }
        events
    }

    fn connected() -> (Mux, Mux) {
        let mut host = Mux::new(Role::Host, Hello::new(vec![]));
        let mut guest = Mux::new(Role::Guest, Hello::new(vec![]));
        assert!(matches!(pump(&mut host, &mut guest)[..], [Event::Ready(_)]));
        assert!(matches!(pump(&mut guest, &mut host)[..], [Event::Ready(_)]));
        (host, guest)
    }

    fn tunnel() -> Request {
        Request::PortTunnel { port: 80 }
    }

    fn data(stream_id: StreamId, bytes: &[u8]) -> Frame {
        Frame::new(
            stream_id,
            FrameBody::Data {
                channel: Channel::Main,
                bytes: bytes.to_vec(),
            },
        )
    }

    #[test]
    fn a_stream_carries_data_only_within_granted_credit() {
        let (mut host, mut guest) = connected();
        let stream_id = host.open(tunnel()).unwrap();
        assert_eq!(stream_id, StreamId(1));
        assert_eq!(
            pump(&mut host, &mut guest),
            vec![Event::Opened {
                stream_id,
                request: tunnel()
            }]
        );
        let outcome = host
            .send_data(stream_id, Channel::Main, b"hello world")
            .unwrap();
        assert_eq!(
            outcome,
            SendOutcome {
                sendable_now: 0,
                waiting_for_credit: 11
            }
        );
        assert!(host.poll_frame().is_none(), "no credit yet");

        guest.grant(stream_id, 5).unwrap();
        assert_eq!(
            pump(&mut guest, &mut host),
            vec![Event::Credit {
                stream_id,
                window: 5
            }]
        );
        assert_eq!(
            pump(&mut host, &mut guest),
            vec![Event::Data {
                stream_id,
                channel: Channel::Main,
                bytes: b"hello".to_vec()
            }]
        );
        assert_eq!(host.queued_data(stream_id), 6);
        assert_eq!(guest.receive_window(stream_id), Some(0));

        guest.grant(stream_id, 100).unwrap();
        pump(&mut guest, &mut host);
        host.close(stream_id).unwrap();
        assert_eq!(
            pump(&mut host, &mut guest),
            vec![
                Event::Data {
                    stream_id,
                    channel: Channel::Main,
                    bytes: b" world".to_vec()
                },
                Event::Closed { stream_id }
            ]
        );
        assert_eq!(
            guest.stream_status(stream_id),
            Some(StreamStatus::HalfClosedRemote)
        );
        assert_eq!(
            host.stream_status(stream_id),
            Some(StreamStatus::HalfClosedLocal)
        );
        guest.close(stream_id).unwrap();
        pump(&mut guest, &mut host);
        assert_eq!(guest.stream_status(stream_id), None);
        assert_eq!(host.stream_status(stream_id), None);
    }

    #[test]
    fn control_messages_wait_behind_queued_data() {
        let (mut host, mut guest) = connected();
        let stream_id = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        guest
            .send_data(stream_id, Channel::Stderr, b"oops")
            .unwrap();
        let exit = Control::Exit(ExitStatus {
            code: Some(1),
            signal: None,
            timed_out: false,
            truncated: false,
            oom_killed: false,
        });
        guest.send_control(stream_id, exit.clone()).unwrap();
        guest.close(stream_id).unwrap();
        assert!(
            pump(&mut guest, &mut host).is_empty(),
            "exit must not overtake output"
        );
        host.grant(stream_id, 4).unwrap();
        pump(&mut host, &mut guest);
        assert_eq!(
            pump(&mut guest, &mut host),
            vec![
                Event::Data {
                    stream_id,
                    channel: Channel::Stderr,
                    bytes: b"oops".to_vec()
                },
                Event::Control {
                    stream_id,
                    control: exit
                },
                Event::Closed { stream_id }
            ]
        );
    }

    #[test]
    fn the_hello_leaves_first_and_blocked_data_is_not_pending() {
        let mut host = Mux::new(Role::Host, Hello::new(vec![]));
        let stream_id = host.open(tunnel()).unwrap();
        host.send_data(stream_id, Channel::Main, b"early").unwrap();
        let kinds: Vec<FrameKind> = std::iter::from_fn(|| host.poll_frame())
            .map(|frame| frame.body.kind())
            .collect();
        assert_eq!(kinds, vec![FrameKind::Hello, FrameKind::Open]);
        assert!(!host.has_frame(), "data waits for credit");
        assert_eq!(host.queued_data(stream_id), 5);
        host.close(stream_id).unwrap();
        assert!(!host.has_frame(), "the close waits behind the data");
    }

    #[test]
    fn data_beyond_the_window_is_a_violation() {
        let (mut host, mut guest) = connected();
        let stream_id = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        guest.grant(stream_id, 3).unwrap();
        let error = guest.receive(data(stream_id, b"four")).unwrap_err();
        assert!(
            matches!(
                error,
                MuxError::WindowExceeded {
                    stream_id: StreamId(1),
                    length: 4,
                    window: 3
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn data_larger_than_the_announced_max_frame_is_a_violation() {
        let mut host = Mux::new(Role::Host, Hello::new(vec![]));
        let mut guest = Mux::new(
            Role::Guest,
            Hello {
                max_frame: 1024,
                ..Hello::new(vec![])
            },
        );
        pump(&mut host, &mut guest);
        pump(&mut guest, &mut host);
        let stream_id = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        guest.grant(stream_id, 10_000).unwrap();
        pump(&mut guest, &mut host);
        // The host splits to the guest's max_frame by itself...
        host.send_data(stream_id, Channel::Main, &[7; 3000])
            .unwrap();
        let sizes: Vec<usize> = std::iter::from_fn(|| host.poll_frame())
            .map(|frame| match frame.body {
                FrameBody::Data { bytes, .. } => bytes.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![1024, 1024, 952]);
        // ...and a peer that does not is caught.
        let error = guest.receive(data(stream_id, &[0; 1025])).unwrap_err();
        assert!(
            matches!(error, MuxError::DataFrameTooLarge { max: 1024, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn frames_before_the_hello_or_a_second_hello_are_violations() {
        let mut guest = Mux::new(Role::Guest, Hello::new(vec![]));
        let error = guest.receive(data(StreamId(1), b"x")).unwrap_err();
        assert!(matches!(
            error,
            MuxError::HelloMissing {
                kind: FrameKind::Data
            }
        ));
        let (mut host, _) = connected();
        let hello = Frame::new(StreamId::CONNECTION, FrameBody::Hello(Hello::new(vec![])));
        assert!(matches!(host.receive(hello), Err(MuxError::DuplicateHello)));
    }

    #[test]
    fn a_failed_handshake_is_reported() {
        let mut host = Mux::new(Role::Host, Hello::new(vec![]));
        let future_guest = Hello {
            versions: vec![7],
            ..Hello::new(vec![])
        };
        let error = host
            .receive(Frame::new(
                StreamId::CONNECTION,
                FrameBody::Hello(future_guest),
            ))
            .unwrap_err();
        assert!(matches!(
            error,
            MuxError::Handshake(HandshakeError::NoCommonVersion { .. })
        ));
        assert!(host.negotiated().is_none());
    }

    #[test]
    fn opens_are_checked_for_reuse_initiator_and_limit() {
        let (mut host, guest) = connected();
        drop(guest);
        let open = |id| Frame::new(StreamId(id), FrameBody::Open(tunnel()));
        assert!(matches!(
            host.receive(open(1)),
            Err(MuxError::WrongInitiator {
                stream_id: StreamId(1)
            })
        ));
        host.receive(open(4)).unwrap();
        assert!(matches!(
            host.receive(open(4)),
            Err(MuxError::DuplicateOpen {
                stream_id: StreamId(4)
            })
        ));
        assert!(matches!(
            host.receive(open(2)),
            Err(MuxError::DuplicateOpen {
                stream_id: StreamId(2)
            })
        ));
        let mut limited = connected().0.with_max_streams(1);
        limited.receive(open(2)).unwrap();
        assert!(matches!(
            limited.receive(open(4)),
            Err(MuxError::TooManyStreams { limit: 1, .. })
        ));
        assert!(matches!(
            limited.open(tunnel()),
            Err(MuxError::TooManyStreams { limit: 1, .. })
        ));
    }

    #[test]
    fn frames_for_unknown_or_closed_streams_are_violations() {
        let (mut host, mut guest) = connected();
        assert!(matches!(
            guest.receive(data(StreamId(9), b"x")),
            Err(MuxError::UnknownStream {
                kind: FrameKind::Data,
                stream_id: StreamId(9)
            })
        ));
        let stream_id = host.open(tunnel()).unwrap();
        host.close(stream_id).unwrap();
        pump(&mut host, &mut guest);
        guest.grant(stream_id, 10).unwrap();
        assert!(
            guest.poll_frame().is_none(),
            "no credit for a closed direction"
        );
        let close = Frame::new(stream_id, FrameBody::Close);
        assert!(matches!(
            guest.receive(close),
            Err(MuxError::AfterRemoteClose {
                kind: FrameKind::Close,
                ..
            })
        ));
        assert!(matches!(
            guest.receive(data(stream_id, b"")),
            Err(MuxError::AfterRemoteClose {
                kind: FrameKind::Data,
                ..
            })
        ));
        assert!(matches!(
            host.send_data(stream_id, Channel::Main, b"x"),
            Err(MuxError::LocallyClosed { .. })
        ));
    }

    #[test]
    fn a_reset_drops_the_stream_and_frames_racing_it_are_ignored() {
        let (mut host, mut guest) = connected();
        let stream_id = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        host.grant(stream_id, 10).unwrap();
        pump(&mut host, &mut guest);
        // The guest sends data while the host resets.
        guest.send_data(stream_id, Channel::Main, b"late").unwrap();
        let error = ErrorReply {
            code: ErrorCode::Cancelled,
            message: "client went away".into(),
        };
        host.reset(stream_id, error.clone()).unwrap();
        assert_eq!(host.stream_status(stream_id), None);
        assert!(pump(&mut guest, &mut host).is_empty());
        assert_eq!(
            pump(&mut host, &mut guest),
            vec![Event::Reset { stream_id, error }]
        );
        assert_eq!(guest.stream_status(stream_id), None);
        assert!(guest.poll_frame().is_none(), "the queued data was dropped");
    }

    #[test]
    fn a_window_update_crossing_the_last_close_is_dropped() {
        let (mut host, mut guest) = connected();
        let stream_id = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        host.close(stream_id).unwrap();
        pump(&mut host, &mut guest);
        host.grant(stream_id, 10).unwrap();
        guest.send_data(stream_id, Channel::Main, b"last").unwrap();
        guest.close(stream_id).unwrap();
        // The host grants more while the guest's close is on its way: the guest's stream
        // is gone (closed both ways) when the update arrives.
        pump(&mut host, &mut guest);
        host.grant(stream_id, 10).unwrap();
        pump(&mut guest, &mut host);
        assert_eq!(guest.stream_status(stream_id), None);
        assert!(pump(&mut host, &mut guest).is_empty());
        let stray = Frame::new(StreamId(99), FrameBody::WindowUpdate { increment: 1 });
        assert!(matches!(
            guest.receive(stray),
            Err(MuxError::UnknownStream { .. })
        ));
    }

    #[test]
    fn window_overflow_is_refused_both_ways() {
        let (mut host, mut guest) = connected();
        let stream_id = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        guest.grant(stream_id, MAX_WINDOW as u32).unwrap();
        assert!(matches!(
            guest.grant(stream_id, 1),
            Err(MuxError::WindowOverflow { .. })
        ));
        pump(&mut guest, &mut host);
        let update = Frame::new(stream_id, FrameBody::WindowUpdate { increment: 1 });
        assert!(matches!(
            host.receive(update),
            Err(MuxError::WindowOverflow { .. })
        ));
    }

    #[test]
    fn streams_with_credit_take_turns() {
        let (mut host, mut guest) = connected();
        let first = host.open(tunnel()).unwrap();
        let second = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        guest.grant(first, MAX_WINDOW as u32).unwrap();
        guest.grant(second, MAX_WINDOW as u32).unwrap();
        pump(&mut guest, &mut host);
        host.send_data(first, Channel::Main, &vec![1; 10 * MAX_DATA])
            .unwrap();
        host.send_data(second, Channel::Main, &[2; 10]).unwrap();
        let order: Vec<StreamId> = std::iter::from_fn(|| host.poll_frame())
            .take(3)
            .map(|frame| frame.stream_id)
            .collect();
        assert_eq!(order, vec![first, second, first]);
    }

    #[test]
    fn a_stream_out_of_credit_does_not_block_the_others() {
        let (mut host, mut guest) = connected();
        let flood = host.open(tunnel()).unwrap();
        let quiet = host.open(tunnel()).unwrap();
        pump(&mut host, &mut guest);
        guest.grant(flood, 1000).unwrap();
        guest.grant(quiet, 1000).unwrap();
        pump(&mut guest, &mut host);
        host.send_data(flood, Channel::Main, &vec![0; 1_000_000])
            .unwrap();
        pump(&mut host, &mut guest);
        assert_eq!(host.send_window(flood), Some(0));
        host.send_data(quiet, Channel::Main, b"still here").unwrap();
        assert_eq!(
            pump(&mut host, &mut guest),
            vec![Event::Data {
                stream_id: quiet,
                channel: Channel::Main,
                bytes: b"still here".to_vec()
            }]
        );
    }
}
