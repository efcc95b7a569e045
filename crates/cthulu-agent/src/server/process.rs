//! The processes the agent started: how one is spawned (its own process group, or a new
//! session on a PTY), and the record the server keeps of it — its output sources, its
//! stdin, how it ended, and for a detached one the output it retains for attaches.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cthulu_guest_protocol::frame::{Channel, StreamId};
use cthulu_guest_protocol::message::{
    Command, ErrorCode, ErrorReply, ExecRequest, ExitStatus, ProcessEntry, Signal, TtySize,
    RETAINED_OUTPUT,
};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use crate::link::set_nonblocking;
use crate::paths::reply;
use crate::ring::Ring;
use crate::sys::{self, Ended};

/// PATH of every command, under the sandbox's and the request's env.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Most bytes of a process id.
pub const MAX_PROCESS_ID: usize = 64;

/// One output source (stdout, stderr, or the PTY).
#[derive(Debug)]
pub struct Output {
    pub channel: Channel,
    /// `None` once at its end.
    pub fd: Option<OwnedFd>,
    /// Bytes kept so far (counted against the output cap).
    pub taken: u64,
    /// A detached process keeps its output here, whatever its followers read.
    pub ring: Option<Ring>,
    /// Once the process has ended and the grace has passed, background children that
    /// keep the pipe open are not waited for: the source ends when it is empty.
    pub until_empty: bool,
}

/// Bytes for the process's stdin, waiting for the pipe to take them.
#[derive(Debug)]
pub struct Stdin {
    pub fd: OwnedFd,
    pub pty: bool,
    /// Chunks and the stream that sent each (to grant it credit once written).
    pub pending: VecDeque<(StreamId, Vec<u8>)>,
    pub written_front: usize,
    /// The host closed its direction: EOF once `pending` is written.
    pub close_when_flushed: bool,
}

/// A stream following a detached process: its read position in each channel's ring.
#[derive(Debug)]
pub struct Follower {
    pub stream: StreamId,
    pub cursors: Vec<u64>,
}

#[derive(Debug)]
pub struct Process {
    pub process_id: String,
    pub pid: i32,
    pub command: String,
    pub detached: bool,
    /// Runs on a terminal.
    pub is_tty: bool,
    /// The PTY master of a tty process (for resizes), until its output is closed.
    pub tty: Option<OwnedFd>,
    pub started_unix_ms: u64,
    pub stdin: Option<Stdin>,
    pub outputs: Vec<Output>,
    pub ended: Option<Ended>,
    pub ended_at: Option<Instant>,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
    pub truncated: bool,
    /// The sandbox cgroup's OOM kill count when it started (none without cgroups).
    pub oom_kills_at_start: Option<u64>,
    /// It did not exit 0, and that count went up while it ran.
    pub oom_killed: bool,
    pub cap: u64,
    /// Not detached: the stream that started it, whose end kills it.
    pub stream: Option<StreamId>,
    /// Detached: the streams following it.
    pub followers: Vec<Follower>,
}

impl Process {
    /// Ended, and every output source at its end: the exit can follow the output.
    pub fn finished(&self) -> bool {
        self.ended.is_some() && self.outputs.iter().all(|output| output.fd.is_none())
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        let ended = self.ended?;
        let (code, signal) = match ended {
            Ended::Code(code) => (Some(code), None),
            Ended::Signal(signal) => (None, Some(signal)),
        };
        Some(ExitStatus {
            code,
            signal,
            timed_out: self.timed_out,
            truncated: self.truncated,
            oom_killed: self.oom_killed,
        })
    }

    /// Of `read` bytes just read from output `index`, how many are kept under the cap. An
    /// output that passes its cap is closed, as under `| head -c <cap>`: the writer gets
    /// EPIPE (or dies of SIGPIPE) instead of running on until its timeout; the other
    /// output keeps flowing.
    pub fn keep(&mut self, index: usize, read: usize) -> usize {
        let output = &mut self.outputs[index];
        let allowed = self.cap.saturating_sub(output.taken);
        let kept = (read as u64).min(allowed) as usize;
        output.taken += kept as u64;
        if kept < read {
            self.truncated = true;
            self.close_output(index);
        }
        kept
    }

    /// Closes output `index`. A terminal's output closes with every copy of its master
    /// (the stdin and the one kept for resizes): the terminal hangs up, so its session
    /// leader gets SIGHUP and writers get EIO.
    fn close_output(&mut self, index: usize) {
        self.outputs[index].fd = None;
        if self.is_tty {
            self.tty = None;
            self.stdin = None;
        }
    }

    /// Whether output `index` kept all its cap allows: what it reads next only tells
    /// whether the cap is passed (closing it) or the output ends right there, so it is read
    /// whatever room its stream has.
    pub fn discarding(&self, index: usize) -> bool {
        self.outputs[index].taken >= self.cap
    }

    pub fn signal(&self, signal: i32) {
        sys::kill_group(self.pid, signal);
    }

