//! [`QemuProvider`]: makes microVM sandboxes as clones of template snapshots and finds
//! them again after a restart (their QEMU processes outlive the server).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cthulu_core::{SandboxError, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_host::handles::Handles;
use cthulu_types::{BackendInfo, BackendKind, LimitSupport, NetworkMode, SandboxId, SandboxStatus};

use cthulu_guest_protocol::message::GuestLimits;

use crate::firecracker::Firecracker;
use crate::pool::Pool;
use crate::qemu::{self, Qemu};
use crate::sandbox::{capabilities, clone_machine, prepare_disk, vm_failure, VmSandbox};
use crate::state::VmState;
use crate::template::{GuestImage, TemplateKey, Templates};
use crate::vm::Hypervisor;

/// Finds the guest image a create names (`None`: the default one).
pub type ImageResolver = Arc<dyn Fn(Option<&str>) -> Result<GuestImage, String> + Send + Sync>;

/// Resolves image names in `images_dir` (`$CTHULU_HOME/images`) with cthulu-image: each
/// create reads the manifest again, so an image built while the server runs is used.
pub fn image_resolver(images_dir: PathBuf) -> ImageResolver {
    Arc::new(move |name: Option<&str>| {
        let name = name.unwrap_or(cthulu_image::DEFAULT_IMAGE);
        let image = cthulu_image::open(&images_dir, name).map_err(|error| error.to_string())?;
        Ok(GuestImage {
            name: image.name().to_string(),
            version: image.version().to_string(),
            kernel: image.kernel().to_path_buf(),
            initramfs: image.initramfs().to_path_buf(),
            rootfs: image.rootfs().map(Path::to_path_buf),
            vmlinux: image.vmlinux().map(Path::to_path_buf),
        })
    })
}

/// Sizes when a create names none.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
pub const DEFAULT_VCPUS: u32 = 1;

/// How the QEMU backend is set up.
pub struct QemuConfig {
    /// Holds `sandboxes/` (and `templates/` unless `templates` names another place).
    pub root: PathBuf,
    /// Where templates are kept; they depend only on the image and the VM's size, so
    /// several servers (or test runs) may share them.
    pub templates: Option<PathBuf>,
    /// `None`: `qemu-system-x86_64` from PATH.
    pub binary: Option<PathBuf>,
    pub images: ImageResolver,
}

/// The microVM backends: `qemu` ([`QemuProvider::new`]) and `firecracker`
/// ([`QemuProvider::firecracker`]), one provider each, the same sandboxes underneath.
pub struct QemuProvider {
    kind: BackendKind,
    hypervisor: Result<Arc<Hypervisor>, String>,
    /// Warm VMs of the default shape (none unless [`QemuProvider::with_warm_vms`]).
    pool: Arc<Pool>,
    root: PathBuf,
    templates: Arc<Templates>,
    images: ImageResolver,
    handles: Handles<VmSandbox>,
}

impl QemuProvider {
    /// The qemu backend: `qemu-system-x86_64 -M microvm`, hardware KVM or TCG.
    pub fn new(config: QemuConfig) -> QemuProvider {
        let hypervisor = Qemu::detect(config.binary.as_deref()).map(|qemu| {
            tracing::info!(accel = qemu.accel.as_str(), reason = %qemu.accel_reason, "QEMU backend");
            Arc::new(Hypervisor::Qemu(qemu))
        });
        QemuProvider::with_hypervisor(BackendKind::Qemu, hypervisor, config)
    }

    /// The firecracker backend: a `firecracker` binary (`config.binary`, else PATH) on
    /// hardware KVM. Its templates must be kept apart from QEMU's (`config.templates`).
    pub fn firecracker(config: QemuConfig) -> QemuProvider {
        let hypervisor = Firecracker::detect(config.binary.as_deref())
            .map(|firecracker| Arc::new(Hypervisor::Firecracker(firecracker)));
        QemuProvider::with_hypervisor(BackendKind::Firecracker, hypervisor, config)
    }

