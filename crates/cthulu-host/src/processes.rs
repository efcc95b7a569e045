//! Streamed processes: `exec_stream` starts a command under its own shim; the process is
//! then listed, re-attached and signalled through the sandbox's records of them (a
//! [`ProcessStore`]) and the files of its process directory, which outlive both the shim
//! and the server.
//!
//! The functions here serve any backend whose processes run under the [`shim`](crate::shim):
//! the host backend, and the namespace backend (whose shims have the process started by
//! a sandbox's init).

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cthulu_core::{ExecSpec, ExecStream, ExitInfo, SandboxError};
use cthulu_types::sandbox::Operation;
use cthulu_types::{ProcessInfo, ProcessState, SandboxStatus, Signal};
use tokio::io::AsyncBufReadExt;

use crate::command::{compose_env, host_var};
use crate::config::ShimCommand;
use crate::ids::{is_valid_id, random_id};
use crate::process_groups::{self, is_shim_of};
use crate::sandbox::HostSandbox;
use crate::shim::client::{send_control, AttachError, ShimStream};
use crate::shim::protocol::ClientFrame;
use crate::shim::records::{
    read_record, ExitRecord, Handshake, PidRecord, ShimSpec, SpawnFailure, EXIT_FILE, LOG_FILE,
    PID_FILE, SPEC_FILE,
};
pub use crate::state::ProcessRecord;
use crate::state::{write_atomic, PROCS_DIR};

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

/// A sandbox whose streamed processes run under shims: where their directories are, how
/// a shim starts, and its records of them (kept across restarts, in its state file).
pub trait ProcessStore: Send + Sync {
    /// The sandbox's directory; process directories are `procs/<process_id>` in it.
    fn sandbox_dir(&self) -> &Path;
    fn shim(&self) -> &ShimCommand;
    /// The records, or why the sandbox has none to show (destroyed, lost).
    fn records(&self) -> Result<Vec<ProcessRecord>, SandboxError>;
    /// Saves the record of a just-started process. A status change that happened since
    /// the start was allowed is applied to it (or the start refused).
    fn add_record(&self, record: ProcessRecord) -> Result<(), SandboxError>;
    /// Forgets the records of these processes (their directories go separately).
    fn forget_records(&self, process_ids: &[String]) -> Result<(), SandboxError>;
}

/// Reading operations (listing processes, ports, checkpoints; attaching) are allowed
/// while the sandbox exists, running or stopped: the refusal otherwise.
pub fn check_exists(status: SandboxStatus) -> Result<(), SandboxError> {
    Ok(status.check_exists()?)
}

/// `<sandbox>/procs/<process_id>`.
pub fn process_dir(sandbox_dir: &Path, process_id: &str) -> PathBuf {
    sandbox_dir.join(PROCS_DIR).join(process_id)
}

fn standing(store: &dyn ProcessStore, record: &ProcessRecord) -> Standing {
    let process_dir = process_dir(store.sandbox_dir(), &record.process_id);
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

fn find_record(store: &dyn ProcessStore, process_id: &str) -> Result<ProcessRecord, SandboxError> {
    let not_found = || SandboxError::ProcessNotFound {
        process_id: process_id.to_owned(),
    };
    if !is_valid_id(process_id, 'p') {
        return Err(not_found());
    }
    store
        .records()?
        .into_iter()
        .find(|record| record.process_id == process_id)
        .ok_or_else(not_found)
}

impl HostSandbox {
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
        start_stream(self, spec, shim_spec).await
    }
}

impl ProcessStore for HostSandbox {
    fn sandbox_dir(&self) -> &Path {
        &self.dir
    }

    fn shim(&self) -> &ShimCommand {
        &self.shim
    }

    fn records(&self) -> Result<Vec<ProcessRecord>, SandboxError> {
        let inner = self.lock();
        inner.check_exists()?;
        Ok(inner.state.processes.clone())
    }

    fn add_record(&self, record: ProcessRecord) -> Result<(), SandboxError> {
        self.register_shim_process(record)
    }

    fn forget_records(&self, process_ids: &[String]) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        inner
            .state
            .processes
            .retain(|record| !process_ids.contains(&record.process_id));
        self.persist(&inner)
    }
}

