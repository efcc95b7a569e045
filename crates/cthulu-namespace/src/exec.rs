//! One-shot exec: pipes made here, handed to the sandbox's init with the request; init
//! forks the command inside every namespace, in a process group of its own, and reports
//! its exit on the same connection. Output is read into capped buffers exactly as on the
//! host backend: a stream past its cap is closed, so endless output ends the command.
//!
//! Streaming exec (pipes or a PTY, attached or detached) runs under a process shim
//! ([`crate::shim`]) that asks init the same way, so the process outlives the stream and
//! the server, and is listed and re-attached like the host backend's.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cthulu_core::path::display_path;
use cthulu_core::{ExecEvent, ExecOutput, ExecSpec, ExecStream, ExitInfo, SandboxError};
use cthulu_types::sandbox::Operation;
use rustix::pipe::PipeFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cgroup::SandboxCgroups;
use crate::protocol::{self, ExecRequest, Request, Response, StartStep};
use crate::sandbox::NamespaceSandbox;
use cthulu_host::command::{self, read_some};
use cthulu_host::files::blocking;
use cthulu_host::processes;
use cthulu_host::shim::records::ShimSpec;
use cthulu_host::workspace::{map_errno, open_dir_beneath, Owner};

/// How long to keep reading after the program exited: a backgrounded child may hold the
/// pipes open, and the exec must not wait for it.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;
/// Stands in for "no timeout" when a timeout does not fit an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// HOME and default cwd inside the sandbox.
const WORKSPACE: &str = "/workspace";

/// The complete environment of a command (the host backend's layers, with `HOME` the
/// sandbox's `/workspace`).
pub(crate) fn compose_env(
    host: impl Fn(&str) -> Option<String>,
    sandbox_env: &BTreeMap<String, String>,
    spec: &ExecSpec,
) -> BTreeMap<String, String> {
    command::compose_env(host, std::path::Path::new(WORKSPACE), sandbox_env, spec)
}

/// Pipes belong to their creator, the server: `/dev/stdout` (a reopen through
/// /proc/self/fd) needs the command's ends to be the sandbox's root's.
pub(crate) fn give_to_sandbox_root<'a>(
    owner: Option<Owner>,
    fds: impl IntoIterator<Item = &'a OwnedFd>,
) {
    if let Some(owner) = owner {
        for fd in fds {
            let _ = rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(owner.uid)),
                Some(rustix::fs::Gid::from_raw(owner.gid)),
            );
        }
    }
}

/// Init's first answer to an exec request, and the descriptors that came with it.
pub(crate) type Answer = (Response, Vec<OwnedFd>);

/// Connects to init at `socket`, sends the exec `request` with the command's stdin,
/// stdout and stderr (`None` on a terminal, which init opens) and waits for init's
/// answer: the connection, the answer and the descriptors that came with it (`None` if
/// init closed the connection).
pub(crate) fn request_exec(
    socket: &Path,
    request: &Request,
    stdio: Option<[OwnedFd; 3]>,
) -> io::Result<(UnixStream, Option<Answer>)> {
    let mut connection = UnixStream::connect(socket)?;
    let fds: Vec<BorrowedFd<'_>> = stdio.iter().flatten().map(AsFd::as_fd).collect();
    protocol::send(&connection, request, &fds)?;
    drop(fds);
    // Only the command holds its ends now: EOF comes when it (and its children) close
    // them.
    drop(stdio);
    let answer = protocol::receive::<Response>(&mut connection)?;
    Ok((connection, answer))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
        .map_err(|errno| SandboxError::system("create a pipe", errno.into()))
}

impl NamespaceSandbox {
    /// The command's working directory as the sandbox sees it, checked beneath the
    /// workspace on the host side first.
    fn inside_cwd(&self, cwd: Option<&str>) -> Result<String, SandboxError> {
        let relative = match cwd {
            Some(cwd) => self.workspace.relative(cwd)?,
            None => PathBuf::new(),
        };
        let root = self.workspace.open_root()?;
        open_dir_beneath(&root, &relative)
            .map_err(|errno| map_errno(errno, "open the working directory", &relative))?;
        Ok(display_path(&relative))
    }