    fn with_hypervisor(
        kind: BackendKind,
        hypervisor: Result<Arc<Hypervisor>, String>,
        config: QemuConfig,
    ) -> QemuProvider {
        let templates = Arc::new(Templates::new(
            config
                .templates
                .unwrap_or_else(|| config.root.join("templates")),
        ));
        QemuProvider {
            kind,
            pool: Arc::new(Pool::new(
                0,
                hypervisor.clone().ok(),
                templates.clone(),
                config.images.clone(),
                &config.root,
            )),
            hypervisor,
            templates,
            root: config.root,
            images: config.images,
            handles: Handles::default(),
        }
    }

    /// Keeps `count` VMs of the default shape started ahead of demand (made in the
    /// background, from now on if the backend can run here). Must be called inside a
    /// tokio runtime.
    pub fn with_warm_vms(mut self, count: usize) -> QemuProvider {
        self.pool = Arc::new(Pool::new(
            count,
            self.hypervisor.clone().ok(),
            self.templates.clone(),
            self.images.clone(),
            &self.root,
        ));
        if self.unavailable_reason().is_none() {
            self.pool.refill();
        }
        self
    }

    /// How long a booting template may take to come up (tests shorten it).
    pub fn with_boot_timeout(self, timeout: std::time::Duration) -> QemuProvider {
        self.templates.set_boot_timeout(timeout);
        self
    }

    fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    fn sandbox_dir(&self, sandbox_id: &SandboxId) -> PathBuf {
        self.sandboxes().join(sandbox_id.as_str())
    }

    fn hypervisor(&self) -> Result<Arc<Hypervisor>, SandboxError> {
        self.hypervisor
            .clone()
            .map_err(|reason| SandboxError::BackendUnavailable {
                backend: self.kind,
                reason,
            })
    }

    /// How many warm VMs are ready now.
    pub fn warm_vms(&self) -> usize {
        self.pool.ready()
    }

    /// The templates (for `cthulu bench` and tests).
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    fn unavailable_reason(&self) -> Option<String> {
        match &self.hypervisor {
            Err(reason) => Some(reason.clone()),
            Ok(_) => (self.images)(None).err(),
        }
    }

    fn handle(
        &self,
        dir: PathBuf,
        state: VmState,
        agent: Option<crate::client::GuestClient>,
    ) -> Result<Arc<VmSandbox>, SandboxError> {
        let sandbox = VmSandbox::new(
            dir,
            state,
            self.hypervisor()?,
            self.kind,
            self.templates.root().to_path_buf(),
            agent,
        )
        .into_arc();
        Ok(self.handles.keep(sandbox.sandbox_id.clone(), sandbox))
    }

