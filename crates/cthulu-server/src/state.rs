//! [`AppState`]: the providers, the database and the live sandbox handles, with the
//! sandbox operations that touch more than one of them (create, find, lifecycle,
//! re-attach after a restart, lifetime expiry).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cthulu_core::{SandboxError, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_types::sandbox::Operation;
use cthulu_types::{
    BackendInfo, BackendKind, Capabilities, Capacity, CheckpointSupport, CreateSandboxRequest,
    ErrorCode, SandboxId, SandboxStatus, UpdateSandboxRequest,
};

use crate::db::{Database, SandboxRecord};
use crate::error::{ApiFailure, ApiResult};
use crate::metrics::Metrics;
use crate::runs::RunManager;

/// How long a destroyed sandbox stays visible (`?status=destroyed`) before it is forgotten.
const KEEP_DESTROYED_MS: u64 = 24 * 60 * 60 * 1000;

pub struct AppState {
    pub db: Database,
    pub providers: BTreeMap<BackendKind, Arc<dyn SandboxProvider>>,
    pub default_backend: BackendKind,
    pub metrics: Metrics,
    pub runs: RunManager,
    /// The remote backend (also in `providers`), for the node routes and terminals.
    pub remote: Arc<cthulu_remote::RemoteProvider>,
    /// Signs and checks terminal tokens (crate::terminal).
    pub terminal_key: crate::terminal::TerminalKey,
    handles: RwLock<HashMap<SandboxId, Arc<dyn SandboxHandle>>>,
    /// The most sandboxes held at once (`ServerConfig::max_sandboxes`).
    max_sandboxes: Option<usize>,
    /// The one bearer token of every route, in place of API keys (`ServerConfig::access_token`).
    access_token: Option<Arc<crate::AccessToken>>,
    /// Held while a create counts the live sandboxes and records its own, so concurrent
    /// creates cannot both take the last place.
    admitting: std::sync::Mutex<()>,
}

impl AppState {
    pub fn new(
        db: Database,
        providers: BTreeMap<BackendKind, Arc<dyn SandboxProvider>>,
        default_backend: BackendKind,
        runs: RunManager,
        remote: Arc<cthulu_remote::RemoteProvider>,
        terminal_key: crate::terminal::TerminalKey,
    ) -> Self {
        AppState {
            db,
            providers,
            default_backend,
            metrics: Metrics::default(),
            runs,
            remote,
            terminal_key,
            handles: RwLock::new(HashMap::new()),
            max_sandboxes: None,
            admitting: std::sync::Mutex::new(()),
            access_token: None,
        }
    }

    /// Limits the sandboxes held at once (not destroyed ones: creating, running, stopped,
    /// lost); a create past it answers `capacity_exceeded`.
    pub fn with_max_sandboxes(mut self, max_sandboxes: Option<usize>) -> Self {
        self.max_sandboxes = max_sandboxes;
        self
    }

    /// Makes `access_token` the only bearer token of every route (API keys no longer
    /// count).
    pub fn with_access_token(mut self, access_token: Option<crate::AccessToken>) -> Self {
        self.access_token = access_token.map(Arc::new);
        self
    }

    pub fn access_token(&self) -> Option<&crate::AccessToken> {
        self.access_token.as_deref()
    }

    /// Whether requests need a bearer token: the access token, or API keys once one exists.
    pub fn auth_required(&self) -> ApiResult<bool> {
        Ok(self.access_token.is_some() || self.db.has_api_keys()?)
    }

    /// The sandboxes held now against the limit.
    pub fn capacity(&self) -> ApiResult<Capacity> {
        let held = self.db.list_sandboxes(false)?.len();
        Ok(Capacity {
            sandboxes: u32::try_from(held).unwrap_or(u32::MAX),
            max_sandboxes: self
                .max_sandboxes
                .map(|max| u32::try_from(max).unwrap_or(u32::MAX)),
        })
    }

    /// Records `record` unless the server is full.
    fn admit(&self, record: &SandboxRecord) -> ApiResult<()> {
        let _admitting = self
            .admitting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(max) = self.max_sandboxes {
            let held = self.db.list_sandboxes(false)?.len();
            if held >= max {
                return Err(ApiFailure::new(
                    ErrorCode::CapacityExceeded,
                    format!("this server holds {held} sandboxes, its limit is {max}"),
                )
                .with_hint("destroy a sandbox (`cthulu sandbox rm ID`) or raise the limit"));
            }
        }
        self.db.insert_sandbox(record)?;
        Ok(())
    }

    /// Every backend kind: the ones this server has, as they report themselves, and the
    /// others as unavailable with the reason, so a client learns why `--backend X` fails.
    pub fn backend_infos(&self) -> Vec<BackendInfo> {
        BackendKind::ALL
            .into_iter()
            .map(|kind| match self.providers.get(&kind) {
                Some(provider) => provider.info(),
                None => BackendInfo {
                    kind,
                    available: false,
                    unavailable_reason: Some(format!(
                        "the {kind} backend is not part of this version of the server"
                    )),
                    capabilities: Capabilities::none(),
                    limits: Vec::new(),
                },
            })
            .collect()
    }

