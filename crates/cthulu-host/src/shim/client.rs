//! The server side of a shim's socket: [`ShimStream`], an
//! [`ExecStream`](cthulu_core::ExecStream) over a running (or finished) process.
//!
//! A task reads frames from the socket into a bounded channel, so `next_event` is a
//! channel receive (cancel-safe) and a slow consumer slows the shim, never grows memory
//! (the task waits for room: nothing is dropped or reordered). When the shim is already
//! gone, or closes the connection before taking it on because it is about to go, the
//! stream replays what it recorded (`exit.json` and the kept output) instead.
//!
//! Until the consumer has received the exit, the process counts as running for it:
//! stdin, EOF, signals and resizes that race its end are accepted and go nowhere (as
//! input a process never reads). After the exit event they are refused.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cthulu_core::{ExecEvent, ExecStream, SandboxError};
use cthulu_types::{PtySize, Signal};
use rustix::fs::{Mode, OFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::protocol::{
    read_frame_async, Channel, ClientFrame, Role, ShimFrame, CHUNK_LEN, PROTOCOL_VERSION,
};
use super::records::{output_file, read_record, ExitRecord, EXIT_FILE, SOCKET_FILE};

/// Events buffered between the socket and the consumer.
const EVENT_BUFFER: usize = 64;
/// Longest socket path that fits `sun_path` (108 bytes with its NUL), with a margin.
const MAX_SOCKET_PATH: usize = 100;
/// How long a control command waits for the shim to have acted on it.
const CONTROL_DONE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the shim of `process_dir`. A path too long for a socket address is reached
/// through `/proc/self/fd/<descriptor of the directory>/sock`.
pub(crate) async fn connect(process_dir: &Path) -> std::io::Result<UnixStream> {
    let path = process_dir.join(SOCKET_FILE);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixStream::connect(&path).await;
    }
    let directory = rustix::fs::open(
        process_dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let short = format!("/proc/self/fd/{}/{SOCKET_FILE}", directory.as_raw_fd());
    let stream = UnixStream::connect(&short).await;
    drop(directory);
    stream
}

/// Sends one command on a control connection (not counted as a client of the process,
/// and not queued behind stdin that the process does not read). Returns once the shim
/// has acted on it, so two commands in a row take effect in order.
pub(crate) async fn send_control(process_dir: &Path, frame: ClientFrame) -> std::io::Result<()> {
    let mut stream = connect(process_dir).await?;
    let mut bytes = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Control,
    }
    .encode();
    bytes.extend(frame.encode());
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;
    // The shim closes a control connection once it has acted on everything before its
    // end. A shim that does not get to it in time still has the command.
    let _ = tokio::time::timeout(CONTROL_DONE_TIMEOUT, async {
        let mut rest = [0u8; 256];
        while let Ok(1..) = stream.read(&mut rest).await {}
    })
    .await;
    Ok(())
}

/// How a [`ShimStream::attach`] failed.
pub(crate) enum AttachError {
    /// The shim is gone and recorded no exit.
    Lost,
    Io(std::io::Error),
}

pub(crate) struct ShimStream {
    process_id: String,
    process_dir: PathBuf,
    tty: bool,
    events: mpsc::Receiver<ExecEvent>,
    /// `None` when replaying a finished process from its files.
    writer: Option<OwnedWriteHalf>,
    /// Set once the process is known to have ended (its exit is on the way).
    exited: Arc<AtomicBool>,
    /// Set once `next_event` returned the exit.
    exit_delivered: bool,
    reader: JoinHandle<()>,
}

impl ShimStream {
    /// Attaches to the process of `process_dir`: its kept output, then live output and
    /// its exit.
    pub(crate) async fn attach(
        process_id: &str,
        process_dir: &Path,
        tty: bool,
    ) -> Result<ShimStream, AttachError> {
        let (sender, events) = mpsc::channel(EVENT_BUFFER);
        let exited = Arc::new(AtomicBool::new(false));
        let (writer, reader) = match say_hello(process_dir).await {
            Ok((read_half, write_half)) => {
                let task = tokio::spawn(read_events(
                    read_half,
                    sender,
                    process_dir.to_owned(),
                    exited.clone(),
                ));
                (Some(write_half), task)
            }
            Err(error) => {
                // No shim to talk to: it finished (and recorded how), or it is lost.
                let Some(record) = recorded_exit(process_dir).await else {
                    return Err(match error.kind() {
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                            AttachError::Lost
                        }
                        _ => AttachError::Io(error),
                    });
                };
                exited.store(true, Ordering::SeqCst);
                let task = tokio::spawn(replay_recorded(process_dir.to_owned(), record, sender));
                (None, task)
            }
        };
        Ok(ShimStream {
            process_id: process_id.to_owned(),
            process_dir: process_dir.to_owned(),
            tty,
            events,
            writer,
            exited,
            exit_delivered: false,
            reader,
        })
    }

    fn has_exited(&self) -> SandboxError {
        SandboxError::invalid(
            "process_id",
            format!("process {} has exited", self.process_id),
        )
    }

    /// Whether to act on the process: an error once the consumer has its exit, `false`
    /// (accept and drop) while the exit is on its way to the consumer.
    fn still_running(&self) -> Result<bool, SandboxError> {
        if self.exit_delivered {
            return Err(self.has_exited());
        }
        Ok(!self.exited.load(Ordering::SeqCst))
    }

    async fn send(&mut self, frame: ClientFrame) -> Result<(), SandboxError> {
        if !self.still_running()? {
            return Ok(());
        }
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        match writer.write_all(&frame.encode()).await {
            Ok(()) => Ok(()),
            // The shim went with the process: the exit is on its way.
            Err(_) if recorded_exit(&self.process_dir).await.is_some() => Ok(()),
            Err(error) => Err(SandboxError::io(
                "write to the process shim",
                self.process_dir.join(SOCKET_FILE),
                error,
            )),
        }
    }
}

