//! A small blocking host for the tests: it starts the agent binary in test mode on a Unix
//! socket and talks to it through the protocol crate's Mux and Decoder, with one thread
//! reading and one writing (so a test that does not read never blocks the agent's writes
//! for long, unless it asks to: [`Host::pause_reading`]).

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cthulu_guest_protocol::frame::{Channel, Decoder, FrameBody, StreamId};
use cthulu_guest_protocol::message::{
    Command as Cmd, Control, DirEntry, ErrorCode, ErrorReply, ExecRequest, ExitStatus, Hello,
    ProcessEntry, Request, TtySize,
};
use cthulu_guest_protocol::mux::{Event, Mux, Role};

pub const WAIT: Duration = Duration::from_secs(20);

/// The agent under test, in test mode, with its own workspace.
pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub workspace: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let workspace = dir.path().join("workspace");
        let child = Command::new(env!("CARGO_BIN_EXE_cthulu-agent"))
            .arg("--listen-unix")
            .arg(&socket)
            .arg("--workspace")
            .arg(&workspace)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let workspace = workspace_path(&workspace);
        Agent {
            child,
            dir,
            socket,
            workspace,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects and completes the handshake.
    pub fn connect(&self) -> Host {
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match UnixStream::connect(&self.socket) {
                Ok(stream) => break stream,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("connecting to the agent: {error}"),
            }
        };
        let host = Host::new(stream);
        host.wait_ready();
        host
    }

    /// The agent's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.workspace.join(relative)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace as the agent sees it (canonical), once it exists.
