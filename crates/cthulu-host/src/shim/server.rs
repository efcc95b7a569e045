//! The shim program: runs one process, keeps its output, serves clients on its socket,
//! and records how the process ended. Synchronous on purpose (std threads, no runtime):
//! it is small, long-lived and must behave whatever happens to the server.
//!
//! Threads: one per output channel (pumps: read the pipe or PTY master, keep the last
//! 1 MiB, hand chunks to every attached client), one accepting connections, two per
//! attached client (commands in, frames out), one waiting for the process, and the main
//! thread that enforces the timeout and finishes up.
//!
//! Memory stays bounded: 1 MiB of kept output per channel, at most `QUEUE_LIMIT` bytes
//! queued per client (a pump waits while a client's queue is full: the process then
//! waits like on a slow terminal; a client stuck for `STALL_LIMIT` is dropped so the
//! process is never blocked for good), at most `MAX_CONNECTIONS` connections.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cthulu_core::ExitInfo;

use super::child::{self, ChildControl};
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
/// A client whose queue stays full this long is disconnected.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// After the process exits, how long to keep reading output that a background child may
/// still be writing into the same pipe.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// A process that is not detached is killed when no client attached this soon (the
/// server that started it is gone).
const FIRST_ATTACH_LIMIT: Duration = Duration::from_secs(30);
/// After the exit, how long to wait for the first client when none ever attached (the
/// starting server may not have connected yet).
const LINGER_WITHOUT_CLIENT: Duration = Duration::from_secs(5);
/// After the exit, how long to wait for attached clients to receive it.
const LINGER_FOR_DELIVERY: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 16;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the shim of the process directory `process_dir`.
pub(super) fn serve(process_dir: &Path) -> Result<(), ShimError> {
    block_hangup_signals();
    // Leave the server's session and process group: a Ctrl-C or hang-up aimed at the
    // server must not reach us. Fails only if we already lead a group, which is fine.
    let _ = rustix::process::setsid();

    let spec_path = process_dir.join(SPEC_FILE);
    let spec: ShimSpec = serde_json::from_slice(&fs_err::read(&spec_path).map_err(ShimError::Io)?)
        .map_err(|source| ShimError::Spec {
            path: spec_path,
            source,
        })?;
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

    let spawned = match child::spawn(&spec) {
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
    let pids = PidRecord {
        shim_pid: std::process::id() as i32,
        child_pid: spawned.process.id() as i32,
        child_pgid: spawned.control.pgid,
        child_start_ticks: crate::process_groups::start_ticks(spawned.process.id() as i32),
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

    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(spawned.outputs.len())),
        changed: Condvar::new(),
        control: spawned.control,
        detach: spec.detach,
        cap: spec.max_output_bytes,
        connections: AtomicUsize::new(0),
    });
    for (channel, source) in spawned.outputs {
        let shared = shared.clone();
        thread::spawn(move || pump(&shared, channel, source));
    }
    {
        let shared = shared.clone();
        thread::spawn(move || accept_loop(&shared, listener));
    }
    let (status, timed_out) = wait_for_exit(&shared, spawned.process, &spec);
    finish(&shared, status, timed_out)
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
    /// Set once the process has ended: later output is dropped.
    sealed: bool,
    /// Set once the exit is recorded on disk and queued for the clients.
    exit: Option<ExitInfo>,
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
        }
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    control: Arc<ChildControl>,
    detach: bool,
    cap: u64,
    connections: AtomicUsize,
}

impl Shared {
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

    /// Takes a chunk of output: under the cap it is kept and sent to every client, past
    /// it dropped (and the run marked truncated). Waits while a client's queue is full.
    fn output(&self, channel: Channel, data: &[u8]) {
        let mut state = self.lock();
        loop {
            if state.sealed {
                return;
            }
            let now = Instant::now();
            let mut stalled = Vec::new();
            let mut waiting = false;
            for (id, client) in state.clients.iter_mut() {
                if client.queued_bytes < QUEUE_LIMIT {
                    client.full_since = None;
                    continue;
                }
                let since = *client.full_since.get_or_insert(now);
                if now.duration_since(since) >= STALL_LIMIT {
                    stalled.push(*id);
                } else {
                    waiting = true;
                }
            }
            for id in stalled {
                self.disconnect_locked(&mut state, id);
            }
            if !waiting {
                break;
            }
            state = self.wait_timeout(state, Duration::from_secs(1));
        }
        let index = channel.index();
        let room = self.cap.saturating_sub(state.accepted[index]);
        let taken = &data[..data.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if taken.len() < data.len() {
            state.truncated = true;
        }
        if taken.is_empty() {
            return;
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
    /// is lost or doubled.
    fn attach(&self, stream: UnixStream) -> (u64, Vec<Vec<u8>>) {
        let mut state = self.lock();
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
        (id, replay)
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

/// Reads one output source until EOF (or EIO: a PTY whose last user hung up).
fn pump(shared: &Shared, channel: Channel, mut source: File) {
    let mut buffer = vec![0u8; CHUNK_LEN];
    loop {
        match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => shared.output(channel, &buffer[..read]),
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
            let (id, replay) = shared.attach(handle);
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
                // After the exit the group id may belong to someone else.
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
fn wait_for_exit(
    shared: &Shared,
    mut process: Child,
    spec: &ShimSpec,
) -> (io::Result<ExitStatus>, bool) {
    let (sender, receiver) = mpsc::channel();
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
                } else if watch_attach && now >= attach_deadline {
                    abandoned = true;
                    shared.control.kill_all();
                }
            }
        }
    }
}

/// Drains what is left of the output (briefly), seals it, records the exit on disk, tells
/// the clients and lingers until they have it.
fn finish(
    shared: &Shared,
    status: io::Result<ExitStatus>,
    timed_out: bool,
) -> Result<(), ShimError> {
    let grace_end = Instant::now() + DRAIN_GRACE;
    let mut state = shared.lock();
    while state.open_channels > 0 {
        let left = grace_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        state = shared.wait_timeout(state, left);
    }
    // From here on the pumps drop whatever a background child still writes.
    state.sealed = true;
    let (exit_code, signal) = match &status {
        Ok(status) => (status.code(), status.signal()),
        Err(_) => (None, None),
    };
    let exit = ExitInfo {
        exit_code,
        signal,
        timed_out,
        truncated: state.truncated,
        oom_killed: false,
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
    let first_client_deadline = Instant::now() + LINGER_WITHOUT_CLIENT;
    let delivery_deadline = first_client_deadline + LINGER_FOR_DELIVERY;
    loop {
        let now = Instant::now();
        if state.attached_ever {
            if state.clients.values().all(|client| client.exit_sent) || now >= delivery_deadline {
                break;
            }
        } else if now >= first_client_deadline {
            // Nobody came for it; the exit is on disk for whoever comes later.
            break;
        }
        state = shared.wait_timeout(state, Duration::from_millis(100));
    }
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
}
