//! The contract's operations in terms of agent requests: exec (one-shot and streamed),
//! files, directory listings and port tunnels over a [`GuestClient`], with the agent's
//! refusals turned into the contract's errors.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cthulu_core::{
    ByteReader, ExecEvent, ExecOutput, ExecSpec, ExecStream, ExitInfo, SandboxError,
};
use cthulu_guest_protocol::frame::Channel;
use cthulu_guest_protocol::message::{
    self as wire, Control, ErrorCode, ErrorReply, ExecRequest, Request,
};
use cthulu_types::{Command, DirEntry, FileKind, PtySize, Signal};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::client::{ClientError, GuestClient, GuestStream, StreamEvent};

/// The guest's workspace: the default cwd and HOME, the root of file paths.
pub const WORKSPACE: &str = "/workspace";

/// Extra time the host gives an exec beyond its own timeout before abandoning it (the
/// agent enforces the timeout; this only guards against an agent that stopped answering).
const HOST_GRACE: Duration = Duration::from_secs(10);

/// An agent error as the contract's error. `subject` is the path, program or process the
/// request named.
pub fn refusal(error: ClientError, subject: &str) -> SandboxError {
    match error {
        ClientError::Refused(ErrorReply { code, message }) => match code {
            ErrorCode::NotFound => SandboxError::FileNotFound {
                path: subject.to_string(),
            },
            ErrorCode::OutsideWorkspace => SandboxError::PathOutsideSandbox {
                path: subject.to_string(),
            },
            ErrorCode::NotADirectory => SandboxError::NotADirectory {
                path: subject.to_string(),
            },
            ErrorCode::IsADirectory => SandboxError::IsADirectory {
                path: subject.to_string(),
            },
            ErrorCode::DirectoryNotEmpty => SandboxError::DirectoryNotEmpty {
                path: subject.to_string(),
            },
            ErrorCode::AlreadyExists => SandboxError::AlreadyExists {
                path: subject.to_string(),
            },
            ErrorCode::InvalidRequest => SandboxError::invalid("request", message),
            _ => SandboxError::system(
                "ask the guest agent",
                std::io::Error::other(format!("{message} ({code:?})")),
            ),
        },
        other => lost(other),
    }
}

/// The agent could not be reached or broke off.
pub fn lost(error: ClientError) -> SandboxError {
    SandboxError::system(
        "reach the guest agent",
        std::io::Error::other(error.to_string()),
    )
}

fn exec_refusal(error: ClientError, program: &str) -> SandboxError {
    match error.code() {
        Some(ErrorCode::NotFound) => SandboxError::ProgramNotFound {
            program: program.to_string(),
        },
        Some(ErrorCode::PermissionDenied) => SandboxError::ProgramNotExecutable {
            program: program.to_string(),
        },
        _ => refusal(error, program),
    }
}

pub fn wire_signal(signal: Signal) -> wire::Signal {
    match signal {
        Signal::Hup => wire::Signal::Hup,
        Signal::Int => wire::Signal::Int,
        Signal::Quit => wire::Signal::Quit,
        Signal::Kill => wire::Signal::Kill,
        Signal::Usr1 => wire::Signal::Usr1,
        Signal::Usr2 => wire::Signal::Usr2,
        Signal::Term => wire::Signal::Term,
        Signal::Cont => wire::Signal::Cont,
        Signal::Stop => wire::Signal::Stop,
        Signal::Winch => wire::Signal::Winch,
    }
}

/// The request of `spec`, run as `process_id`.
pub fn exec_request(spec: &ExecSpec, process_id: &str) -> ExecRequest {
    ExecRequest {
        process_id: process_id.to_string(),
        command: match &spec.command {
            Command::Argv(argv) => wire::Command::Argv(argv.clone()),
            Command::Shell(script) => wire::Command::Shell(script.clone()),
        },
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        stdin: true,
        timeout_ms: Some(spec.timeout.as_millis() as u64).filter(|ms| *ms > 0),
        output_cap: Some(spec.max_output_bytes),
        tty: spec.tty.map(|size| wire::TtySize {
            rows: size.rows,
            cols: size.cols,
        }),
        detached: spec.detach,
    }
}

fn exit_info(status: wire::ExitStatus) -> ExitInfo {
    ExitInfo {
        exit_code: status.code,
        signal: status.signal,
        timed_out: status.timed_out,
        truncated: status.truncated,
        oom_killed: status.oom_killed,
    }
}

