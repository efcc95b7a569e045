//! The disk limit (`resources.disk_mb`): the sandbox's writable state on a filesystem of
//! that size.
//!
//! A root server makes `<sandbox>/disk.img`, formats it ext4 (`mkfs.ext4`), attaches it to
//! a free loop device (`LOOP_CTL_GET_FREE`, then `LOOP_CONFIGURE` with autoclear, so the
//! device goes away by itself once nothing has the filesystem mounted), mounts it on
//! `<sandbox>/disk`, binds its `workspace/`, `root/` and `layer/` over the sandbox's
//! directories of those names and unmounts `disk` again. Everything the sandbox writes but
//! `/tmp` and `/dev/shm` (memory, bounded by the memory limit) lands there, and a full disk
//! answers ENOSPC; the server's files (state, log, socket, checkpoints) stay outside.
//! Destroy (and a failed create) unmounts the three binds ([`release`]); the last one
//! takes the filesystem and with it the loop device.
//!
//! Mounting needs CAP_SYS_ADMIN in the host's namespaces: an unprivileged server refuses
//! a disk limit, naming why.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use cthulu_core::SandboxError;
use cthulu_types::{BackendKind, LimitSupport, Resources};
use linux_raw_sys::loop_device::{
    loop_config, loop_info64, LOOP_CONFIGURE, LOOP_CTL_GET_FREE, LO_FLAGS_AUTOCLEAR,
};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::state::{ROOT_DIR, WORKSPACE_DIR};

/// The image file in the sandbox's directory.
pub(crate) const DISK_IMAGE: &str = "disk.img";
/// Where the image is mounted while its directories are bound.
const DISK_MOUNT: &str = "disk";
/// The sandbox's directories that live on the image.
const ON_DISK: [&str; 3] = [WORKSPACE_DIR, ROOT_DIR, "layer"];
/// Below this, ext4's own structures leave next to nothing for the sandbox.
const MIN_DISK_MB: u64 = 16;
/// Where Debian and most distributions install `mkfs.ext4` (e2fsprogs).
const MKFS_PATHS: [&str; 2] = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"];
/// Attempts at taking a free loop device another process may take first.
const LOOP_ATTEMPTS: u32 = 10;

/// Whether this server can give sandboxes a disk limit, and with which `mkfs.ext4`.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    mkfs: Result<PathBuf, String>,
}

impl Disk {
    pub fn detect() -> Disk {
        Disk {
            mkfs: Self::find_mkfs(),
        }
    }

    fn find_mkfs() -> Result<PathBuf, String> {
        if !rustix::process::geteuid().is_root() {
            return Err(
                "mounting a filesystem of the sandbox's size needs a server running \
                        as root (CAP_SYS_ADMIN in the host's namespaces); create the sandbox \
                        without disk_mb"
                    .into(),
            );
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err(
                "the machine has no /dev/loop-control (the loop driver) to mount a \
                        filesystem image"
                    .into(),
            );
        }
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems
            .lines()
            .any(|line| line.split_whitespace().last() == Some("ext4"))
        {
            return Err("the kernel has no ext4 for the sandbox's filesystem image".into());
        }
        MKFS_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .ok_or_else(|| {
                format!(
                    "mkfs.ext4 is not installed (looked for {}; install e2fsprogs)",
                    MKFS_PATHS.join(", ")
                )
            })
    }

    /// Refuses a disk limit this server cannot enforce, or a nonsensical one.
    pub fn check(&self, resources: &Resources) -> Result<(), SandboxError> {
        let Some(megabytes) = resources.disk_mb else {
            return Ok(());
        };
        if let Err(reason) = &self.mkfs {
            return Err(SandboxError::Unsupported {
                backend: BackendKind::Namespace,
                operation: "disk limit",
                reason: reason.clone(),
            });
        }
        if megabytes < MIN_DISK_MB {
            return Err(SandboxError::InvalidRequest {
                field: "resources.disk_mb",
                message: format!(
                    "{megabytes} is too small: at least {MIN_DISK_MB} (the filesystem's own \
                     structures take a few megabytes)"
                ),
            });
        }
        Ok(())
    }