impl Drop for ShimStream {
    fn drop(&mut self) {
        // Closing both halves is what tells the shim this client is gone.
        self.reader.abort();
    }
}

/// Connects as an attach client.
async fn say_hello(process_dir: &Path) -> std::io::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let (read_half, mut write_half) = connect(process_dir).await?.into_split();
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Attach,
    }
    .encode();
    write_half.write_all(&hello).await?;
    Ok((read_half, write_half))
}

async fn recorded_exit(process_dir: &Path) -> Option<ExitRecord> {
    let path = process_dir.join(EXIT_FILE);
    tokio::task::spawn_blocking(move || read_record::<ExitRecord>(&path).ok().flatten())
        .await
        .ok()
        .flatten()
}

fn output_event(channel: Channel, data: Vec<u8>) -> ExecEvent {
    match channel {
        Channel::Stdout => ExecEvent::Stdout(Bytes::from(data)),
        Channel::Stderr => ExecEvent::Stderr(Bytes::from(data)),
    }
}

async fn read_events(
    mut socket: OwnedReadHalf,
    sender: mpsc::Sender<ExecEvent>,
    process_dir: PathBuf,
    exited: Arc<AtomicBool>,
) {
    let mut received_output = false;
    loop {
        let frame = match read_frame_async(&mut socket).await {
            Ok(Some((kind, payload))) => ShimFrame::decode(kind, &payload),
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(process_dir = %process_dir.display(), %error, "shim connection failed");
                break;
            }
        };
        match frame {
            Ok(ShimFrame::Output { channel, data }) => {
                received_output = true;
                if sender.send(output_event(channel, data)).await.is_err() {
                    return;
                }
            }
            Ok(ShimFrame::Exit(exit)) => {
                exited.store(true, Ordering::SeqCst);
                let _ = sender.send(ExecEvent::Exit(exit)).await;
                return;
            }
            Ok(ShimFrame::Refused(reason)) => {
                tracing::warn!(process_dir = %process_dir.display(), %reason, "the process shim refused the connection");
                break;
            }
            Err(error) => {
                tracing::warn!(process_dir = %process_dir.display(), %error, "bad frame from the process shim");
                break;
            }
        }
    }
    // The connection ended without an exit. Before any output: the shim was going and
    // did not take us on (or died); its record is complete, replay it. After some: the
    // shim died or cut us off, so output may be missing; the recorded exit says so with
    // `truncated`. Without a record the stream just ends.
    if let Some(record) = recorded_exit(&process_dir).await {
        exited.store(true, Ordering::SeqCst);
        if received_output {
            let mut exit = record.exit;
            exit.truncated = true;
            let _ = sender.send(ExecEvent::Exit(exit)).await;
        } else {
            replay_recorded(process_dir, record, sender).await;
        }
    }
}

/// Replays a finished process from its files: kept stdout, kept stderr, exit.
async fn replay_recorded(
    process_dir: PathBuf,
    record: ExitRecord,
    sender: mpsc::Sender<ExecEvent>,
) {
    for channel in [Channel::Stdout, Channel::Stderr] {
        let kept = tokio::fs::read(process_dir.join(output_file(channel)))
            .await
            .unwrap_or_default();
        for chunk in kept.chunks(CHUNK_LEN) {
            if sender
                .send(output_event(channel, chunk.to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let _ = sender.send(ExecEvent::Exit(record.exit)).await;
}

#[async_trait]
impl ExecStream for ShimStream {
    fn process_id(&self) -> &str {
        &self.process_id
    }

    async fn next_event(&mut self) -> Option<ExecEvent> {
        let event = self.events.recv().await;
        if matches!(event, Some(ExecEvent::Exit(_))) {
            self.exit_delivered = true;
        }
        event
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), SandboxError> {
        for chunk in data.chunks(CHUNK_LEN) {
            self.send(ClientFrame::Stdin(chunk.to_vec())).await?;
        }
        Ok(())
    }

    async fn close_stdin(&mut self) -> Result<(), SandboxError> {
        self.send(ClientFrame::CloseStdin).await
    }

    async fn signal(&mut self, signal: Signal) -> Result<(), SandboxError> {
        if !self.still_running()? {
            return Ok(());
        }
        match send_control(&self.process_dir, ClientFrame::Signal(signal.number())).await {
            Ok(()) => Ok(()),
            Err(_) if recorded_exit(&self.process_dir).await.is_some() => Ok(()),
            Err(error) => Err(SandboxError::io(
                "signal through the process shim",
                self.process_dir.join(SOCKET_FILE),
                error,
            )),
        }
    }

    async fn resize(&mut self, size: PtySize) -> Result<(), SandboxError> {
        if !self.tty {
            return Err(SandboxError::invalid(
                "tty",
                format!("process {} has no terminal to resize", self.process_id),
            ));
        }
        if size.cols == 0 || size.rows == 0 {
            return Err(SandboxError::invalid(
                "tty",
                "cols and rows must be at least 1",
            ));
        }
        self.send(ClientFrame::Resize {
            cols: size.cols,
            rows: size.rows,
        })
        .await
    }
}