    pub fn entry(&self, command_bytes: usize) -> ProcessEntry {
        ProcessEntry {
            process_id: self.process_id.clone(),
            command: shorten(&self.command, command_bytes),
            detached: self.detached,
            tty: self.is_tty,
            exit: self.exit_status(),
            started_unix_ms: self.started_unix_ms,
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, control characters as `?`
/// (so the JSON of a listing stays within a frame).
fn shorten(text: &str, max: usize) -> String {
    let mut out = String::new();
    for character in text.chars() {
        let character = if character.is_control() {
            '?'
        } else {
            character
        };
        if out.len() + character.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(character);
    }
    out
}

pub fn signal_number(signal: Signal) -> i32 {
    match signal {
        Signal::Hup => libc::SIGHUP,
        Signal::Int => libc::SIGINT,
        Signal::Quit => libc::SIGQUIT,
        Signal::Kill => libc::SIGKILL,
        Signal::Usr1 => libc::SIGUSR1,
        Signal::Usr2 => libc::SIGUSR2,
        Signal::Term => libc::SIGTERM,
        Signal::Cont => libc::SIGCONT,
        Signal::Stop => libc::SIGSTOP,
        Signal::Winch => libc::SIGWINCH,
    }
}

/// Whether `process_id` is acceptable: 1 to 64 bytes of `[A-Za-z0-9_-]`.
pub fn valid_process_id(process_id: &str) -> bool {
    !process_id.is_empty()
        && process_id.len() <= MAX_PROCESS_ID
        && process_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// The environment of a command: the base, then the sandbox's, then the request's.
pub fn compose_env(
    workspace: &str,
    sandbox_env: &BTreeMap<String, String>,
    request: &ExecRequest,
) -> Result<BTreeMap<String, String>, ErrorReply> {
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), workspace.to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]);
    if request.tty.is_some() {
        env.insert("TERM".to_owned(), "xterm-256color".to_owned());
    }
    for (name, value) in sandbox_env.iter().chain(&request.env) {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(reply(
                ErrorCode::InvalidRequest,
                format!("invalid environment variable {name:?}"),
            ));
        }
        env.insert(name.clone(), value.clone());
    }
    Ok(env)
}

/// What [`spawn`] needs besides the request.
pub struct Launch<'a> {
    pub request: &'a ExecRequest,
    pub env: BTreeMap<String, String>,
    /// The working directory, resolved beneath the workspace (an `O_PATH` descriptor).
    pub cwd: OwnedFd,
    /// `cgroup.procs` of the sandbox cgroup, which the child joins before it execs.
    pub cgroup_procs: Option<OwnedFd>,
    /// Set the child's `oom_score_adj` back to 0 (the agent's own is −1000 as PID 1).
    pub reset_oom_score: bool,
    /// The sandbox's OOM kill count just before the spawn.
    pub oom_kills: Option<u64>,
}