/// Waits for the agent's `started` (or its refusal) on a new exec or attach stream.
async fn started(stream: &mut GuestStream, program: &str) -> Result<(), SandboxError> {
    match stream.next().await {
        StreamEvent::Control(Control::Started) => Ok(()),
        StreamEvent::Reset(reply) => Err(exec_refusal(ClientError::Refused(reply), program)),
        StreamEvent::Disconnected(why) => Err(lost(ClientError::Disconnected(why))),
        other => Err(lost(ClientError::Protocol(format!(
            "expected the process to start, got {other:?}"
        )))),
    }
}

/// Runs `spec` to completion.
pub async fn exec(
    client: &GuestClient,
    spec: ExecSpec,
    process_id: &str,
) -> Result<ExecOutput, SandboxError> {
    let begun = Instant::now();
    let program = spec.program();
    let mut stream = client
        .open(Request::Exec(exec_request(&spec, process_id)))
        .await
        .map_err(lost)?;
    started(&mut stream, &program).await?;
    // Stdin flows while the output is read: a program that writes as it reads would
    // otherwise fill its output window and stop reading stdin, and both sides would wait.
    let stdin = spec.stdin.clone().unwrap_or_default();
    let sender = stream.sender();
    let feeder = tokio::spawn(async move {
        for chunk in stdin.chunks(64 * 1024) {
            // The process may exit without reading it all: that is its business.
            if sender.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
        let _ = sender.close();
    });
    let _feeder = AbortOnDrop(feeder);
    let limit = spec.timeout + HOST_GRACE;
    let collect = async {
        let (mut stdout, mut stderr, mut exit) = (Vec::new(), Vec::new(), None);
        loop {
            match stream.next().await {
                StreamEvent::Data { channel, bytes } => match channel {
                    Channel::Main => stdout.extend_from_slice(&bytes),
                    Channel::Stderr => stderr.extend_from_slice(&bytes),
                },
                StreamEvent::Control(Control::Exit(status)) => exit = Some(exit_info(status)),
                StreamEvent::Control(_) => {}
                StreamEvent::Closed => break,
                StreamEvent::Reset(reply) => {
                    return Err(exec_refusal(ClientError::Refused(reply), &program))
                }
                StreamEvent::Disconnected(why) => return Err(lost(ClientError::Disconnected(why))),
            }
        }
        let exit = exit.ok_or_else(|| {
            lost(ClientError::Protocol(
                "the exec ended without an exit status".into(),
            ))
        })?;
        Ok(ExecOutput {
            exit,
            stdout,
            stderr,
            duration: begun.elapsed(),
        })
    };
    let limited = !spec.timeout.is_zero();
    if limited {
        tokio::time::timeout(limit, collect).await.map_err(|_| {
            lost(ClientError::Disconnected(format!(
                "the agent reported nothing within {limit:?}"
            )))
        })?
    } else {
        collect.await
    }
}

/// Aborts a task when dropped (the exec's stdin feeder ends with the exec).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A streamed exec (or an attach) on a guest stream.
pub struct GuestExec {
    process_id: String,
    /// On a terminal (only then can it be resized); unknown for an attach.
    tty: Option<bool>,
    stream: GuestStream,
    exit: Option<ExitInfo>,
    ended: bool,
}

impl GuestExec {
    /// Starts `spec` as `process_id`.
    pub async fn start(
        client: &GuestClient,
        spec: &ExecSpec,
        process_id: &str,
    ) -> Result<GuestExec, SandboxError> {
        let mut stream = client
            .open(Request::Exec(exec_request(spec, process_id)))
            .await
            .map_err(lost)?;
        started(&mut stream, &spec.program()).await?;
        if let Some(stdin) = spec.stdin.clone() {
            let sender = stream.sender();
            tokio::spawn(async move {
                if sender.send(stdin).await.is_ok() {
                    let _ = sender.close();
                }
            });
        }
        Ok(GuestExec {
            process_id: process_id.to_string(),
            tty: Some(spec.tty.is_some()),
            stream,
            exit: None,
            ended: false,
        })
    }

    /// Follows the running (or exited, retained) process `process_id`.
    pub async fn attach(client: &GuestClient, process_id: &str) -> Result<GuestExec, SandboxError> {
        let mut stream = client
            .open(Request::Attach {
                process_id: process_id.to_string(),
            })
            .await
            .map_err(lost)?;
        match stream.next().await {
            StreamEvent::Control(Control::Started) => {}
            StreamEvent::Reset(reply) if reply.code == ErrorCode::NotFound => {
                return Err(SandboxError::ProcessNotFound {
                    process_id: process_id.to_string(),
                })
            }
            StreamEvent::Reset(reply) => {
                return Err(refusal(ClientError::Refused(reply), process_id))
            }
            other => {
                return Err(lost(ClientError::Protocol(format!(
                    "expected the attach to start, got {other:?}"
                ))))
            }
        }
        Ok(GuestExec {
            process_id: process_id.to_string(),
            tty: None,
            stream,
            exit: None,
            ended: false,
        })
    }
}

#[async_trait]
impl ExecStream for GuestExec {
    fn process_id(&self) -> &str {
        &self.process_id
    }

    async fn next_event(&mut self) -> Option<ExecEvent> {
        if self.ended {
            return None;
        }
        loop {
            match self.stream.next().await {
                StreamEvent::Data { channel, bytes } => {
                    let bytes = Bytes::from(bytes);
                    return Some(match channel {
                        Channel::Main => ExecEvent::Stdout(bytes),
                        Channel::Stderr => ExecEvent::Stderr(bytes),
                    });
                }
                StreamEvent::Control(Control::Exit(status)) => self.exit = Some(exit_info(status)),
                StreamEvent::Control(_) => {}
                StreamEvent::Closed => {
                    self.ended = true;
                    self.stream.finish();
                    return self.exit.take().map(ExecEvent::Exit);
                }
                // The agent gave the process up or the VM is gone (destroyed, restored,
                // QEMU killed): the process went with it.
                StreamEvent::Reset(_) | StreamEvent::Disconnected(_) => {
                    self.ended = true;
                    return Some(ExecEvent::Exit(self.exit.take().unwrap_or(ExitInfo {
                        exit_code: None,
                        signal: Some(9),
                        timed_out: false,
                        truncated: false,
                        oom_killed: false,
                    })));
                }
            }
        }
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), SandboxError> {
        self.stream.send(data.to_vec()).await.map_err(lost)
    }

    async fn close_stdin(&mut self) -> Result<(), SandboxError> {
        self.stream.close_send().await.map_err(lost)
    }

    async fn signal(&mut self, signal: Signal) -> Result<(), SandboxError> {
        self.stream
            .control(Control::Signal {
                signal: wire_signal(signal),
            })
            .map_err(lost)
    }

    async fn resize(&mut self, size: PtySize) -> Result<(), SandboxError> {
        if self.tty == Some(false) {
            return Err(SandboxError::invalid(
                "size",
                "the process has no terminal to resize",
            ));
        }
        self.stream
            .control(Control::Resize(wire::TtySize {
                rows: size.rows,
                cols: size.cols,
            }))
            .map_err(lost)
    }
}

/// Uploads `contents` to `path` (relative to the workspace). The size must be known up
/// front, so the upload is spooled to a temporary file first when it is large.
pub async fn put_file(
    client: &GuestClient,
    relative: &Path,
    mode: u32,
    create_parents: bool,
    mut contents: ByteReader,
) -> Result<u64, SandboxError> {
    const IN_MEMORY: usize = 8 * 1024 * 1024;
    let mut head = Vec::new();
    (&mut contents)
        .take(IN_MEMORY as u64 + 1)
        .read_to_end(&mut head)
        .await
        .map_err(|error| SandboxError::system("read the upload", error))?;
    let mut spool = None;
    let mut size = head.len() as u64;
    if head.len() > IN_MEMORY {
        let file = tempfile::tempfile()
            .map_err(|error| SandboxError::system("spool the upload", error))?;
        let mut file = tokio::fs::File::from_std(file);
        file.write_all(&head)
            .await
            .map_err(|error| SandboxError::system("spool the upload", error))?;
        size += tokio::io::copy(&mut contents, &mut file)
            .await
            .map_err(|error| SandboxError::system("spool the upload", error))?;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|error| SandboxError::system("spool the upload", error))?;
        spool = Some(file);
        head.clear();
    }
    let (path, shown) = wire_path(relative);
    let mut stream = client
        .open(Request::FilePut {
            path,
            mode,
            size,
            create_parents,
        })
        .await
        .map_err(lost)?;
    let sent = async {
        if let Some(mut file) = spool {
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                let read = file.read(&mut buffer).await.map_err(|error| {
                    ClientError::Disconnected(format!("reading the spooled upload: {error}"))
                })?;
                if read == 0 {
                    break;
                }
                stream.send(buffer[..read].to_vec()).await?;
            }
        } else {
            for chunk in head.chunks(256 * 1024) {
                stream.send(chunk.to_vec()).await?;
            }
        }
        stream.close_send().await
    };
    let sent = sent.await;
    let answer = await_done(&mut stream).await;
    answer.map_err(|error| refusal(error, &shown))?;
    sent.map_err(lost)?;
    Ok(size)
}

