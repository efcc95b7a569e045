//! Starting the shim's process (on pipes, or on a new pseudo-terminal) and acting on it:
//! stdin, EOF, signals, resizes.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use super::protocol::Channel;
use super::records::{ShimSpec, SpawnFailure};
use crate::process_groups;

/// The end-of-file character of a terminal in its default (canonical) mode: Ctrl-D.
const TERMINAL_EOF: u8 = 0x04;
/// Capacity asked for the output pipes (the default `pipe-max-size` allows 1 MiB).
const OUTPUT_PIPE_BYTES: usize = 1 << 20;

/// How the shim starts its process and acts on it afterwards. [`LocalLauncher`] (the host
/// backend) forks it here; another backend may have it started elsewhere, e.g. by a
/// sandbox's init, and hand the shim its stdio (pipes or a PTY master).
pub trait Launcher {
    /// Starts the process of `spec` in a process group of its own (a session of its own
    /// on a PTY). Runs in the process directory.
    fn spawn(&self, spec: &ShimSpec) -> Result<Spawned, SpawnError>;
}

/// A started process, as a [`Launcher`] hands it to the shim.
pub struct Spawned {
    pub process: Box<dyn Process>,
    /// Where its stdin goes: a pipe, or the PTY master (also used for resizes).
    pub stdin: Stdin,
    /// Where its output comes from: stdout and stderr pipes, or the PTY master alone
    /// (as stdout).
    pub outputs: Vec<(Channel, File)>,
}

pub enum Stdin {
    Pipe(File),
    Pty(File),
}

/// How a started process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
}

/// A started process: its pid, its end, and signals to it. Shared by every thread of the
/// shim.
pub trait Process: Send + Sync {
    /// Its pid (and process group id) as its launcher sees it.
    fn pid(&self) -> i32;
    /// When it started (clock ticks since boot), where the shim can tell.
    fn start_ticks(&self) -> Option<u64> {
        None
    }
    /// Blocks until the process has ended. Called once, from a thread of its own.
    fn wait(&self) -> io::Result<Ended>;
    /// Sends `signal` to its process group (after it ended, to what is left of the group,
    /// where that can still be told apart from strangers).
    fn signal(&self, signal: i32);
    /// SIGKILLs its process group, and for a PTY every job of its session.
    fn kill_all(&self);
}

/// Why the process did not start, for the handshake.
#[derive(Debug)]
pub struct SpawnError {
    pub failure: SpawnFailure,
    pub message: String,
}

impl SpawnError {
    pub fn other(what: &str, error: impl std::fmt::Display) -> SpawnError {
        SpawnError {
            failure: SpawnFailure::Other,
            message: format!("{what}: {error}"),
        }
    }
}

enum StdinSink {
    Pipe(File),
    Pty(Arc<File>),
}

/// What clients may do to the running process. Shared by every client thread.
pub(super) struct ChildControl {
    pub process: Arc<dyn Process>,
    stdin: Mutex<Option<StdinSink>>,
    /// The PTY master, for resizes.
    master: Option<Arc<File>>,
}

impl ChildControl {
    pub fn new(process: Arc<dyn Process>, stdin: Stdin) -> ChildControl {
        let (stdin, master) = match stdin {
            Stdin::Pipe(pipe) => (StdinSink::Pipe(pipe), None),
            Stdin::Pty(master) => {
                let master = Arc::new(master);
                (StdinSink::Pty(master.clone()), Some(master))
            }
        };
        ChildControl {
            process,
            stdin: Mutex::new(Some(stdin)),
            master,
        }
    }

    fn stdin(&self) -> MutexGuard<'_, Option<StdinSink>> {
        self.stdin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes to the process's stdin; blocks while the process does not read (like a
    /// terminal would). Data for a closed stdin is dropped.
    pub fn write_stdin(&self, data: &[u8]) {
        let mut stdin = self.stdin();
        let result = match stdin.as_mut() {
            Some(StdinSink::Pipe(pipe)) => pipe.write_all(data),
            Some(StdinSink::Pty(master)) => (&**master).write_all(data),
            None => Ok(()),
        };
        if result.is_err() {
            // The reading end is gone (EPIPE, or EIO on a hung-up terminal): nobody will
            // read stdin again.
            *stdin = None;
        }
    }