    async fn make(
        &self,
        sandbox_id: &SandboxId,
        spec: &SandboxSpec,
        dir: &Path,
    ) -> Result<(VmState, crate::client::GuestClient), SandboxError> {
        let hypervisor = self.hypervisor()?;
        if let Some(source) = &spec.from_checkpoint {
            return self
                .make_from_checkpoint(&hypervisor, sandbox_id, spec, source, dir)
                .await;
        }
        if self.kind == BackendKind::Firecracker && spec.network == NetworkMode::Full {
            return Err(SandboxError::Unsupported {
                backend: self.kind,
                operation: "network",
                reason: "a Firecracker VM reaches the network through a TAP device, which this \
                         backend does not set up yet: use --backend qemu for network full"
                    .into(),
            });
        }
        let resources = &spec.resources;
        if resources.disk_mb.is_some() {
            return Err(SandboxError::Unsupported {
                backend: self.kind,
                operation: "limit",
                reason: "a microVM's disk is its image's: an initramfs image keeps the guest's \
                         files in its RAM (the memory limit bounds them), an image with a root \
                         filesystem has the size it was built with (`cthulu image build \
                         --rootfs ... --rootfs-size 4G`)"
                    .into(),
            });
        }
        // The VM is at least the default size; a smaller memory limit is the guest
        // cgroup's, so small sandboxes share the default template (and warm VMs).
        let memory_mib = match resources.memory_mb {
            None => DEFAULT_MEMORY_MIB,
            Some(mb) if (16..=65536).contains(&mb) => (mb as u32).max(DEFAULT_MEMORY_MIB),
            Some(_) => {
                return Err(SandboxError::invalid(
                    "resources.memory_mb",
                    "a microVM sandbox takes between 16 and 65536 MB",
                ))
            }
        };
        let vcpus = match resources.vcpus {
            None => DEFAULT_VCPUS,
            Some(count) if (1..=64).contains(&count) => count,
            Some(_) => return Err(SandboxError::invalid("resources.vcpus", "between 1 and 64")),
        };
        let cpu_millis = match resources.cpus {
            None => None,
            Some(cpus) if cpus >= 0.01 && cpus <= f64::from(vcpus) => {
                Some((cpus * 1000.0).round() as u32)
            }
            Some(_) => {
                return Err(SandboxError::invalid(
                    "resources.cpus",
                    format!("between 0.01 and the VM's {vcpus} vCPUs"),
                ))
            }
        };
        let limits =
            (resources.memory_mb.is_some() || resources.pids.is_some() || cpu_millis.is_some())
                .then_some(GuestLimits {
                    memory_bytes: resources.memory_mb.map(|mb| mb * 1024 * 1024),
                    pids: resources.pids,
                    cpu_millis,
                });
        let network = spec.network == NetworkMode::Full;
        let image = (self.images)(spec.image.as_deref()).map_err(|reason| {
            SandboxError::BackendUnavailable {
                backend: self.kind,
                reason,
            }
        })?;
        let key = TemplateKey {
            image_version: image.version.clone(),
            memory_mib,
            vcpus,
            network,
        };
        let template = self
            .templates
            .get(&hypervisor, &image, &key)
            .await
            .map_err(vm_failure("make the VM template"))?;
        if template.boot.is_some() {
            // A new template: those of older images nobody here uses can go.
            let in_use: Vec<String> = fs_err::read_dir(self.sandboxes())
                .map(|entries| {
                    entries
                        .filter_map(|entry| Some(VmState::load(&entry.ok()?.path()).ok()?.template))
                        .collect()
                })
                .unwrap_or_default();
            for removed in self.templates.prune(&image.version, &in_use) {
                tracing::info!(template = %removed, "removed the template of an older image");
            }
        }
        let mut state = VmState::new(sandbox_id.clone(), spec.env.clone());
        state.memory_mib = memory_mib;
        state.vcpus = vcpus;
        state.network = network;
        state.image_version = image.version.clone();
        state.template = template.name.clone();
        fs_err::create_dir_all(dir).map_err(|error| SandboxError::io("create", dir, error))?;
        if let Some(spare) = self.pool.take(&template.name) {
            state.disk = template.disk.is_some();
            state.vm_dir = Some(spare.vm.dir.clone());
            state.pid = spare.vm.pid;
            save(&state, dir)?;
            self.pool.refill();
            VmSandbox::configure(&spare.client, sandbox_id, &spec.env, true, limits).await?;
            state.status = SandboxStatus::Running;
            save(&state, dir)?;
            return Ok((state, spare.client));
        }
        save(&state, dir)?;
        let client = start_clone(
            &hypervisor,
            dir,
            &template.dir,
            &template.state,
            None,
            &mut state,
            limits,
            "start the VM from its template",
        )
        .await?;
        Ok((state, client))
    }
}

