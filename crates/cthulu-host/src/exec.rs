//! One-shot exec: the program runs directly under `tokio::process` (no shim: a round trip
//! should cost a few milliseconds), in a process group of its own, with both outputs read
//! concurrently into capped buffers. A stream that passes its cap is closed, so endless
//! output ends the command (EPIPE/SIGPIPE) instead of running into the timeout.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cthulu_core::{CappedBuffer, ExecOutput, ExecSpec, ExitInfo, SandboxError};
use cthulu_types::sandbox::Operation;
use rustix::fd::OwnedFd;
use tokio::io::AsyncWriteExt;

use crate::command::{compose_env, host_var, read_some};
use crate::process_groups::signal_group;
use crate::sandbox::HostSandbox;
use crate::workspace::{map_errno, open_dir_beneath};

/// How long to keep reading after the program exited: a backgrounded child may hold the
/// pipes open, and the exec must not wait for it.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;
/// Stands in for "no timeout" when a timeout does not fit an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Kills the group if the exec is abandoned (its future dropped) before the program ended.
struct GroupGuard<'a> {
    sandbox: &'a HostSandbox,
    pgid: i32,
    finished: bool,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = signal_group(self.pgid, libc::SIGKILL);
        }
        self.sandbox.exec_group_done(self.pgid);
    }
}

impl HostSandbox {
    /// Opens the working directory of a command beneath the workspace (the workspace
    /// itself when none is given).
    pub(crate) fn open_cwd(&self, cwd: Option<&str>) -> Result<OwnedFd, SandboxError> {
        let relative = match cwd {
            Some(cwd) => self.workspace.relative(cwd)?,
            None => PathBuf::new(),
        };
        let root = self.workspace.open_root()?;
        open_dir_beneath(&root, &relative)
            .map_err(|errno| map_errno(errno, "open the working directory", &relative))
    }

    pub(crate) async fn run_exec(&self, spec: ExecSpec) -> Result<ExecOutput, SandboxError> {
        let started = Instant::now();
        let sandbox_env = self.env_for(Operation::Exec)?;
        let cwd = self.open_cwd(spec.cwd.as_deref())?;
        let env = compose_env(host_var, self.workspace.path(), &sandbox_env, &spec);
        let argv = spec.command.to_argv();
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(&env)
            // The child changes into the very directory resolved above, through our
            // descriptor (inherited until exec): no path is looked up again, so nothing
            // swapped in meanwhile can redirect it.
            .current_dir(format!("/proc/self/fd/{}", cwd.as_raw_fd()))
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().map_err(|error| spawn_error(&spec, error))?;
        drop(cwd);
        let pgid = child
            .id()
            .ok_or_else(|| SandboxError::system("exec", io::Error::other("no pid")))?
            as i32;
        let mut guard = GroupGuard {
            sandbox: self,
            pgid,
            finished: false,
        };
        self.register_exec_group(pgid)?;

        let stdin_writer = match (spec.stdin, child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(tokio::spawn(async move {
                // EPIPE when the program does not read it all: fine. Dropping the pipe is
                // the EOF.
                let _ = pipe.write_all(&bytes).await;
            })),
            _ => None,
        };
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let cap = usize::try_from(spec.max_output_bytes).unwrap_or(usize::MAX);
        let (mut out, mut err) = (CappedBuffer::new(cap), CappedBuffer::new(cap));
        let (mut out_chunk, mut err_chunk) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(spec.timeout)
            .unwrap_or_else(|| now + FAR_FUTURE);
        let mut status = None;
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
                waited = child.wait(), if status.is_none() => {
                    status = Some(waited.map_err(|error| SandboxError::system("wait for the program", error))?);
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                },
                _ = tokio::time::sleep_until(deadline), if status.is_none() && !timed_out => {
                    timed_out = true;
                    // The whole group: a backgrounded grandchild goes too.
                    let _ = signal_group(pgid, libc::SIGKILL);
                },
                _ = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => break,
            }
        }
        guard.finished = true;
        drop(guard);
        if let Some(writer) = stdin_writer {
            writer.abort();
        }
        let status = status.expect("the loop ends after the wait");
        let (stdout, out_truncated) = out.into_inner();
        let (stderr, err_truncated) = err.into_inner();
        Ok(ExecOutput {
            exit: ExitInfo {
                exit_code: status.code(),
                signal: status.signal(),
                timed_out,
                truncated: out_truncated || err_truncated,
                oom_killed: false,
            },
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }
}

/// Keeps what a read brought under the cap. At EOF, and once the cap is passed, the pipe
/// is closed: a program that goes on writing gets EPIPE (or SIGPIPE) instead of blocking
/// on a full pipe or running on until its timeout, as under `| head -c <cap>`.
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

/// The contract's error for a program that could not be started.
pub(crate) fn spawn_error(spec: &ExecSpec, error: io::Error) -> SandboxError {
    match error.kind() {
        io::ErrorKind::NotFound => SandboxError::ProgramNotFound {
            program: spec.program(),
        },
        io::ErrorKind::PermissionDenied => SandboxError::ProgramNotExecutable {
            program: spec.program(),
        },
        _ if error.raw_os_error() == Some(libc::ENOEXEC) => SandboxError::ProgramNotExecutable {
            program: spec.program(),
        },
        _ => SandboxError::system("start the program", error),
    }
}
