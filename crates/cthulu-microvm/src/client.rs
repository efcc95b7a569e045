//! The host end of the guest protocol over tokio: [`GuestClient`] owns one connection to
//! `cthulu-agent` (a Unix socket: QEMU's virtio-serial chardev, Firecracker's vsock
//! socket, or the agent's test mode) and hands out [`GuestStream`]s, one per request.
//!
//! One task drives the sans-I/O [`Mux`]: it applies frames a reader task decoded, runs the
//! streams' commands, and writes what the mux hands out. Memory stays bounded both ways:
//! each stream grants the guest [`RECEIVE_WINDOW`] bytes and more only as its reader takes
//! data, and a sender waits while more than [`SEND_QUEUE_LIMIT`] bytes of its stream wait
//! for the guest's credit.

use std::collections::HashMap;
use std::time::Duration;

use cthulu_guest_protocol::frame::{Channel, Decoder, Frame, StreamId};
use cthulu_guest_protocol::message::{Control, ErrorCode, ErrorReply, Hello, Negotiated, Request};
use cthulu_guest_protocol::mux::{Event, Mux, MuxError, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Credit each stream grants the guest up front, and tops up as its reader consumes.
pub const RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Bytes of one stream that may wait for the guest's credit before its sender waits.
pub const SEND_QUEUE_LIMIT: usize = 256 * 1024;

/// How often a connection with open streams makes sure the agent still answers. The
/// virtio-serial socket stays open when the agent's server dies (QEMU keeps it), so
/// silence is the only sign: a probe (a process list) goes out after this much of it.
const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
/// How long the agent may leave a probe unanswered, hearing nothing else from it either,
/// before the connection counts as dead and its streams end (generous: a loaded TCG guest
/// is slow, never this slow).
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(20);

/// Why talking to the agent failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("the guest agent did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the connection to the guest agent is gone: {0}")]
    Disconnected(String),
    #[error("the guest agent refused the request: {} ({:?})", .0.message, .0.code)]
    Refused(ErrorReply),
    #[error("the guest agent answered out of protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The agent's error code when it refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(reply) => Some(reply.code),
            _ => None,
        }
    }
}

/// What arrives on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Data {
        channel: Channel,
        bytes: Vec<u8>,
    },
    Control(Control),
    /// The agent sends nothing more on this stream.
    Closed,
    /// The agent abandoned (or refused) the stream.
    Reset(ErrorReply),
    /// The connection ended; nothing more comes.
    Disconnected(String),
}

enum Command {
    Open {
        request: Request,
        reply: oneshot::Sender<Result<(StreamId, mpsc::UnboundedReceiver<StreamEvent>), String>>,
    },
    Data {
        stream_id: StreamId,
        bytes: Vec<u8>,
        /// Answered once the stream's queue is below the limit.
        done: oneshot::Sender<Result<(), String>>,
    },
    Control {
        stream_id: StreamId,
        control: Control,
    },
    Close {
        stream_id: StreamId,
    },
    Reset {
        stream_id: StreamId,
    },
    Grant {
        stream_id: StreamId,
        bytes: u32,
    },
    Forget {
        stream_id: StreamId,
    },
    /// Stop probing (the VM is paused: silence is expected) or start again.
    Heartbeat {
        enabled: bool,
    },
}

/// One connection to a guest agent. Cloning gives another handle to the same connection.
#[derive(Clone)]
pub struct GuestClient {
    commands: mpsc::UnboundedSender<Command>,
    negotiated: Negotiated,
}