    /// What `/api/v1/info` says of the disk limit.
    pub fn limit_support(&self) -> LimitSupport {
        let (enforced, detail) = match &self.mkfs {
            Ok(_) => (
                true,
                "an ext4 image of disk_mb MB, loop-mounted by the server, holds the \
                 sandbox's /workspace, /root, /home, /var... and its writes to the system \
                 directories; a full disk answers ENOSPC (/tmp and /dev/shm are memory, \
                 bounded by the memory limit; checkpoints are kept outside)"
                    .to_owned(),
            ),
            Err(reason) => (
                false,
                format!("not enforced here, a create asking for it is refused: {reason}"),
            ),
        };
        LimitSupport {
            limit: "disk".to_owned(),
            enforced,
            detail,
        }
    }

    /// Puts the sandbox's writable directories of `dir` on an image of `megabytes`. On
    /// failure the caller calls [`release`] and removes the directory.
    pub fn create(&self, dir: &Path, megabytes: u64) -> Result<(), SandboxError> {
        let mkfs = self
            .mkfs
            .as_ref()
            .map_err(|reason| SandboxError::Unsupported {
                backend: BackendKind::Namespace,
                operation: "disk limit",
                reason: reason.clone(),
            })?;
        let image_path = dir.join(DISK_IMAGE);
        let image = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&image_path)
            .map_err(|error| SandboxError::io("create", &image_path, error))?;
        image
            .set_len(megabytes << 20)
            .map_err(|error| SandboxError::io("size", &image_path, error))?;
        format(mkfs, &image_path)?;
        let (image, _) = image.into_parts();
        let device = attach(&image, &image_path)?;
        let mount_point = dir.join(DISK_MOUNT);
        fs_err::create_dir(&mount_point)
            .map_err(|error| SandboxError::io("create", &mount_point, error))?;
        rustix::mount::mount(
            &device.path,
            &mount_point,
            "ext4",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"",
        )
        .map_err(|errno| SandboxError::io("mount the disk image on", &mount_point, errno.into()))?;
        // Mounted: the filesystem holds the loop device from now on.
        drop(device);
        let bound = (|| {
            for name in ON_DISK {
                let source = mount_point.join(name);
                let target = dir.join(name);
                for path in [&source, &target] {
                    match fs_err::create_dir(path) {
                        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                            return Err(SandboxError::io("create", path, error));
                        }
                        _ => {}
                    }
                }
                rustix::mount::mount_bind(&source, &target)
                    .map_err(|errno| SandboxError::io("bind the disk to", &target, errno.into()))?;
            }
            Ok(())
        })();
        // The binds keep the filesystem; `disk` itself is not needed any more.
        let unmounted = rustix::mount::unmount(&mount_point, UnmountFlags::empty())
            .map_err(|errno| SandboxError::io("unmount", &mount_point, errno.into()))
            .and_then(|()| {
                fs_err::remove_dir(&mount_point)
                    .map_err(|error| SandboxError::io("remove", &mount_point, error))
            });
        bound.and(unmounted)
    }
}

