//! Port tunnels: a TCP connection to the guest's loopback, carried on a stream. Either side
//! closing half-closes the other: the host's close shuts the socket's write side once the
//! bytes before it are written; the socket's end closes the stream.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;

use cthulu_guest_protocol::message::{ErrorCode, ErrorReply};
use rustix::io::Errno;
use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType};

use crate::paths::reply;

#[derive(Debug)]
pub struct Tunnel {
    pub socket: OwnedFd,
    pub port: u16,
    /// The non-blocking connect has not completed yet.
    pub connecting: bool,
    /// Bytes from the host not yet written to the socket.
    pub pending: VecDeque<Vec<u8>>,
    pub written_front: usize,
    pub host_closed: bool,
    pub write_shut: bool,
    pub socket_ended: bool,
}

impl Tunnel {
    pub fn connect(port: u16) -> Result<Tunnel, ErrorReply> {
        let socket = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|errno| reply(ErrorCode::Internal, format!("socket: {errno}")))?;
        let connecting =
            match rustix::net::connect(&socket, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
                Ok(()) => false,
                Err(Errno::INPROGRESS | Errno::INTR) => true,
                Err(errno) => return Err(connect_error(port, errno)),
            };
        Ok(Tunnel {
            socket,
            port,
            connecting,
            pending: VecDeque::new(),
            written_front: 0,
            host_closed: false,
            write_shut: false,
            socket_ended: false,
        })
    }

    /// After the socket became writable while connecting: whether it connected.
    pub fn finish_connect(&mut self) -> Result<(), ErrorReply> {
        match rustix::net::sockopt::socket_error(&self.socket) {
            Ok(Ok(())) => {
                self.connecting = false;
                Ok(())
            }
            Ok(Err(errno)) | Err(errno) => Err(connect_error(self.port, errno)),
        }
    }

    /// Writes pending bytes the socket takes now (returning how many), then the shutdown
    /// once the host closed.
    pub fn write(&mut self) -> (usize, Option<ErrorReply>) {
        let mut total = 0;
        while let Some(front) = self.pending.front() {
            match rustix::io::write(&self.socket, &front[self.written_front..]) {
                Ok(written) => {
                    total += written;
                    self.written_front += written;
                    if self.written_front == front.len() {
                        self.pending.pop_front();
                        self.written_front = 0;
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(errno) => {
                    let error = reply(
                        ErrorCode::Internal,
                        format!("writing to 127.0.0.1:{}: {errno}", self.port),
                    );
                    return (total, Some(error));
                }
            }
        }
        if self.pending.is_empty() && self.host_closed && !self.write_shut {
            self.write_shut = true;
            let _ = rustix::net::shutdown(&self.socket, Shutdown::Write);
        }
        (total, None)
    }

    /// Reads up to `max` bytes; `Ok(None)` when nothing is there now, an empty vector at
    /// the socket's end.
    pub fn read(&mut self, max: usize) -> Result<Option<Vec<u8>>, ErrorReply> {
        let mut buffer = vec![0u8; max];
        match rustix::io::read(&self.socket, &mut buffer) {
            Ok(read) => {
                buffer.truncate(read);
                if read == 0 {
                    self.socket_ended = true;
                }
                Ok(Some(buffer))
            }
            Err(Errno::AGAIN | Errno::INTR) => Ok(None),
            Err(errno) => Err(reply(
                ErrorCode::Internal,
                format!("reading from 127.0.0.1:{}: {errno}", self.port),
            )),
        }
    }
}

fn connect_error(port: u16, errno: Errno) -> ErrorReply {
    if errno == Errno::CONNREFUSED {
        reply(
            ErrorCode::ConnectionRefused,
            format!("connection refused: nothing listens on 127.0.0.1:{port}"),
        )
    } else {
        reply(
            ErrorCode::Internal,
            format!("connecting to 127.0.0.1:{port}: {errno}"),
        )
    }
}