impl std::fmt::Debug for GuestClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GuestClient")
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl GuestClient {
    /// Says hello on `socket` and waits (up to `timeout`) for the agent's.
    pub async fn connect(
        socket: UnixStream,
        timeout: Duration,
    ) -> Result<GuestClient, ClientError> {
        let (mut reader, mut writer) = socket.into_split();
        let mut mux = Mux::new(Role::Host, Hello::new(Vec::new()));
        flush(&mut mux, &mut writer)
            .await
            .map_err(ClientError::Disconnected)?;
        let mut decoder = Decoder::new();
        let negotiated = tokio::time::timeout(timeout, async {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                if let Some(frame) = decoder
                    .next_frame()
                    .map_err(|error| ClientError::Protocol(error.to_string()))?
                {
                    return match mux.receive(frame) {
                        Ok(Some(Event::Ready(negotiated))) => Ok(negotiated),
                        Ok(other) => Err(ClientError::Protocol(format!(
                            "expected the agent's hello, got {other:?}"
                        ))),
                        Err(error) => Err(ClientError::Protocol(error.to_string())),
                    };
                }
                let read = reader
                    .read(&mut buffer)
                    .await
                    .map_err(|error| ClientError::Disconnected(error.to_string()))?;
                if read == 0 {
                    return Err(ClientError::Disconnected(
                        "the agent closed the connection during the handshake".into(),
                    ));
                }
                decoder.push(&buffer[..read]);
            }
        })
        .await
        .map_err(|_| ClientError::HandshakeTimeout(timeout))??;

        let (frames_tx, frames_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(reader, decoder, frames_tx));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        tokio::spawn(
            Driver {
                mux,
                writer,
                reader,
                streams: HashMap::new(),
                waiting_senders: Vec::new(),
                last_heard: tokio::time::Instant::now(),
                probe: None,
                heartbeat: true,
            }
            .run(commands_rx, frames_rx),
        );
        Ok(GuestClient {
            commands,
            negotiated,
        })
    }

    /// What the handshake agreed on.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Turns the liveness probes off while the VM is paused (it cannot answer) and on
    /// again when it runs.
    pub fn set_heartbeat(&self, enabled: bool) {
        let _ = self.commands.send(Command::Heartbeat { enabled });
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Opens a stream for `request`.
    pub async fn open(&self, request: Request) -> Result<GuestStream, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Open { request, reply })?;
        let (stream_id, events) = answer
            .await
            .map_err(|_| gone())?
            .map_err(ClientError::Disconnected)?;
        Ok(GuestStream {
            stream_id,
            events,
            commands: self.commands.clone(),
            finished: false,
        })
    }

    /// Sends a request whose answer is control messages then close (configure, sync,
    /// remove, signal, process and directory lists) and collects them.
    pub async fn call(&self, request: Request) -> Result<Vec<Control>, ClientError> {
        let mut stream = self.open(request).await?;
        stream.close_send().await?;
        let mut controls = Vec::new();
        loop {
            match stream.next().await {
                StreamEvent::Control(control) => controls.push(control),
                StreamEvent::Data { .. } => {
                    return Err(ClientError::Protocol(
                        "data on a stream that carries only control messages".into(),
                    ))
                }
                StreamEvent::Closed => return Ok(controls),
                StreamEvent::Reset(error) => return Err(ClientError::Refused(error)),
                StreamEvent::Disconnected(why) => return Err(ClientError::Disconnected(why)),
            }
        }
    }

    fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands.send(command).map_err(|_| gone())
    }
}

fn gone() -> ClientError {
    ClientError::Disconnected("the connection to the agent was closed".into())
}

/// One stream of a [`GuestClient`]. Dropping it before the agent closed it resets it.
pub struct GuestStream {
    stream_id: StreamId,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    commands: mpsc::UnboundedSender<Command>,
    /// The stream ended (closed both ways, reset or disconnected): nothing to reset.
    finished: bool,
}

impl std::fmt::Debug for GuestStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GuestStream")
            .field("stream_id", &self.stream_id)
            .finish_non_exhaustive()
    }
}

/// The sending half of a [`GuestStream`], usable while another task reads the stream
/// (a program's stdin must flow while its output is read, or both sides wait forever).
#[derive(Clone)]
pub struct StreamSender {
    stream_id: StreamId,
    commands: mpsc::UnboundedSender<Command>,
}

impl StreamSender {
    /// Sends data; waits while the stream's queue is over [`SEND_QUEUE_LIMIT`].
    pub async fn send(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::Data {
                stream_id: self.stream_id,
                bytes,
                done,
            })
            .map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(ClientError::Disconnected)
    }

    /// Half-closes our direction (EOF for stdin, the end of an upload).
    pub fn close(&self) -> Result<(), ClientError> {
        self.commands
            .send(Command::Close {
                stream_id: self.stream_id,
            })
            .map_err(|_| gone())
    }
}

impl GuestStream {
    /// A sender for this stream that works while the stream is being read.
    pub fn sender(&self) -> StreamSender {
        StreamSender {
            stream_id: self.stream_id,
            commands: self.commands.clone(),
        }
    }

    /// The next event; after `Closed`, `Reset` or `Disconnected` it keeps answering
    /// `Disconnected`.
    pub async fn next(&mut self) -> StreamEvent {
        let event = self
            .events
            .recv()
            .await
            .unwrap_or_else(|| StreamEvent::Disconnected("the stream ended".into()));
        match &event {
            StreamEvent::Data { bytes, .. } => {
                // Consumed: the agent may send as much again.
                let _ = self.commands.send(Command::Grant {
                    stream_id: self.stream_id,
                    bytes: bytes.len() as u32,
                });
            }
            StreamEvent::Reset(_) | StreamEvent::Disconnected(_) => self.finished = true,
            StreamEvent::Closed | StreamEvent::Control(_) => {}
        }
        event
    }

    /// Sends data; waits while the stream's queue is over [`SEND_QUEUE_LIMIT`].
    pub async fn send(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.sender().send(bytes).await
    }

