//! One-shot exec: pipes made here, handed to the sandbox's init with the request; init
//! forks the command inside every namespace, in a process group of its own, and reports
//! its exit on the same connection. Output is read into capped buffers exactly as on the
//! host backend: a stream past its cap is closed, so endless output ends the command.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cthulu_core::path::display_path;
use cthulu_core::{CappedBuffer, ExecOutput, ExecSpec, ExitInfo, SandboxError};
use cthulu_types::sandbox::Operation;
use rustix::pipe::PipeFlags;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::protocol::{self, ExecRequest, Request, Response, StartStep};
use crate::sandbox::NamespaceSandbox;
use cthulu_host::files::blocking;
use cthulu_host::workspace::{map_errno, open_dir_beneath};

/// How long to keep reading after the program exited: a backgrounded child may hold the
/// pipes open, and the exec must not wait for it.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;
/// Stands in for "no timeout" when a timeout does not fit an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Host variables a sandboxed command may see, when the host has them.
const HOST_ALLOWLIST: [&str; 3] = ["PATH", "LANG", "TERM"];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// HOME and default cwd inside the sandbox.
const WORKSPACE: &str = "/workspace";

/// The complete environment of a command: the host allowlist, then `HOME=/workspace`,
/// then the sandbox's env, then the request's (each layer wins over the one before).
pub(crate) fn compose_env(
    host: impl Fn(&str) -> Option<String>,
    sandbox_env: &BTreeMap<String, String>,
    spec: &ExecSpec,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for name in HOST_ALLOWLIST {
        if let Some(value) = host(name) {
            env.insert(name.to_owned(), value);
        }
    }
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    env.insert("HOME".to_owned(), WORKSPACE.to_owned());
    env.extend(sandbox_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
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

    pub(crate) async fn run_exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        let started = Instant::now();
        self.check(Operation::Exec)?;
        let cwd = self.inside_cwd(spec.cwd.as_deref())?;
        let env = compose_env(|name| std::env::var(name).ok(), &self.env, &spec);
        let request = Request::Exec(ExecRequest {
            argv: spec.command.to_argv(),
            env: env.into_iter().collect(),
            cwd: cwd.clone(),
        });
        let (stdin_read, stdin_write) = match spec.stdin {
            Some(_) => {
                let (read, write) = pipe()?;
                (read, Some(write))
            }
            None => {
                let null = fs_err::File::open("/dev/null")
                    .map_err(|error| SandboxError::io("open", "/dev/null", error))?;
                (OwnedFd::from(null.into_parts().0), None)
            }
        };
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let oom_kills_before = self.cgroups.oom_kills();
        let socket = self.socket.clone();
        let (connection, response) = blocking("exec", move || {
            let connect = || -> io::Result<(UnixStream, Option<Response>)> {
                let mut connection = UnixStream::connect(&socket)?;
                protocol::send(
                    &connection,
                    &request,
                    &[
                        stdin_read.as_fd(),
                        stdout_write.as_fd(),
                        stderr_write.as_fd(),
                    ],
                )?;
                // Only the command holds the write ends now: EOF comes when it (and its
                // children) close them.
                drop((stdin_read, stdout_write, stderr_write));
                let response = protocol::receive::<Response>(&mut connection)?;
                Ok((connection, response.map(|(response, _)| response)))
            };
            connect()
                .map_err(|error| SandboxError::io("reach the sandbox's init at", &socket, error))
        })
        .await
        .map_err(|error| self.init_gone().unwrap_or(error))?;
        match response {
            Some(Response::Started { .. }) => {}
            Some(Response::StartFailed { errno, during }) => {
                return Err(start_error(&spec, &cwd, errno, during))
            }
            other => {
                return Err(SandboxError::system(
                    "start the program",
                    io::Error::other(format!("the sandbox's init answered {other:?}")),
                ))
            }
        }
        connection
            .set_nonblocking(true)
            .map_err(|error| SandboxError::system("exec", error))?;
        let connection = tokio::net::UnixStream::from_std(connection)
            .map_err(|error| SandboxError::system("exec", error))?;
        // Dropping these (an abandoned exec) closes the connection: init kills the group.
        let (mut from_init, mut to_init) = connection.into_split();

        let stdin_writer = match (spec.stdin, stdin_write) {
            (Some(bytes), Some(pipe)) => {
                let mut pipe = tokio::net::unix::pipe::Sender::from_owned_fd(pipe)
                    .map_err(|error| SandboxError::system("exec", error))?;
                Some(tokio::spawn(async move {
                    // EPIPE when the program does not read it all: fine. Dropping the
                    // pipe is the EOF.
                    let _ = pipe.write_all(&bytes).await;
                }))
            }
            _ => None,
        };
        let receiver = |fd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|error| SandboxError::system("exec", error))
        };
        let mut stdout = Some(receiver(stdout_read)?);
        let mut stderr = Some(receiver(stderr_read)?);
        let cap = usize::try_from(spec.max_output_bytes).unwrap_or(usize::MAX);
        let (mut out, mut err) = (CappedBuffer::new(cap), CappedBuffer::new(cap));
        let (mut out_chunk, mut err_chunk) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(spec.timeout)
            .unwrap_or_else(|| now + FAR_FUTURE);
        let exit = read_exit(&mut from_init);
        tokio::pin!(exit);
        let mut status: Option<(Option<i32>, Option<i32>)> = None;
        let mut timed_out = false;
        let mut drain_until = None;
        while status.is_none() || stdout.is_some() || stderr.is_some() {
            tokio::select! {
                read = read_some(&mut stdout, &mut out_chunk) => {
                    read_into(read, &mut stdout, &out_chunk, &mut out);
                },
                read = read_some(&mut stderr, &mut err_chunk) => {
                    read_into(read, &mut stderr, &err_chunk, &mut err);
                },
                exited = &mut exit, if status.is_none() => {
                    status = Some(exited?);
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                },
                _ = tokio::time::sleep_until(deadline), if status.is_none() && !timed_out => {
                    timed_out = true;
                    // The whole group: a backgrounded grandchild goes too.
                    let kill = protocol::encode(&Request::SignalGroup { signal: libc::SIGKILL });
                    to_init
                        .write_all(&kill)
                        .await
                        .map_err(|error| SandboxError::system("kill the timed-out command", error))?;
                },
                _ = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => break,
            }
        }
        if let Some(writer) = stdin_writer {
            writer.abort();
        }
        let (exit_code, signal) = status.expect("the loop ends after the exit");
        // The kernel counts OOM kills per memory group: one during this exec that it did
        // not survive is reported as its cause (in a pipeline the killed process may not
        // be the command itself, whose exit is then 137 from the shell).
        let oom_killed = exit_code != Some(0)
            && matches!(
                (oom_kills_before, self.cgroups.oom_kills()),
                (Some(before), Some(after)) if after > before
            );
        let (stdout, out_truncated) = out.into_inner();
        let (stderr, err_truncated) = err.into_inner();
        Ok(ExecOutput {
            exit: ExitInfo {
                exit_code,
                signal,
                timed_out,
                truncated: out_truncated || err_truncated,
                oom_killed,
            },
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }
}