    /// Starts `spec` inside the sandbox (stdin piped when `piped_stdin`, else
    /// `/dev/null`) and returns its stream of events: output chunks, then the exit.
    pub(crate) async fn start_exec(
        &self,
        spec: &ExecSpec,
        piped_stdin: bool,
    ) -> Result<NamespaceStream, SandboxError> {
        self.check(Operation::Exec)?;
        let cwd = self.inside_cwd(spec.cwd.as_deref())?;
        let env = compose_env(|name| std::env::var(name).ok(), &self.env, spec);
        let request = Request::Exec(ExecRequest {
            argv: spec.command.to_argv(),
            env: env.into_iter().collect(),
            cwd: cwd.clone(),
            tty: None,
        });
        let (stdin_read, stdin_write) = if piped_stdin {
            let (read, write) = pipe()?;
            (read, Some(write))
        } else {
            let null = fs_err::File::open("/dev/null")
                .map_err(|error| SandboxError::io("open", "/dev/null", error))?;
            (OwnedFd::from(null.into_parts().0), None)
        };
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        give_to_sandbox_root(
            self.workspace.owner(),
            [&stdin_read, &stdout_write, &stderr_write],
        );
        let oom_kills_before = self.cgroups.oom_kills();
        let socket = self.socket.clone();
        let (connection, response) = blocking("exec", move || {
            request_exec(
                &socket,
                &request,
                Some([stdin_read, stdout_write, stderr_write]),
            )
            .map_err(|error| SandboxError::io("reach the sandbox's init at", &socket, error))
        })
        .await
        .map_err(|error| self.init_gone().unwrap_or(error))?;
        match response.map(|(response, _)| response) {
            Some(Response::Started { .. }) => {}
            Some(Response::StartFailed { errno, during }) => {
                return Err(start_error(spec, &cwd, errno, during))
            }
            other => {
                return Err(SandboxError::system(
                    "start the program",
                    io::Error::other(format!("the sandbox's init answered {other:?}")),
                ))
            }
        }
        let system = |error| SandboxError::system("exec", error);
        connection.set_nonblocking(true).map_err(system)?;
        let connection = tokio::net::UnixStream::from_std(connection).map_err(system)?;
        let receiver = |fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(system);
        let stdin = match stdin_write {
            Some(fd) => Some(tokio::net::unix::pipe::Sender::from_owned_fd(fd).map_err(system)?),
            None => None,
        };
        let pump = Pump {
            connection,
            stdout: Some(receiver(stdout_read)?),
            stderr: Some(receiver(stderr_read)?),
            cap: spec.max_output_bytes,
            timeout: spec.timeout,
            cgroups: self.cgroups.clone(),
            oom_kills_before,
        };
        let (events, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        tokio::spawn(pump.run(events));
        Ok(NamespaceStream {
            events: events_rx,
            stdin,
        })
    }

    pub(crate) async fn run_exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        let started = Instant::now();
        let mut stream = self.start_exec(&spec, spec.stdin.is_some()).await?;
        let stdin_writer = match (spec.stdin, stream.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(tokio::spawn(async move {
                // EPIPE when the program does not read it all: fine. Dropping the pipe
                // is the EOF.
                let _ = pipe.write_all(&bytes).await;
            })),
            _ => None,
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let exit = loop {
            match stream.events.recv().await {
                Some(ExecEvent::Stdout(chunk)) => stdout.extend_from_slice(&chunk),
                Some(ExecEvent::Stderr(chunk)) => stderr.extend_from_slice(&chunk),
                Some(ExecEvent::Exit(exit)) => break exit,
                None => {
                    return Err(self
                        .init_gone()
                        .unwrap_or_else(|| lost_exit("ended without an exit")))
                }
            }
        };
        if let Some(writer) = stdin_writer {
            writer.abort();
        }
        Ok(ExecOutput {
            exit,
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }

    /// Starts `spec` under a process shim of its own (see [`crate::shim`]).
    pub(crate) async fn run_exec_stream(
        &self,
        spec: ExecSpec,
    ) -> Result<Box<dyn ExecStream>, SandboxError> {
        self.check(Operation::Exec)?;
        if let Some(gone) = self.init_gone() {
            return Err(gone);
        }
        let cwd = self.inside_cwd(spec.cwd.as_deref())?;
        let shim_spec = ShimSpec {
            argv: spec.command.to_argv(),
            env: compose_env(|name| std::env::var(name).ok(), &self.env, &spec),
            cwd: cwd.into(),
            tty: spec.tty,
            detach: spec.detach,
            timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
            max_output_bytes: spec.max_output_bytes,
        };
        processes::start_stream(self, spec, shim_spec).await
    }
}

/// Output chunks queued between the pump and the stream's reader: backpressure beyond.
const EVENT_QUEUE: usize = 16;

/// A running one-shot command: output and exit from its [`Pump`], stdin straight into
/// its pipe. Dropping it ends the pump, which closes the connection to init: init kills
/// the command's process group.
pub(crate) struct NamespaceStream {
    events: tokio::sync::mpsc::Receiver<ExecEvent>,
    stdin: Option<tokio::net::unix::pipe::Sender>,
}

/// Moves a command's output and exit to its stream and applies its cap and timeout.
struct Pump {
    connection: tokio::net::UnixStream,
    stdout: Option<tokio::net::unix::pipe::Receiver>,
    stderr: Option<tokio::net::unix::pipe::Receiver>,
    cap: u64,
    timeout: Duration,
    cgroups: SandboxCgroups,
    oom_kills_before: Option<u64>,
}

impl Pump {
    async fn run(mut self, events: tokio::sync::mpsc::Sender<ExecEvent>) {
        let (mut from_init, mut to_init) = self.connection.into_split();
        let (mut out_chunk, mut err_chunk) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
        let (mut out_left, mut err_left) = (self.cap, self.cap);
        let mut truncated = false;
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(self.timeout)
            .unwrap_or_else(|| now + FAR_FUTURE);
        let exit = read_exit(&mut from_init);
        tokio::pin!(exit);
        let mut status: Option<(Option<i32>, Option<i32>)> = None;
        let mut timed_out = false;
        let mut drain_until = None;
        let send_group = |signal: i32| protocol::encode(&Request::SignalGroup { signal });
        while status.is_none() || self.stdout.is_some() || self.stderr.is_some() {
            tokio::select! {
                read = read_some(&mut self.stdout, &mut out_chunk) => {
                    let chunk = take_capped(read, &mut self.stdout, &out_chunk, &mut out_left, &mut truncated);
                    if let Some(chunk) = chunk {
                        if events.send(ExecEvent::Stdout(chunk)).await.is_err() {
                            return;
                        }
                    }
                },
                read = read_some(&mut self.stderr, &mut err_chunk) => {
                    let chunk = take_capped(read, &mut self.stderr, &err_chunk, &mut err_left, &mut truncated);
                    if let Some(chunk) = chunk {
                        if events.send(ExecEvent::Stderr(chunk)).await.is_err() {
                            return;
                        }
                    }
                },
                exited = &mut exit, if status.is_none() => {
                    // init gone (the sandbox destroyed, or killed from outside): the
                    // kernel killed every process of its pid namespace with it.
                    status = Some(exited.unwrap_or((None, Some(libc::SIGKILL))));
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                },
                _ = tokio::time::sleep_until(deadline), if status.is_none() && !timed_out => {
                    timed_out = true;
                    // The whole group: a backgrounded grandchild goes too.
                    let _ = to_init.write_all(&send_group(libc::SIGKILL)).await;
                },
                _ = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => break,
                () = events.closed() => return,
            }
        }
        let (exit_code, signal) = status.expect("the loop ends after the exit");
        // The kernel counts OOM kills per memory group: one during this exec that it did
        // not survive is reported as its cause (in a pipeline the killed process may not
        // be the command itself, whose exit is then 137 from the shell).
        let oom_killed = exit_code != Some(0)
            && matches!(
                (self.oom_kills_before, self.cgroups.oom_kills()),
                (Some(before), Some(after)) if after > before
            );
        let _ = events
            .send(ExecEvent::Exit(ExitInfo {
                exit_code,
                signal,
                timed_out,
                truncated,
                oom_killed,
            }))
            .await;
    }
}

fn lost_exit(detail: &str) -> SandboxError {
    SandboxError::system(
        "wait for the program",
        io::Error::other(format!("the sandbox's init {detail}")),
    )
}

/// Waits for init's `Exited` on the exec connection.
async fn read_exit(
    from_init: &mut tokio::net::unix::OwnedReadHalf,
) -> Result<(Option<i32>, Option<i32>), SandboxError> {
    let lost = |detail: String| lost_exit(&detail);
    let mut header = [0u8; 4];
    from_init
        .read_exact(&mut header)
        .await
        .map_err(|error| lost(format!("closed the connection ({error})")))?;
    let mut body = vec![0u8; protocol::frame_len(header).map_err(|error| lost(error.to_string()))?];
    from_init
        .read_exact(&mut body)
        .await
        .map_err(|error| lost(format!("closed the connection ({error})")))?;
    match protocol::decode::<Response>(&body).map_err(|error| lost(error.to_string()))? {
        Response::Exited { code, signal } => Ok((code, signal)),
        other => Err(lost(format!("answered {other:?}"))),
    }
}

/// The contract's error for a command init could not start.
fn start_error(spec: &ExecSpec, cwd: &str, errno: i32, during: StartStep) -> SandboxError {
    let error = io::Error::from_raw_os_error(errno);
    match during {
        StartStep::Cwd => match errno {
            libc::ENOENT => SandboxError::FileNotFound {
                path: cwd.to_owned(),
            },
            libc::ENOTDIR => SandboxError::NotADirectory {
                path: cwd.to_owned(),
            },
            _ => SandboxError::io("enter the working directory", cwd, error),
        },
        StartStep::Exec => match errno {
            libc::ENOENT | libc::ENOTDIR => SandboxError::ProgramNotFound {
                program: spec.program(),
            },
            libc::EACCES | libc::ENOEXEC | libc::EPERM => SandboxError::ProgramNotExecutable {
                program: spec.program(),
            },
            _ => SandboxError::system("start the program", error),
        },
    }
}

/// What a read brought, cut at what is left of the cap. At EOF, and once the cap is
/// reached, the pipe is closed: a program that goes on writing gets EPIPE (or SIGPIPE).
fn take_capped<R>(
    read: io::Result<usize>,
    pipe: &mut Option<R>,
    chunk: &[u8],
    left: &mut u64,
    truncated: &mut bool,
) -> Option<Bytes> {
    match read {
        Ok(0) | Err(_) => {
            *pipe = None;
            None
        }
        Ok(read) => {
            let kept = read.min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= kept as u64;
            if kept < read {
                *truncated = true;
                *pipe = None;
            }
            (kept > 0).then(|| Bytes::copy_from_slice(&chunk[..kept]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_layers_and_home_inside() {
        let host = |name: &str| match name {
            "PATH" => Some("/host/bin".to_owned()),
            "SECRET" => Some("x".to_owned()),
            _ => None,
        };
        let sandbox = BTreeMap::from([("A".to_owned(), "sandbox".to_owned())]);
        let mut spec = ExecSpec::argv(["true"]);
        spec.env.insert("A".into(), "request".into());
        let env = compose_env(host, &sandbox, &spec);
        assert_eq!(
            env,
            BTreeMap::from([
                ("A".to_owned(), "request".to_owned()),
                ("HOME".to_owned(), "/workspace".to_owned()),
                ("PATH".to_owned(), "/host/bin".to_owned()),
            ])
        );
        assert_eq!(
            compose_env(|_| None, &sandbox, &spec)["PATH"],
            command::DEFAULT_PATH
        );
    }

    #[test]
    fn start_failures_map_to_the_contract() {
        let spec = ExecSpec::argv(["nope"]);
        assert!(matches!(
            start_error(&spec, "/workspace", libc::ENOENT, StartStep::Exec),
            SandboxError::ProgramNotFound { .. }
        ));
        assert!(matches!(
            start_error(&spec, "/workspace", libc::EACCES, StartStep::Exec),
            SandboxError::ProgramNotExecutable { .. }
        ));
        assert!(matches!(
            start_error(&spec, "/workspace/x", libc::ENOENT, StartStep::Cwd),
            SandboxError::FileNotFound { .. }
        ));
    }
}
