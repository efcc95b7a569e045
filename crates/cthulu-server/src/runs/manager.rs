//! [`RunManager`]: checks a run request, records the run and starts its task
//! ([`super::execute`]); keeps, per live run, the way to cancel it and the channel its
//! events are broadcast on; after a restart, reports the runs that were live as
//! interrupted and removes their sandboxes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cthulu_runs::{AgentDefinition, AgentRegistry, Redactor, RunRequest};
use cthulu_types::runs::DEFAULT_AGENT;
use cthulu_types::sandbox::Operation;
use cthulu_types::{CreateRunRequest, ErrorCode, Run, RunEvent, SandboxId};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::changes::{self, ChangesError, Tree};
use super::config::RunsConfig;
use super::execute::{self, Job};
use super::store::StoredRequest;
use crate::error::{ApiFailure, ApiResult};
use crate::state::AppState;

/// Label put on the sandbox a run makes: `cthulu.run=<run_id>`.
pub const RUN_LABEL: &str = "cthulu.run";
/// Buffered events per live run for slow SSE clients; past it they re-read the database.
const BROADCAST_CAPACITY: usize = 1024;
/// How long a cancel waits for the run to wind down before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

struct LiveRun {
    cancel: CancellationToken,
    events: broadcast::Sender<RunEvent>,
    done: watch::Receiver<bool>,
    task: Option<tokio::task::AbortHandle>,
}

pub struct RunManager {
    pub config: RunsConfig,
    pub registry: AgentRegistry,
    /// `$CTHULU_HOME/runs`: one directory per run holding `changes.tar`.
    pub dir: PathBuf,
    live: Mutex<HashMap<String, LiveRun>>,
}

/// A live run's broadcast, as an SSE client subscribes to it.
pub struct Subscription {
    pub events: broadcast::Receiver<RunEvent>,
}

/// The input archive: as unpacked in the sandbox, and read into a tree for the diff.
pub struct Input {
    pub tar: Vec<u8>,
    pub tree: Tree,
}

impl RunManager {
    pub fn new(config: RunsConfig, registry: AgentRegistry, dir: PathBuf) -> RunManager {
        RunManager {
            config,
            registry,
            dir,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveRun>> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The largest `POST /api/v1/runs` body: the input archive in base64 and the rest.
    pub fn max_request_body(&self) -> usize {
        (self.config.max_input_bytes.saturating_mul(4) / 3 + 1024 * 1024) as usize
    }

    pub fn changes_archive(&self, run_id: &str) -> PathBuf {
        self.dir.join(run_id).join("changes.tar")
    }

    fn too_large(&self, what: &str, size: Option<u64>) -> ApiFailure {
        let size = size
            .map(|size| format!(" ({size} bytes)"))
            .unwrap_or_default();
        ApiFailure::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the {what}{size} is larger than the server's limit of {} bytes",
                self.config.max_input_bytes
            ),
        )
        .with_hint("leave build output out (`cthulu agent run --exclude target`), or raise the limit with `cthulu serve --max-run-input`")
    }

    /// Decodes and checks the input archive.
    fn input(&self, encoded: &str) -> ApiResult<Input> {
        let limit = self.config.max_input_bytes;
        // Checked before decoding, so an oversized archive costs no memory.
        let decoded_len = (encoded.len() as u64 / 4) * 3;
        if decoded_len > limit + 3 {
            return Err(self.too_large("input archive", Some(decoded_len)));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|error| {
                ApiFailure::bad_request(format!("input_archive is not valid base64: {error}"))
            })?;
        if bytes.len() as u64 > limit {
            return Err(self.too_large("input archive", Some(bytes.len() as u64)));
        }
        let tar = changes::plain_tar(bytes, limit).map_err(|error| match error {
            ChangesError::TooLarge { .. } => self.too_large("unpacked input archive", None),
            other => ApiFailure::bad_request(format!("input_archive: {other}")),
        })?;
        let tree = Tree::from_tar(&tar)
            .map_err(|error| ApiFailure::bad_request(format!("input_archive: {error}")))?;
        Ok(Input { tar, tree })
    }

    fn definition(&self, name: &str) -> ApiResult<&AgentDefinition> {
        self.registry.get(name).map_err(|error| {
            ApiFailure::bad_request(error.to_string())
                .with_hint("agents are added with `cthulu serve --agents FILE` (docs/api.md, Runs)")
        })
    }

