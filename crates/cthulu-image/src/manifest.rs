//! `manifest.json`: what an image directory holds, where it came from, and the size and
//! sha256 of each file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest layout this crate writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRAMFS_FILE: &str = "initramfs.cpio.gz";
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// The uncompressed kernel with a PVH entry, when it could be taken from the bzImage.
pub const VMLINUX_FILE: &str = "vmlinux";

/// The manifest of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] of the writer.
    pub format: u32,
    pub name: String,
    /// A short hash of every input (kernel and busybox package versions, agent sha256,
    /// rootfs source): equal versions mean equal images.
    pub version: String,
    /// When the image was built (RFC 3339, UTC).
    pub created: String,
    /// The guest kernel's release (`6.1.0-56-cloud-amd64`), as `uname -r` will say.
    pub kernel_version: String,
    /// Debian package name → version of each package the image was made from.
    pub packages: BTreeMap<String, String>,
    pub agent_sha256: String,
    /// Kernel modules in the initramfs, absolute guest paths in load order (also in the
    /// initramfs at `/etc/cthulu/modules`).
    pub modules: Vec<String>,
    pub rootfs: Option<RootfsRecord>,
    /// The input key of each artifact: an artifact whose key is unchanged is reused.
    pub inputs: Inputs,
    /// File name in the image directory → size and sha256.
    pub files: BTreeMap<String, FileRecord>,
}

/// The root filesystem of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsRecord {
    /// `debootstrap`, `dir:<path>` or `oci:<path>`.
    pub source: String,
}

/// Per-artifact input keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub kernel: String,
    pub initramfs: String,
    pub rootfs: Option<String>,
}

/// One file of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    /// What is wrong with a manifest read from the directory of image `name`, if anything
    /// (beyond what parsing checks).
    pub fn problem(&self, name: &str) -> Option<String> {
        if self.name != name {
            return Some(format!(
                "its manifest names image \"{}\", not \"{name}\"",
                self.name
            ));
        }
        for required in [KERNEL_FILE, INITRAMFS_FILE] {
            if !self.files.contains_key(required) {
                return Some(format!("its manifest lists no {required}"));
            }
        }
        if self.rootfs.is_some() != self.files.contains_key(ROOTFS_FILE) {
            return Some(format!(
                "its manifest's rootfs and {ROOTFS_FILE} entries disagree"
            ));
        }
        if let Some(file) = self.files.keys().find(|file| {
            ![KERNEL_FILE, INITRAMFS_FILE, ROOTFS_FILE, VMLINUX_FILE].contains(&file.as_str())
        }) {
            return Some(format!("its manifest lists an unknown file {file:?}"));
        }
        None
    }

    /// Total size of the image's files.
    pub fn size(&self) -> u64 {
        self.files.values().map(|file| file.size).sum()
    }
}
