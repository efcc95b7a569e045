//! Template snapshots: "a sandbox is a resumed snapshot". The first create of an image,
//! size and network boots a VM with its RAM in a shared file, waits for the agent, and
//! saves the device state next to that file. Later creates start QEMU with the file
//! mapped private (copy-on-write: clones share its pages until they write them) and load
//! the device state instead of booting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::qemu::{Machine, Ram};
use crate::vm::{Hypervisor, VmError, BOOT_TIMEOUT};

/// A guest image: its version id and the files QEMU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub name: String,
    pub version: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The image's ext4 root filesystem, when it has one.
    pub rootfs: Option<PathBuf>,
    /// The uncompressed kernel, when the image has one (booted in place of `kernel`).
    pub vmlinux: Option<PathBuf>,
}

/// What a template is made for: VMs of one image, size and network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateKey {
    pub image_version: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub network: bool,
}

impl TemplateKey {
    /// The template's directory name.
    pub fn name(&self) -> String {
        format!(
            "{}-{}m-{}c-{}",
            self.image_version,
            self.memory_mib,
            self.vcpus,
            if self.network { "net" } else { "nonet" }
        )
    }
}

/// A saved template: the RAM file and the device state.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub dir: PathBuf,
    pub ram: PathBuf,
    pub state: PathBuf,
    /// The root disk as the template left it (a qcow2 overlay over the image's root
    /// filesystem), when the image has one: clones get overlays over it.
    pub disk: Option<PathBuf>,
    /// How long booting it took, when this call made it.
    pub boot: Option<std::time::Duration>,
}

pub const RAM_FILE: &str = "ram";
pub const STATE_FILE: &str = "vmstate";
/// The boot files are copied in: a template must not change when its image is rebuilt.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRAMFS_FILE: &str = "initramfs";
/// The uncompressed kernel, when the image has one: QEMU starts it at its PVH entry,
/// skipping the bzImage's self-decompression (about 0.9 s under TCG here).
pub const VMLINUX_FILE: &str = "vmlinux";
/// The image's root filesystem, linked in (images are never changed in place: a rebuild
/// installs new files, so the link keeps the old content).
pub const ROOTFS_FILE: &str = "rootfs.ext4";
pub use crate::qemu::DISK_FILE;

/// The templates under one directory; makes each at most once at a time.
#[derive(Debug)]
pub struct Templates {
    root: PathBuf,
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How long a booting template's agent may take to say hello, in milliseconds.
    boot_timeout_ms: std::sync::atomic::AtomicU64,
}

impl Templates {
    pub fn new(root: PathBuf) -> Templates {
        Templates {
            root,
            building: Mutex::new(HashMap::new()),
            boot_timeout_ms: std::sync::atomic::AtomicU64::new(BOOT_TIMEOUT.as_millis() as u64),
        }
    }

