//! The control protocol between the server (client) and a sandbox's init (server), over
//! the Unix socket `<state>/init.sock`: frames of a little-endian `u32` length and a JSON
//! body. An exec request carries the command's stdin, stdout and stderr as three
//! descriptors (`SCM_RIGHTS`) with its first byte; one asking for a terminal
//! ([`ExecRequest::tty`]) carries none, and init answers it with the terminal's master.
//!
//! One connection per request. An exec connection stays open until the command ends:
//! init answers [`Response::Started`] (or [`Response::StartFailed`]), later
//! [`Response::Exited`]; meanwhile the client may send [`Request::SignalGroup`] and
//! [`Request::KillAll`]; closing the connection early kills the command's process group
//! (on a terminal, its whole session). A connect request is answered with a socket
//! connected inside the sandbox (for the port forwarders).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use cthulu_types::PtySize;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Frames larger than this are refused: requests carry argv and env, nothing bulky.
pub const MAX_FRAME: usize = 16 << 20;

/// What the client asks init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run a command in its own process group (descriptors: stdin, stdout, stderr).
    Exec(ExecRequest),
    /// On an exec connection: signal the command's process group.
    SignalGroup { signal: i32 },
    /// Kill every process of the sandbox and end init.
    Shutdown,
    /// A TCP connection to `port` on the sandbox's loopback (IPv4, else IPv6), made
    /// inside its network namespace: answered [`Response::Connected`] with the socket.
    Connect { port: u16 },
    /// On an exec connection: SIGKILL the command's process group and, on a terminal,
    /// every process of its session (a shell's jobs sit in groups of their own).
    KillAll,
    /// Set the sandbox's hostname (a warm sandbox gets its id when it is claimed).
    SetHostname { name: String },
    /// Send `signal` to every process of the sandbox but init (stop and resume of a
    /// sandbox without a freezer cgroup: SIGSTOP, SIGCONT).
    SignalAll { signal: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// The complete environment (nothing of init's is added).
    pub env: Vec<(String, String)>,
    /// Absolute, inside the sandbox.
    pub cwd: String,
    /// Run on a new terminal of the sandbox's own devpts, of this size, as the leader
    /// of a session whose controlling terminal it is. The request then carries no
    /// descriptors; [`Response::Started`] brings the terminal's master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<PtySize>,
}

/// What init answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command runs; `pid` (also its process group; on a terminal its session) as
    /// the sandbox sees it. On a terminal, the master comes with it.
    Started { pid: i32 },
    /// The command could not be started: `errno` of its `chdir` or `execve`.
    StartFailed { errno: i32, during: StartStep },
    /// The command ended.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A request without a result was done.
    Done,
    /// A request init could not make sense of.
    Refused { message: String },
    /// The socket of a [`Request::Connect`] comes with this frame; `in_progress` when the
    /// connection was not yet established (the client waits until it is writable).
    Connected { in_progress: bool },
    /// Nobody accepts connections on the port: `errno` of the last attempt.
    ConnectFailed { errno: i32 },
}

/// Where starting a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartStep {
    Cwd,
    Exec,
}

/// A frame: length, then JSON.
pub fn encode(message: &impl Serialize) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("protocol messages always serialize");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// The body length announced by a frame header, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

/// Sends one frame on a blocking socket, with `fds` attached to its first byte.
pub fn send(
    socket: &(impl AsFd + Write),
    message: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let frame = encode(message);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one frame"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&frame)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?;
    let mut rest = &frame[sent..];
    while !rest.is_empty() {
        let sent = rustix::net::send(socket, rest, SendFlags::NOSIGNAL)?;
        rest = &rest[sent..];
    }
    Ok(())
}

/// Receives one frame from a blocking socket and the descriptors that came with it.
/// `None` at a clean end of the stream.
pub fn receive<T: DeserializeOwned>(
    socket: &mut (impl AsFd + Read),
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut header = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            &*socket,
            &mut [IoSliceMut::new(&mut header)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            result => break result?.bytes,
        }
    };
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received == 0 {
        return Ok(None);
    }
    socket.read_exact(&mut header[received..])?;
    let mut body = vec![0u8; frame_len(header)?];
    socket.read_exact(&mut body)?;
    Ok(Some((decode(&body)?, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn frames_round_trip_with_descriptors() {
        let (left, mut right) = UnixStream::pair().unwrap();
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let request = Request::Exec(ExecRequest {
            argv: vec!["echo".into(), "a b".into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: "/workspace".into(),
            tty: None,
        });
        send(&left, &request, &[read_end.as_fd(), write_end.as_fd()]).unwrap();
        send(&left, &Request::Shutdown, &[]).unwrap();
        drop(left);
        let (got, fds) = receive::<Request>(&mut right).unwrap().unwrap();
        assert_eq!(got, request);
        assert_eq!(fds.len(), 2);
        let (got, fds) = receive::<Request>(&mut right).unwrap().unwrap();
        assert_eq!((got, fds.len()), (Request::Shutdown, 0));
        assert!(receive::<Request>(&mut right).unwrap().is_none());
    }

    #[test]
    fn exec_requests_without_a_tty_field_still_parse() {
        let old = r#"{"Exec":{"argv":["true"],"env":[],"cwd":"/workspace"}}"#;
        let Request::Exec(exec) = decode::<Request>(old.as_bytes()).unwrap() else {
            panic!("an exec request");
        };
        assert_eq!(exec.tty, None);
        let with_tty = Request::Exec(ExecRequest {
            tty: Some(PtySize {
                cols: 100,
                rows: 40,
            }),
            ..exec
        });
        let body = &encode(&with_tty)[4..];
        assert_eq!(decode::<Request>(body).unwrap(), with_tty);
    }

    #[test]
    fn oversized_frames_are_refused() {
        assert!(frame_len((MAX_FRAME as u32 + 1).to_le_bytes()).is_err());
        assert_eq!(frame_len(5u32.to_le_bytes()).unwrap(), 5);
    }
}