/// Waits for init's `Exited` on the exec connection.
async fn read_exit(
    from_init: &mut tokio::net::unix::OwnedReadHalf,
) -> Result<(Option<i32>, Option<i32>), SandboxError> {
    let lost = |detail: String| {
        SandboxError::system(
            "wait for the program",
            io::Error::other(format!("the sandbox's init {detail}")),
        )
    };
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

/// Reads from `pipe`; never completes once the pipe is closed (`None`).
async fn read_some(
    pipe: &mut Option<impl AsyncRead + Unpin>,
    buffer: &mut [u8],
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buffer).await,
        None => std::future::pending().await,
    }
}

/// Keeps what a read brought under the cap. At EOF, and once the cap is passed, the pipe
/// is closed: a program that goes on writing gets EPIPE (or SIGPIPE).
fn read_into<R>(
    read: io::Result<usize>,
    pipe: &mut Option<R>,
    chunk: &[u8],
    buffer: &mut CappedBuffer,
) {
    match read {
        Ok(0) | Err(_) => *pipe = None,
        Ok(read) => {
            buffer.push(&chunk[..read]);
            if buffer.is_truncated() {
                *pipe = None;
            }
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
        assert_eq!(compose_env(|_| None, &sandbox, &spec)["PATH"], DEFAULT_PATH);
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
