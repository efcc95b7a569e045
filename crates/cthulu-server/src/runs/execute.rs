//! One run, start to end: provision the sandbox (or take the given one), unpack the input
//! in its workspace, run the agent with `exec_stream` (credentials only in its
//! environment), parse its output into events as it comes, enforce the time limit and
//! cancellation by killing the agent's process group, then compute the changes and
//! destroy the sandbox unless it is kept, whatever happened before.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cthulu_core::{ExecEvent, ExecSpec, ExitInfo, SandboxHandle};
use cthulu_runs::{
    OutcomeTracker, OutputFormat, OutputParser, ProcessEnd, Redactor, RenderedCommand, RunOutcome,
};
use cthulu_types::sandbox::Operation;
use cthulu_types::{
    CreateSandboxRequest, RunEvent, RunEventBody, RunStatus, RunTimings, SandboxId, SandboxStatus,
    Signal,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::changes::{self, Tree};
use super::manager::{Input, RUN_LABEL};
use super::recorder::Recorder;
use super::store::{RunEnd, StoredRequest};
use crate::state::AppState;

/// Kept of the agent's stderr for the message of a failed run.
const STDERR_TAIL: usize = 2048;
/// Longest stderr line stored as an event.
const STDERR_LINE: usize = 4096;
/// After the kill, how long the agent's exit is waited for.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// The sandbox a run makes outlives the run's time limit by this much before the
/// server's reaper removes it, in case the run's own cleanup never happens.
const LIFETIME_MARGIN: Duration = Duration::from_secs(300);
/// Time limit of the internal commands (unpacking, reading the workspace back).
const TAR_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything a run's task needs.
pub struct Job {
    pub state: Arc<AppState>,
    pub run_id: String,
    pub stored: StoredRequest,
    pub output_format: OutputFormat,
    pub command: RenderedCommand,
    /// The credentials: only ever the agent's environment.
    pub env: BTreeMap<String, String>,
    pub redactor: Redactor,
    pub input: Option<Input>,
    pub timeout: Duration,
    pub cancel: CancellationToken,
    pub events: broadcast::Sender<RunEvent>,
}

/// The sandbox a run works in.
struct Sandbox {
    id: SandboxId,
    handle: Arc<dyn SandboxHandle>,
    /// The workspace as it was when the agent started, to diff against.
    baseline: Option<Tree>,
}

/// Why a run ended early.
enum Stop {
    Cancelled,
    Failed(String),
}

/// How the agent's part ended.
struct AgentEnd {
    status: RunStatus,
    message: Option<String>,
    result: Option<String>,
    cost_usd: Option<f64>,
    turns: Option<u64>,
}

pub async fn execute(job: Job) {
    let mut recorder = Recorder::new(
        job.state.clone(),
        job.run_id.clone(),
        job.events.clone(),
        job.state.runs.config.max_events,
    );
    recorder.status(RunStatus::Queued, None);
    let mut timings = RunTimings::default();
    let mut sandbox: Option<Sandbox> = None;
    let outcome = phases(&job, &mut recorder, &mut timings, &mut sandbox).await;

    let teardown = Instant::now();
    let (mut end, status, message) = match outcome {
        Ok(agent) => (
            RunEnd {
                result: agent.result,
                cost_usd: agent.cost_usd,
                turns: agent.turns,
                error: agent.message.clone(),
                ..RunEnd::default()
            },
            agent.status,
            agent.message,
        ),
        Err(Stop::Cancelled) => (RunEnd::default(), RunStatus::Cancelled, None),
        Err(Stop::Failed(message)) => (
            RunEnd {
                error: Some(message.clone()),
                ..RunEnd::default()
            },
            RunStatus::Failed,
            Some(message),
        ),
    };
    if let Some(sandbox) = &sandbox {
        if status != RunStatus::Cancelled && sandbox.handle.status() == SandboxStatus::Running {
            let reading = Instant::now();
            let changes = read_changes(&job, sandbox).await;
            tracing::debug!(run_id = %job.run_id, ms = millis(reading.elapsed()), "read the run's changes");
            match changes {
                Ok(changes) => end.changes = Some(changes),
                Err(problem) => {
                    tracing::warn!(run_id = %job.run_id, %problem, "cannot compute the changes of a run");
                    recorder.record(RunEventBody::Notice {
                        message: format!("changes unavailable: {problem}"),
                    });
                }
            }
        }
        if job.stored.keep {
            end.kept_sandbox = Some(sandbox.id.clone());
        } else if let Err(failure) = {
            let destroying = Instant::now();
            let destroyed = job.state.destroy(&sandbox.id).await;
            tracing::debug!(run_id = %job.run_id, ms = millis(destroying.elapsed()), "destroyed the run's sandbox");
            destroyed
        } {
            tracing::error!(run_id = %job.run_id, sandbox_id = %sandbox.id, message = %failure.message, "cannot destroy the sandbox of a run");
        }
    }
    timings.teardown_ms = millis(teardown.elapsed());
    end.timings = Some(timings);
    recorder.status(status, message);
    if let Err(error) = job.state.db.finish_run(&job.run_id, status, &end) {
        tracing::error!(run_id = %job.run_id, %error, "cannot record the end of a run");
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn set_status(job: &Job, recorder: &mut Recorder, status: RunStatus) {
    if let Err(error) = job.state.db.set_run_status(&job.run_id, status) {
        tracing::error!(run_id = %job.run_id, %error, "cannot record a run's status");
    }
    recorder.status(status, None);
}

async fn phases(
    job: &Job,
    recorder: &mut Recorder,
    timings: &mut RunTimings,
    slot: &mut Option<Sandbox>,
) -> Result<AgentEnd, Stop> {
    set_status(job, recorder, RunStatus::Provisioning);
    let started = Instant::now();
    let sandbox = slot.insert(acquire(job).await?);
    if let Err(error) = job.state.db.set_run_sandbox(&job.run_id, Some(&sandbox.id)) {
        tracing::error!(run_id = %job.run_id, %error, "cannot record a run's sandbox");
    }
    timings.provision_ms = millis(started.elapsed());
    if job.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }

    let started = Instant::now();
    copy_in(job, sandbox).await?;
    timings.copy_in_ms = millis(started.elapsed());
    if job.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }

    set_status(job, recorder, RunStatus::Running);
    let mut spec = ExecSpec::argv(job.command.argv());
    spec.env = job.env.clone();
    // Our own timer kills it first; the backend's is a backstop.
    spec.timeout = job.timeout + LIFETIME_MARGIN;
    spec.max_output_bytes = u64::MAX / 2;
    let started = Instant::now();
    let stream = sandbox.handle.exec_stream(spec).await.map_err(|error| {
        Stop::Failed(format!(
            "cannot start the agent `{}`: {error}",
            job.command.program
        ))
    })?;
    timings.start_ms = millis(started.elapsed());
    let started = Instant::now();
    let end = watch_agent(job, recorder, stream, &sandbox.handle).await;
    timings.agent_ms = millis(started.elapsed());
    end
}

/// Makes the run's sandbox, or finds the one the request named.
async fn acquire(job: &Job) -> Result<Sandbox, Stop> {
    if let Some(sandbox_id) = &job.stored.sandbox_id {
        let handle = job
            .state
            .handle(sandbox_id, Operation::Exec)
            .map_err(|failure| {
                Stop::Failed(format!("sandbox {sandbox_id}: {}", failure.message))
            })?;
        return Ok(Sandbox {
            id: sandbox_id.clone(),
            handle,
            baseline: None,
        });
    }
    let request = CreateSandboxRequest {
        backend: job.stored.backend,
        labels: BTreeMap::from([(RUN_LABEL.to_owned(), job.run_id.clone())]),
        timeout_secs: Some((job.timeout + LIFETIME_MARGIN).as_secs()),
        ..CreateSandboxRequest::default()
    };
    let record = job.state.create(&request).await.map_err(|failure| {
        Stop::Failed(format!("cannot create the sandbox: {}", failure.message))
    })?;
    let handle = job
        .state
        .handle(&record.id, Operation::Exec)
        .map_err(|failure| Stop::Failed(format!("sandbox {}: {}", record.id, failure.message)))?;
    Ok(Sandbox {
        id: record.id,
        handle,
        // A new workspace is empty: what was copied in is the baseline.
        baseline: Some(Tree::default()),
    })
}

/// Unpacks the input archive in the workspace: `tar -x` reading it on stdin, so it never
/// lands in a file of its own. Fixes the baseline of the diff.
async fn copy_in(job: &Job, sandbox: &mut Sandbox) -> Result<(), Stop> {
    if let (Some(input), Some(workspace)) = (&job.input, sandbox.handle.host_workspace()) {
        // Straight into the workspace directory: no command, no pipe. The archive is
        // unpacked beneath the directory whatever its entries say.
        let tar = input.tar.clone();
        tokio::task::spawn_blocking(move || unpack_into(&workspace, &tar))
            .await
            .map_err(|error| Stop::Failed(format!("cannot unpack the input: {error}")))?
            .map_err(|error| Stop::Failed(format!("cannot unpack the input: {error}")))?;
    } else if let Some(input) = &job.input {
        let mut spec = ExecSpec::argv(["tar", "-x", "--no-same-owner", "-f", "-"]);
        spec.stdin = Some(input.tar.clone());
        spec.timeout = TAR_TIMEOUT;
        let output = sandbox
            .handle
            .exec(spec)
            .await
            .map_err(|error| Stop::Failed(format!("cannot unpack the input: {error}")))?;
        if output.exit.exit_code != Some(0) {
            return Err(Stop::Failed(format!(
                "cannot unpack the input: tar {}: {}",
                describe_exit(&output.exit),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
    }
    sandbox.baseline = match (sandbox.baseline.take(), &job.input) {
        (Some(_fresh), Some(input)) => Some(input.tree.clone()),
        (Some(fresh), None) => Some(fresh),
        // An existing sandbox may hold anything already: read it as it is now.
        (None, _) => match workspace_tree(job, sandbox).await {
            Ok(tree) => Some(tree),
            Err(problem) => {
                tracing::warn!(run_id = %job.run_id, %problem, "cannot read the workspace before the run");
                None
            }
        },
    };
    Ok(())
}

fn describe_exit(exit: &ExitInfo) -> String {
    match (exit.exit_code, exit.signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended without a status".to_owned(),
    }
}

/// Unpacks the uncompressed tar `archive` into the host-side `workspace`, its entries
/// owned by the sandbox's root.
fn unpack_into(workspace: &cthulu_core::HostWorkspace, archive: &[u8]) -> std::io::Result<()> {
    use cthulu_host::archive::{unpack_tar, OwnerRange, RestoreOptions, Tree as ArchiveTree};
    let options = RestoreOptions {
        overlay: false,
        owners: workspace
            .owner
            .map(|(uid, gid)| OwnerRange { uid, gid, count: 1 }),
    };
    let tree = ArchiveTree {
        name: "",
        path: &workspace.path,
    };
    unpack_tar(&[tree], archive, options, false)
}

/// A sink that refuses to grow past `limit` bytes.
struct Capped {
    bytes: Vec<u8>,
    limit: u64,
}

impl std::io::Write for Capped {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() as u64 + buffer.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "the workspace is larger than {} bytes",
                self.limit
            )));
        }
        self.bytes.extend_from_slice(buffer);
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The workspace as a tree: read from the host side where the backend has the workspace
/// there (a walk that never follows a symlink), else with `tar -c` in the sandbox.
async fn workspace_tree(job: &Job, sandbox: &Sandbox) -> Result<Tree, String> {
    if let Some(workspace) = sandbox.handle.host_workspace() {
        let limit = job.state.runs.config.max_workspace_bytes;
        let archive = tokio::task::spawn_blocking(move || {
            let tree = cthulu_host::archive::Tree {
                name: "",
                path: &workspace.path,
            };
            let sink = Capped {
                bytes: Vec::new(),
                limit,
            };
            cthulu_host::archive::write_tar(&[tree], sink, Default::default())
                .map(|sink| sink.bytes)
        })
        .await
        .map_err(|error| format!("cannot read the workspace: {error}"))?
        .map_err(|error| format!("cannot read the workspace: {error}"))?;
        return Tree::from_tar(&archive).map_err(|error| error.to_string());
    }
    workspace_tree_in_sandbox(job, sandbox).await
}

/// The workspace as a tree, read with `tar -c` on the sandbox's side.
async fn workspace_tree_in_sandbox(job: &Job, sandbox: &Sandbox) -> Result<Tree, String> {
    let mut spec = ExecSpec::argv(["tar", "-c", "-f", "-", "."]);
    spec.timeout = TAR_TIMEOUT;
    spec.max_output_bytes = job.state.runs.config.max_workspace_bytes;
    let output = sandbox
        .handle
        .exec(spec)
        .await
        .map_err(|error| format!("cannot read the workspace: {error}"))?;
    if output.exit.truncated {
        return Err(format!(
            "the workspace is larger than {} bytes",
            job.state.runs.config.max_workspace_bytes
        ));
    }
    // GNU tar exits 1 when a file changed while it read it; the archive is still whole.
    if !matches!(output.exit.exit_code, Some(0 | 1)) {
        return Err(format!(
            "tar {}: {}",
            describe_exit(&output.exit),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Tree::from_tar(&output.stdout).map_err(|error| error.to_string())
}

/// Compares the workspace with the baseline; keeps the archive of changed files.
async fn read_changes(job: &Job, sandbox: &Sandbox) -> Result<cthulu_types::RunChanges, String> {
    let baseline = sandbox
        .baseline
        .as_ref()
        .ok_or("the workspace could not be read before the run")?;
    let after = workspace_tree(job, sandbox).await?;
    let config = &job.state.runs.config;
    let comparison = changes::compare(baseline, &after, &job.redactor, config.max_diff_bytes);
    if !comparison.changes.changed.is_empty() {
        let path = job.state.runs.changes_archive(&job.run_id);
        let write = || -> std::io::Result<()> {
            fs_err::create_dir_all(path.parent().expect("the archive is in a run directory"))?;
            fs_err::write(&path, &comparison.archive)
        };
        write().map_err(|error| format!("cannot keep the changed files: {error}"))?;
    }
    Ok(comparison.changes)
}

/// Splits stderr into redacted lines for events, and keeps its tail.
struct StderrLines {
    partial: Vec<u8>,
    tail: VecDeque<u8>,
}

impl StderrLines {
    fn new() -> Self {
        StderrLines {
            partial: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    fn push(&mut self, chunk: &[u8], redactor: &Redactor) -> Vec<String> {
        self.tail.extend(chunk);
        while self.tail.len() > STDERR_TAIL {
            self.tail.pop_front();
        }
        let mut lines = Vec::new();
        for byte in chunk {
            if *byte == b'\n' || self.partial.len() >= STDERR_LINE {
                lines.push(redactor.redact(&String::from_utf8_lossy(&self.partial)));
                self.partial.clear();
                if *byte == b'\n' {
                    continue;
                }
            }
            self.partial.push(*byte);
        }
        lines
    }

    fn finish(&mut self, redactor: &Redactor) -> Option<String> {
        (!self.partial.is_empty()).then(|| {
            let line = redactor.redact(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
            line
        })
    }

    fn tail(&self, redactor: &Redactor) -> String {
        let bytes: Vec<u8> = self.tail.iter().copied().collect();
        redactor.redact_cut(String::from_utf8_lossy(&bytes).trim())
    }
}

/// Follows the agent until it exits, is cancelled or runs out of time.
async fn watch_agent(
    job: &Job,
    recorder: &mut Recorder,
    mut stream: Box<dyn cthulu_core::ExecStream>,
    handle: &Arc<dyn SandboxHandle>,
) -> Result<AgentEnd, Stop> {
    let mut parser = OutputParser::new(job.output_format, job.redactor.clone());
    let mut tracker = OutcomeTracker::new(job.output_format);
    let mut stderr = StderrLines::new();
    let deadline = tokio::time::sleep(job.timeout);
    tokio::pin!(deadline);
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let grace = tokio::time::sleep_until(far);
    tokio::pin!(grace);
    let mut killed_for: Option<ProcessEnd> = None;
    let mut exit: Option<ExitInfo> = None;
    let record_agent = |events: Vec<cthulu_runs::AgentEvent>,
                        tracker: &mut OutcomeTracker,
                        recorder: &mut Recorder| {
        for event in events {
            tracker.observe(&event);
            let event = serde_json::to_value(&event).expect("an agent event serializes");
            recorder.record(RunEventBody::Agent { event });
        }
    };
    loop {
        tokio::select! {
            event = stream.next_event() => match event {
                Some(ExecEvent::Stdout(bytes)) => {
                    record_agent(parser.push(&bytes), &mut tracker, recorder);
                }
                Some(ExecEvent::Stderr(bytes)) => {
                    for line in stderr.push(&bytes, &job.redactor) {
                        recorder.record(RunEventBody::Stderr { line });
                    }
                }
                Some(ExecEvent::Exit(info)) => {
                    exit = Some(info);
                    break;
                }
                None => break,
            },
            _ = job.cancel.cancelled(), if killed_for.is_none() => {
                killed_for = Some(ProcessEnd::Cancelled);
                kill(job, &mut stream).await;
                grace.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
            }
            _ = &mut deadline, if killed_for.is_none() => {
                killed_for = Some(ProcessEnd::TimedOut(job.timeout));
                kill(job, &mut stream).await;
                grace.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
            }
            _ = &mut grace => {
                tracing::warn!(run_id = %job.run_id, "the agent did not report its exit after the kill");
                break;
            }
        }
    }
    record_agent(parser.finish(), &mut tracker, recorder);
    if let Some(line) = stderr.finish(&job.redactor) {
        recorder.record(RunEventBody::Stderr { line });
    }
    let process_end = match (killed_for, exit) {
        (Some(ProcessEnd::Cancelled), _) => return Err(Stop::Cancelled),
        (Some(end), _) => end,
        (None, Some(info)) if info.timed_out => ProcessEnd::TimedOut(job.timeout),
        (
            None,
            Some(ExitInfo {
                exit_code: Some(code),
                ..
            }),
        ) => ProcessEnd::Exited(code),
        (
            None,
            Some(ExitInfo {
                signal: Some(signal),
                ..
            }),
        ) => ProcessEnd::Signaled(signal),
        (None, _) => {
            return Err(Stop::Failed(sandbox_gone(handle).unwrap_or_else(|| {
                "the agent's output ended without an exit status".to_owned()
            })))
        }
    };
    if let Some(message) = sandbox_gone(handle) {
        return Err(Stop::Failed(message));
    }
    let summary = tracker.finish(process_end, parser.output_tail());
    let stderr_tail = stderr.tail(&job.redactor);
    let with_stderr = |message: String| {
        if stderr_tail.is_empty() {
            message
        } else {
            format!("{message}; stderr: {stderr_tail}")
        }
    };
    let (status, message) = match summary.outcome {
        RunOutcome::Succeeded => (RunStatus::Succeeded, None),
        RunOutcome::Failed { message } | RunOutcome::NoResult { message } => {
            (RunStatus::Failed, Some(with_stderr(message)))
        }
        RunOutcome::TimedOut { message } => (RunStatus::TimedOut, Some(message)),
        RunOutcome::Cancelled => return Err(Stop::Cancelled),
    };
    Ok(AgentEnd {
        status,
        message,
        result: summary.text,
        cost_usd: summary.cost_usd,
        turns: summary.turns,
    })
}

/// Kills the agent's whole process group.
async fn kill(job: &Job, stream: &mut Box<dyn cthulu_core::ExecStream>) {
    if let Err(error) = stream.signal(Signal::Kill).await {
        tracing::warn!(run_id = %job.run_id, %error, "cannot kill the agent");
    }
}

/// Why the sandbox cannot go on, when it has died under the run.
fn sandbox_gone(handle: &Arc<dyn SandboxHandle>) -> Option<String> {
    let status = handle.status();
    (status != SandboxStatus::Running).then(|| {
        format!(
            "the sandbox {} ended during the run (it is {})",
            handle.id(),
            status.as_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_split_into_redacted_lines_with_a_tail() {
        let redactor = Redactor::new(["sk-secret-12345"]);
        let mut lines = StderrLines::new();
        assert_eq!(
            lines.push(b"first sk-secret-12345\nsec", &redactor),
            ["first [redacted]"]
        );
        assert!(lines.push(b"ond", &redactor).is_empty());
        assert_eq!(lines.finish(&redactor).as_deref(), Some("second"));
        assert_eq!(lines.tail(&redactor), "first [redacted]\nsecond");
    }
}