    /// Checks the request, records the run and starts it.
    pub fn create(&self, state: &Arc<AppState>, request: CreateRunRequest) -> ApiResult<Run> {
        let agent = request
            .agent
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENT.to_owned());
        let definition = self.definition(&agent)?.clone();
        if request.prompt.trim().is_empty() {
            return Err(ApiFailure::bad_request("the prompt is empty"));
        }
        if request.sandbox_id.is_some() && request.backend.is_some() {
            return Err(ApiFailure::bad_request(
                "give either backend (a new sandbox) or sandbox_id (an existing one), not both",
            ));
        }
        if request.timeout_secs == Some(0) {
            return Err(ApiFailure::bad_request("timeout_secs must be at least 1"));
        }
        cthulu_types::exec::check_env(&request.env)?;
        let names: Vec<&str> = request.env.keys().map(String::as_str).collect();
        definition
            .check_env(&names)
            .map_err(|error| ApiFailure::bad_request(error.to_string()).with_hint(
                "pass credentials by name: `cthulu agent run --pass-env ANTHROPIC_API_KEY` (API: \"env\")",
            ))?;
        let command = definition
            .render(&RunRequest {
                prompt: request.prompt.clone(),
                allowed_tools: request.allowed_tools.clone(),
                system_prompt: request.system_prompt.clone(),
                model: request.model.clone(),
                max_turns: request.max_turns,
            })
            .map_err(|error| ApiFailure::bad_request(error.to_string()))?;
        let input = request
            .input_archive
            .as_deref()
            .map(|encoded| self.input(encoded))
            .transpose()?;
        if let Some(sandbox_id) = &request.sandbox_id {
            state.handle(sandbox_id, Operation::Exec)?;
        }
        let timeout = request
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(super::config::DEFAULT_TIMEOUT);

        let run_id = SandboxId::generate().to_string();
        let stored = StoredRequest {
            prompt: request.prompt.clone(),
            agent: agent.clone(),
            backend: request.backend,
            sandbox_id: request.sandbox_id.clone(),
            allowed_tools: request.allowed_tools.clone(),
            system_prompt: request.system_prompt.clone(),
            model: request.model.clone(),
            max_turns: request.max_turns,
            env_names: request.env.keys().cloned().collect(),
            timeout_secs: timeout.as_secs(),
            keep: request.keep || request.sandbox_id.is_some(),
            input_bytes: input.as_ref().map_or(0, |input| input.tar.len() as u64),
        };
        state
            .db
            .insert_run(&run_id, &stored, cthulu_types::now_ms())?;

        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (done_sender, done) = watch::channel(false);
        let cancel = CancellationToken::new();
        self.live().insert(
            run_id.clone(),
            LiveRun {
                cancel: cancel.clone(),
                events: events.clone(),
                done,
                task: None,
            },
        );
        let job = Job {
            state: state.clone(),
            run_id: run_id.clone(),
            stored,
            output_format: definition.output_format,
            command,
            redactor: Redactor::new(request.env.values().cloned()),
            env: request.env,
            input,
            timeout,
            cancel,
            events,
        };
        let task = tokio::spawn(async move {
            let run_id = job.run_id.clone();
            let state = job.state.clone();
            execute::execute(job).await;
            state.runs.live().remove(&run_id);
            let _ = done_sender.send(true);
        });
        if let Some(live) = self.live().get_mut(&run_id) {
            live.task = Some(task.abort_handle());
        }
        Ok(state
            .db
            .get_run(&run_id)?
            .expect("the run was just inserted"))
    }

    /// Subscribes to a live run's events; `None` once it has ended.
    pub fn subscribe(&self, run_id: &str) -> Option<Subscription> {
        self.live().get(run_id).map(|live| Subscription {
            events: live.events.subscribe(),
        })
    }

    /// Cancels a live run and waits (a while) for it to end: the agent's process group
    /// killed, the sandbox destroyed unless kept. A run that has ended is left as it is.
    pub async fn cancel(&self, run_id: &str) {
        let done = {
            let live = self.live();
            let Some(run) = live.get(run_id) else {
                return;
            };
            run.cancel.cancel();
            run.done.clone()
        };
        let mut done = done;
        let _ = tokio::time::timeout(CANCEL_WAIT, done.wait_for(|finished| *finished)).await;
    }

    /// After a restart: every run that was live is reported interrupted, and the sandboxes
    /// made for them (unless kept) are destroyed.
    pub async fn recover(&self, state: &AppState) -> ApiResult<()> {
        let interrupted = state
            .db
            .interrupt_live_runs("the server stopped while the run was live")?;
        if interrupted.is_empty() {
            return Ok(());
        }
        let mut to_destroy = BTreeMap::new();
        for (run_id, _) in &interrupted {
            tracing::warn!(%run_id, "run interrupted by a server restart");
            match state.db.get_run_request(run_id)? {
                Some(request) if !request.keep => {
                    to_destroy.insert(run_id.clone(), ());
                }
                _ => {}
            }
        }
        for record in state.db.list_sandboxes(false)? {
            let owned = record
                .spec
                .labels
                .get(RUN_LABEL)
                .is_some_and(|run_id| to_destroy.contains_key(run_id));
            if owned {
                if let Err(failure) = state.destroy(&record.id).await {
                    tracing::error!(sandbox_id = %record.id, message = %failure.message, "cannot destroy the sandbox of an interrupted run");
                }
            }
        }
        for (run_id, _) in &interrupted {
            if to_destroy.contains_key(run_id) {
                state.db.set_run_sandbox(run_id, None)?;
            }
        }
        Ok(())
    }

    /// The server stops: every live run's task is dropped where it stands (which kills its
    /// agent); the next server reports those runs interrupted and removes their sandboxes.
    pub fn shutdown(&self) {
        for (run_id, live) in self.live().drain() {
            tracing::warn!(%run_id, "run interrupted by the server stopping");
            if let Some(task) = live.task {
                task.abort();
            }
        }
    }

    /// Whether a run is live in this server.
    pub fn is_live(&self, run_id: &str) -> bool {
        self.live().contains_key(run_id)
    }
}