    /// EOF on stdin: the pipe is closed; a terminal gets its EOF character.
    pub fn close_stdin(&self) {
        let mut stdin = self.stdin();
        if let Some(StdinSink::Pty(master)) = stdin.as_ref() {
            let _ = (&**master).write_all(&[TERMINAL_EOF]);
        } else {
            *stdin = None;
        }
    }

    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    pub fn kill_all(&self) {
        self.process.kill_all();
    }

    /// Resizes the PTY (the kernel sends SIGWINCH to its foreground group). Ignored
    /// without a PTY; the handle refuses that case before it gets here.
    pub fn resize(&self, cols: u16, rows: u16) {
        if let Some(master) = &self.master {
            let _ = rustix::termios::tcsetwinsize(&**master, winsize(cols, rows));
        }
    }
}

/// The host backend's launcher: the process is a child of the shim.
pub struct LocalLauncher;

impl Launcher for LocalLauncher {
    fn spawn(&self, spec: &ShimSpec) -> Result<Spawned, SpawnError> {
        match spec.tty {
            None => spawn_on_pipes(spec),
            Some(size) => spawn_on_pty(spec, size.cols, size.rows),
        }
    }
}

/// A child of the shim, in a process group (on a PTY: a session) of its own.
struct LocalProcess {
    /// Taken by `wait`.
    child: Mutex<Option<Child>>,
    pid: i32,
    session: bool,
    /// Set once the process has ended (before it is reaped): its pid, and so the group
    /// id, may then be recycled.
    ended: AtomicBool,
}

impl LocalProcess {
    fn new(child: Child, session: bool) -> LocalProcess {
        LocalProcess {
            pid: child.id() as i32,
            child: Mutex::new(Some(child)),
            session,
            ended: AtomicBool::new(false),
        }
    }

    /// Whether the group id still names the process's group. After the process ended, it
    /// does while no process has the leader's pid (a group or session id stays allocated
    /// while a member lives, so a recycled one needs a new process with that pid).
    fn group_is_ours(&self) -> bool {
        !self.ended.load(Ordering::SeqCst) || !process_groups::pid_exists(self.pid)
    }
}

impl Process for LocalProcess {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn start_ticks(&self) -> Option<u64> {
        process_groups::start_ticks(self.pid)
    }

    fn wait(&self) -> io::Result<Ended> {
        // The end first, without reaping: once reaped, the group id may be recycled, and
        // signals must know before that can happen.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let options =
                rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT;
            loop {
                match rustix::process::waitid(rustix::process::WaitId::Pid(pid), options) {
                    Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => self.ended.store(true, Ordering::SeqCst),
                    Err(_) => {}
                }
                break;
            }
        }
        let child = self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(mut child) = child else {
            return Err(io::Error::other("the process was already waited for"));
        };
        let status = child.wait();
        self.ended.store(true, Ordering::SeqCst);
        let status = status?;
        Ok(Ended {
            exit_code: status.code(),
            signal: status.signal(),
            oom_killed: false,
        })
    }

    fn signal(&self, signal: i32) {
        if self.group_is_ours() {
            let _ = process_groups::signal_group(self.pid, signal);
        }
    }

    fn kill_all(&self) {
        if !self.group_is_ours() {
            return;
        }
        if self.session {
            process_groups::signal_session(self.pid, libc::SIGKILL);
        } else {
            let _ = process_groups::signal_group(self.pid, libc::SIGKILL);
        }
    }
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The command of `spec`, without its stdio: argv, a cleared environment, cwd.
fn command(spec: &ShimSpec) -> Result<Command, SpawnError> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| SpawnError::other("argv", "empty"))?;
    if !spec.cwd.is_dir() {
        // Checked here so a vanished cwd is not reported as a missing program (both are
        // ENOENT from the spawn).
        return Err(SpawnError::other(
            "working directory",
            format!("{} is not a directory", spec.cwd.display()),
        ));
    }
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd);
    Ok(command)
}

fn spawn_failure(program: &str, error: io::Error) -> SpawnError {
    let failure = match error.kind() {
        io::ErrorKind::NotFound => SpawnFailure::NotFound,
        io::ErrorKind::PermissionDenied => SpawnFailure::NotExecutable,
        _ if error.raw_os_error() == Some(libc::ENOEXEC) => SpawnFailure::NotExecutable,
        _ => SpawnFailure::Other,
    };
    SpawnError {
        failure,
        message: format!("cannot start {program}: {error}"),
    }
}

