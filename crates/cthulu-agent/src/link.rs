//! The byte stream to the host and its quirks: a virtio-serial port (always open; reads
//! return 0 while no host is connected), an accepting socket (vsock under Firecracker, a
//! Unix socket in tests: one connection at a time), or a Unix socket the agent connects to.
//! Outgoing frames wait in a queue of encoded frames, one buffer each, so a new session can
//! drop every frame not yet started.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::log::log;

/// How often a disconnected virtio port is read again, and a Unix socket reconnected.
pub const RETRY: Duration = Duration::from_millis(20);

/// Where the host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelSpec {
    /// The virtio-serial port with this name (`/sys/class/virtio-ports/*/name`).
    Virtio(String),
    /// Listen on this AF_VSOCK port (Firecracker style).
    Vsock(u32),
    ListenUnix(PathBuf),
    ConnectUnix(PathBuf),
}

enum Kind {
    Port,
    Listener(OwnedFd),
    Connect(PathBuf),
}

pub struct Link {
    kind: Kind,
    connection: Option<OwnedFd>,
    /// The host is gone: try again then (port: read; connect: reconnect).
    retry_at: Option<Instant>,
    out: VecDeque<Vec<u8>>,
    /// Bytes of the front buffer already written.
    out_written: usize,
    out_bytes: usize,
}

/// What the link did.
#[derive(Debug, PartialEq, Eq)]
pub enum Activity {
    Nothing,
    /// A host connected (a socket was accepted or connected): nothing to do but read.
    Connected,
    /// This many bytes were read into the buffer.
    Read(usize),
    /// The host went away: the session ends.
    HostGone,
}

impl Link {
    pub fn open(spec: &ChannelSpec) -> io::Result<Link> {
        let (kind, connection) = match spec {
            ChannelSpec::Virtio(name) => (Kind::Port, Some(open_virtio_port(name)?)),
            ChannelSpec::Vsock(port) => (Kind::Listener(crate::sys::vsock_listen(*port)?), None),
            ChannelSpec::ListenUnix(path) => (Kind::Listener(unix_listen(path)?), None),
            ChannelSpec::ConnectUnix(path) => {
                (Kind::Connect(path.clone()), Some(unix_connect(path)?))
            }
        };
        Ok(Link {
            kind,
            connection,
            retry_at: None,
            out: VecDeque::new(),
            out_written: 0,
            out_bytes: 0,
        })
    }

    /// The descriptor to poll and for what; `None` while waiting for a retry.
    pub fn interest(&self, want_read: bool) -> Option<(BorrowedFd<'_>, PollFlags)> {
        if self.retry_at.is_some() {
            return None;
        }
        match (&self.kind, &self.connection) {
            (Kind::Listener(listener), None) => Some((listener.as_fd(), PollFlags::IN)),
            (_, Some(connection)) => {
                let mut flags = PollFlags::empty();
                if want_read {
                    flags |= PollFlags::IN;
                }
                if self.out_bytes > 0 {
                    flags |= PollFlags::OUT;
                }
                Some((connection.as_fd(), flags))
            }
            (_, None) => None,
        }
    }

    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Whether a host may be there to talk to.
    pub fn connected(&self) -> bool {
        self.connection.is_some() && self.retry_at.is_none()
    }