/// A workspace-relative path as the agent takes it, and as messages show it.
pub fn wire_path(relative: &Path) -> (String, String) {
    (
        relative.to_string_lossy().into_owned(),
        cthulu_core::path::display_path(relative),
    )
}

/// Waits for `done` then the close, or the refusal.
async fn await_done(stream: &mut GuestStream) -> Result<(), ClientError> {
    let mut done = false;
    loop {
        match stream.next().await {
            StreamEvent::Control(Control::Done) => done = true,
            StreamEvent::Control(_) | StreamEvent::Data { .. } => {}
            StreamEvent::Closed if done => return Ok(()),
            StreamEvent::Closed => {
                return Err(ClientError::Protocol("closed without an answer".into()))
            }
            StreamEvent::Reset(reply) => return Err(ClientError::Refused(reply)),
            StreamEvent::Disconnected(why) => return Err(ClientError::Disconnected(why)),
        }
    }
}

/// Starts downloading `path`: its size, mode and a reader of its bytes.
pub async fn get_file(
    client: &GuestClient,
    relative: &Path,
) -> Result<(u64, u32, ByteReader), SandboxError> {
    let (path, shown) = wire_path(relative);
    let mut stream = client.open(Request::FileGet { path }).await.map_err(lost)?;
    stream.close_send().await.map_err(lost)?;
    let (size, mode) = match stream.next().await {
        StreamEvent::Control(Control::FileInfo { mode, size }) => (size, mode),
        StreamEvent::Reset(reply) => return Err(refusal(ClientError::Refused(reply), &shown)),
        other => {
            return Err(lost(ClientError::Protocol(format!(
                "expected the file's info, got {other:?}"
            ))))
        }
    };
    let (mut writer, reader) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        loop {
            match stream.next().await {
                StreamEvent::Data { bytes, .. } => {
                    if writer.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                StreamEvent::Closed => {
                    stream.finish();
                    let _ = writer.shutdown().await;
                    return;
                }
                StreamEvent::Control(_) => {}
                // The reader sees the download end early (fewer bytes than the size).
                StreamEvent::Reset(_) | StreamEvent::Disconnected(_) => return,
            }
        }
    });
    Ok((size, mode, Box::new(reader)))
}