fn spawn_on_pipes(spec: &ShimSpec) -> Result<Spawned, SpawnError> {
    let mut command = command(spec)?;
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut process = command
        .spawn()
        .map_err(|error| spawn_failure(&spec.argv[0], error))?;
    let stdin = process.stdin.take().expect("stdin is piped");
    let stdout = process.stdout.take().expect("stdout is piped");
    let stderr = process.stderr.take().expect("stderr is piped");
    // Larger pipes let a fast writer run ahead and the pumps read bigger chunks: fewer
    // wake-ups and frames per byte. The default 64 KiB stays if the kernel refuses.
    for pipe in [stdout.as_fd(), stderr.as_fd()] {
        let _ = rustix::pipe::fcntl_setpipe_size(pipe, OUTPUT_PIPE_BYTES);
    }
    Ok(Spawned {
        process: Box::new(LocalProcess::new(process, false)),
        stdin: Stdin::Pipe(File::from(std::os::fd::OwnedFd::from(stdin))),
        outputs: vec![
            (
                Channel::Stdout,
                File::from(std::os::fd::OwnedFd::from(stdout)),
            ),
            (
                Channel::Stderr,
                File::from(std::os::fd::OwnedFd::from(stderr)),
            ),
        ],
    })
}

fn spawn_on_pty(spec: &ShimSpec, cols: u16, rows: u16) -> Result<Spawned, SpawnError> {
    let pty = |what: &str, error: rustix::io::Errno| SpawnError::other(what, error);
    // NOCTTY: the shim is a session leader and must not take the terminal as its own.
    // CLOEXEC: the process must not inherit the master.
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(|error| pty("openpt", error))?;
    rustix::pty::grantpt(&master).map_err(|error| pty("grantpt", error))?;
    rustix::pty::unlockpt(&master).map_err(|error| pty("unlockpt", error))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|error| pty("ptsname", error))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|error| pty("open the terminal", error))?;
    rustix::termios::tcsetwinsize(&master, winsize(cols, rows))
        .map_err(|error| pty("set the terminal size", error))?;

    let mut command = command(spec)?;
    let stdio = |fd: &std::os::fd::OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|error| SpawnError::other("dup the terminal", error))
    };
    command
        .stdin(stdio(&slave)?)
        .stdout(stdio(&slave)?)
        .stderr(stdio(&slave)?);
    // SAFETY: the closure runs in the forked child before exec and only makes two raw
    // system calls through rustix (setsid, ioctl TIOCSCTTY on fd 0): no allocation, no
    // locks, nothing that is not async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            // A session of its own makes it the leader that may own the terminal; then the
            // terminal (already on fd 0) becomes its controlling terminal, so job control
            // and Ctrl-C work.
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    let process = command
        .spawn()
        .map_err(|error| spawn_failure(&spec.argv[0], error))?;
    // Our copies of the terminal must go, or reading the master would never see the
    // hang-up once the process and its children have closed theirs.
    drop(command);
    drop(slave);
    let master = File::from(master);
    Ok(Spawned {
        process: Box::new(LocalProcess::new(process, true)),
        outputs: vec![(Channel::Stdout, clone_file(&master)?)],
        stdin: Stdin::Pty(master),
    })
}

fn clone_file(file: &File) -> Result<File, SpawnError> {
    file.try_clone()
        .map_err(|error| SpawnError::other("dup the terminal", error))
}

#[cfg(test)]
impl ChildControl {
    /// A control of no process, for tests of the server: every action does nothing.
    pub(super) fn nothing() -> ChildControl {
        ChildControl {
            process: Arc::new(Nothing),
            stdin: Mutex::new(None),
            master: None,
        }
    }
}

#[cfg(test)]
struct Nothing;

#[cfg(test)]
impl Process for Nothing {
    fn pid(&self) -> i32 {
        0
    }

    fn wait(&self) -> io::Result<Ended> {
        Err(io::Error::other("no process"))
    }

    fn signal(&self, _signal: i32) {}

    fn kill_all(&self) {}
}
