//! The server: one single-threaded `poll(2)` loop over the link to the host, SIGCHLD (a
//! signalfd), the pipes and terminals of the processes, and the sockets of port tunnels.
//!
//! Why a poll loop and not tokio: every byte the agent holds must be bounded whatever the
//! host does, and with one thread that owns everything (the [`Mux`], the processes, the
//! streams) that bound is plain to see — a source is polled for reading only while its
//! stream has room (see [`session::room`]) and the link is not backed up; stdin, uploads and
//! tunnels are granted credit only as their bytes are written. It also keeps the static
//! binary small and fork-friendly for PID 1.

mod configure;
mod files;
mod process;
mod process_io;
mod requests;
mod session;
mod tunnel;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use cthulu_guest_protocol::frame::{Frame, FrameBody, StreamId};
use cthulu_guest_protocol::message::{Control, Hello};
use cthulu_guest_protocol::mux::{Event, Mux, Role};
use rustix::event::PollFlags;

pub use configure::Settings;
use process::Process;
use process_io::release;
use session::{room, send, Session, Stream};

use crate::inbound::{Inbound, Next};
use crate::link::{Activity, Link};
use crate::log::log;
use crate::sys;

/// Encoded frames waiting for the host at most (beyond one frame): past it, the agent
/// stops taking frames from the mux, reading sources and reading the host's frames.
const OUT_HIGH: usize = 256 * 1024;
/// Bytes read from a source at once.
const READ_CHUNK: usize = 64 * 1024;
/// After a process ends, how long its output is waited for (background children may
/// hold the pipe); after that, a source ends as soon as it is empty.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// Detached processes kept (running, or ended with their output for attaches).
const MAX_RETAINED: usize = 64;
/// The longest poll: timers are checked at least this often.
const MAX_POLL_MS: i32 = 1000;

/// What a polled descriptor belongs to.
#[derive(Debug, Clone, Copy)]
enum Token {
    Link,
    Sigchld,
    Output(u64, usize),
    Stdin(u64),
    Tunnel(StreamId),
}

pub struct Server {
    link: Link,
    inbound: Inbound,
    session: Option<Session>,
    /// Frames outside a session were reported once.
    discarding_reported: bool,
    processes: BTreeMap<u64, Process>,
    next_key: u64,
    settings: Settings,
    sigchld: OwnedFd,
    buffer: Vec<u8>,
}

impl Server {
    pub fn new(link: Link, settings: Settings) -> io::Result<Server> {
        Ok(Server {
            link,
            inbound: Inbound::new(),
            session: None,
            discarding_reported: false,
            processes: BTreeMap::new(),
            next_key: 0,
            settings,
            sigchld: sys::sigchld_fd()?,
            buffer: vec![0; READ_CHUNK],
        })
    }