/// Starts the command in its own process group (a tty one in its own session, with the
/// PTY as controlling terminal), in the sandbox cgroup when there is one.
pub fn spawn(launch: Launch<'_>) -> Result<Process, ErrorReply> {
    let request = launch.request;
    let argv: Vec<String> = match &request.command {
        Command::Argv(argv) => argv.clone(),
        Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
    };
    let Some(program) = argv.first() else {
        return Err(reply(ErrorCode::InvalidRequest, "the argv is empty"));
    };
    let display = match &request.command {
        Command::Argv(argv) => argv.join(" "),
        Command::Shell(script) => script.clone(),
    };
    let mut command = std::process::Command::new(program);
    command.args(&argv[1..]).env_clear().envs(&launch.env);
    let cwd = launch.cwd.as_raw_fd();
    let cgroup_procs = launch.cgroup_procs.as_ref().map(|fd| fd.as_raw_fd());
    let reset_oom_score = launch.reset_oom_score;
    let on_tty = request.tty.is_some();
    let master = match request.tty {
        None => {
            command
                .stdin(if request.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            None
        }
        Some(size) => {
            let (master, terminal) = open_pty(size).map_err(|error| {
                reply(ErrorCode::Internal, format!("opening a terminal: {error}"))
            })?;
            let clone = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|error| reply(ErrorCode::Internal, format!("dup: {error}")))
            };
            command
                .stdin(Stdio::from(clone(&terminal)?))
                .stdout(Stdio::from(clone(&terminal)?))
                .stderr(Stdio::from(terminal));
            Some(master)
        }
    };
    // SAFETY: between fork and exec the child only makes async-signal-safe system calls
    // (write, open, close, setsid, ioctl, fchdir) and touches no memory of the parent; the
    // descriptors it uses stay open in the parent until spawn returns. It joins the
    // sandbox cgroup first, so everything it runs is limited from its first instruction.
    // On a terminal: after setsid the child has no controlling terminal; TIOCSCTTY on its
    // stdin (the PTY) makes it the one.
    unsafe {
        command.pre_exec(move || {
            if let Some(procs) = cgroup_procs {
                sys::join_cgroup(procs)?;
            }
            if reset_oom_score {
                sys::reset_oom_score_adj()?;
            }
            if on_tty && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0) {
                return Err(io::Error::last_os_error());
            }
            if libc::fchdir(cwd) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    // The command holds the terminal's other end: it must go, or the master never sees
    // the end of the output.
    drop(command);
    let mut child = spawned.map_err(|error| spawn_error(program, error))?;
    drop(launch.cwd);
    drop(launch.cgroup_procs);
    let pid = child.id() as i32;
    let nonblocking = |fd: OwnedFd| -> OwnedFd {
        let _ = set_nonblocking(&fd);
        fd
    };
    let cap = request.output_cap.unwrap_or(u64::MAX);
    let ring = || request.detached.then(|| Ring::new(RETAINED_OUTPUT));
    let output = |channel, fd: Option<OwnedFd>| Output {
        channel,
        fd,
        taken: 0,
        ring: ring(),
        until_empty: false,
    };
    let (stdin, outputs, tty) = match master {
        None => {
            let stdin = child.stdin.take().map(|pipe| Stdin {
                fd: nonblocking(OwnedFd::from(pipe)),
                pty: false,
                pending: VecDeque::new(),
                written_front: 0,
                close_when_flushed: false,
            });
            let stdout = child
                .stdout
                .take()
                .map(|pipe| nonblocking(OwnedFd::from(pipe)));
            let stderr = child
                .stderr
                .take()
                .map(|pipe| nonblocking(OwnedFd::from(pipe)));
            (
                stdin,
                vec![
                    output(Channel::Main, stdout),
                    output(Channel::Stderr, stderr),
                ],
                None,
            )
        }
        Some(master) => {
            let master = nonblocking(master);
            let dup = |fd: &OwnedFd| fd.try_clone().ok();
            let stdin = if request.stdin {
                dup(&master).map(|fd| Stdin {
                    fd,
                    pty: true,
                    pending: VecDeque::new(),
                    written_front: 0,
                    close_when_flushed: false,
                })
            } else {
                None
            };
            let reader = dup(&master);
            (stdin, vec![output(Channel::Main, reader)], Some(master))
        }
    };
    let now = Instant::now();
    Ok(Process {
        process_id: request.process_id.clone(),
        pid,
        command: display,
        detached: request.detached,
        is_tty: tty.is_some(),
        tty,
        started_unix_ms: unix_ms(),
        stdin,
        outputs,
        ended: None,
        ended_at: None,
        deadline: request
            .timeout_ms
            .and_then(|timeout| now.checked_add(Duration::from_millis(timeout))),
        timed_out: false,
        truncated: false,
        oom_kills_at_start: launch.oom_kills,
        oom_killed: false,
        cap,
        stream: None,
        followers: Vec::new(),
    })
}

fn open_pty(size: TtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let terminal = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    resize(&master, size)?;
    Ok((master, terminal))
}

pub fn resize(master: &OwnedFd, size: TtySize) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

fn spawn_error(program: &str, error: io::Error) -> ErrorReply {
    match error.kind() {
        io::ErrorKind::NotFound => {
            reply(ErrorCode::NotFound, format!("program not found: {program}"))
        }
        io::ErrorKind::PermissionDenied => reply(
            ErrorCode::PermissionDenied,
            format!("program not executable: {program}"),
        ),
        _ if error.raw_os_error() == Some(libc::ENOEXEC) => reply(
            ErrorCode::PermissionDenied,
            format!("program not executable: {program}"),
        ),
        io::ErrorKind::InvalidInput => reply(
            ErrorCode::InvalidRequest,
            format!("cannot run {program:?}: {error}"),
        ),
        _ => reply(ErrorCode::Internal, format!("starting {program}: {error}")),
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ids() {
        assert!(valid_process_id("p-1_A"));
        assert!(valid_process_id(&"x".repeat(64)));
        assert!(!valid_process_id(&"x".repeat(65)));
        assert!(!valid_process_id(""));
        assert!(!valid_process_id("a b"));
        assert!(!valid_process_id("a/b"));
    }

    #[test]
    fn env_layers() {
        let request = ExecRequest {
            process_id: "p".into(),
            command: Command::Shell("env".into()),
            env: BTreeMap::from([("B".into(), "request".into()), ("HOME".into(), "/h".into())]),
            cwd: None,
            stdin: false,
            timeout_ms: None,
            output_cap: None,
            tty: Some(TtySize { rows: 1, cols: 1 }),
            detached: false,
        };
        let sandbox = BTreeMap::from([
            ("A".into(), "sandbox".into()),
            ("B".into(), "sandbox".into()),
        ]);
        let env = compose_env("/ws", &sandbox, &request).unwrap();
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["HOME"], "/h");
        assert_eq!(env["A"], "sandbox");
        assert_eq!(env["B"], "request");
        assert_eq!(env["TERM"], "xterm-256color");
        assert_eq!(env["LANG"], "C.UTF-8");
        let mut bad = request.clone();
        bad.env.insert("X=Y".into(), "z".into());
        assert!(compose_env("/ws", &sandbox, &bad).is_err());
    }

    #[test]
    fn commands_are_shortened_for_listings() {
        assert_eq!(shorten("abc", 10), "abc");
        assert_eq!(shorten("a\nb", 10), "a?b");
        assert_eq!(shorten("ééé", 4), "éé…");
    }
}
