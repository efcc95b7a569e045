//! [`Sandbox`]: the fixture every scenario gets — one provisioned sandbox of the backend
//! under test, with helpers that keep scenarios short.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cthulu_types::{Capabilities, SandboxId};

use super::support::reader;
use super::support::{describe, fail, require_success, text, within, Context, ScenarioError};
use super::target::ConformanceTarget;
use crate::{
    ExecOutput, ExecSpec, PutOptions, SandboxError, SandboxHandle, SandboxProvider, SandboxSpec,
};

/// Bound on one exec beyond its own timeout.
const EXEC_GRACE: Duration = Duration::from_secs(120);
/// Bound on a call that should return at once (files, lists, provisioning).
pub const CALL_LIMIT: Duration = Duration::from_secs(120);

/// The sandbox a scenario runs against. Cheap to clone; every clone is the same sandbox.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

struct Shared {
    backend: &'static str,
    scenario: &'static str,
    target: Arc<dyn ConformanceTarget>,
    sandbox_id: SandboxId,
    spec: SandboxSpec,
    /// The provider and handle in use; replaced by [`Sandbox::restart`].
    live: Mutex<Option<Live>>,
    /// Further sandboxes a scenario made; destroyed by the runner.
    others: Mutex<Vec<(SandboxId, Arc<dyn SandboxHandle>)>>,
}

