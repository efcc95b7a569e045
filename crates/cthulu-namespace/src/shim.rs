//! The namespace backend's process shim (`cthulu-ns-shim <process dir>`, or
//! `cthulu __ns-shim`): the host backend's shim ([`cthulu_host::shim`]: output kept,
//! clients served on `procs/<process_id>/sock`, exit recorded, outliving the server) with
//! a [`Launcher`] that has the sandbox's init start the process inside.
//!
//! The shim runs on the host, outside the sandbox. It connects to `<sandbox>/init.sock`
//! (the process directory is `<sandbox>/procs/<process_id>`), sends the exec with its own
//! pipe ends, or asks for a terminal and receives its master, and keeps the connection:
//! init reports the exit there, signals go there ([`Request::SignalGroup`],
//! [`Request::KillAll`]), and if the shim dies, init kills what it started. If init dies
//! (the sandbox destroyed), every process of the sandbox died with it, and the shim
//! records a SIGKILL.
//!
//! Nothing of the shim is reachable from inside: the command gets only its pipe ends or
//! its terminal, and the process directory is not mounted in the sandbox.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, MutexGuard};

use cthulu_host::shim::protocol::Channel;
use cthulu_host::shim::records::{ShimSpec, SpawnFailure};
use cthulu_host::shim::{Ended, Launcher, Process, SpawnError, Spawned, Stdin};
use rustix::pipe::PipeFlags;

use crate::cgroup::SandboxCgroups;
use crate::exec::{give_to_sandbox_root, request_exec};
use crate::init::SOCKET_FILE;
use crate::protocol::{self, ExecRequest, Request, Response, StartStep};
use crate::state::SandboxState;

/// Capacity asked for the output pipes, as the host backend's shim does.
const OUTPUT_PIPE_BYTES: usize = 1 << 20;

/// The shim program; `args` are what follows the program (and subcommand) name: the
/// process directory.
pub fn main(args: Vec<OsString>) -> ExitCode {
    cthulu_host::shim::run_with(args, |process_dir| {
        Box::new(NamespaceLauncher {
            sandbox: Sandbox::of_process_dir(process_dir),
        })
    })
}

/// Starts the shim's process through the init of the sandbox the process directory is in.
struct NamespaceLauncher {
    /// Why there is none, if there is none.
    sandbox: Result<Sandbox, String>,
}

/// The sandbox of the shim's process directory.
struct Sandbox {
    socket: PathBuf,
    state: SandboxState,
}