    pub fn control(&self, control: Control) -> Result<(), ClientError> {
        self.commands
            .send(Command::Control {
                stream_id: self.stream_id,
                control,
            })
            .map_err(|_| gone())
    }

    /// Half-closes our direction (EOF for stdin, the end of an upload).
    pub async fn close_send(&self) -> Result<(), ClientError> {
        self.sender().close()
    }

    /// Marks the stream as ended by the agent, so dropping it sends no reset.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for GuestStream {
    fn drop(&mut self) {
        let stream_id = self.stream_id;
        let command = if self.finished {
            Command::Forget { stream_id }
        } else {
            Command::Reset { stream_id }
        };
        let _ = self.commands.send(command);
    }
}

/// Decodes frames from the agent until the connection ends or breaks the protocol.
async fn read_frames(
    mut reader: OwnedReadHalf,
    mut decoder: Decoder,
    frames: mpsc::UnboundedSender<Result<Frame, String>>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if frames.send(Ok(frame)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = frames.send(Err(format!("undecodable bytes from the agent: {error}")));
                    return;
                }
            }
        }
        match reader.read(&mut buffer).await {
            Ok(0) => {
                let _ = frames.send(Err("the agent closed the connection".into()));
                return;
            }
            Ok(read) => decoder.push(&buffer[..read]),
            Err(error) => {
                let _ = frames.send(Err(format!("reading from the agent: {error}")));
                return;
            }
        }
    }
}

