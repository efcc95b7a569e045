//! Streamed processes: `exec_stream` starts a command under its own shim; the process is
//! then listed, re-attached and signalled through the records of `state.json` and the
//! files of its process directory, which outlive both the shim and the server.

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cthulu_core::{ExecSpec, ExecStream, ExitInfo, SandboxError};
use cthulu_types::sandbox::Operation;
use cthulu_types::{ProcessInfo, ProcessState, Signal};
use tokio::io::AsyncBufReadExt;

use crate::command::{compose_env, host_var};
use crate::ids::{is_valid_id, random_id};
use crate::process_groups::is_shim_of;
use crate::sandbox::HostSandbox;
use crate::shim::client::{send_control, AttachError, ShimStream};
use crate::shim::protocol::ClientFrame;
use crate::shim::records::{
    read_record, ExitRecord, Handshake, PidRecord, ShimSpec, SpawnFailure, EXIT_FILE, LOG_FILE,
    PID_FILE, SPEC_FILE,
};
use crate::state::{write_atomic, ProcessRecord};

/// Finished (or lost) processes kept per sandbox; older ones go, with their directories.
const KEEP_FINISHED: usize = 100;
/// How long a shim may take to start its process and say so.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a recorded process stands.
enum Standing {
    Running,
    Exited(ExitInfo),
    Lost,
}

impl HostSandbox {
    fn standing(&self, record: &ProcessRecord) -> Standing {
        let process_dir = self.process_dir(&record.process_id);
        if let Ok(Some(exit)) = read_record::<ExitRecord>(&process_dir.join(EXIT_FILE)) {
            return Standing::Exited(exit.exit);
        }
        let shim_pid = record.shim_pid.or_else(|| {
            read_record::<PidRecord>(&process_dir.join(PID_FILE))
                .ok()
                .flatten()
                .map(|pids| pids.shim_pid)
        });
        match shim_pid {
            Some(pid) if is_shim_of(pid, &process_dir) => Standing::Running,
            // The shim may have written exit.json just after we looked.
            _ => match read_record::<ExitRecord>(&process_dir.join(EXIT_FILE)) {
                Ok(Some(exit)) => Standing::Exited(exit.exit),
                _ => Standing::Lost,
            },
        }
    }

    fn find_record(&self, process_id: &str) -> Result<ProcessRecord, SandboxError> {
        let not_found = || SandboxError::ProcessNotFound {
            process_id: process_id.to_owned(),
        };
        if !is_valid_id(process_id, 'p') {
            return Err(not_found());
        }
        let inner = self.lock();
        inner.check_exists()?;
        inner
            .state
            .process(process_id)
            .cloned()
            .ok_or_else(not_found)
    }

    pub(crate) async fn start_stream(
        &self,
        spec: ExecSpec,
    ) -> Result<Box<dyn ExecStream>, SandboxError> {
        let sandbox_env = self.env_for(Operation::Exec)?;
        let cwd_handle = self.open_cwd(spec.cwd.as_deref())?;
        // The shim is another process: it gets the resolved path.
        let cwd = fs_err::read_link(format!("/proc/self/fd/{}", cwd_handle.as_raw_fd()))
            .map_err(|error| SandboxError::system("resolve the working directory", error))?;
        drop(cwd_handle);
        let shim_spec = ShimSpec {
            argv: spec.command.to_argv(),
            env: compose_env(host_var, self.workspace.path(), &sandbox_env, &spec),
            cwd,
            tty: spec.tty,
            detach: spec.detach,
            timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
            max_output_bytes: spec.max_output_bytes,
        };
        self.prune_finished();

        let process_id = random_id('p');
        let process_dir = self.process_dir(&process_id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&process_dir)
            .map_err(|error| SandboxError::io("create", &process_dir, error))?;
        let started = self
            .start_shim(&spec, &shim_spec, &process_id, &process_dir)
            .await;
        let record = match started {
            Ok(record) => record,
            Err(error) => {
                let _ = fs_err::remove_dir_all(&process_dir);
                return Err(error);
            }
        };
        let tty = record.tty;
        self.register_shim_process(record)?;
        let mut stream = ShimStream::attach(&process_id, &process_dir, tty)
            .await
            .map_err(|error| attach_error(&process_id, error))?;
        if let Some(stdin) = spec.stdin {
            stream.write_stdin(&stdin).await?;
            stream.close_stdin().await?;
        }
        Ok(Box::new(stream))
    }