    /// Serves until the process is killed.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            self.step()?;
        }
    }

    fn step(&mut self) -> io::Result<()> {
        self.produce();
        self.flush();
        self.prune();
        let now = Instant::now();
        let (mut fds, tokens) = self.interest();
        let timeout = if self.has_pull_work() {
            0
        } else {
            self.timeout(now)
        };
        sys::poll(&mut fds, timeout)?;
        for (fd, token) in fds.iter().zip(tokens) {
            if fd.revents != 0 {
                self.dispatch(token, PollFlags::from_bits_truncate(fd.revents as _));
            }
        }
        if self.link.retry_at().is_some_and(|at| Instant::now() >= at) {
            self.on_link(PollFlags::empty());
        }
        self.timers(Instant::now());
        Ok(())
    }

    fn link_has_room(&self) -> bool {
        self.link.queued() < OUT_HIGH
    }

    // ---- polling ----

    fn interest(&self) -> (Vec<libc::pollfd>, Vec<Token>) {
        let mut fds = Vec::new();
        let mut tokens = Vec::new();
        let mut add = |fd: i32, flags: PollFlags, token: Token| {
            fds.push(libc::pollfd {
                fd,
                events: flags.bits() as _,
                revents: 0,
            });
            tokens.push(token);
        };
        let link_room = self.link_has_room();
        if let Some((fd, flags)) = self.link.interest(link_room) {
            add(fd.as_raw_fd(), flags, Token::Link);
        }
        add(self.sigchld.as_raw_fd(), PollFlags::IN, Token::Sigchld);
        for (key, process) in &self.processes {
            for (index, output) in process.outputs.iter().enumerate() {
                let Some(fd) = &output.fd else { continue };
                let wanted = process.detached
                    || process.discarding(index)
                    || match (&self.session, process.stream) {
                        (Some(session), Some(stream_id)) => {
                            room(&session.mux, stream_id, link_room) > 0
                        }
                        _ => false,
                    };
                if wanted {
                    add(fd.as_raw_fd(), PollFlags::IN, Token::Output(*key, index));
                }
            }
            if let Some(stdin) = &process.stdin {
                if !stdin.pending.is_empty() {
                    add(stdin.fd.as_raw_fd(), PollFlags::OUT, Token::Stdin(*key));
                }
            }
        }
        if let Some(session) = &self.session {
            for (stream_id, stream) in &session.streams {
                let Stream::Tunnel(tunnel) = stream else {
                    continue;
                };
                let mut flags = PollFlags::empty();
                if tunnel.connecting {
                    flags |= PollFlags::OUT;
                } else {
                    if !tunnel.socket_ended && room(&session.mux, *stream_id, link_room) > 0 {
                        flags |= PollFlags::IN;
                    }
                    if !tunnel.pending.is_empty() {
                        flags |= PollFlags::OUT;
                    }
                }
                if !flags.is_empty() {
                    add(tunnel.socket.as_raw_fd(), flags, Token::Tunnel(*stream_id));
                }
            }
        }
        (fds, tokens)
    }

    /// Milliseconds until the next timer: a retry of the link, a timeout, a drain grace.
    fn timeout(&self, now: Instant) -> i32 {
        let mut next: Option<Instant> = self.link.retry_at();
        let mut consider = |at: Instant| {
            next = Some(next.map_or(at, |next| next.min(at)));
        };
        for process in self.processes.values() {
            if process.ended.is_none() && !process.timed_out {
                if let Some(deadline) = process.deadline {
                    consider(deadline);
                }
            }
            if let Some(ended_at) = process.ended_at {
                if process
                    .outputs
                    .iter()
                    .any(|output| output.fd.is_some() && !output.until_empty)
                {
                    consider(ended_at + DRAIN_GRACE);
                }
            }
        }
        match next {
            None => MAX_POLL_MS,
            Some(at) => {
                let left = at.saturating_duration_since(now);
                (left.as_millis() as i32 + 1).min(MAX_POLL_MS)
            }
        }
    }

    /// Whether a source that is not polled (a file, a listing, a retained output) could
    /// give more now.
    fn has_pull_work(&self) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        let link_room = self.link_has_room();
        if !link_room {
            return false;
        }
        let streams = session
            .streams
            .iter()
            .any(|(stream_id, stream)| match stream {
                Stream::Get(get) => {
                    get.remaining > 0 && room(&session.mux, *stream_id, link_room) > 0
                }
                Stream::List(_) => !session.mux.has_frame(),
                _ => false,
            });
        streams
            || self.processes.values().any(|process| {
                process.followers.iter().any(|follower| {
                    room(&session.mux, follower.stream, link_room) > 0
                        && process
                            .outputs
                            .iter()
                            .zip(&follower.cursors)
                            .any(|(output, cursor)| {
                                output
                                    .ring
                                    .as_ref()
                                    .is_some_and(|ring| *cursor < ring.end())
                            })
                })
            })
    }

    fn dispatch(&mut self, token: Token, revents: PollFlags) {
        match token {
            Token::Link => self.on_link(revents),
            Token::Sigchld => self.reap(),
            Token::Output(key, index) => self.read_output(key, index),
            Token::Stdin(key) => self.write_stdin(key),
            Token::Tunnel(stream_id) => self.on_tunnel(stream_id, revents),
        }
    }

    // ---- the link and sessions ----

    fn on_link(&mut self, revents: PollFlags) {
        let want_read = self.link_has_room();
        match self.link.ready(revents, &mut self.buffer, want_read) {
            Activity::Nothing => {}
            Activity::Connected => {}
            Activity::Read(read) => {
                self.inbound.push(&self.buffer[..read]);
                self.take_frames();
            }
            Activity::HostGone => {
                self.inbound.reset();
                if self.session.is_some() {
                    log!("the host went away: the session ends");
                }
                self.end_session();
            }
        }
    }

    fn take_frames(&mut self) {
        loop {
            match self.inbound.next() {
                Next::Pending => return,
                Next::Violation(error) => {
                    log!("protocol violation: {error}; waiting for a new hello");
                    self.end_session();
                }
                Next::Frame(frame) => self.on_frame(frame),
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        if let FrameBody::Hello(_) = &frame.body {
            if self.session.is_some() {
                log!("a new hello: the previous session ends");
                self.end_session();
            }
            self.start_session(frame);
            return;
        }
        let Some(session) = &mut self.session else {
            if !self.discarding_reported {
                log!(
                    "discarding a {} frame: no session (waiting for a hello)",
                    frame.body.kind()
                );
                self.discarding_reported = true;
            }
            return;
        };
        match session.mux.receive(frame) {
            Ok(Some(event)) => self.on_event(event),
            Ok(None) => {}
            Err(error) => {
                log!("protocol violation: {error}; the session ends");
                self.end_session();
            }
        }
    }

    fn start_session(&mut self, hello: Frame) {
        self.link.drop_unstarted();
        let mut mux = Mux::new(Role::Guest, Hello::new(Vec::new()));
        match mux.receive(hello) {
            Ok(_) => {
                self.session = Some(Session::new(mux));
                self.discarding_reported = false;
            }
            Err(error) => {
                log!("handshake failed: {error}");
                // Our hello still goes out: it tells the host what we speak.
                while let Some(frame) = mux.poll_frame() {
                    if let Ok(bytes) = frame.to_bytes() {
                        self.link.queue(bytes);
                    }
                }
            }
        }
    }

    /// Every stream goes: non-detached processes are killed, detached ones lose their
    /// followers (and keep running), uploads are abandoned, tunnels close.
    fn end_session(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        for (stream_id, stream) in session.streams {
            release(&mut self.processes, stream_id, stream);
        }
        for process in self.processes.values_mut() {
            process.followers.clear();
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Opened { stream_id, request } => self.open(stream_id, request),
            Event::Data {
                stream_id, bytes, ..
            } => self.on_data(stream_id, bytes),
            Event::Control { stream_id, control } => self.on_control(stream_id, control),
            Event::Closed { stream_id } => self.on_closed(stream_id),
            Event::Reset { stream_id, .. } => {
                if let Some(session) = &mut self.session {
                    if let Some(stream) = session.streams.remove(&stream_id) {
                        release(&mut self.processes, stream_id, stream);
                    }
                }
            }
            Event::Ready(_) | Event::Credit { .. } => {}
        }
    }

    /// Moves frames from the mux to the link while it has room, and writes.
    fn flush(&mut self) {
        if let Some(session) = &mut self.session {
            while self.link.queued() < OUT_HIGH {
                let Some(frame) = session.mux.poll_frame() else {
                    break;
                };
                match frame.to_bytes() {
                    Ok(bytes) => self.link.queue(bytes),
                    Err(error) => log!("encoding a frame: {error}"),
                }
            }
        }
        if self.link.connected() && self.link.queued() > 0 && self.link.write().is_err() {
            self.inbound.reset();
            log!("the host went away: the session ends");
            self.end_session();
        }
    }

    fn prune(&mut self) {
        if let Some(session) = &mut self.session {
            for (stream_id, stream) in session.take_gone() {
                release(&mut self.processes, stream_id, stream);
            }
        }
    }

    // ---- data from the host ----

    fn on_data(&mut self, stream_id: StreamId, bytes: Vec<u8>) {
        let Some(session) = &mut self.session else {
            return;
        };
        let length = bytes.len();
        match session.streams.get_mut(&stream_id) {
            Some(Stream::Process { key, stdin: true }) => {
                let key = *key;
                match self
                    .processes
                    .get_mut(&key)
                    .and_then(|process| process.stdin.as_mut())
                {
                    Some(stdin) => {
                        stdin.pending.push_back((stream_id, bytes));
                        self.write_stdin(key);
                    }
                    // Nobody reads it any more.
                    None => session.consumed(stream_id, length),
                }
            }
            Some(Stream::Put(put)) => match put.write(&bytes) {
                Ok(()) => session.consumed(stream_id, length),
                Err(error) => {
                    if let Some(stream) = session.reset(stream_id, error) {
                        release(&mut self.processes, stream_id, stream);
                    }
                }
            },
            Some(Stream::Tunnel(tunnel)) => {
                tunnel.pending.push_back(bytes);
                self.write_tunnel(stream_id);
            }
            // A stream that takes no more data (its exec ended): dropped.
            _ => {}
        }
    }

    fn on_control(&mut self, stream_id: StreamId, control: Control) {
        let Some(session) = &mut self.session else {
            return;
        };
        let Some(Stream::Process { key, .. }) = session.streams.get(&stream_id) else {
            log!("ignoring {control:?} on stream {stream_id}");
            return;
        };
        let Some(process) = self.processes.get(key) else {
            return;
        };
        match control {
            Control::Signal { signal } => process.signal(process::signal_number(signal)),
            Control::Resize(size) => {
                if let Some(master) = &process.tty {
                    if let Err(error) = process::resize(master, size) {
                        log!("resizing the terminal of {}: {error}", process.process_id);
                    }
                }
            }
            other => log!("ignoring {other:?} on stream {stream_id}"),
        }
    }

    fn on_closed(&mut self, stream_id: StreamId) {
        let Some(session) = &mut self.session else {
            return;
        };
        match session.streams.get_mut(&stream_id) {
            Some(Stream::Process { key, stdin: true }) => {
                let key = *key;
                if let Some(stdin) = self
                    .processes
                    .get_mut(&key)
                    .and_then(|process| process.stdin.as_mut())
                {
                    stdin.close_when_flushed = true;
                }
                self.write_stdin(key);
            }
            Some(Stream::Put(_)) => {
                let Some(Stream::Put(put)) = session.streams.remove(&stream_id) else {
                    return;
                };
                match put.finish() {
                    Ok(()) => session.finish(stream_id, Some(Control::Done)),
                    Err(error) => {
                        session.reset(stream_id, error);
                    }
                }
            }
            Some(Stream::Tunnel(tunnel)) => {
                tunnel.host_closed = true;
                self.write_tunnel(stream_id);
            }
            _ => {}
        }
    }

    /// Pull sources: retained output to followers, file downloads, listings; and the
    /// exits of processes whose output is all out.
    fn produce(&mut self) {
        self.produce_processes();
        let link_room = self.link_has_room();
        let Some(session) = &mut self.session else {
            return;
        };
        // Downloads and listings.
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        let mut listings = Vec::new();
        for (stream_id, stream) in &mut session.streams {
            match stream {
                Stream::Get(get) => {
                    let space = room(&session.mux, *stream_id, link_room).min(READ_CHUNK);
                    if get.remaining > 0 && space > 0 {
                        match get.read(space) {
                            Ok(bytes) => send(
                                &mut session.mux,
                                *stream_id,
                                cthulu_guest_protocol::frame::Channel::Main,
                                &bytes,
                            ),
                            Err(error) => failed.push((*stream_id, error)),
                        }
                    }
                    if get.remaining == 0 {
                        finished.push((*stream_id, None));
                    }
                }
                Stream::List(_) => listings.push(*stream_id),
                _ => {}
            }
        }
        if link_room && !session.mux.has_frame() {
            for stream_id in listings {
                let Some(Stream::List(listing)) = session.streams.get_mut(&stream_id) else {
                    continue;
                };
                match listing.next_chunk() {
                    Ok(Some(entries)) => {
                        session.control(stream_id, Control::DirEntries { entries })
                    }
                    Ok(None) => finished.push((stream_id, None)),
                    Err(error) => failed.push((stream_id, error)),
                }
            }
        }
        for (stream_id, control) in finished {
            session.finish(stream_id, control);
        }
        for (stream_id, error) in failed {
            session.reset(stream_id, error);
        }
    }

    // ---- tunnels ----

    fn on_tunnel(&mut self, stream_id: StreamId, revents: PollFlags) {
        let link_room = self.link_has_room();
        let Some(session) = &mut self.session else {
            return;
        };
        let Some(Stream::Tunnel(tunnel)) = session.streams.get_mut(&stream_id) else {
            return;
        };
        if tunnel.connecting {
            match tunnel.finish_connect() {
                Ok(()) => {
                    session.control(stream_id, Control::Done);
                    session.grant(stream_id, session::WINDOW);
                }
                Err(error) => {
                    session.reset(stream_id, error);
                }
            }
            return;
        }
        if revents.contains(PollFlags::OUT) {
            self.write_tunnel(stream_id);
        }
        let Some(session) = &mut self.session else {
            return;
        };
        let Some(Stream::Tunnel(tunnel)) = session.streams.get_mut(&stream_id) else {
            return;
        };
        if tunnel.socket_ended
            || !revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR)
        {
            return;
        }
        let space = room(&session.mux, stream_id, link_room).min(READ_CHUNK);
        if space == 0 {
            return;
        }
        match tunnel.read(space) {
            Ok(None) => {}
            Ok(Some(bytes)) if bytes.is_empty() => {
                if let Err(error) = session.mux.close(stream_id) {
                    log!("closing stream {stream_id}: {error}");
                }
            }
            Ok(Some(bytes)) => send(
                &mut session.mux,
                stream_id,
                cthulu_guest_protocol::frame::Channel::Main,
                &bytes,
            ),
            Err(error) => {
                session.reset(stream_id, error);
            }
        }
    }

    fn write_tunnel(&mut self, stream_id: StreamId) {
        let Some(session) = &mut self.session else {
            return;
        };
        let Some(Stream::Tunnel(tunnel)) = session.streams.get_mut(&stream_id) else {
            return;
        };
        if tunnel.connecting {
            return;
        }
        let (written, failed) = tunnel.write();
        session.consumed(stream_id, written);
        if let Some(error) = failed {
            session.reset(stream_id, error);
        }
    }
}

/// Opens the link and serves on it; prints `cthulu-agent ready` once serving.
pub fn serve(channel: &crate::link::ChannelSpec, settings: Settings) -> io::Result<()> {
    let link = Link::open(channel)?;
    let server = Server::new(link, settings)?;
    // The one line the host (or a human on the serial console) waits for.
    eprintln!("cthulu-agent ready");
    server.run()
}

/// Test mode: the workspace is created if missing; machine-wide settings are refused, and so
/// are resource limits (the host's cgroups are not the agent's to change).
pub fn serve_test(
    channel: &crate::link::ChannelSpec,
    workspace: &std::path::Path,
) -> io::Result<()> {
    std::fs::create_dir_all(workspace)?;
    let workspace = std::fs::canonicalize(workspace)?;
    serve(
        channel,
        Settings {
            workspace,
            env: BTreeMap::new(),
            vm: false,
            cgroup: Err(configure::NO_CGROUPS_IN_TEST_MODE.into()),
        },
    )
}