impl QemuProvider {
    /// A new sandbox from another one's memory checkpoint (`<sandbox id>/<checkpoint>`):
    /// the same template RAM under the checkpoint's state, then its own identity. The
    /// request may not ask for another size, network or image than the checkpoint's VM had.
    async fn make_from_checkpoint(
        &self,
        hypervisor: &Arc<Hypervisor>,
        sandbox_id: &SandboxId,
        spec: &SandboxSpec,
        source: &str,
        dir: &Path,
    ) -> Result<(VmState, crate::client::GuestClient), SandboxError> {
        let invalid = |message: String| SandboxError::invalid("from_checkpoint", message);
        let (source_id, checkpoint) = source
            .split_once('/')
            .ok_or_else(|| invalid(format!("{source:?} is not <sandbox id>/<checkpoint>")))?;
        let source_id = SandboxId::parse(source_id)
            .map_err(|_| invalid(format!("{source_id:?} is not a sandbox id")))?;
        let source_dir = self.sandbox_dir(&source_id);
        let source_state =
            VmState::load(&source_dir).map_err(|_| SandboxError::SandboxNotFound {
                sandbox_id: source_id.clone(),
            })?;
        let found = source_state
            .checkpoints
            .iter()
            .find(|found| found.id == checkpoint || found.name.as_deref() == Some(checkpoint))
            .ok_or_else(|| SandboxError::CheckpointNotFound {
                checkpoint: checkpoint.to_string(),
            })?;
        if !found.memory {
            return Err(invalid(format!(
                "checkpoint {checkpoint} of {source_id} holds files only; a new VM starts from a \
                 checkpoint taken with memory (`cthulu sandbox checkpoint --memory`)"
            )));
        }
        let resources = &spec.resources;
        let size_differs = resources
            .memory_mb
            .is_some_and(|mb| (mb as u32).max(DEFAULT_MEMORY_MIB) != source_state.memory_mib)
            || resources
                .vcpus
                .is_some_and(|vcpus| vcpus != source_state.vcpus)
            || (spec.network == NetworkMode::Full && !source_state.network);
        if size_differs
            || resources.pids.is_some()
            || resources.cpus.is_some()
            || resources.disk_mb.is_some()
        {
            return Err(invalid(format!(
                "the checkpoint is of a {} MiB, {} vCPU VM{}: a sandbox started from it has that \
                 size and network, and the checkpoint's limits (ask for nothing else)",
                source_state.memory_mib,
                source_state.vcpus,
                if source_state.network {
                    " with network"
                } else {
                    ""
                }
            )));
        }
        let image = (self.images)(spec.image.as_deref()).ok();
        if spec.image.is_some()
            && image.as_ref().map(|image| &image.version) != Some(&source_state.image_version)
        {
            return Err(invalid(format!(
                "the checkpoint was taken on image version {}, not on the image asked for",
                source_state.image_version
            )));
        }
        let template_dir = self.templates.root().join(&source_state.template);
        if !template_dir.join(crate::template::RAM_FILE).is_file() {
            return Err(invalid(format!(
                "the template the checkpoint's VM was made from ({}) is gone: its memory cannot \
                 be rebuilt",
                source_state.template
            )));
        }
        let checkpoint_dir = source_dir.join("checkpoints").join(&found.id);
        let vmstate = checkpoint_dir.join("vmstate");
        let source_disk = source_state
            .disk
            .then(|| checkpoint_dir.join(crate::qemu::DISK_FILE));
        let mut state = VmState::new(sandbox_id.clone(), {
            let mut env = source_state.env.clone();
            env.extend(spec.env.clone());
            env
        });
        state.memory_mib = source_state.memory_mib;
        state.vcpus = source_state.vcpus;
        state.network = source_state.network;
        state.image_version = source_state.image_version.clone();
        state.template = source_state.template.clone();
        fs_err::create_dir_all(dir).map_err(|error| SandboxError::io("create", dir, error))?;
        save(&state, dir)?;
        // The checkpoint's limits come with its memory.
        let client = start_clone(
            hypervisor,
            dir,
            &template_dir,
            &vmstate,
            source_disk.as_deref(),
            &mut state,
            None,
            "start the VM from the checkpoint",
        )
        .await?;
        Ok((state, client))
    }
}

/// Writes `state` into the sandbox directory `dir`.
fn save(state: &VmState, dir: &Path) -> Result<(), SandboxError> {
    state
        .save(dir)
        .map_err(|error| SandboxError::io("write", dir.join("state.json"), error))
}

/// Resumes `vmstate` on the template in `template_dir` as the VM of `state` (a new
/// sandbox), its root disk (when the template has one) a copy of `disk_from` or a new
/// overlay, gives it its identity and `limits`, and records it running.
#[allow(clippy::too_many_arguments)]
async fn start_clone(
    hypervisor: &Hypervisor,
    dir: &Path,
    template_dir: &Path,
    vmstate: &Path,
    disk_from: Option<&Path>,
    state: &mut VmState,
    limits: Option<GuestLimits>,
    operation: &'static str,
) -> Result<crate::client::GuestClient, SandboxError> {
    state.disk = prepare_disk(hypervisor, template_dir, dir, disk_from)
        .await
        .map_err(vm_failure(operation))?;
    let machine = clone_machine(dir, template_dir, state);
    // A template's memory, or a checkpoint's where the VMM wrote its own.
    let memory =
        crate::sandbox::checkpoint_memory(vmstate.parent().unwrap_or(template_dir), template_dir);
    let (vm, _control, client) = hypervisor
        .resume(&machine, vmstate, &memory)
        .await
        .map_err(vm_failure(operation))?;
    state.pid = vm.pid;
    VmSandbox::configure(&client, &state.sandbox_id, &state.env, true, limits).await?;
    state.status = SandboxStatus::Running;
    save(state, dir)?;
    Ok(client)
}

