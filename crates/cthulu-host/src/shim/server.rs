//! The shim program: runs one process, keeps its output, serves clients on its socket,
//! and records how the process ended. Synchronous on purpose (std threads, no runtime):
//! it is small, long-lived and must behave whatever happens to the server.
//!
//! Threads: one per output channel (pumps: read the pipe or PTY master, keep the last
//! 1 MiB, hand chunks to every attached client), one accepting connections, two per
//! attached client (commands in, frames out), one waiting for the process, and the main
//! thread that enforces the timeout and finishes up.
//!
//! No output is lost on the way to a client:
//! - The pumps read nothing until the first client (the server that started the process)
//!   has attached, so that client gets everything live; the process meanwhile waits on a
//!   full pipe. Only when no client came within `FIRST_ATTACH_LIMIT` (a detached process
//!   whose server went away) do they read without one, into the ring alone.
//! - A pump waits while a client's queue is full: the process then waits like on a slow
//!   terminal. A client is cut off only when it has been stuck for `STALL_LIMIT` while
//!   another client keeps up (so one dead client cannot freeze the others); a client
//!   that is merely slow, or alone, is waited for.
//! - After the process exits, the pumps read everything it wrote before (and what
//!   background children write within `DRAIN_GRACE`), however long the clients take.
//! - The shim stays until every attached client has received the exit; a client that
//!   connects once it has stopped taking clients is closed without a word and replays the
//!   recorded files instead (they are complete by then).
//!
//! The ring (the last 1 MiB per channel) only serves clients that attach later.
//!
//! Memory stays bounded: 1 MiB of kept output per channel, at most `QUEUE_LIMIT` bytes
//! queued per client, at most `MAX_CONNECTIONS` connections.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cthulu_core::ExitInfo;
use rustix::event::{PollFd, PollFlags, Timespec};

use super::child::{ChildControl, Ended, Launcher, Process};
use super::protocol::{
    self, encode_output, Channel, ClientFrame, Role, ShimFrame, CHUNK_LEN, PROTOCOL_VERSION,
};
use super::records::{
    output_file, ExitRecord, Handshake, PidRecord, ShimSpec, EXIT_FILE, PID_FILE, SOCKET_FILE,
    SPEC_FILE,
};
use super::ShimError;
use crate::state::write_atomic;

/// Output kept per channel for clients that attach later.
pub(crate) const RING_BYTES: usize = 1 << 20;
/// Bytes queued for one client before the pumps wait for it.
const QUEUE_LIMIT: usize = 1 << 20;
/// A client whose queue stays full this long, while another client keeps up, is
/// disconnected.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// After the process exits, how long background children that share its output may go on
/// writing before the pumps only read what is already waiting.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// Once draining, a pump stops when its source has had nothing for this long...
const DRAIN_QUIET: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 20_000_000,
};
/// ...or when it has read this much more than was waiting when the drain began (a
/// background child that never stops writing).
const DRAIN_EXTRA_BYTES: u64 = 1 << 20;
/// Until the first client attached, or this long after the start, the pumps do not read.
/// A process that is not detached is killed then if no client came (the server that
/// started it is gone); a detached one goes on, its output kept in the ring alone.
const FIRST_ATTACH_LIMIT: Duration = Duration::from_secs(30);
/// After the exit, how long to wait for the first client when none ever attached (the
/// starting server may not have connected yet).
const LINGER_WITHOUT_CLIENT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the shim of the process directory `process_dir`.
pub(super) fn serve(process_dir: &Path, launcher: &dyn Launcher) -> Result<(), ShimError> {
    let start = Instant::now();
    block_hangup_signals();
    // Leave the server's session and process group: a Ctrl-C or hang-up aimed at the
    // server must not reach us. Fails only if we already lead a group, which is fine.
    let _ = rustix::process::setsid();

    let spec_path = process_dir.join(SPEC_FILE);
    let spec: ShimSpec = serde_json::from_slice(&fs_err::read(&spec_path).map_err(ShimError::Io)?)
        .map_err(|source| ShimError::Spec {
            path: spec_path.clone(),
            source,
        })?;
    // The spec holds the process's environment, credentials included: it is not left on
    // disk once read.
    let _ = std::fs::remove_file(&spec_path);
    // Working in the process directory keeps the socket path short (sun_path holds 108
    // bytes) and the files below relative.
    std::env::set_current_dir(process_dir).map_err(|source| ShimError::Chdir {
        path: process_dir.to_owned(),
        source,
    })?;
    let _ = std::fs::remove_file(SOCKET_FILE);
    let listener = UnixListener::bind(SOCKET_FILE).map_err(|source| ShimError::Bind {
        path: process_dir.join(SOCKET_FILE),
        source,
    })?;

    let spawned = match launcher.spawn(&spec) {
        Ok(spawned) => spawned,
        Err(error) => {
            handshake(&Handshake::Failed {
                failure: error.failure,
                message: error.message.clone(),
            });
            let _ = std::fs::remove_file(SOCKET_FILE);
            return Err(ShimError::Spawn {
                message: error.message,
            });
        }
    };
    let process: Arc<dyn Process> = Arc::from(spawned.process);
    let pids = PidRecord {
        shim_pid: std::process::id() as i32,
        child_pid: process.pid(),
        child_pgid: process.pid(),
        child_start_ticks: process.start_ticks(),
    };
    write_atomic(
        Path::new(PID_FILE),
        &serde_json::to_vec(&pids).expect("pid record serializes"),
    )
    .map_err(ShimError::Io)?;
    handshake(&Handshake::Started {
        shim_pid: pids.shim_pid,
        child_pid: pids.child_pid,
    });

    let shared = Arc::new(Shared::new(
        Arc::new(ChildControl::new(process, spawned.stdin)),
        spec.detach,
        spec.max_output_bytes,
        start + FIRST_ATTACH_LIMIT,
        spawned.outputs.len(),
    ));
    // Closing `drain_signal` tells the pumps the process has ended.
    let (drain_signal, drain_watch) = UnixStream::pair().map_err(ShimError::Io)?;
    for (channel, source) in spawned.outputs {
        let shared = shared.clone();
        let drain_watch = drain_watch.try_clone().map_err(ShimError::Io)?;
        thread::spawn(move || pump(&shared, channel, source, drain_watch));
    }
    drop(drain_watch);
    {
        let shared = shared.clone();
        thread::spawn(move || accept_loop(&shared, listener));
    }
    let (status, timed_out) = wait_for_exit(&shared, &spec);
    finish(&shared, status, timed_out, drain_signal)
}