/// Starts `shim_spec` (what the backend made of `spec`: its environment, its working
/// directory) under a shim of its own, records it in `store`, and attaches to it.
pub async fn start_stream(
    store: &dyn ProcessStore,
    spec: ExecSpec,
    shim_spec: ShimSpec,
) -> Result<Box<dyn ExecStream>, SandboxError> {
    prune_finished(store);
    let process_id = random_id('p');
    let process_dir = process_dir(store.sandbox_dir(), &process_id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&process_dir)
        .map_err(|error| SandboxError::io("create", &process_dir, error))?;
    let started = start_shim(store.shim(), &spec, &shim_spec, &process_id, &process_dir).await;
    let record = match started {
        Ok(record) => record,
        Err(error) => {
            let _ = fs_err::remove_dir_all(&process_dir);
            return Err(error);
        }
    };
    let tty = record.tty;
    store.add_record(record)?;
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
    shim_command: &ShimCommand,
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
    let mut shim = tokio::process::Command::new(&shim_command.program)
        .args(&shim_command.args)
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
            SandboxError::io("start the process shim", &shim_command.program, error)
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
                let _ = process_groups::signal_process(pid as i32, libc::SIGKILL);
            }
            let _ = reaper.await;
            let log = fs_err::read_to_string(process_dir.join(LOG_FILE)).unwrap_or_default();
            Err(SandboxError::system(
                "start the process shim",
                std::io::Error::other(format!(
                    "{} gave no start handshake: {}",
                    shim_command.program.display(),
                    log.trim()
                )),
            ))
        }
    }
}

/// Every recorded process, running or finished, oldest first.
pub async fn list(store: &dyn ProcessStore) -> Result<Vec<ProcessInfo>, SandboxError> {
    store.records()?;
    prune_finished(store);
    let records = store.records()?;
    let mut processes: Vec<ProcessInfo> = records
        .iter()
        .map(|record| {
            let (state, exit) = match standing(store, record) {
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

/// A new stream of a recorded process: its kept output, then live output and its exit.
pub async fn attach(
    store: &dyn ProcessStore,
    process_id: &str,
) -> Result<Box<dyn ExecStream>, SandboxError> {
    let record = find_record(store, process_id)?;
    let process_dir = process_dir(store.sandbox_dir(), process_id);
    let stream = ShimStream::attach(process_id, &process_dir, record.tty)
        .await
        .map_err(|error| attach_error(process_id, error))?;
    Ok(Box::new(stream))
}

/// Signals a recorded process's group through its shim.
pub async fn signal(
    store: &dyn ProcessStore,
    process_id: &str,
    signal: Signal,
) -> Result<(), SandboxError> {
    let record = find_record(store, process_id)?;
    let exited = || SandboxError::invalid("process_id", format!("process {process_id} has exited"));
    match standing(store, &record) {
        Standing::Exited(_) => return Err(exited()),
        Standing::Lost => return Err(attach_error(process_id, AttachError::Lost)),
        Standing::Running => {}
    }
    let process_dir = process_dir(store.sandbox_dir(), process_id);
    match send_control(&process_dir, ClientFrame::Signal(signal.number())).await {
        Ok(()) => Ok(()),
        Err(_) if matches!(standing(store, &record), Standing::Exited(_)) => Err(exited()),
        Err(error) => Err(SandboxError::io(
            "signal through the process shim",
            process_dir,
            error,
        )),
    }
}

/// The shims of `records` (in the sandbox `sandbox_dir`) that may still run: their pids
/// and process directories.
pub fn shims_of(sandbox_dir: &Path, records: &[ProcessRecord]) -> Vec<(i32, PathBuf)> {
    records
        .iter()
        .filter_map(|record| {
            let process_dir = process_dir(sandbox_dir, &record.process_id);
            let shim_pid = record.shim_pid.or_else(|| {
                read_record::<PidRecord>(&process_dir.join(PID_FILE))
                    .ok()
                    .flatten()
                    .map(|pids| pids.shim_pid)
            })?;
            Some((shim_pid, process_dir))
        })
        .collect()
}

/// Once the processes of `shims` are dead: lets the shims tell attached clients how they
/// ended and exit, for up to `grace`, then kills whichever is still there.
pub async fn end_shims(mut shims: Vec<(i32, PathBuf)>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        shims.retain(|(shim_pid, process_dir)| is_shim_of(*shim_pid, process_dir));
        if shims.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (shim_pid, _) in shims {
        let _ = process_groups::signal_process(shim_pid, libc::SIGKILL);
    }
}

/// Forgets the oldest finished processes past [`KEEP_FINISHED`], with their directories.
fn prune_finished(store: &dyn ProcessStore) {
    let Ok(records) = store.records() else {
        return;
    };
    let mut finished: Vec<&ProcessRecord> = records
        .iter()
        .filter(|record| !matches!(standing(store, record), Standing::Running))
        .collect();
    if finished.len() <= KEEP_FINISHED {
        return;
    }
    finished.sort_by_key(|record| record.started_at_ms);
    let doomed: Vec<String> = finished[..finished.len() - KEEP_FINISHED]
        .iter()
        .map(|record| record.process_id.clone())
        .collect();
    if let Err(error) = store.forget_records(&doomed) {
        tracing::warn!(sandbox_dir = %store.sandbox_dir().display(), %error, "cannot save pruned process records");
        return;
    }
    for process_id in doomed {
        let _ = fs_err::remove_dir_all(process_dir(store.sandbox_dir(), &process_id));
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