    /// How long a booting guest may take to say hello before the boot counts as failed
    /// (default [`BOOT_TIMEOUT`]).
    pub fn set_boot_timeout(&self, timeout: std::time::Duration) {
        self.boot_timeout_ms.store(
            timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn boot_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.boot_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The template of `key`, made first if there is none.
    pub async fn get(
        &self,
        hypervisor: &Hypervisor,
        image: &GuestImage,
        key: &TemplateKey,
    ) -> Result<Template, VmError> {
        let name = key.name();
        let dir = self.root.join(&name);
        let existing = || {
            let ram = dir.join(RAM_FILE);
            let state = dir.join(STATE_FILE);
            let disk = Some(dir.join(DISK_FILE)).filter(|disk| disk.is_file());
            (ram.is_file() && state.is_file()).then(|| Template {
                name: name.clone(),
                dir: dir.clone(),
                ram,
                state,
                disk,
                boot: None,
            })
        };
        if let Some(template) = existing() {
            return Ok(template);
        }
        let lock = self
            .building
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(name.clone())
            .or_default()
            .clone();
        let _building = lock.lock().await;
        if let Some(template) = existing() {
            return Ok(template);
        }
        let started = std::time::Instant::now();
        let boot = self.make(hypervisor, image, key, &dir).await?;
        tracing::info!(template = %name, boot_ms = boot.as_millis() as u64, total_ms = started.elapsed().as_millis() as u64, "made a VM template");
        let mut template = existing().ok_or_else(|| {
            VmError::Launch(format!(
                "template {name} was made but its files are missing"
            ))
        })?;
        template.boot = Some(boot);
        Ok(template)
    }

    /// Boots a VM for `key` in a scratch directory, saves it, and renames the directory
    /// into place. Returns the boot time (start to agent hello).
    async fn make(
        &self,
        hypervisor: &Hypervisor,
        image: &GuestImage,
        key: &TemplateKey,
        dir: &Path,
    ) -> Result<std::time::Duration, VmError> {
        fs_err::create_dir_all(&self.root)?;
        let scratch = self
            .root
            .join(format!(".build-{}-{}", key.name(), std::process::id()));
        let _ = fs_err::remove_dir_all(&scratch);
        fs_err::create_dir_all(&scratch)?;
        let result = async {
            fs_err::copy(&image.kernel, scratch.join(KERNEL_FILE))?;
            if let Some(vmlinux) = &image.vmlinux {
                link_or_copy(vmlinux, &scratch.join(VMLINUX_FILE))?;
            }
            fs_err::copy(&image.initramfs, scratch.join(INITRAMFS_FILE))?;
            let disk = match (&image.rootfs, hypervisor) {
                (None, _) => None,
                (Some(rootfs), Hypervisor::Qemu(qemu)) => {
                    link_or_copy(rootfs, &scratch.join(ROOTFS_FILE))?;
                    // Relative: the overlay follows the directory when it is renamed.
                    qemu.create_overlay(Path::new(ROOTFS_FILE), "raw", &scratch.join(DISK_FILE))
                        .await
                        .map_err(VmError::Launch)?;
                    Some(scratch.join(DISK_FILE))
                }
                (Some(_), Hypervisor::Firecracker(_)) => {
                    return Err(VmError::Launch(
                        "Firecracker reads only raw disks, and the copy-on-write root disks of \
                         this backend are qcow2 overlays: use an image without --rootfs, or \
                         --backend qemu"
                            .into(),
                    ))
                }
            };
            if matches!(hypervisor, Hypervisor::Firecracker(_)) && image.vmlinux.is_none() {
                return Err(VmError::Launch(format!(
                    "image {} has no uncompressed kernel (vmlinux), the only kind Firecracker \
                     boots: rebuild it with `cthulu image build`",
                    image.name
                )));
            }
            let machine = Machine {
                dir: scratch.clone(),
                memory_mib: key.memory_mib,
                vcpus: key.vcpus,
                network: key.network,
                kernel: boot_kernel(&scratch),
                initramfs: scratch.join(INITRAMFS_FILE),
                ram: Ram::Shared(scratch.join(RAM_FILE)),
                disk,
                incoming: false,
            };
            let started = std::time::Instant::now();
            let vm = hypervisor.launch(&machine).await?;
            let outcome = async {
                // The connection stays open through the save: the restored agent then
                // reads the next host's hello at once.
                let _agent = hypervisor.connect_agent(&vm, self.boot_timeout()).await?;
                let boot = started.elapsed();
                let mut control = hypervisor.control(&vm).await?;
                hypervisor
                    .save(
                        &mut control,
                        &scratch.join(STATE_FILE),
                        &scratch.join(RAM_FILE),
                    )
                    .await?;
                hypervisor.quit(&mut control).await;
                Ok::<_, VmError>(boot)
            }
            .await;
            vm.kill().await;
            outcome
        }
        .await;
        match result {
            Ok(boot) => {
                for name in [RAM_FILE, STATE_FILE, DISK_FILE] {
                    // Clones map the RAM and read the disk: they must never change again.
                    let path = scratch.join(name);
                    if name == DISK_FILE && !path.exists() {
                        continue;
                    }
                    let mut permissions = fs_err::metadata(&path)?.permissions();
                    permissions.set_readonly(true);
                    fs_err::set_permissions(&path, permissions)?;
                }
                for name in crate::qemu::SCRATCH_FILES
                    .into_iter()
                    .chain(crate::firecracker::SCRATCH_FILES)
                {
                    let _ = fs_err::remove_file(scratch.join(name));
                }
                if let Err(error) = fs_err::rename(&scratch, dir) {
                    // Another process sharing the templates made the same one meanwhile.
                    let _ = fs_err::remove_dir_all(&scratch);
                    if !dir.join(STATE_FILE).is_file() {
                        return Err(error.into());
                    }
                }
                Ok(boot)
            }
            Err(error) => {
                let _ = fs_err::remove_dir_all(&scratch);
                Err(error)
            }
        }
    }

    /// Removes the templates of other image versions that no sandbox in `in_use` needs (a
    /// memory restore maps its template's RAM again), so rebuilt images do not pile up
    /// templates of 100+ MiB each. Returns the names removed.
    pub fn prune(&self, current_version: &str, in_use: &[String]) -> Vec<String> {
        let Ok(entries) = fs_err::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let current = name.starts_with(&format!("{current_version}-"));
            if name.starts_with('.') || current || in_use.contains(&name) {
                continue;
            }
            if fs_err::remove_dir_all(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    /// Removes every template (they are remade on demand).
    pub fn clear(&self) -> std::io::Result<()> {
        match fs_err::remove_dir_all(&self.root) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The kernel a template in `dir` boots (and its clones name): the uncompressed one when
/// there is one.
pub fn boot_kernel(dir: &Path) -> PathBuf {
    let vmlinux = dir.join(VMLINUX_FILE);
    if vmlinux.is_file() {
        vmlinux
    } else {
        dir.join(KERNEL_FILE)
    }
}

/// Hard-links `from` to `to`, or copies it where a link cannot be made (another
/// filesystem).
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    match fs_err::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(_) => fs_err::copy(from, to).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_current_image_and_templates_in_use() {
        let root = tempfile::tempdir().unwrap();
        for name in [
            "new1-256m-1c-nonet",
            "new1-512m-2c-net",
            "old1-256m-1c-nonet",
            "old2-256m-1c-nonet",
            ".build-old3-256m-1c-nonet-7",
        ] {
            fs_err::create_dir_all(root.path().join(name).join("x")).unwrap();
        }
        let templates = Templates::new(root.path().to_path_buf());
        let mut removed = templates.prune("new1", &["old2-256m-1c-nonet".to_string()]);
        removed.sort();
        assert_eq!(removed, ["old1-256m-1c-nonet"]);
        let mut left: Vec<String> = fs_err::read_dir(root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".build-old3-256m-1c-nonet-7",
                "new1-256m-1c-nonet",
                "new1-512m-2c-net",
                "old2-256m-1c-nonet"
            ]
        );
    }
}
