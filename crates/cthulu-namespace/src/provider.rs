//! [`NamespaceProvider`]: makes namespace sandboxes under its root directory and finds
//! them again after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cthulu_core::{SandboxError, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_host::handles::Handles;
use cthulu_types::{
    BackendInfo, BackendKind, Capabilities, CheckpointSupport, LimitSupport, SandboxId,
    SandboxStatus,
};

use crate::cgroup::Cgroups;
use crate::config::NamespaceConfig;
use crate::disk::Disk;
use crate::error::NamespaceError;
use crate::init::IdMapping;
use crate::maker::Maker;
use crate::pool::Pool;
use crate::sandbox::NamespaceSandbox;
use crate::state::{SandboxState, STATE_FILE};
use cthulu_host::workspace::openat2_supported;

/// The namespace backend. Every sandbox it hands out is shared (`provision` and `attach`
/// of one id give the same handle while it lives).
pub struct NamespaceProvider {
    /// Makes sandboxes (for creates and for the pool of warm ones).
    maker: Arc<Maker>,
    /// Why the backend cannot run here, if it cannot.
    unavailable: Option<String>,
    handles: Handles<NamespaceSandbox>,
    /// Warm sandboxes (none unless [`NamespaceProvider::with_warm_sandboxes`]).
    pool: Arc<Pool>,
}

impl NamespaceProvider {
    /// Prepares the root directory (created if missing) and checks the kernel.
    pub fn new(config: NamespaceConfig) -> Result<NamespaceProvider, NamespaceError> {
        if !config.root.is_absolute() {
            return Err(NamespaceError::RelativeRoot {
                path: config.root.clone(),
            });
        }
        // The state directory's paths go into overlayfs's comma-separated options.
        if config.root.to_string_lossy().contains([',', ':']) {
            return Err(NamespaceError::UnusableRoot {
                path: config.root.clone(),
            });
        }
        fs_err::create_dir_all(&config.root).map_err(NamespaceError::Root)?;
        let unavailable = unavailable_reason(&config.root);
        let ids = IdMapping::for_server(
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let maker = Arc::new(Maker {
            config,
            ids,
            cgroups: Cgroups::detect(),
            disk: Disk::detect(),
        });
        Ok(NamespaceProvider {
            pool: Pool::new(0, maker.clone()),
            maker,
            unavailable,
            handles: Handles::default(),
        })
    }

    /// Keeps `count` sandboxes made ahead of demand (module `pool`), for creates that ask
    /// for no limits, network or image: they skip the cgroup joins and the namespace and
    /// mount setup, which are most of a create. The pool fills at the first create.
    pub fn with_warm_sandboxes(mut self, count: usize) -> NamespaceProvider {
        if self.unavailable.is_none() {
            self.pool = Pool::new(count, self.maker.clone());
        }
        self
    }

    pub fn root(&self) -> &Path {
        self.maker.root()
    }

    fn sandbox_dir(&self, sandbox_id: &SandboxId) -> PathBuf {
        self.root().join(sandbox_id.as_str())
    }

    fn check_available(&self) -> Result<(), SandboxError> {
        match &self.unavailable {
            None => Ok(()),
            Some(reason) => Err(SandboxError::BackendUnavailable {
                backend: BackendKind::Namespace,
                reason: reason.clone(),
            }),
        }
    }

    /// The handle of the sandbox in `dir`, remembered.
    fn sandbox(&self, dir: PathBuf, state: SandboxState) -> Arc<NamespaceSandbox> {
        self.remember(NamespaceSandbox::new(
            dir,
            state,
            self.maker.config.init.clone(),
            self.maker.config.shim.clone(),
        ))
    }

    fn remember(&self, sandbox: NamespaceSandbox) -> Arc<NamespaceSandbox> {
        self.handles.remember(sandbox.sandbox_id.clone(), sandbox)
    }

    fn remembered(&self, sandbox_id: &SandboxId) -> Option<Arc<NamespaceSandbox>> {
        self.handles.get(sandbox_id)
    }
}

/// Checks what a create asks for beyond limits (those are [`Cgroups::check`]'s and
/// [`Disk::check`]'s) and returns the image directory, if it names one, resolved.
fn check_spec(spec: &SandboxSpec) -> Result<Option<PathBuf>, SandboxError> {
    let Some(image) = &spec.image else {
        return Ok(None);
    };
    image_dir(image).map(Some)
}

/// The directory an `image` names. The namespace backend takes an absolute path of a
/// directory holding a root filesystem, nothing else (no registry, no archive).
fn image_dir(image: &str) -> Result<PathBuf, SandboxError> {
    let invalid = |message: String| SandboxError::InvalidRequest {
        field: "image",
        message,
    };
    let path = Path::new(image);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{image:?} is not accepted: the namespace backend takes the absolute path of a \
             directory holding a root filesystem (say /srv/rootfs/debian), shown read-only \
             as the sandbox's / with its writes kept apart; not an image name or an archive"
        )));
    }
    let resolved = match std::fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(format!(
                "{image} does not exist (give the absolute path of a root filesystem \
                 directory on the server)"
            )))
        }
        Err(error) => return Err(invalid(format!("{image} cannot be used: {error}"))),
    };
    if !resolved.is_dir() {
        return Err(invalid(format!(
            "{image} is not a directory (give the absolute path of a root filesystem \
             directory on the server)"
        )));
    }
    Ok(resolved)
}