    fn provider(&self, backend: BackendKind) -> ApiResult<&Arc<dyn SandboxProvider>> {
        let provider = self.providers.get(&backend).ok_or_else(|| {
            ApiFailure::new(
                ErrorCode::BackendUnavailable,
                format!("the {backend} backend is not part of this server"),
            )
            .with_hint(format!(
                "backends here: {}",
                self.providers
                    .keys()
                    .map(|kind| kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let info = provider.info();
        if !info.available {
            return Err(ApiFailure::new(
                ErrorCode::BackendUnavailable,
                format!(
                    "the {backend} backend is unavailable: {}",
                    info.unavailable_reason.unwrap_or_default()
                ),
            )
            .with_hint("see GET /api/v1/info"));
        }
        Ok(provider)
    }

    fn cached_handle(&self, sandbox_id: &SandboxId) -> Option<Arc<dyn SandboxHandle>> {
        self.handles
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(sandbox_id)
            .cloned()
    }

    fn remember(&self, handle: Arc<dyn SandboxHandle>) {
        self.handles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(handle.id().clone(), handle);
    }

    fn forget(&self, sandbox_id: &SandboxId) {
        self.handles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(sandbox_id);
    }

    pub fn record(&self, sandbox_id: &SandboxId) -> ApiResult<SandboxRecord> {
        self.db.get_sandbox(sandbox_id)?.ok_or_else(|| {
            SandboxError::SandboxNotFound {
                sandbox_id: sandbox_id.clone(),
            }
            .into()
        })
    }

    /// The live handle of a sandbox, or why there is none (`sandbox_not_found`, or
    /// `invalid_state` for a destroyed, failed or lost one).
    pub fn handle(
        &self,
        sandbox_id: &SandboxId,
        operation: Operation,
    ) -> ApiResult<Arc<dyn SandboxHandle>> {
        if let Some(handle) = self.cached_handle(sandbox_id) {
            return Ok(handle);
        }
        let record = self.record(sandbox_id)?;
        record.status.check(operation).map_err(SandboxError::from)?;
        // A live status without a handle: the backend was not reachable at start-up.
        Err(ApiFailure::new(
            ErrorCode::BackendUnavailable,
            format!(
                "sandbox {sandbox_id} is not attached to its {} backend",
                record.backend
            ),
        ))
    }

    /// The record with its status refreshed from the live handle.
    pub fn current(&self, sandbox_id: &SandboxId) -> ApiResult<SandboxRecord> {
        let mut record = self.record(sandbox_id)?;
        if let Some(handle) = self.cached_handle(sandbox_id) {
            let status = handle.status();
            if status != record.status {
                self.db
                    .set_status(sandbox_id, status, record.status_reason.as_deref())?;
                record.status = status;
            }
        }
        Ok(record)
    }

    pub async fn create(&self, request: &CreateSandboxRequest) -> ApiResult<SandboxRecord> {
        let backend = match (request.backend, &request.node) {
            (None | Some(BackendKind::Remote), Some(_)) => BackendKind::Remote,
            (Some(backend), Some(_)) => {
                return Err(ApiFailure::bad_request(format!(
                    "a sandbox on a node uses the remote backend, not {backend}"
                ))
                .with_hint("leave out backend, or set it to remote"))
            }
            (backend, None) => backend.unwrap_or(self.default_backend),
        };
        let provider = self.provider(backend)?.clone();
        let spec = SandboxSpec::from_request(request)?;
        if spec.from_checkpoint.is_some()
            && provider.info().capabilities.checkpoint != CheckpointSupport::FilesystemAndMemory
        {
            return Err(SandboxError::Unsupported {
                backend,
                operation: "from_checkpoint",
                reason: "only a backend with memory checkpoints (qemu) starts a sandbox from one"
                    .into(),
            }
            .into());
        }
        let now = cthulu_types::now_ms();
        let mut record = SandboxRecord {
            id: SandboxId::generate(),
            backend,
            status: SandboxStatus::Creating,
            status_reason: None,
            spec,
            created_at_ms: now,
            expires_at_ms: lifetime_end(now, request.timeout_secs),
        };
        self.admit(&record)?;
        match provider.provision(&record.id, &record.spec).await {
            Ok(handle) => {
                record.status = handle.status();
                self.remember(handle);
                self.db.set_status(&record.id, record.status, None)?;
                self.metrics
                    .sandboxes_created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(record)
            }
            Err(error) => {
                // The backend cleaned up; keep the record only as history.
                let reason = format!("create failed: {error}");
                self.db
                    .set_status(&record.id, SandboxStatus::Destroyed, Some(&reason))?;
                Err(error.into())
            }
        }
    }

    pub fn update(
        &self,
        sandbox_id: &SandboxId,
        update: &UpdateSandboxRequest,
    ) -> ApiResult<SandboxRecord> {
        let mut record = self.current(sandbox_id)?;
        if record.status == SandboxStatus::Destroyed {
            return Err(SandboxError::from(
                SandboxStatus::Destroyed.check(Operation::Exec).unwrap_err(),
            )
            .into());
        }
        if let Some(timeout_secs) = update.timeout_secs {
            let expires = if timeout_secs == 0 {
                None
            } else {
                lifetime_end(cthulu_types::now_ms(), Some(timeout_secs))
            };
            self.db.set_expiry(sandbox_id, expires)?;
            record.expires_at_ms = expires;
        }
        if let Some(labels) = &update.labels {
            record.spec.labels.extend(labels.clone());
            self.db.set_spec(sandbox_id, &record.spec)?;
        }
        Ok(record)
    }

    /// Runs a lifecycle operation on the handle and records the new status.
    pub async fn lifecycle(
        &self,
        sandbox_id: &SandboxId,
        operation: Operation,
    ) -> ApiResult<SandboxRecord> {
        let handle = self.handle(sandbox_id, operation)?;
        match operation {
            Operation::Stop => handle.stop().await?,
            Operation::Resume => handle.resume().await?,
            other => unreachable!("{} is not a lifecycle operation", other.as_str()),
        }
        self.current(sandbox_id)
    }

    /// Destroys a sandbox; destroying a destroyed one succeeds and does nothing.
    pub async fn destroy(&self, sandbox_id: &SandboxId) -> ApiResult<()> {
        let record = self.record(sandbox_id)?;
        if record.status == SandboxStatus::Destroyed {
            return Ok(());
        }
        let handle = match self.cached_handle(sandbox_id) {
            Some(handle) => Some(handle),
            // Failed or lost: ask the backend once more so nothing is left behind.
            None => match self.providers.get(&record.backend) {
                Some(provider) => provider.attach(sandbox_id, &record.spec).await.ok(),
                None => None,
            },
        };
        if let Some(handle) = handle {
            handle.destroy().await?;
        }
        self.forget(sandbox_id);
        self.db
            .set_status(sandbox_id, SandboxStatus::Destroyed, None)?;
        self.metrics
            .sandboxes_destroyed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// After a restart: finds every sandbox of the database again. One that its backend
    /// cannot find is marked `lost` with the reason, never dropped silently.
    pub async fn reattach_all(&self) -> ApiResult<()> {
        for record in self.db.list_sandboxes(false)? {
            let Some(provider) = self.providers.get(&record.backend) else {
                self.db.set_status(
                    &record.id,
                    SandboxStatus::Lost,
                    Some(&format!(
                        "the {} backend is not part of this server",
                        record.backend
                    )),
                )?;
                continue;
            };
            if record.status == SandboxStatus::Creating {
                // The server stopped in the middle of creating it: clean up what exists.
                if let Ok(handle) = provider.attach(&record.id, &record.spec).await {
                    let _ = handle.destroy().await;
                }
                self.db.set_status(
                    &record.id,
                    SandboxStatus::Destroyed,
                    Some("create interrupted by a server restart"),
                )?;
                continue;
            }
            if matches!(record.status, SandboxStatus::Failed | SandboxStatus::Lost) {
                continue;
            }
            match provider.attach(&record.id, &record.spec).await {
                Ok(handle) => {
                    let status = handle.status();
                    self.remember(handle);
                    self.db.set_status(&record.id, status, None)?;
                }
                Err(error) => {
                    tracing::warn!(sandbox_id = %record.id, %error, "sandbox lost across the restart");
                    self.db.set_status(
                        &record.id,
                        SandboxStatus::Lost,
                        Some(&format!("not found again after a server restart: {error}")),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Destroys every sandbox past its lifetime, and forgets old destroyed ones.
    pub async fn reap_expired(&self) {
        let now = cthulu_types::now_ms();
        let expired = match self.db.expired(now) {
            Ok(expired) => expired,
            Err(error) => {
                tracing::error!(%error, "cannot look for expired sandboxes");
                return;
            }
        };
        for sandbox_id in expired {
            match self.destroy(&sandbox_id).await {
                Ok(()) => {
                    tracing::info!(%sandbox_id, "destroyed at the end of its lifetime");
                    let _ = self.db.set_status(
                        &sandbox_id,
                        SandboxStatus::Destroyed,
                        Some("lifetime ended"),
                    );
                    self.metrics
                        .sandboxes_expired
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::error!(%sandbox_id, message = %error.message, "cannot destroy an expired sandbox")
                }
            }
        }
        if let Err(error) = self
            .db
            .prune_destroyed(now.saturating_sub(KEEP_DESTROYED_MS))
        {
            tracing::error!(%error, "cannot prune destroyed sandboxes");
        }
    }

    /// Runs [`AppState::reap_expired`] every `period` until the state is dropped.
    pub fn spawn_reaper(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(state) = weak.upgrade() else { break };
                state.reap_expired().await;
            }
        })
    }
}

fn lifetime_end(now_ms: u64, timeout_secs: Option<u64>) -> Option<u64> {
    timeout_secs
        .filter(|secs| *secs > 0)
        .map(|secs| now_ms.saturating_add(secs.saturating_mul(1000)))
}