    /// Writes the spec, starts the shim and reads its handshake.
    async fn start_shim(
        &self,
        spec: &ExecSpec,
        shim_spec: &ShimSpec,
        process_id: &str,
        process_dir: &Path,
    ) -> Result<ProcessRecord, SandboxError> {
        write_atomic(
            &process_dir.join(SPEC_FILE),
            &serde_json::to_vec(shim_spec).expect("shim spec serializes"),
        )
        .map_err(|error| SandboxError::io("write", process_dir.join(SPEC_FILE), error))?;
        let log = fs_err::File::create(process_dir.join(LOG_FILE))
            .map_err(|error| SandboxError::io("create", process_dir.join(LOG_FILE), error))?;
        let mut shim = tokio::process::Command::new(&self.shim.program)
            .args(&self.shim.args)
            .arg(process_dir)
            // The shim needs nothing of the server's environment; the process gets the
            // environment of the spec.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.into_parts().0))
            .kill_on_drop(false)
            .spawn()
            .map_err(|error| {
                SandboxError::io("start the process shim", &self.shim.program, error)
            })?;
        let stdout = shim.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        // The shim outlives this call; reap it whenever it exits.
        let shim_pid = shim.id();
        let reaper = tokio::spawn(async move {
            let _ = shim.wait().await;
        });
        let handshake = match read {
            Ok(Ok(_)) => serde_json::from_str::<Handshake>(line.trim()).ok(),
            _ => None,
        };
        match handshake {
            Some(Handshake::Started {
                shim_pid,
                child_pid,
            }) => Ok(ProcessRecord {
                process_id: process_id.to_owned(),
                command: spec.command.display(),
                detached: spec.detach,
                tty: spec.tty.is_some(),
                started_at_ms: cthulu_types::now_ms(),
                shim_pid: Some(shim_pid),
                child_pgid: Some(child_pid),
            }),
            Some(Handshake::Failed { failure, message }) => Err(match failure {
                SpawnFailure::NotFound => SandboxError::ProgramNotFound {
                    program: spec.program(),
                },
                SpawnFailure::NotExecutable => SandboxError::ProgramNotExecutable {
                    program: spec.program(),
                },
                SpawnFailure::Other => {
                    SandboxError::system("start the program", std::io::Error::other(message))
                }
            }),
            None => {
                if let Some(pid) = shim_pid {
                    let _ = crate::process_groups::signal_process(pid as i32, libc::SIGKILL);
                }
                let _ = reaper.await;
                let log = fs_err::read_to_string(process_dir.join(LOG_FILE)).unwrap_or_default();
                Err(SandboxError::system(
                    "start the process shim",
                    std::io::Error::other(format!(
                        "{} gave no start handshake: {}",
                        self.shim.program.display(),
                        log.trim()
                    )),
                ))
            }
        }
    }

    pub(crate) async fn process_list(&self) -> Result<Vec<ProcessInfo>, SandboxError> {
        self.lock().check_exists()?;
        self.prune_finished();
        let records = self.lock().state.processes.clone();
        let mut processes: Vec<ProcessInfo> = records
            .iter()
            .map(|record| {
                let (state, exit) = match self.standing(record) {
                    Standing::Running => (ProcessState::Running, None),
                    Standing::Exited(exit) => (ProcessState::Exited, Some(exit)),
                    Standing::Lost => (ProcessState::Lost, None),
                };
                ProcessInfo {
                    id: record.process_id.clone(),
                    command: record.command.clone(),
                    state,
                    detached: record.detached,
                    tty: record.tty,
                    exit_code: exit.and_then(|exit| exit.exit_code),
                    signal: exit.and_then(|exit| exit.signal),
                    started_at_ms: record.started_at_ms,
                }
            })
            .collect();
        processes.sort_by_key(|process| process.started_at_ms);
        Ok(processes)
    }

    pub(crate) async fn attach_to(
        &self,
        process_id: &str,
    ) -> Result<Box<dyn ExecStream>, SandboxError> {
        let record = self.find_record(process_id)?;
        let stream = ShimStream::attach(process_id, &self.process_dir(process_id), record.tty)
            .await
            .map_err(|error| attach_error(process_id, error))?;
        Ok(Box::new(stream))
    }

    pub(crate) async fn signal_to(
        &self,
        process_id: &str,
        signal: Signal,
    ) -> Result<(), SandboxError> {
        let record = self.find_record(process_id)?;
        let exited =
            || SandboxError::invalid("process_id", format!("process {process_id} has exited"));
        match self.standing(&record) {
            Standing::Exited(_) => return Err(exited()),
            Standing::Lost => return Err(attach_error(process_id, AttachError::Lost)),
            Standing::Running => {}
        }
        let process_dir = self.process_dir(process_id);
        match send_control(&process_dir, ClientFrame::Signal(signal.number())).await {
            Ok(()) => Ok(()),
            Err(_) if matches!(self.standing(&record), Standing::Exited(_)) => Err(exited()),
            Err(error) => Err(SandboxError::io(
                "signal through the process shim",
                process_dir,
                error,
            )),
        }
    }

    /// Forgets the oldest finished processes past [`KEEP_FINISHED`], with their
    /// directories.
    fn prune_finished(&self) {
        let records = self.lock().state.processes.clone();
        let mut finished: Vec<&ProcessRecord> = records
            .iter()
            .filter(|record| !matches!(self.standing(record), Standing::Running))
            .collect();
        if finished.len() <= KEEP_FINISHED {
            return;
        }
        finished.sort_by_key(|record| record.started_at_ms);
        let doomed: Vec<String> = finished[..finished.len() - KEEP_FINISHED]
            .iter()
            .map(|record| record.process_id.clone())
            .collect();
        {
            let mut inner = self.lock();
            inner
                .state
                .processes
                .retain(|record| !doomed.contains(&record.process_id));
            if let Err(error) = self.persist(&inner) {
                tracing::warn!(sandbox_id = %self.sandbox_id, %error, "cannot save pruned process records");
                return;
            }
        }
        for process_id in doomed {
            let _ = fs_err::remove_dir_all(self.process_dir(&process_id));
        }
    }
}

fn attach_error(process_id: &str, error: AttachError) -> SandboxError {
    match error {
        AttachError::Lost => SandboxError::invalid(
            "process_id",
            format!(
                "process {process_id} is lost: its shim is gone and recorded no exit (the machine may have rebooted)"
            ),
        ),
        AttachError::Io(error) => SandboxError::system("attach to the process shim", error),
    }
}