/// Why namespace sandboxes cannot be made on this machine, if they cannot.
fn unavailable_reason(root: &Path) -> Option<String> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    if !Path::new("/proc/self/ns/user").exists() {
        return Some("the kernel has no user namespaces (CONFIG_USER_NS)".into());
    }
    if read("/proc/sys/user/max_user_namespaces").is_some_and(|max| max.trim() == "0") {
        return Some(
            "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)".into(),
        );
    }
    let root_user = rustix::process::getuid().is_root();
    if !root_user
        && read("/proc/sys/kernel/unprivileged_userns_clone")
            .is_some_and(|value| value.trim() == "0")
    {
        return Some(
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
                .into(),
        );
    }
    if !read("/proc/filesystems").is_some_and(|filesystems| {
        filesystems
            .lines()
            .any(|line| line.split_whitespace().last() == Some("overlay"))
    }) {
        return Some(
            "the kernel has no overlayfs (CONFIG_OVERLAY_FS), needed for the writable layer".into(),
        );
    }
    if !openat2_supported(root) {
        return Some(
            "the kernel lacks openat2 with RESOLVE_BENEATH (Linux 5.6 or later is needed) to \
             resolve file paths safely"
                .into(),
        );
    }
    None
}

/// What the namespace backend can do in this increment (stop/resume needs a freezer).
pub(crate) fn capabilities() -> Capabilities {
    Capabilities {
        isolation: true,
        exec_stream: true,
        pty: true,
        detached_processes: true,
        files: true,
        ports: true,
        checkpoint: CheckpointSupport::Filesystem,
        stop_resume: true,
        network_policy: true,
    }
}

impl NamespaceProvider {
    fn limits(&self) -> Vec<LimitSupport> {
        let limit = |name: &str, detail: &str| LimitSupport {
            limit: name.to_owned(),
            enforced: true,
            detail: detail.to_owned(),
        };
        let mut limits = vec![
            limit(
                "timeout",
                "the command's process group is killed (SIGKILL) at the deadline",
            ),
            limit(
                "output",
                "stdout and stderr are each capped at max_output_bytes; the rest is dropped",
            ),
        ];
        limits.extend(self.maker.cgroups.limit_support());
        limits.push(self.maker.disk.limit_support());
        limits
    }
}

#[async_trait]
impl SandboxProvider for NamespaceProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Namespace
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Namespace,
            available: self.unavailable.is_none(),
            unavailable_reason: self.unavailable.clone(),
            capabilities: capabilities(),
            limits: self.limits(),
        }
    }

    async fn provision(
        &self,
        sandbox_id: &SandboxId,
        spec: &SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        self.check_available()?;
        let image = check_spec(spec)?;
        self.maker.cgroups.check(&spec.resources)?;
        self.maker.disk.check(&spec.resources)?;
        let dir = self.sandbox_dir(sandbox_id);
        if Pool::fits(spec) {
            if let Some(state) = self.pool.claim(sandbox_id, &dir, spec).await? {
                return Ok(self.sandbox(dir, state));
            }
        }
        let state = self
            .maker
            .provision_in(sandbox_id, &dir, spec, image.as_deref())
            .await?;
        Ok(self.sandbox(dir, state))
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
        let mut state = match SandboxState::load(&dir) {
            Ok(state) => state,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::SandboxNotFound {
                    sandbox_id: sandbox_id.clone(),
                })
            }
            Err(error) => return Err(SandboxError::io("read", dir.join(STATE_FILE), error)),
        };
        // Its init died while no server watched it: the sandbox is gone but for its files.
        if state.status == SandboxStatus::Running && !state.init.is_alive() {
            state.status = SandboxStatus::Lost;
        }
        let sandbox = self.sandbox(dir, state);
        // A lost sandbox has no ports left to forward.
        if sandbox.status().check_exists().is_ok() {
            cthulu_host::ports::restart_forwarders(&*sandbox)?;
        }
        Ok(sandbox)
    }

    async fn shutdown(&self) {
        self.pool.drain().await;
    }

    async fn list(&self) -> Result<Vec<SandboxId>, SandboxError> {
        cthulu_host::state_file::list_sandboxes(self.root(), SandboxState::load).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_absolute_directories() {
        assert_eq!(check_spec(&SandboxSpec::default()).unwrap(), None);
        let image = |image: &str| SandboxSpec {
            image: Some(image.to_owned()),
            ..SandboxSpec::default()
        };
        let message = |spec: &SandboxSpec| match check_spec(spec) {
            Err(SandboxError::InvalidRequest {
                field: "image",
                message,
            }) => message,
            other => panic!("expected an invalid image, got {other:?}"),
        };
        assert!(message(&image("debian:12")).contains("absolute path of a directory"));
        assert!(message(&image("/no/such/rootfs")).contains("/no/such/rootfs does not exist"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let file = file.display().to_string();
        assert!(message(&image(&file)).contains(&format!("{file} is not a directory")));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert_eq!(
            check_spec(&image(&link.display().to_string())).unwrap(),
            Some(dir.path().canonicalize().unwrap())
        );
    }
}