/// `mkfs.ext4` on the image: no reserved blocks (the sandbox is the only user), inode
/// tables initialised lazily (a create should not write the whole image).
fn format(mkfs: &Path, image: &Path) -> Result<(), SandboxError> {
    let output = Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(image)
        .env_clear()
        .output()
        .map_err(|error| SandboxError::io("run", mkfs, error))?;
    if output.status.success() {
        return Ok(());
    }
    Err(SandboxError::system(
        "format the sandbox's disk image",
        io::Error::other(format!(
            "{} {} ended with {}: {}",
            mkfs.display(),
            image.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    ))
}

/// A loop device attached to an image, open until it is mounted.
struct LoopDevice {
    path: PathBuf,
    _file: File,
}

/// Attaches `image` to a free loop device, with autoclear: once the device is neither open
/// nor mounted it detaches itself.
fn attach(image: &File, image_path: &Path) -> Result<LoopDevice, SandboxError> {
    let control_path = Path::new("/dev/loop-control");
    let control = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control_path)
        .map_err(|error| SandboxError::io("open", control_path, error))?;
    let mut info: loop_info64 = empty_loop_info();
    info.lo_flags = LO_FLAGS_AUTOCLEAR as u32;
    let name = image_path.as_os_str().as_encoded_bytes();
    let length = name.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..length].copy_from_slice(&name[..length]);
    let config = loop_config {
        fd: image.as_raw_fd() as u32,
        block_size: 0,
        info,
        __reserved: [0; 8],
    };
    let mut last_error = None;
    for _ in 0..LOOP_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number =
            unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as libc::c_ulong) };
        if number < 0 {
            return Err(SandboxError::io(
                "find a free loop device with",
                control_path,
                io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|error| SandboxError::io("open", &path, error))?;
        // SAFETY: LOOP_CONFIGURE reads a loop_config we own, valid for the call.
        let configured = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_CONFIGURE as libc::c_ulong,
                &config as *const loop_config,
            )
        };
        if configured == 0 {
            let (file, _) = device.into_parts();
            return Ok(LoopDevice { path, _file: file });
        }
        let error = io::Error::last_os_error();
        // Another process took the device between our two calls: take the next one.
        if error.raw_os_error() != Some(libc::EBUSY) {
            return Err(SandboxError::io("attach the disk image to", &path, error));
        }
        last_error = Some((path, error));
    }
    let (path, error) = last_error.expect("at least one attempt");
    Err(SandboxError::io("attach the disk image to", path, error))
}

fn empty_loop_info() -> loop_info64 {
    // SAFETY: loop_info64 is plain old data (integers and byte arrays); all zeroes is its
    // empty value.
    unsafe { std::mem::zeroed() }
}

/// Unmounts the sandbox's directories that are on a disk image (those that are not are
/// left alone), so its directory can be removed and the image's loop device goes.
pub(crate) fn release(dir: &Path) -> Result<(), SandboxError> {
    // Only a root server mounts disks (and only root may even ask the kernel to unmount).
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    for name in [DISK_MOUNT].into_iter().chain(ON_DISK) {
        let path = dir.join(name);
        match rustix::mount::unmount(&path, UnmountFlags::NOFOLLOW) {
            Ok(()) => {}
            // Not a mount point, or not there: nothing to release.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            // Still in use by someone: detach it now, it goes with its last user.
            Err(rustix::io::Errno::BUSY) => {
                rustix::mount::unmount(&path, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                    .map_err(|errno| SandboxError::io("unmount", &path, errno.into()))?;
            }
            Err(errno) => return Err(SandboxError::io("unmount", &path, errno.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_and_unenforceable_disk_limits_are_refused() {
        let disk = |megabytes| Resources {
            disk_mb: Some(megabytes),
            ..Resources::default()
        };
        let refusing = Disk {
            mkfs: Err("no disks in this test".into()),
        };
        assert!(refusing.check(&Resources::default()).is_ok());
        match refusing.check(&disk(64)) {
            Err(SandboxError::Unsupported {
                operation, reason, ..
            }) => assert_eq!(
                (operation, reason.as_str()),
                ("disk limit", "no disks in this test")
            ),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert!(!refusing.limit_support().enforced);
        let able = Disk {
            mkfs: Ok(PathBuf::from("/usr/sbin/mkfs.ext4")),
        };
        assert!(able.check(&disk(64)).is_ok());
        assert!(matches!(
            able.check(&disk(1)),
            Err(SandboxError::InvalidRequest {
                field: "resources.disk_mb",
                ..
            })
        ));
        assert!(able.limit_support().enforced);
    }

    #[test]
    fn releasing_a_directory_without_a_disk_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(WORKSPACE_DIR)).unwrap();
        release(dir.path()).unwrap();
        assert!(dir.path().join(WORKSPACE_DIR).is_dir());
    }
}