struct Driver {
    mux: Mux,
    writer: OwnedWriteHalf,
    /// The task reading the socket: aborted when the driver ends, so the socket closes and
    /// QEMU accepts the next connection.
    reader: tokio::task::JoinHandle<()>,
    streams: HashMap<StreamId, mpsc::UnboundedSender<StreamEvent>>,
    /// Senders waiting for their stream's queue to drain.
    waiting_senders: Vec<(StreamId, oneshot::Sender<Result<(), String>>)>,
    /// When the agent last sent anything.
    last_heard: tokio::time::Instant,
    /// The liveness probe in flight, and when it went out.
    probe: Option<(StreamId, tokio::time::Instant)>,
    /// Whether probes are sent (not while the VM is paused).
    heartbeat: bool,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut frames: mpsc::UnboundedReceiver<Result<Frame, String>>,
    ) {
        let mut ticker = tokio::time::interval(HEARTBEAT_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(why) = self.check_heartbeat() {
                        break why;
                    }
                }
                frame = frames.recv() => match frame {
                    Some(Ok(frame)) => {
                        if let Err(error) = self.receive(frame) {
                            break format!("the agent broke the protocol: {error}");
                        }
                    }
                    Some(Err(why)) => break why,
                    None => break "the connection to the agent ended".to_string(),
                },
                command = commands.recv() => match command {
                    Some(command) => self.apply(command),
                    // Every handle is gone.
                    None => break "closed by the host".to_string(),
                },
            }
            if let Err(why) = flush(&mut self.mux, &mut self.writer).await {
                break why;
            }
            self.wake_senders();
        };
        for (_, events) in self.streams.drain() {
            let _ = events.send(StreamEvent::Disconnected(why.clone()));
        }
        for (_, done) in self.waiting_senders.drain(..) {
            let _ = done.send(Err(why.clone()));
        }
        self.reader.abort();
        // Later commands find the channel closed.
        commands.close();
        while let Some(command) = commands.recv().await {
            match command {
                Command::Open { reply, .. } => {
                    let _ = reply.send(Err(why.clone()));
                }
                Command::Data { done, .. } => {
                    let _ = done.send(Err(why.clone()));
                }
                _ => {}
            }
        }
    }

    /// Sends a probe after a quiet period with streams open; fails when the last probe
    /// has gone unanswered, and nothing else was heard, for [`HEARTBEAT_DEADLINE`].
    fn check_heartbeat(&mut self) -> Result<(), String> {
        if !self.heartbeat || self.streams.is_empty() {
            self.probe = None;
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        match self.probe {
            Some((_, sent))
                if self.last_heard <= sent && now.duration_since(sent) >= HEARTBEAT_DEADLINE =>
            {
                return Err(format!(
                    "the guest agent has not answered for {} s (it died or hangs)",
                    HEARTBEAT_DEADLINE.as_secs()
                ));
            }
            // A probe is out and unanswered, not for long yet: wait.
            Some((_, sent)) if self.last_heard <= sent => {}
            _ if now.duration_since(self.last_heard) >= HEARTBEAT_PERIOD => {
                let stream_id = self
                    .mux
                    .open(Request::ProcessList)
                    .map_err(|error| format!("probing the agent: {error}"))?;
                let _ = self.mux.close(stream_id);
                self.probe = Some((stream_id, now));
            }
            _ => {}
        }
        Ok(())
    }

    fn receive(&mut self, frame: Frame) -> Result<(), MuxError> {
        self.last_heard = tokio::time::Instant::now();
        let Some(event) = self.mux.receive(frame)? else {
            return Ok(());
        };
        if let Some((probe, _)) = self.probe {
            match &event {
                Event::Closed { stream_id } | Event::Reset { stream_id, .. }
                    if *stream_id == probe =>
                {
                    self.probe = None;
                    return Ok(());
                }
                _ => {}
            }
        }
        match event {
            Event::Ready(_) | Event::Credit { .. } => {}
            Event::Opened { stream_id, .. } => {
                // The host serves nothing: refuse streams the agent opens.
                self.mux.reset(
                    stream_id,
                    ErrorReply {
                        code: ErrorCode::Unsupported,
                        message: "the host accepts no streams".into(),
                    },
                )?;
            }
            Event::Data {
                stream_id,
                channel,
                bytes,
            } => self.deliver(stream_id, StreamEvent::Data { channel, bytes }),
            Event::Control { stream_id, control } => {
                self.deliver(stream_id, StreamEvent::Control(control))
            }
            Event::Closed { stream_id } => self.deliver(stream_id, StreamEvent::Closed),
            Event::Reset { stream_id, error } => {
                if let Some(events) = self.streams.remove(&stream_id) {
                    let _ = events.send(StreamEvent::Reset(error));
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, stream_id: StreamId, event: StreamEvent) {
        if let Some(events) = self.streams.get(&stream_id) {
            if events.send(event).is_err() {
                // Its reader is gone; the Reset command that follows cleans up.
                self.streams.remove(&stream_id);
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Open { request, reply } => {
                let opened = self.mux.open(request).and_then(|stream_id| {
                    self.mux.grant(stream_id, RECEIVE_WINDOW)?;
                    Ok(stream_id)
                });
                let answer = match opened {
                    Ok(stream_id) => {
                        let (events_tx, events) = mpsc::unbounded_channel();
                        self.streams.insert(stream_id, events_tx);
                        Ok((stream_id, events))
                    }
                    Err(error) => Err(error.to_string()),
                };
                let _ = reply.send(answer);
            }
            Command::Data {
                stream_id,
                bytes,
                done,
            } => match self.mux.send_data(stream_id, Channel::Main, &bytes) {
                Ok(_) => self.waiting_senders.push((stream_id, done)),
                Err(error) => {
                    let _ = done.send(Err(error.to_string()));
                }
            },
            Command::Control { stream_id, control } => {
                let _ = self.mux.send_control(stream_id, control);
            }
            Command::Close { stream_id } => {
                let _ = self.mux.close(stream_id);
            }
            Command::Reset { stream_id } => {
                self.streams.remove(&stream_id);
                let _ = self.mux.reset(
                    stream_id,
                    ErrorReply {
                        code: ErrorCode::Cancelled,
                        message: "the host abandoned the stream".into(),
                    },
                );
            }
            Command::Forget { stream_id } => {
                self.streams.remove(&stream_id);
            }
            Command::Grant { stream_id, bytes } => {
                let _ = self.mux.grant(stream_id, bytes);
            }
            Command::Heartbeat { enabled } => {
                self.heartbeat = enabled;
                self.probe = None;
                self.last_heard = tokio::time::Instant::now();
            }
        }
    }

    /// Answers the senders whose stream's queue went below the limit (or whose stream is
    /// gone: the send then fails on its next use).
    fn wake_senders(&mut self) {
        let waiting = std::mem::take(&mut self.waiting_senders);
        for (stream_id, done) in waiting {
            let open = self.mux.stream_status(stream_id).is_some();
            if open && self.mux.queued_data(stream_id) > SEND_QUEUE_LIMIT {
                self.waiting_senders.push((stream_id, done));
            } else {
                let _ = done.send(Ok(()));
            }
        }
    }
}

/// Writes every frame the mux has ready.
async fn flush(mux: &mut Mux, writer: &mut OwnedWriteHalf) -> Result<(), String> {
    let mut bytes = Vec::new();
    while let Some(frame) = mux.poll_frame() {
        frame
            .encode(&mut bytes)
            .map_err(|error| format!("encoding a frame: {error}"))?;
        if bytes.len() >= 256 * 1024 {
            writer
                .write_all(&bytes)
                .await
                .map_err(|error| format!("writing to the agent: {error}"))?;
            bytes.clear();
        }
    }
    if !bytes.is_empty() {
        writer
            .write_all(&bytes)
            .await
            .map_err(|error| format!("writing to the agent: {error}"))?;
    }
    Ok(())
}
