//! [`HostProvider`]: makes host sandboxes under its root directory and finds them again
//! after a restart.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cthulu_core::{SandboxError, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_types::{
    BackendInfo, BackendKind, Capabilities, CheckpointSupport, LimitSupport, SandboxId,
};

use crate::config::HostConfig;
use crate::error::HostError;
use crate::handles::Handles;
use crate::sandbox::HostSandbox;
use crate::state::{SandboxState, CHECKPOINTS_DIR, PROCS_DIR, STATE_FILE, WORKSPACE_DIR};
use crate::workspace::openat2_supported;

/// The host backend. Cheap to query; every sandbox it hands out is shared (`provision`
/// and `attach` of one id give the same handle while it lives).
pub struct HostProvider {
    config: HostConfig,
    /// Why the backend cannot run here, if it cannot.
    unavailable: Option<String>,
    handles: Handles<HostSandbox>,
}

impl HostProvider {
    /// Prepares the root directory (created if missing) and checks the kernel.
    pub fn new(config: HostConfig) -> Result<HostProvider, HostError> {
        if !config.root.is_absolute() {
            return Err(HostError::RelativeRoot {
                path: config.root.clone(),
            });
        }
        fs_err::create_dir_all(&config.root).map_err(HostError::Root)?;
        let unavailable = (!openat2_supported(&config.root)).then(|| {
            "the kernel lacks openat2 with RESOLVE_BENEATH (Linux 5.6 or later is needed) \
             to resolve file paths safely"
                .to_owned()
        });
        Ok(HostProvider {
            config,
            unavailable,
            handles: Handles::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    fn sandbox_dir(&self, sandbox_id: &SandboxId) -> PathBuf {
        self.config.root.join(sandbox_id.as_str())
    }

    fn check_available(&self) -> Result<(), SandboxError> {
        match &self.unavailable {
            None => Ok(()),
            Some(reason) => Err(SandboxError::BackendUnavailable {
                backend: BackendKind::Host,
                reason: reason.clone(),
            }),
        }
    }

    fn remember(&self, sandbox: HostSandbox) -> Arc<HostSandbox> {
        self.handles.remember(sandbox.sandbox_id.clone(), sandbox)
    }

    fn remembered(&self, sandbox_id: &SandboxId) -> Option<Arc<HostSandbox>> {
        self.handles.get(sandbox_id)
    }

    /// Creates the directories and state of a new sandbox.
    fn create(&self, dir: &Path, state: &SandboxState) -> Result<(), SandboxError> {
        for sub in [WORKSPACE_DIR, CHECKPOINTS_DIR, PROCS_DIR] {
            let path = dir.join(sub);
            fs_err::create_dir(&path).map_err(|error| SandboxError::io("create", &path, error))?;
        }
        state
            .save(dir)
            .map_err(|error| SandboxError::io("write", dir.join(STATE_FILE), error))
    }
}

/// What the host backend can do, and which limits it enforces.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities {
        isolation: false,
        exec_stream: true,
        pty: true,
        detached_processes: true,
        files: true,
        ports: true,
        checkpoint: CheckpointSupport::Filesystem,
        stop_resume: true,
        network_policy: false,
    }
}

fn limits() -> Vec<LimitSupport> {
    let limit = |name: &str, enforced: bool, detail: &str| LimitSupport {
        limit: name.to_owned(),
        enforced,
        detail: detail.to_owned(),
    };
    let unenforced = "not enforced: host sandboxes are plain host processes without cgroups";
    vec![
        limit(
            "timeout",
            true,
            "the command's process group is killed (SIGKILL) at the deadline",
        ),
        limit(
            "output",
            true,
            "stdout and stderr are each capped at max_output_bytes; the rest is dropped",
        ),
        limit("memory", false, unenforced),
        limit("cpus", false, unenforced),
        limit("pids", false, unenforced),
        limit("disk", false, unenforced),
    ]
}

#[async_trait]
impl SandboxProvider for HostProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Host,
            available: self.unavailable.is_none(),
            unavailable_reason: self.unavailable.clone(),
            capabilities: capabilities(),
            limits: limits(),
        }
    }

    async fn provision(
        &self,
        sandbox_id: &SandboxId,
        spec: &SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        self.check_available()?;
        let dir = self.sandbox_dir(sandbox_id);
        // 0700: the sockets of its processes accept whoever can reach them.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::AlreadyExists => SandboxError::AlreadyExists {
                    path: dir.display().to_string(),
                },
                _ => SandboxError::io("create", &dir, error),
            })?;
        let state = SandboxState::new(sandbox_id.clone(), spec.env.clone());
        if let Err(error) = self.create(&dir, &state) {
            return Err(match fs_err::remove_dir_all(&dir) {
                Ok(()) => error,
                Err(cleanup) => SandboxError::ProvisionAndCleanup {
                    sandbox_id: sandbox_id.clone(),
                    source: Box::new(error),
                    cleanup: Box::new(SandboxError::io("remove", &dir, cleanup)),
                },
            });
        }
        Ok(self.remember(HostSandbox::new(
            sandbox_id.clone(),
            dir,
            state,
            self.config.shim.clone(),
        )))
    }

    async fn attach(
        &self,
        sandbox_id: &SandboxId,
        _spec: &SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        if let Some(sandbox) = self.remembered(sandbox_id) {
            if sandbox.dir.exists() {
                return Ok(sandbox);
            }
        }
        let dir = self.sandbox_dir(sandbox_id);
        // The state file has the env as provisioned; the spec handed back is the same.
        let state = match SandboxState::load(&dir) {
            Ok(state) => state,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::SandboxNotFound {
                    sandbox_id: sandbox_id.clone(),
                })
            }
            Err(error) => return Err(SandboxError::io("read", dir.join(STATE_FILE), error)),
        };
        let sandbox = self.remember(HostSandbox::new(
            sandbox_id.clone(),
            dir,
            state,
            self.config.shim.clone(),
        ));
        crate::ports::restart_forwarders(&*sandbox)?;
        Ok(sandbox)
    }

    async fn list(&self) -> Result<Vec<SandboxId>, SandboxError> {
        crate::state_file::list_sandboxes(&self.config.root, SandboxState::load).await
    }
}