fn workspace_path(workspace: &Path) -> PathBuf {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(path) = std::fs::canonicalize(workspace) {
            return path;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not create its workspace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct State {
    mux: Mux,
    ready: bool,
    events: BTreeMap<StreamId, VecDeque<Event>>,
    ended: bool,
    violation: Option<String>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    paused: AtomicBool,
    writer: Mutex<UnixStream>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection to the agent.
pub struct Host {
    shared: Arc<Shared>,
    stream: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

/// What an exec gave back.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<ExitStatus>,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn exit(&self) -> ExitStatus {
        self.exit.expect("an exit status")
    }
}

pub fn exec_request(process_id: &str, command: Cmd) -> ExecRequest {
    ExecRequest {
        process_id: process_id.to_owned(),
        command,
        env: BTreeMap::new(),
        cwd: None,
        stdin: false,
        timeout_ms: None,
        output_cap: None,
        tty: None,
        detached: false,
    }
}

pub fn shell(process_id: &str, script: &str) -> ExecRequest {
    exec_request(process_id, Cmd::Shell(script.to_owned()))
}

pub fn argv(process_id: &str, argv: &[&str]) -> ExecRequest {
    exec_request(
        process_id,
        Cmd::Argv(argv.iter().map(|arg| arg.to_string()).collect()),
    )
}

pub fn tty(rows: u16, cols: u16) -> Option<TtySize> {
    Some(TtySize { rows, cols })
}

impl Host {
    fn new(stream: UnixStream) -> Host {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mux: Mux::new(Role::Host, Hello::new(Vec::new())),
                ready: false,
                events: BTreeMap::new(),
                ended: false,
                violation: None,
                stop: false,
            }),
            changed: Condvar::new(),
            paused: AtomicBool::new(false),
            writer: Mutex::new(stream.try_clone().unwrap()),
        });
        let reader = {
            let shared = shared.clone();
            let mut stream = stream.try_clone().unwrap();
            std::thread::spawn(move || read_loop(&shared, &mut stream))
        };
        let writer = {
            let shared = shared.clone();
            std::thread::spawn(move || write_loop(&shared))
        };
        Host {
            shared,
            stream,
            threads: vec![reader, writer],
        }
    }

    fn with<T>(&self, work: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.shared.lock();
        let result = work(&mut state);
        self.shared.changed.notify_all();
        result
    }

    fn wait_ready(&self) {
        let mut state = self.shared.lock();
        let deadline = Instant::now() + WAIT;
        while !state.ready {
            assert!(
                !state.ended,
                "the agent closed the connection before its hello"
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no hello from the agent");
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Starts a new session on this connection: a new mux and a new hello.
    pub fn rehello(&self) {
        self.with(|state| {
            state.mux = Mux::new(Role::Host, Hello::new(Vec::new()));
            state.ready = false;
            state.events.clear();
            state.violation = None;
        });
        self.wait_ready();
    }

    /// Bytes written as they are, around the mux (between whole frames of the writer).
    pub fn write_raw(&self, bytes: &[u8]) {
        self.shared.writer.lock().unwrap().write_all(bytes).unwrap();
    }

    /// Stops (or resumes) reading from the agent: its writes back up.
    pub fn pause_reading(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    pub fn open(&self, request: Request) -> StreamId {
        self.with(|state| state.mux.open(request).unwrap())
    }

    pub fn grant(&self, stream_id: StreamId, increment: u32) {
        self.with(|state| {
            let _ = state.mux.grant(stream_id, increment);
        });
    }

    pub fn send(&self, stream_id: StreamId, bytes: &[u8]) {
        // A stream the agent already reset (a refused request) takes nothing: the reset
        // is what the test reads next.
        self.with(|state| {
            let _ = state.mux.send_data(stream_id, Channel::Main, bytes);
        });
    }

    pub fn control(&self, stream_id: StreamId, control: Control) {
        self.with(|state| {
            let _ = state.mux.send_control(stream_id, control);
        });
    }

    pub fn close(&self, stream_id: StreamId) {
        self.with(|state| {
            let _ = state.mux.close(stream_id);
        });
    }

    pub fn reset(&self, stream_id: StreamId) {
        self.with(|state| {
            let _ = state.mux.reset(
                stream_id,
                ErrorReply {
                    code: ErrorCode::Cancelled,
                    message: "test".into(),
                },
            );
        });
    }

    /// The next event of a stream, waiting up to `timeout`.
    pub fn next_within(&self, stream_id: StreamId, timeout: Duration) -> Option<Event> {
        let mut state = self.shared.lock();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = state
                .events
                .get_mut(&stream_id)
                .and_then(|events| events.pop_front())
            {
                return Some(event);
            }
            if let Some(violation) = &state.violation {
                panic!("protocol violation by the agent: {violation}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || state.ended {
                return None;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    pub fn next(&self, stream_id: StreamId) -> Event {
        self.next_within(stream_id, WAIT)
            .unwrap_or_else(|| panic!("no event on stream {stream_id} within {WAIT:?}"))
    }

    /// Waits for the stream's first event: `Ok` on a control message, `Err` on a reset.
    pub fn answer(&self, stream_id: StreamId) -> Result<Control, ErrorReply> {
        loop {
            match self.next(stream_id) {
                Event::Control { control, .. } => return Ok(control),
                Event::Reset { error, .. } => return Err(error),
                Event::Credit { .. } => {}
                other => panic!("unexpected {other:?} on stream {stream_id}"),
            }
        }
    }

    /// Waits for the agent's close, then closes our side.
    pub fn expect_closed(&self, stream_id: StreamId) {
        loop {
            match self.next(stream_id) {
                Event::Closed { .. } => break,
                Event::Credit { .. } => {}
                other => panic!("expected a close on {stream_id}, got {other:?}"),
            }
        }
        self.close(stream_id);
    }

    /// A request answered by one control message then a close.
    pub fn request(&self, request: Request) -> Result<Control, ErrorReply> {
        let stream_id = self.open(request);
        let control = self.answer(stream_id)?;
        self.expect_closed(stream_id);
        Ok(control)
    }

    /// Starts an exec: `Ok(stream)` once the agent says it started.
    pub fn start(&self, request: ExecRequest) -> Result<StreamId, ErrorReply> {
        let stream_id = self.open(Request::Exec(request));
        match self.answer(stream_id)? {
            Control::Started => Ok(stream_id),
            other => panic!("expected started, got {other:?}"),
        }
    }

    /// Attaches to a process: the stream once the agent says it started following it.
    pub fn attach(&self, process_id: &str) -> StreamId {
        let stream_id = self.open(Request::Attach {
            process_id: process_id.into(),
        });
        match self.answer(stream_id) {
            Ok(Control::Started) => stream_id,
            other => panic!("expected started, got {other:?}"),
        }
    }

    /// Collects a stream's output until its exit and close, granting credit as it reads.
    pub fn collect(&self, stream_id: StreamId) -> Result<Output, ErrorReply> {
        self.grant(stream_id, 1 << 20);
        let mut output = Output::default();
        loop {
            match self.next(stream_id) {
                Event::Data { channel, bytes, .. } => {
                    self.grant(stream_id, bytes.len() as u32);
                    match channel {
                        Channel::Main => output.stdout.extend_from_slice(&bytes),
                        Channel::Stderr => output.stderr.extend_from_slice(&bytes),
                    }
                }
                Event::Control {
                    control: Control::Exit(status),
                    ..
                } => output.exit = Some(status),
                Event::Control { .. } | Event::Credit { .. } => {}
                Event::Closed { .. } => {
                    self.close(stream_id);
                    return Ok(output);
                }
                Event::Reset { error, .. } => return Err(error),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Reads until `needle` appeared in the main channel; returns what came.
    pub fn read_until(&self, stream_id: StreamId, needle: &str) -> String {
        let mut seen = Vec::new();
        self.grant(stream_id, 1 << 20);
        while !String::from_utf8_lossy(&seen).contains(needle) {
            match self.next(stream_id) {
                Event::Data { bytes, .. } => {
                    self.grant(stream_id, bytes.len() as u32);
                    seen.extend_from_slice(&bytes);
                }
                Event::Control { .. } | Event::Credit { .. } => {}
                other => panic!(
                    "waiting for {needle:?} (got {:?}): {other:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    pub fn exec(&self, request: ExecRequest) -> Result<Output, ErrorReply> {
        let stream_id = self.start(request)?;
        self.collect(stream_id)
    }

    pub fn sh(&self, script: &str) -> Output {
        self.exec(shell("sh", script)).unwrap()
    }

    pub fn put(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), ErrorReply> {
        self.put_with(path, bytes, mode, false)
    }

    pub fn put_with(
        &self,
        path: &str,
        bytes: &[u8],
        mode: u32,
        create_parents: bool,
    ) -> Result<(), ErrorReply> {
        let stream_id = self.open(Request::FilePut {
            path: path.to_owned(),
            mode,
            size: bytes.len() as u64,
            create_parents,
        });
        self.send(stream_id, bytes);
        self.close(stream_id);
        match self.answer(stream_id)? {
            Control::Done => {}
            other => panic!("expected done, got {other:?}"),
        }
        loop {
            match self.next(stream_id) {
                Event::Closed { .. } => return Ok(()),
                Event::Credit { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub fn get(&self, path: &str) -> Result<(u32, Vec<u8>), ErrorReply> {
        let stream_id = self.open(Request::FileGet {
            path: path.to_owned(),
        });
        let (mode, size) = match self.answer(stream_id)? {
            Control::FileInfo { mode, size } => (mode, size),
            other => panic!("expected file info, got {other:?}"),
        };
        self.grant(stream_id, 1 << 20);
        let mut bytes = Vec::new();
        loop {
            match self.next(stream_id) {
                Event::Data { bytes: data, .. } => {
                    self.grant(stream_id, data.len() as u32);
                    bytes.extend_from_slice(&data);
                }
                Event::Closed { .. } => break,
                Event::Reset { error, .. } => return Err(error),
                other => panic!("unexpected {other:?}"),
            }
        }
        self.close(stream_id);
        assert_eq!(bytes.len() as u64, size);
        Ok((mode, bytes))
    }

    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>, ErrorReply> {
        let stream_id = self.open(Request::DirList {
            path: path.to_owned(),
        });
        let mut entries = Vec::new();
        loop {
            match self.next(stream_id) {
                Event::Control {
                    control: Control::DirEntries { entries: chunk },
                    ..
                } => entries.extend(chunk),
                Event::Closed { .. } => break,
                Event::Reset { error, .. } => return Err(error),
                other => panic!("unexpected {other:?}"),
            }
        }
        self.close(stream_id);
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub fn remove(&self, path: &str, recursive: bool) -> Result<(), ErrorReply> {
        self.request(Request::Remove {
            path: path.to_owned(),
            recursive,
        })
        .map(|_| ())
    }

    pub fn processes(&self) -> Vec<ProcessEntry> {
        match self.request(Request::ProcessList).unwrap() {
            Control::Processes { processes } => processes,
            other => panic!("expected processes, got {other:?}"),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.with(|state| state.stop = true);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn read_loop(shared: &Shared, stream: &mut UnixStream) {
    let mut decoder = Decoder::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        while shared.paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let read = match stream.read(&mut buffer) {
            Ok(0) | Err(_) => {
                let mut state = shared.lock();
                state.ended = true;
                shared.changed.notify_all();
                return;
            }
            Ok(read) => read,
        };
        decoder.push(&buffer[..read]);
        let mut state = shared.lock();
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    state.violation = Some(error.to_string());
                    shared.changed.notify_all();
                    return;
                }
            };
            let is_hello = matches!(frame.body, FrameBody::Hello(_));
            if !state.ready && !is_hello {
                // The tail of a session this host left (rehello): not for the new mux.
                continue;
            }
            match state.mux.receive(frame) {
                Ok(Some(Event::Ready(_))) => state.ready = true,
                Ok(Some(event)) => {
                    let stream_id = match &event {
                        Event::Opened { stream_id, .. }
                        | Event::Data { stream_id, .. }
                        | Event::Control { stream_id, .. }
                        | Event::Closed { stream_id }
                        | Event::Reset { stream_id, .. }
                        | Event::Credit { stream_id, .. } => *stream_id,
                        Event::Ready(_) => unreachable!(),
                    };
                    state.events.entry(stream_id).or_default().push_back(event);
                }
                Ok(None) => {}
                Err(error) => state.violation = Some(error.to_string()),
            }
        }
        shared.changed.notify_all();
    }
}

fn write_loop(shared: &Shared) {
    loop {
        let mut bytes = Vec::new();
        {
            let mut state = shared.lock();
            while !state.stop && !state.mux.has_frame() {
                state = shared.changed.wait(state).unwrap();
            }
            if state.stop {
                return;
            }
            while let Some(frame) = state.mux.poll_frame() {
                frame.encode(&mut bytes).unwrap();
                if bytes.len() > 1 << 20 {
                    break;
                }
            }
        }
        if shared.writer.lock().unwrap().write_all(&bytes).is_err() {
            return;
        }
    }
}