/// Lists the directory `path`.
pub async fn read_dir(
    client: &GuestClient,
    relative: &Path,
) -> Result<Vec<DirEntry>, SandboxError> {
    let (path, shown) = wire_path(relative);
    let controls = client
        .call(Request::DirList { path })
        .await
        .map_err(|error| refusal(error, &shown))?;
    let mut entries = Vec::new();
    for control in controls {
        if let Control::DirEntries { entries: chunk } = control {
            entries.extend(chunk.into_iter().map(|entry| DirEntry {
                name: entry.name,
                kind: match entry.kind {
                    wire::EntryKind::File => FileKind::File,
                    wire::EntryKind::Dir => FileKind::Dir,
                    wire::EntryKind::Symlink => FileKind::Symlink,
                    wire::EntryKind::Other => FileKind::Other,
                },
                size: entry.size,
                mode: entry.mode,
                modified_ms: entry.modified_ms,
                link_target: entry.link_target,
            }));
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Opens a tunnel to `port` on the guest's loopback: a byte stream both ways, or `None`
/// when nobody listens there.
pub async fn tunnel(
    client: &GuestClient,
    port: u16,
) -> Option<Box<dyn cthulu_host::ports::Duplex>> {
    let mut stream = client.open(Request::PortTunnel { port }).await.ok()?;
    match stream.next().await {
        StreamEvent::Control(Control::Done) => {}
        _ => return None,
    }
    let (near, far) = tokio::io::duplex(256 * 1024);
    tokio::spawn(pump(stream, far));
    Some(Box::new(near))
}

/// Moves bytes between a guest stream and one end of a local pipe until both directions
/// are done (then the stream is finished, so nothing holds the connection open).
async fn pump(mut stream: GuestStream, local: tokio::io::DuplexStream) {
    let (mut local_read, mut local_write) = tokio::io::split(local);
    let mut buffer = vec![0u8; 64 * 1024];
    let (mut local_open, mut remote_open) = (true, true);
    while local_open || remote_open {
        tokio::select! {
            read = local_read.read(&mut buffer), if local_open => match read {
                Ok(0) | Err(_) => {
                    local_open = false;
                    if stream.close_send().await.is_err() { return; }
                }
                Ok(read) => {
                    if stream.send(buffer[..read].to_vec()).await.is_err() { return; }
                }
            },
            event = stream.next(), if remote_open => match event {
                StreamEvent::Data { bytes, .. } => {
                    if local_write.write_all(&bytes).await.is_err() { return; }
                }
                StreamEvent::Closed => {
                    remote_open = false;
                    let _ = local_write.shutdown().await;
                }
                StreamEvent::Control(_) => {}
                StreamEvent::Reset(_) | StreamEvent::Disconnected(_) => return,
            },
        }
    }
    stream.finish();
}
