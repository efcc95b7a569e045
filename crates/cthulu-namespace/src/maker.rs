//! [`Maker`]: makes one namespace sandbox in its directory (disk, cgroups, init config,
//! init), and takes back whatever it made when that fails halfway. Shared by creates and
//! by the pool of warm sandboxes.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use cthulu_core::{SandboxError, SandboxSpec};
use cthulu_types::{NetworkMode, SandboxId};

use crate::cgroup::{Cgroups, SandboxCgroups};
use crate::config::NamespaceConfig;
use crate::disk::{self, Disk};
use crate::init::{IdMapping, InitConfig, CONFIG_FILE};
use crate::launch::{kill_init, remove_dir, start_init};
use crate::state::{SandboxState, STATE_FILE, WORKSPACE_DIR};

/// Longest hostname the kernel takes.
const HOST_NAME_MAX: usize = 64;

/// The hostname of a sandbox: its id when the kernel takes it.
pub(crate) fn hostname(sandbox_id: &SandboxId) -> &str {
    if sandbox_id.as_str().len() <= HOST_NAME_MAX {
        sandbox_id.as_str()
    } else {
        "sandbox"
    }
}

pub(crate) struct Maker {
    pub config: NamespaceConfig,
    /// Who root of its sandboxes is outside.
    pub ids: IdMapping,
    pub cgroups: Cgroups,
    /// Whether disk limits can be given, and how.
    pub disk: Disk,
}

impl Maker {
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// Makes the sandbox `sandbox_id` in `dir` (which must not exist yet). On failure
    /// nothing of it is left, or the error says what could not be removed.
    pub async fn provision_in(
        &self,
        sandbox_id: &SandboxId,
        dir: &Path,
        spec: &SandboxSpec,
        image: Option<&Path>,
    ) -> Result<SandboxState, SandboxError> {
        // 0700: the control socket accepts whoever can reach it.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::AlreadyExists => SandboxError::AlreadyExists {
                    path: dir.display().to_string(),
                },
                _ => SandboxError::io("create", dir, error),
            })?;
        let mut made = Made::default();
        let error = match self.create(sandbox_id, dir, spec, image, &mut made).await {
            Ok(state) => return Ok(state),
            Err(error) => error,
        };
        let cleanup = async {
            if let Some(pid) = made.init.and_then(crate::state::InitProcess::find) {
                kill_init(pid).await?;
            }
            if let Some(cgroups) = made.cgroups {
                cgroups.remove().await?;
            }
            if made.disk {
                disk::release(dir)?;
            }
            remove_dir(dir).await
        };
        Err(match cleanup.await {
            Ok(()) => error,
            Err(cleanup) => SandboxError::ProvisionAndCleanup {
                sandbox_id: sandbox_id.clone(),
                source: Box::new(error),
                cleanup: Box::new(cleanup),
            },
        })
    }

    /// Everything of a provision after the directory exists; the caller cleans up what
    /// `made` names.
    async fn create(
        &self,
        sandbox_id: &SandboxId,
        dir: &Path,
        spec: &SandboxSpec,
        image: Option<&Path>,
        made: &mut Made,
    ) -> Result<SandboxState, SandboxError> {
        if let Some(megabytes) = spec.resources.disk_mb {
            made.disk = true;
            let (dir, disk) = (dir.to_owned(), self.disk.clone());
            cthulu_host::files::blocking("create the disk", move || disk.create(&dir, megabytes))
                .await?;
        }
        let workspace = dir.join(WORKSPACE_DIR);
        match fs_err::create_dir(&workspace) {
            Err(error) if !(made.disk && error.kind() == std::io::ErrorKind::AlreadyExists) => {
                return Err(SandboxError::io("create", &workspace, error));
            }
            _ => {}
        }
        let hostname = hostname(sandbox_id);
        let cgroups = self.cgroups.create(sandbox_id, &spec.resources)?;
        made.cgroups = Some(cgroups.clone());
        let config = InitConfig {
            hostname: hostname.to_owned(),
            ids: self.ids,
            cgroups: cgroups.dirs(),
            host_network: spec.network == NetworkMode::Full,
            image: image.map(Path::to_owned),
            nproc: spec.resources.pids.filter(|_| cgroups.pids.is_none()),
        };
        let config_path = dir.join(CONFIG_FILE);
        fs_err::write(
            &config_path,
            serde_json::to_vec(&config).expect("the init config serializes"),
        )
        .map_err(|error| SandboxError::io("write", &config_path, error))?;
        let init = start_init(&self.config.init, dir)
            .await
            .map_err(|(error, pid)| {
                made.init = pid;
                error
            })?;
        made.init = Some(init.pid);
        let mut state = SandboxState::new(
            sandbox_id.clone(),
            spec.env.clone(),
            init,
            self.ids,
            cgroups,
        );
        state.disk_mb = spec.resources.disk_mb;
        state
            .save(dir)
            .map_err(|error| SandboxError::io("write", dir.join(STATE_FILE), error))?;
        Ok(state)
    }
}

/// What a failed provision had made, for its cleanup.
#[derive(Default)]
struct Made {
    init: Option<i32>,
    cgroups: Option<SandboxCgroups>,
    /// The sandbox's directories are on a disk image.
    disk: bool,
}