/// Blocks SIGHUP and SIGPIPE in every thread of the shim (threads inherit the mask): the
/// shim must survive the server's terminal going away, and a client vanishing must be an
/// EPIPE, not death. The process gets a clean mask: std resets it before exec.
fn block_hangup_signals() {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t; called before any
    // other thread exists.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Tells the starting server how the start went, then points stdout at /dev/null: the
/// server stops reading it, and may be gone.
fn handshake(message: &Handshake) {
    let line = serde_json::to_string(message).expect("handshake serializes");
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    drop(stdout);
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// Keeps the last `capacity` bytes written to it.
struct Ring {
    data: VecDeque<u8>,
    capacity: usize,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            data: VecDeque::new(),
            capacity,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (self.data.len() + bytes.len()).saturating_sub(self.capacity);
        self.data.drain(..overflow);
        self.data.extend(bytes);
    }

    fn contents(&self) -> Vec<u8> {
        self.data.iter().copied().collect()
    }
}

struct Client {
    /// Encoded frames, and whether each is the exit frame.
    queue: VecDeque<(Vec<u8>, bool)>,
    queued_bytes: usize,
    full_since: Option<Instant>,
    exit_sent: bool,
    /// To cut the connection from another thread.
    stream: UnixStream,
}

impl Client {
    fn push(&mut self, frame: Vec<u8>, is_exit: bool) {
        self.queued_bytes += frame.len();
        self.queue.push_back((frame, is_exit));
    }
}

struct State {
    rings: [Ring; 2],
    /// Bytes of each channel taken under the cap.
    accepted: [u64; 2],
    truncated: bool,
    open_channels: usize,
    clients: BTreeMap<u64, Client>,
    next_client_id: u64,
    attached_ever: bool,
    /// Set once the process has ended and its output is complete.
    sealed: bool,
    /// Set once the exit is recorded on disk and queued for the clients.
    exit: Option<ExitInfo>,
    /// Set when the shim is about to go: no more clients are registered.
    closing: bool,
}

impl State {
    fn new(open_channels: usize) -> State {
        State {
            rings: [Ring::new(RING_BYTES), Ring::new(RING_BYTES)],
            accepted: [0, 0],
            truncated: false,
            open_channels,
            clients: BTreeMap::new(),
            next_client_id: 0,
            attached_ever: false,
            sealed: false,
            exit: None,
            closing: false,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    control: Arc<ChildControl>,
    detach: bool,
    cap: u64,
    /// When the pumps start reading even though no client attached.
    first_client_deadline: Instant,
    connections: AtomicUsize,
}

impl Shared {
    fn new(
        control: Arc<ChildControl>,
        detach: bool,
        cap: u64,
        first_client_deadline: Instant,
        open_channels: usize,
    ) -> Shared {
        Shared {
            state: Mutex::new(State::new(open_channels)),
            changed: Condvar::new(),
            control,
            detach,
            cap,
            first_client_deadline,
            connections: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_timeout<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(state, timeout) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the first client attached, or [`FIRST_ATTACH_LIMIT`] after the start.
    fn wait_for_first_client(&self) {
        let mut state = self.lock();
        while !state.attached_ever {
            let left = self
                .first_client_deadline
                .saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.wait_timeout(state, left);
        }
    }

    /// Takes a chunk of output: under the cap it is kept and sent to every client, past
    /// it dropped (and the run marked truncated) at once. Waits while a client's queue is
    /// full; a client stuck for [`STALL_LIMIT`] is cut off only while another one keeps
    /// up.
    fn output(&self, channel: Channel, data: &[u8]) {
        let mut state = self.lock();
        let index = channel.index();
        // Only this channel's pump counts its bytes: the room cannot change meanwhile.
        let room = self.cap.saturating_sub(state.accepted[index]);
        let taken = &data[..data.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if taken.len() < data.len() {
            state.truncated = true;
        }
        if taken.is_empty() {
            return;
        }
        loop {
            let now = Instant::now();
            let mut stalled = Vec::new();
            let mut full = false;
            let mut keeping_up = false;
            for (id, client) in state.clients.iter_mut() {
                if client.queued_bytes < QUEUE_LIMIT {
                    client.full_since = None;
                    keeping_up = true;
                    continue;
                }
                full = true;
                let since = *client.full_since.get_or_insert(now);
                if now.duration_since(since) >= STALL_LIMIT {
                    stalled.push(*id);
                }
            }
            if !full {
                break;
            }
            if keeping_up && !stalled.is_empty() {
                for id in stalled {
                    self.disconnect_locked(&mut state, id);
                }
                continue;
            }
            state = self.wait_timeout(state, Duration::from_secs(1));
        }
        state.accepted[index] += taken.len() as u64;
        state.rings[index].push(taken);
        let frame = encode_output(channel, taken);
        for client in state.clients.values_mut() {
            client.push(frame.clone(), false);
        }
        self.changed.notify_all();
    }

    fn channel_closed(&self) {
        let mut state = self.lock();
        state.open_channels = state.open_channels.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Registers an attach client: returns its id and the replay (kept output, and the
    /// exit if the process has ended), taken atomically with the registration so no chunk
    /// is lost or doubled. `None` once the shim is closing: the client is to replay the
    /// recorded files instead, which are complete by then.
    fn attach(&self, stream: UnixStream) -> Option<(u64, Vec<Vec<u8>>)> {
        let mut state = self.lock();
        if state.closing {
            return None;
        }
        let id = state.next_client_id;
        state.next_client_id += 1;
        state.attached_ever = true;
        let mut replay = Vec::new();
        for channel in [Channel::Stdout, Channel::Stderr] {
            let kept = state.rings[channel.index()].contents();
            replay.extend(
                kept.chunks(CHUNK_LEN)
                    .map(|chunk| encode_output(channel, chunk)),
            );
        }
        let mut client = Client {
            queue: VecDeque::new(),
            queued_bytes: 0,
            full_since: None,
            exit_sent: false,
            stream,
        };
        if let Some(exit) = state.exit {
            client.push(ShimFrame::Exit(exit).encode(), true);
        }
        state.clients.insert(id, client);
        self.changed.notify_all();
        Some((id, replay))
    }

    fn disconnect(&self, id: u64) {
        let mut state = self.lock();
        self.disconnect_locked(&mut state, id);
    }

    /// Drops a client. When the last client of a process that was not detached goes
    /// before the process ended, the process goes too.
    fn disconnect_locked(&self, state: &mut State, id: u64) {
        if let Some(client) = state.clients.remove(&id) {
            let _ = client.stream.shutdown(std::net::Shutdown::Both);
            if !self.detach && state.clients.is_empty() && !state.sealed {
                self.control.kill_all();
            }
        }
        self.changed.notify_all();
    }
}

/// What a pump's source has for it.
enum Ready {
    /// Data, an end of file or an error: `read` tells which.
    Data,
    /// The drain began (the process ended).
    DrainBegins,
    /// Draining, and nothing came for [`DRAIN_QUIET`].
    Quiet,
}

fn wait_ready(source: &File, drain_watch: &UnixStream, draining: bool) -> io::Result<Ready> {
    loop {
        let mut fds = [
            PollFd::new(source, PollFlags::IN),
            PollFd::new(drain_watch, PollFlags::IN),
        ];
        let (fds, timeout) = if draining {
            (&mut fds[..1], Some(&DRAIN_QUIET))
        } else {
            (&mut fds[..], None)
        };
        match rustix::event::poll(fds, timeout) {
            Ok(0) => return Ok(Ready::Quiet),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
        // The drain first: a background child that never stops writing must not keep
        // the pump from noticing it.
        if !draining && !fds[1].revents().is_empty() {
            return Ok(Ready::DrainBegins);
        }
        return Ok(Ready::Data);
    }
}

/// Reads one output source, once the first client is there, until EOF (or EIO: a PTY
/// whose last user hung up), or, once `drain_watch` says the process ended, until it has
/// read what was waiting then and the source falls quiet.
fn pump(shared: &Shared, channel: Channel, source: File, drain_watch: UnixStream) {
    shared.wait_for_first_client();
    let mut buffer = vec![0u8; CHUNK_LEN];
    // Set once draining: how much more to read at most.
    let mut budget: Option<u64> = None;
    loop {
        match wait_ready(&source, &drain_watch, budget.is_some()) {
            Ok(Ready::Data) => {}
            Ok(Ready::DrainBegins) => {
                // Everything the process wrote before it ended is in the source by now
                // (this pump is its only reader): what is waiting is what is owed.
                let waiting = rustix::io::ioctl_fionread(&source).unwrap_or(0);
                budget = Some(waiting.saturating_add(DRAIN_EXTRA_BYTES));
                continue;
            }
            Ok(Ready::Quiet) | Err(_) => break,
        }
        match (&source).read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                shared.output(channel, &buffer[..read]);
                if let Some(left) = budget.as_mut() {
                    *left = left.saturating_sub(read as u64);
                    if *left == 0 {
                        break;
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    shared.channel_closed();
}

fn accept_loop(shared: &Arc<Shared>, listener: UnixListener) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let _ = (&stream).write_all(&ShimFrame::Refused("too many clients".into()).encode());
            continue;
        }
        let shared = shared.clone();
        thread::spawn(move || {
            serve_client(&shared, stream);
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn serve_client(shared: &Arc<Shared>, stream: UnixStream) {
    let mut reader = stream;
    let _ = reader.set_read_timeout(Some(HELLO_TIMEOUT));
    let role = match protocol::read_frame(&mut reader) {
        Ok(Some((kind, payload))) => match ClientFrame::decode(kind, &payload) {
            Ok(ClientFrame::Hello { version, role }) if version == PROTOCOL_VERSION => role,
            Ok(ClientFrame::Hello { version, .. }) => {
                let reason =
                    format!("shim speaks protocol version {PROTOCOL_VERSION}, client {version}");
                let _ = reader.write_all(&ShimFrame::Refused(reason).encode());
                return;
            }
            _ => return,
        },
        _ => return,
    };
    let _ = reader.set_read_timeout(None);
    let client_id = match role {
        Role::Control => None,
        Role::Attach => {
            let (Ok(writer), Ok(handle)) = (reader.try_clone(), reader.try_clone()) else {
                return;
            };
            // Closing: dropping the connection sends the client to the recorded files.
            let Some((id, replay)) = shared.attach(handle) else {
                return;
            };
            let shared = shared.clone();
            thread::spawn(move || write_loop(&shared, id, writer, replay));
            Some(id)
        }
    };
    while let Ok(Some((kind, payload))) = protocol::read_frame(&mut reader) {
        match ClientFrame::decode(kind, &payload) {
            Ok(ClientFrame::Stdin(data)) => shared.control.write_stdin(&data),
            Ok(ClientFrame::CloseStdin) => shared.control.close_stdin(),
            Ok(ClientFrame::Signal(number)) => {
                // Until the output is complete, what is left of the group may still be
                // writing (the control checks the group id is still ours).
                if !shared.lock().sealed {
                    shared.control.signal(number);
                }
            }
            Ok(ClientFrame::Resize { cols, rows }) => shared.control.resize(cols, rows),
            Ok(ClientFrame::Hello { .. }) | Err(_) => break,
        }
    }
    if let Some(id) = client_id {
        shared.disconnect(id);
    }
}

/// Sends one client its replay, then its queue, until the exit frame is out.
fn write_loop(shared: &Shared, id: u64, mut stream: UnixStream, replay: Vec<Vec<u8>>) {
    for frame in replay {
        if stream.write_all(&frame).is_err() {
            shared.disconnect(id);
            return;
        }
    }
    loop {
        let (frame, is_exit) = {
            let mut state = shared.lock();
            loop {
                let Some(client) = state.clients.get_mut(&id) else {
                    return;
                };
                if let Some((frame, is_exit)) = client.queue.pop_front() {
                    client.queued_bytes -= frame.len();
                    shared.changed.notify_all();
                    break (frame, is_exit);
                }
                state = shared.wait(state);
            }
        };
        if stream.write_all(&frame).is_err() {
            shared.disconnect(id);
            return;
        }
        if is_exit {
            if let Some(client) = shared.lock().clients.get_mut(&id) {
                client.exit_sent = true;
            }
            shared.changed.notify_all();
            return;
        }
    }
}

/// Waits for the process, killing its group at the timeout, or when it was not detached
/// and no client ever came for it.
fn wait_for_exit(shared: &Shared, spec: &ShimSpec) -> (io::Result<Ended>, bool) {
    let (sender, receiver) = mpsc::channel();
    let process = shared.control.process.clone();
    thread::spawn(move || {
        let _ = sender.send(process.wait());
    });
    let start = Instant::now();
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = start
        .checked_add(Duration::from_millis(spec.timeout_ms))
        .unwrap_or(start + far);
    let attach_deadline = start + FIRST_ATTACH_LIMIT;
    let mut timed_out = false;
    let mut abandoned = false;
    loop {
        let now = Instant::now();
        let mut wake = if timed_out { now + far } else { deadline };
        let watch_attach = !spec.detach && !abandoned && !shared.lock().attached_ever;
        if watch_attach {
            wake = wake.min(attach_deadline);
        }
        match receiver.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(status) => return (status, timed_out),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return (Err(io::Error::other("the waiting thread died")), timed_out)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if !timed_out && now >= deadline {
                    timed_out = true;
                    shared.control.kill_all();
                } else if watch_attach
                    && now >= attach_deadline
                    // The client may have come while this thread slept: only a process
                    // still without one is abandoned.
                    && !shared.lock().attached_ever
                {
                    abandoned = true;
                    shared.control.kill_all();
                }
            }
        }
    }
}

/// Lets the pumps read the rest of the output once the process has ended: everything
/// until they reach the end of their source within [`DRAIN_GRACE`] (background children
/// may share it), then what is waiting; however long the clients take to receive it.
fn drain(shared: &Shared, drain_signal: UnixStream) {
    shared.wait_for_first_client();
    let grace_end = Instant::now() + DRAIN_GRACE;
    let mut state = shared.lock();
    while state.open_channels > 0 {
        let left = grace_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        state = shared.wait_timeout(state, left);
    }
    drop(drain_signal);
    while state.open_channels > 0 {
        state = shared.wait(state);
    }
    state.sealed = true;
}

/// Drains the output, records the exit on disk, tells the clients and lingers until they
/// have it.
fn finish(
    shared: &Shared,
    status: io::Result<Ended>,
    timed_out: bool,
    drain_signal: UnixStream,
) -> Result<(), ShimError> {
    drain(shared, drain_signal);
    let state = shared.lock();
    let ended = status.unwrap_or(Ended {
        exit_code: None,
        signal: None,
        oom_killed: false,
    });
    let exit = ExitInfo {
        exit_code: ended.exit_code,
        signal: ended.signal,
        timed_out,
        truncated: state.truncated,
        oom_killed: ended.oom_killed,
    };
    let kept = [state.rings[0].contents(), state.rings[1].contents()];
    drop(state);

    // On disk before any client hears of the exit, so whoever learns of it finds it
    // recorded. exit.json last: its presence means the output files are complete.
    let record = ExitRecord {
        exit,
        finished_at_ms: cthulu_types::now_ms(),
    };
    let mut write_result = Ok(());
    for (channel, bytes) in [Channel::Stdout, Channel::Stderr].into_iter().zip(&kept) {
        write_result = write_result.and(write_atomic(Path::new(output_file(channel)), bytes));
    }
    write_result = write_result.and(write_atomic(
        Path::new(EXIT_FILE),
        &serde_json::to_vec(&record).expect("exit record serializes"),
    ));

    let mut state = shared.lock();
    // Clients attaching from now on get the exit queued by `attach` itself.
    state.exit = Some(exit);
    let frame = ShimFrame::Exit(exit).encode();
    for client in state.clients.values_mut() {
        client.push(frame.clone(), true);
    }
    shared.changed.notify_all();
    // Every attached client gets the exit, however slowly it reads (it is gone when its
    // connection is: the server died or dropped the stream).
    let first_client_deadline = Instant::now() + LINGER_WITHOUT_CLIENT;
    loop {
        if state.attached_ever {
            if state.clients.values().all(|client| client.exit_sent) {
                break;
            }
        } else if Instant::now() >= first_client_deadline {
            // Nobody came for it; the exit is on disk for whoever comes later.
            break;
        }
        state = shared.wait_timeout(state, Duration::from_millis(100));
    }
    // Decided under the same lock as the check above: a client that connects from now
    // on is closed unregistered and replays the recorded files, never a part of them.
    state.closing = true;
    drop(state);
    let _ = std::fs::remove_file(SOCKET_FILE);
    write_result.map_err(ShimError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_bytes() {
        let mut ring = Ring::new(4);
        ring.push(b"ab");
        ring.push(b"cde");
        assert_eq!(ring.contents(), b"bcde");
        ring.push(b"0123456789");
        assert_eq!(ring.contents(), b"6789");
        ring.push(b"");
        assert_eq!(ring.contents(), b"6789");
    }

    /// A pump on a source that a "process" fills until everything on the way to a client
    /// that reads nothing is full; then the process ends and the drain runs while the
    /// client still reads nothing, for longer than the grace. The client, reading at
    /// last, gets every byte. `background`: a background child keeps the source open
    /// (and silent), so the pump never sees its end.
    fn drain_with_a_stalled_client(background: bool) {
        let shared = Arc::new(Shared::new(
            Arc::new(ChildControl::nothing()),
            true,
            u64::MAX,
            Instant::now(),
            1,
        ));
        let (mut client, shim_end) = UnixStream::pair().unwrap();
        let (id, replay) = shared.attach(shim_end.try_clone().unwrap()).unwrap();
        {
            let shared = shared.clone();
            thread::spawn(move || write_loop(&shared, id, shim_end, replay));
        }
        // A socket pair stands in for the pipe: the same poll, read and FIONREAD.
        let (source, mut sink) = UnixStream::pair().unwrap();
        let source = File::from(std::os::fd::OwnedFd::from(source));
        let (drain_signal, drain_watch) = UnixStream::pair().unwrap();
        {
            let shared = shared.clone();
            thread::spawn(move || pump(&shared, Channel::Stdout, source, drain_watch));
        }

        sink.set_nonblocking(true).unwrap();
        let mut written = 0usize;
        let mut blocked = 0;
        while blocked < 10 {
            match sink.write(&[7u8; CHUNK_LEN]) {
                Ok(count) => {
                    written += count;
                    blocked = 0;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    blocked += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert!(
            written > QUEUE_LIMIT,
            "the queue filled up ({written} bytes)"
        );
        // The process ends; a background child may keep its output open.
        let holder = background.then(|| sink.try_clone().unwrap());
        drop(sink);

        let drained = {
            let shared = shared.clone();
            thread::spawn(move || drain(&shared, drain_signal))
        };
        thread::sleep(DRAIN_GRACE * 3);
        assert!(!drained.is_finished(), "the drain waits for the client");

        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut received = 0usize;
        while received < written {
            let (kind, payload) = protocol::read_frame(&mut client).unwrap().unwrap();
            match ShimFrame::decode(kind, &payload).unwrap() {
                ShimFrame::Output { data, .. } => received += data.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(received, written);
        drained.join().unwrap();
        let state = shared.lock();
        assert!(state.sealed && state.open_channels == 0);
        assert_eq!(state.accepted[0], written as u64);
        drop(state);
        drop(holder);
    }

    #[test]
    fn the_drain_waits_for_a_stalled_client() {
        drain_with_a_stalled_client(false);
    }

    #[test]
    fn the_drain_reads_what_was_waiting_despite_a_background_child() {
        drain_with_a_stalled_client(true);
    }
}