struct Live {
    provider: Arc<dyn SandboxProvider>,
    handle: Arc<dyn SandboxHandle>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking scenario must not keep the runner from cleaning up.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sandbox {
    pub(super) fn new(
        scenario: &'static str,
        target: Arc<dyn ConformanceTarget>,
        sandbox_id: SandboxId,
        spec: SandboxSpec,
        provider: Arc<dyn SandboxProvider>,
        handle: Arc<dyn SandboxHandle>,
    ) -> Self {
        Sandbox {
            shared: Arc::new(Shared {
                backend: target.name(),
                scenario,
                target,
                sandbox_id,
                spec,
                live: Mutex::new(Some(Live { provider, handle })),
                others: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.shared.backend
    }

    pub fn scenario(&self) -> &'static str {
        self.shared.scenario
    }

    pub fn id(&self) -> &SandboxId {
        &self.shared.sandbox_id
    }

    pub fn spec(&self) -> &SandboxSpec {
        &self.shared.spec
    }

    pub fn target(&self) -> &Arc<dyn ConformanceTarget> {
        &self.shared.target
    }

    /// The handle of the sandbox (a new one after [`restart`](Self::restart)).
    pub fn handle(&self) -> Arc<dyn SandboxHandle> {
        lock(&self.shared.live)
            .as_ref()
            .map(|live| live.handle.clone())
            .expect("no live handle: a restart failed half-way")
    }

    pub fn provider(&self) -> Arc<dyn SandboxProvider> {
        lock(&self.shared.live)
            .as_ref()
            .map(|live| live.provider.clone())
            .expect("no live provider: a restart failed half-way")
    }

    pub fn capabilities(&self) -> Capabilities {
        self.handle().capabilities()
    }

    /// Prints that part of a scenario did not run, in the one sanctioned form.
    pub fn note_skip(&self, what: impl fmt::Display) {
        super::runner::report_skip(&format!(
            "SKIP {}: {} {what}",
            self.backend(),
            self.scenario()
        ));
    }

    /// A skip of the whole scenario, for `return Err(...)`.
    pub fn skip(&self, reason: impl Into<String>) -> ScenarioError {
        ScenarioError::Skipped(reason.into())
    }

    /// For an operation the backend's capabilities say it lacks: the call must answer
    /// `Unsupported`, and then the scenario is skipped with the backend's reason.
    pub fn expect_unsupported<T>(
        &self,
        operation: &str,
        result: Result<T, SandboxError>,
    ) -> ScenarioError {
        match result {
            Err(SandboxError::Unsupported { reason, .. }) => {
                ScenarioError::Skipped(format!("unsupported: {operation}: {reason}"))
            }
            Err(other) => fail(format!(
                "the capabilities say {operation} is not supported, so it must answer \
                 `unsupported`, but it answered {}",
                describe(&other)
            )),
            Ok(_) => fail(format!(
                "the capabilities say {operation} is not supported, but it succeeded"
            )),
        }
    }

    /// Simulates a server restart: drops the provider and handle this fixture holds,
    /// makes [`ConformanceTarget::restarted_provider`] and attaches to the same sandbox.
    /// The caller must have dropped its own handle and stream clones first.
    pub async fn restart(&self) -> Result<Arc<dyn SandboxHandle>, ScenarioError> {
        // Long enough for tasks the old instance spawned to notice it is gone.
        self.restart_after(Duration::from_millis(200)).await
    }

    /// [`restart`](Self::restart) with `pause` between the old instance going away and
    /// the new one coming up, like a server that stays down a while.
    pub async fn restart_after(
        &self,
        pause: Duration,
    ) -> Result<Arc<dyn SandboxHandle>, ScenarioError> {
        let old = lock(&self.shared.live).take();
        drop(old);
        tokio::time::sleep(pause).await;
        let provider = self
            .shared
            .target
            .restarted_provider()
            .context("making the restarted provider")?;
        let handle = within(
            CALL_LIMIT,
            "attach after the restart",
            provider.attach(self.id(), self.spec()),
        )
        .await?
        .context("attach after the restart")?;
        *lock(&self.shared.live) = Some(Live {
            provider,
            handle: handle.clone(),
        });
        Ok(handle)
    }

    /// Provisions another sandbox of the same backend (destroyed by the runner).
    pub async fn provision_another(
        &self,
        spec: SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, ScenarioError> {
        self.provision(spec, false).await
    }

    /// [`provision_another`](Self::provision_another) for a spec the backend may refuse as
    /// `Unsupported` (a limit this server cannot enforce, as `/api/v1/info` says): that
    /// refusal skips the scenario with the backend's reason.
    pub async fn provision_another_or_skip(
        &self,
        spec: SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, ScenarioError> {
        self.provision(spec, true).await
    }

    async fn provision(
        &self,
        spec: SandboxSpec,
        skip_unsupported: bool,
    ) -> Result<Arc<dyn SandboxHandle>, ScenarioError> {
        let sandbox_id = SandboxId::generate();
        let provider = self.provider();
        let provisioned = within(
            CALL_LIMIT,
            "provisioning another sandbox",
            provider.provision(&sandbox_id, &spec),
        )
        .await?;
        if let (
            true,
            Err(SandboxError::Unsupported {
                operation, reason, ..
            }),
        ) = (skip_unsupported, &provisioned)
        {
            return Err(self.skip(format!("unsupported: {operation}: {reason}")));
        }
        let handle = provisioned.context(format!("provisioning another sandbox {sandbox_id}"))?;
        lock(&self.shared.others).push((sandbox_id, handle.clone()));
        Ok(handle)
    }

    /// Runs `spec` to completion; an error from the backend is a failure.
    pub async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput, ScenarioError> {
        exec_on(&self.handle(), spec).await
    }

    /// Runs `script` under `/bin/sh -c`; it must exit 0. Returns its stdout.
    pub async fn sh(&self, script: &str) -> Result<String, ScenarioError> {
        sh_on(&self.handle(), script).await
    }

    /// Uploads `contents` to `path`, creating parent directories.
    pub async fn put(&self, path: &str, contents: impl Into<Vec<u8>>) -> Result<(), ScenarioError> {
        let options = PutOptions {
            mode: None,
            create_parents: true,
        };
        within(
            CALL_LIMIT,
            format!("put_file {path}"),
            self.handle().put_file(path, options, reader(contents)),
        )
        .await?
        .context(format!("put_file {path}"))?;
        Ok(())
    }

    /// Downloads `path` whole.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, ScenarioError> {
        let handle = self.handle();
        within(CALL_LIMIT, format!("get_file {path}"), async {
            let mut download = handle
                .get_file(path)
                .await
                .context(format!("get_file {path}"))?;
            let mut contents = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut download.contents, &mut contents)
                .await
                .context(format!("reading the download of {path}"))?;
            Ok::<_, ScenarioError>(contents)
        })
        .await?
    }

    /// Waits until the process `pid` (as the sandbox numbers them) is gone: no such
    /// process, or a zombie (already dead, waiting to be reaped).
    pub async fn wait_process_gone(&self, pid: &str, limit: Duration) -> Result<(), ScenarioError> {
        let pid = pid.trim();
        if pid.is_empty() || !pid.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(fail(format!("{pid:?} is not a process id")));
        }
        let script = format!(
            "if kill -0 {pid} 2>/dev/null; then \
               state=$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -c1); \
               if [ \"$state\" = Z ]; then echo gone; \
               elif [ -z \"$state\" ] && ! kill -0 {pid} 2>/dev/null; then echo gone; \
               else echo alive; fi; \
             else echo gone; fi"
        );
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.sh(&script).await?.trim() == "gone" {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(fail(format!(
                    "process {pid} is still alive {limit:?} after it should have been killed"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Destroys every sandbox of the scenario; returns what went wrong.
    pub(super) async fn cleanup(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let others = std::mem::take(&mut *lock(&self.shared.others));
        for (sandbox_id, handle) in others {
            if let Err(problem) = destroy(&handle, &sandbox_id).await {
                problems.push(problem);
            }
        }
        let live = lock(&self.shared.live).take();
        let handle = match live {
            Some(live) => Some(live.handle),
            None => match self.shared.target.restarted_provider() {
                Ok(provider) => {
                    match within(
                        CALL_LIMIT,
                        "attach",
                        provider.attach(self.id(), self.spec()),
                    )
                    .await
                    {
                        Ok(Ok(handle)) => Some(handle),
                        Ok(Err(SandboxError::SandboxNotFound { .. })) => None,
                        Ok(Err(error)) => {
                            problems.push(format!(
                                "attaching to sandbox {} to destroy it: {}",
                                self.id(),
                                describe(&error)
                            ));
                            None
                        }
                        Err(error) => {
                            problems.push(error.to_string());
                            None
                        }
                    }
                }
                Err(reason) => {
                    problems.push(format!("making a provider to clean up: {reason}"));
                    None
                }
            },
        };
        if let Some(handle) = handle {
            if let Err(problem) = destroy(&handle, self.id()).await {
                problems.push(problem);
            }
        }
        problems
    }

    /// Every sandbox id this scenario made.
    pub(super) fn all_ids(&self) -> Vec<SandboxId> {
        // `cleanup` empties the list of others, so it is read before.
        let mut ids = vec![self.id().clone()];
        ids.extend(lock(&self.shared.others).iter().map(|(id, _)| id.clone()));
        ids
    }
}

async fn destroy(handle: &Arc<dyn SandboxHandle>, sandbox_id: &SandboxId) -> Result<(), String> {
    match tokio::time::timeout(CALL_LIMIT, handle.destroy()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!(
            "destroying sandbox {sandbox_id}: {}",
            describe(&error)
        )),
        Err(_) => Err(format!(
            "destroying sandbox {sandbox_id} hung for {CALL_LIMIT:?}"
        )),
    }
}

/// Runs `spec` on `handle` to completion; an error from the backend is a failure.
pub async fn exec_on(
    handle: &Arc<dyn SandboxHandle>,
    spec: ExecSpec,
) -> Result<ExecOutput, ScenarioError> {
    let what = format!("exec `{}`", spec.command.display());
    within(spec.timeout + EXEC_GRACE, &what, handle.exec(spec))
        .await?
        .context(&what)
}

/// Runs `script` on `handle` under `/bin/sh -c`; it must exit 0. Returns its stdout.
pub async fn sh_on(handle: &Arc<dyn SandboxHandle>, script: &str) -> Result<String, ScenarioError> {
    let mut spec = ExecSpec::shell(script);
    spec.timeout = Duration::from_secs(120);
    let output = exec_on(handle, spec).await?;
    require_success(&output, format!("`{script}`"))?;
    Ok(text(&output.stdout))
}