    /// Handles poll readiness (or a due retry, with empty `revents`).
    pub fn ready(&mut self, revents: PollFlags, buffer: &mut [u8], want_read: bool) -> Activity {
        if let Some(retry_at) = self.retry_at {
            if Instant::now() < retry_at {
                return Activity::Nothing;
            }
            self.retry_at = None;
            if let Kind::Connect(path) = &self.kind {
                match unix_connect(path) {
                    Ok(connection) => {
                        self.connection = Some(connection);
                        return Activity::Connected;
                    }
                    Err(_) => {
                        self.retry_at = Some(Instant::now() + RETRY);
                        return Activity::Nothing;
                    }
                }
            }
            // A port: read again to see whether a host is there.
            return self.read(buffer);
        }
        if let (Kind::Listener(listener), None) = (&self.kind, &self.connection) {
            if revents.is_empty() {
                return Activity::Nothing;
            }
            return match rustix::net::accept_with(
                listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(connection) => {
                    self.connection = Some(connection);
                    Activity::Connected
                }
                Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED) => Activity::Nothing,
                Err(errno) => {
                    log!("accepting a connection: {errno}");
                    Activity::Nothing
                }
            };
        }
        if revents.contains(PollFlags::OUT) {
            if let Err(gone) = self.write() {
                return gone;
            }
        }
        if want_read
            && revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
        {
            return self.read(buffer);
        }
        Activity::Nothing
    }

    fn read(&mut self, buffer: &mut [u8]) -> Activity {
        let Some(connection) = &self.connection else {
            return Activity::Nothing;
        };
        match rustix::io::read(connection, buffer) {
            Ok(0) => self.host_gone(),
            Ok(read) => Activity::Read(read),
            Err(Errno::AGAIN | Errno::INTR) => Activity::Nothing,
            Err(errno) => {
                log!("reading from the host: {errno}");
                self.host_gone()
            }
        }
    }

    /// Drops the connection (a socket) or waits to read again (a port); the queued frames
    /// are for a host that is gone.
    pub fn host_gone(&mut self) -> Activity {
        match self.kind {
            Kind::Port => {}
            Kind::Listener(_) => self.connection = None,
            Kind::Connect(_) => self.connection = None,
        }
        if !matches!(self.kind, Kind::Listener(_)) {
            self.retry_at = Some(Instant::now() + RETRY);
        }
        self.out.clear();
        self.out_written = 0;
        self.out_bytes = 0;
        Activity::HostGone
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out_bytes
    }

    pub fn queue(&mut self, frame: Vec<u8>) {
        self.out_bytes += frame.len();
        self.out.push_back(frame);
    }

    /// A new session begins: frames not yet started are dropped; a frame half written is
    /// finished, so the host's decoder stays in step.
    pub fn drop_unstarted(&mut self) {
        let keep = if self.out_written > 0 { 1 } else { 0 };
        while self.out.len() > keep {
            if let Some(frame) = self.out.pop_back() {
                self.out_bytes -= frame.len();
            }
        }
    }

    /// Writes what the connection takes now. `Err(HostGone)` when it failed for good.
    pub fn write(&mut self) -> Result<(), Activity> {
        while let Some(front) = self.out.front() {
            let Some(connection) = &self.connection else {
                return Ok(());
            };
            if self.retry_at.is_some() {
                return Ok(());
            }
            let slices: Vec<io::IoSlice<'_>> = self
                .out
                .iter()
                .take(64)
                .enumerate()
                .map(|(index, frame)| {
                    io::IoSlice::new(if index == 0 {
                        &front[self.out_written..]
                    } else {
                        frame
                    })
                })
                .collect();
            match rustix::io::writev(connection, &slices) {
                Ok(mut written) => {
                    self.out_bytes -= written;
                    while written > 0 {
                        let Some(front) = self.out.front() else { break };
                        let left = front.len() - self.out_written;
                        if written >= left {
                            written -= left;
                            self.out.pop_front();
                            self.out_written = 0;
                        } else {
                            self.out_written += written;
                            written = 0;
                        }
                    }
                }
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(errno) => {
                    log!("writing to the host: {errno}");
                    return Err(self.host_gone());
                }
            }
        }
        Ok(())
    }
}

fn unix_listen(path: &Path) -> io::Result<OwnedFd> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let address = SocketAddrUnix::new(path)?;
    rustix::net::bind(&socket, &address)?;
    rustix::net::listen(&socket, 8)?;
    Ok(socket)
}

fn unix_connect(path: &Path) -> io::Result<OwnedFd> {
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&socket, &SocketAddrUnix::new(path)?)?;
    set_nonblocking(&socket)?;
    Ok(socket)
}

pub fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
    Ok(())
}

/// The device of the virtio-serial port named `name`, found through sysfs (no udev in the
/// initramfs); waits up to 10 s for the driver to probe it.
fn open_virtio_port(name: &str) -> io::Result<OwnedFd> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(device) = find_virtio_port(Path::new("/sys/class/virtio-ports"), name) {
            let path = Path::new("/dev").join(&device);
            match rustix::fs::open(
                &path,
                OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            ) {
                Ok(fd) => {
                    log!("channel: virtio port {name} at {}", path.display());
                    return Ok(fd);
                }
                Err(_) if Instant::now() < deadline => {}
                Err(errno) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("opening {}: {errno}", path.display()),
                    ))
                }
            }
        } else if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio-serial port named {name} in /sys/class/virtio-ports"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The directory name (`vport0p1`) of the port whose `name` file holds `name`.
pub fn find_virtio_port(class_dir: &Path, name: &str) -> Option<String> {
    let entries = std::fs::read_dir(class_dir).ok()?;
    for entry in entries.flatten() {
        let Ok(found) = std::fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if found.trim_end() == name {
            return entry.file_name().to_str().map(str::to_owned);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_found_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        for (port, name) in [("vport0p0", ""), ("vport0p1", "org.cthulu.agent\n")] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("name"), name).unwrap();
        }
        std::fs::create_dir(dir.path().join("vport1p1")).unwrap();
        assert_eq!(
            find_virtio_port(dir.path(), "org.cthulu.agent").as_deref(),
            Some("vport0p1")
        );
        assert_eq!(find_virtio_port(dir.path(), "other"), None);
    }
}