/// Kills what a failed create started and removes its directories (and the warm VM's it
/// took, if it took one).
async fn clean_up(dir: &Path) {
    let vm_dir = VmState::load(dir).ok().and_then(|state| state.vm_dir);
    for dir in vm_dir.as_deref().into_iter().chain([dir]) {
        if let Some(pid) = qemu::read_pid(dir) {
            qemu::kill(pid, dir).await;
        }
        let _ = fs_err::remove_dir_all(dir);
    }
}

#[async_trait]
impl SandboxProvider for QemuProvider {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn info(&self) -> BackendInfo {
        let unavailable_reason = self.unavailable_reason();
        let accel = match self.hypervisor.as_deref() {
            Ok(Hypervisor::Qemu(qemu)) => {
                format!("{} ({})", qemu.accel.as_str(), qemu.accel_reason)
            }
            Ok(Hypervisor::Firecracker(_)) => "kvm".into(),
            Err(_) => "none".into(),
        };
        let limit = |limit: &str, enforced: bool, detail: &str| LimitSupport {
            limit: limit.into(),
            enforced,
            detail: detail.into(),
        };
        BackendInfo {
            kind: self.kind,
            available: unavailable_reason.is_none(),
            unavailable_reason,
            capabilities: capabilities(),
            limits: vec![
                limit(
                    "memory",
                    true,
                    &format!("the VM's RAM; accelerator: {accel}"),
                ),
                limit(
                    "cpus",
                    true,
                    "cgroup v2 cpu.max inside the guest, up to the VM's vcpus",
                ),
                limit("pids", true, "cgroup v2 pids.max inside the guest"),
                limit(
                    "disk",
                    false,
                    "the image's: its root filesystem's size, or the guest's RAM for an \
                     initramfs image",
                ),
                limit(
                    "timeout",
                    true,
                    "the guest agent kills the command's process group",
                ),
                limit("output", true, "the guest agent caps each stream"),
            ],
        }
    }

    async fn provision(
        &self,
        sandbox_id: &SandboxId,
        spec: &SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        let dir = self.sandbox_dir(sandbox_id);
        match self.make(sandbox_id, spec, &dir).await {
            Ok((state, client)) => Ok(self.handle(dir, state, Some(client))?),
            Err(error) => {
                clean_up(&dir).await;
                Err(error)
            }
        }
    }

    async fn attach(
        &self,
        sandbox_id: &SandboxId,
        _spec: &SandboxSpec,
    ) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        if let Some(sandbox) = self.handles.get(sandbox_id) {
            if sandbox.dir.exists() {
                return Ok(sandbox);
            }
        }
        let dir = self.sandbox_dir(sandbox_id);
        let mut state = match VmState::load(&dir) {
            Ok(state) => state,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::SandboxNotFound {
                    sandbox_id: sandbox_id.clone(),
                })
            }
            Err(error) => return Err(SandboxError::io("read", dir.join("state.json"), error)),
        };
        let alive = qemu::is_running(state.pid, state.vm_dir.as_deref().unwrap_or(&dir));
        if !alive
            && matches!(
                state.status,
                SandboxStatus::Running | SandboxStatus::Stopped | SandboxStatus::Creating
            )
        {
            state.status = SandboxStatus::Lost;
        }
        let sandbox = self.handle(dir, state, None)?;
        if sandbox.status().check_exists().is_ok() {
            cthulu_host::ports::restart_forwarders(&*sandbox)?;
        }
        Ok(sandbox)
    }

    async fn shutdown(&self) {
        self.pool.drain().await;
    }

    async fn list(&self) -> Result<Vec<SandboxId>, SandboxError> {
        match fs_err::metadata(self.sandboxes()) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => cthulu_host::state_file::list_sandboxes(&self.sandboxes(), VmState::load).await,
        }
    }
}