impl Sandbox {
    fn of_process_dir(process_dir: &Path) -> Result<Sandbox, String> {
        let sandbox_dir = process_dir
            .parent()
            .and_then(Path::parent)
            .filter(|_| process_dir.is_absolute())
            .ok_or_else(|| {
                format!(
                    "{} is not an absolute path of the form <sandbox>/procs/<process_id>",
                    process_dir.display()
                )
            })?;
        let state = SandboxState::load(sandbox_dir)
            .map_err(|error| format!("reading the sandbox's state: {error}"))?;
        Ok(Sandbox {
            socket: sandbox_dir.join(SOCKET_FILE),
            state,
        })
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
        .map_err(|errno| SpawnError::other("create a pipe", errno))
}

/// The contract's failure for a start init refused.
fn start_failure(spec: &ShimSpec, errno: i32, during: StartStep) -> SpawnError {
    let error = io::Error::from_raw_os_error(errno);
    let program = spec.argv.first().map(String::as_str).unwrap_or_default();
    match during {
        StartStep::Cwd => SpawnError::other(
            &format!("enter the working directory {}", spec.cwd.display()),
            error,
        ),
        StartStep::Exec => SpawnError {
            failure: match errno {
                libc::ENOENT | libc::ENOTDIR => SpawnFailure::NotFound,
                libc::EACCES | libc::ENOEXEC | libc::EPERM => SpawnFailure::NotExecutable,
                _ => SpawnFailure::Other,
            },
            message: format!("cannot start {program}: {error}"),
        },
    }
}

impl Launcher for NamespaceLauncher {
    fn spawn(&self, spec: &ShimSpec) -> Result<Spawned, SpawnError> {
        let sandbox = self
            .sandbox
            .as_ref()
            .map_err(|message| SpawnError::other("find the sandbox", message))?;
        let request = Request::Exec(ExecRequest {
            argv: spec.argv.clone(),
            env: spec.env.clone().into_iter().collect(),
            cwd: spec.cwd.display().to_string(),
            tty: spec.tty,
        });
        let unreachable = |error: io::Error| {
            SpawnError::other(
                &format!("reach the sandbox's init at {}", sandbox.socket.display()),
                error,
            )
        };
        let oom_kills_before = sandbox.state.cgroups.oom_kills();
        // What the process reads and writes (the shim's ends), and what init gets.
        let (stdin, outputs, stdio) = if spec.tty.is_some() {
            (None, Vec::new(), None)
        } else {
            let (stdin_read, stdin_write) = pipe()?;
            let (stdout_read, stdout_write) = pipe()?;
            let (stderr_read, stderr_write) = pipe()?;
            give_to_sandbox_root(
                sandbox.state.root_outside(),
                [&stdin_read, &stdout_write, &stderr_write],
            );
            for read_end in [&stdout_read, &stderr_read] {
                let _ = rustix::pipe::fcntl_setpipe_size(read_end, OUTPUT_PIPE_BYTES);
            }
            (
                Some(Stdin::Pipe(File::from(stdin_write))),
                vec![
                    (Channel::Stdout, File::from(stdout_read)),
                    (Channel::Stderr, File::from(stderr_read)),
                ],
                Some([stdin_read, stdout_write, stderr_write]),
            )
        };
        let (connection, answer) =
            request_exec(&sandbox.socket, &request, stdio).map_err(unreachable)?;
        let (response, mut fds) =
            answer.ok_or_else(|| unreachable(io::Error::other("init closed the connection")))?;
        let pid = match response {
            Response::Started { pid } => pid,
            Response::StartFailed { errno, during } => {
                return Err(start_failure(spec, errno, during))
            }
            other => {
                return Err(SpawnError::other(
                    "start the program",
                    format!("the sandbox's init answered {other:?}"),
                ))
            }
        };
        let (stdin, outputs) = match stdin {
            Some(stdin) => (stdin, outputs),
            None => {
                let master = fds.pop().map(File::from).ok_or_else(|| {
                    SpawnError::other("start the program", "init sent no terminal")
                })?;
                let output = master
                    .try_clone()
                    .map_err(|error| SpawnError::other("dup the terminal", error))?;
                (Stdin::Pty(master), vec![(Channel::Stdout, output)])
            }
        };
        let reader = connection
            .try_clone()
            .map_err(|error| SpawnError::other("dup the connection to init", error))?;
        Ok(Spawned {
            process: Box::new(SandboxProcess {
                pid,
                to_init: Mutex::new(connection),
                from_init: Mutex::new(Some(reader)),
                cgroups: sandbox.state.cgroups.clone(),
                oom_kills_before,
            }),
            stdin,
            outputs,
        })
    }
}

/// A process init started for the shim, known by its pid inside the sandbox and acted on
/// through the exec connection (init reaps it, so its pid is never mistaken for another).
struct SandboxProcess {
    pid: i32,
    to_init: Mutex<UnixStream>,
    /// Taken by `wait`.
    from_init: Mutex<Option<UnixStream>>,
    cgroups: SandboxCgroups,
    oom_kills_before: Option<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SandboxProcess {
    /// Sends a request on the exec connection; once the process has ended, init no
    /// longer listens there, and the request goes nowhere (as it should).
    fn tell_init(&self, request: &Request) {
        let _ = protocol::send(&*lock(&self.to_init), request, &[]);
    }
}

impl Process for SandboxProcess {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn wait(&self) -> io::Result<Ended> {
        let mut from_init = lock(&self.from_init)
            .take()
            .ok_or_else(|| io::Error::other("the process was already waited for"))?;
        let (exit_code, signal) = loop {
            match protocol::receive::<Response>(&mut from_init) {
                Ok(Some((Response::Exited { code, signal }, _))) => break (code, signal),
                // An answer to a request that came too late (a refusal): not the end.
                Ok(Some(_)) => {}
                // Init is gone, and the kernel killed every process of the sandbox with it.
                Ok(None) | Err(_) => break (None, Some(libc::SIGKILL)),
            }
        };
        // The kernel counts OOM kills per memory group: one while the process ran that it
        // did not survive is reported as its cause, as one-shot exec does.
        let oom_killed = exit_code != Some(0)
            && matches!(
                (self.oom_kills_before, self.cgroups.oom_kills()),
                (Some(before), Some(after)) if after > before
            );
        Ok(Ended {
            exit_code,
            signal,
            oom_killed,
        })
    }

    fn signal(&self, signal: i32) {
        self.tell_init(&Request::SignalGroup { signal });
    }

    fn kill_all(&self) {
        self.tell_init(&Request::KillAll);
    }
}
