//! The microVM image: what a microVM backend boots. An image is a directory
//! `<images_dir>/<name>/` holding
//!
//! - `vmlinuz`: the kernel of Debian's `linux-image-<version>-cloud-amd64`;
//! - `initramfs.cpio.gz`: the guest agent as `/init`, static busybox with its applets, the
//!   virtio kernel modules and `/etc/cthulu/modules` listing them in load order;
//! - `rootfs.ext4` (optional): a root filesystem the agent can switch into;
//! - `manifest.json`: the [`Manifest`] with the version id, package versions and each
//!   file's size and sha256.
//!
//! [`build`] makes one from [`BuildOptions`] (reporting [`Progress`], reusing what did not
//! change); [`open`] reads one back as an [`Image`]; [`list`] summarises them all;
//! [`find_agent`] locates the agent binary. Every failure is an [`ImageError`] naming what
//! to run next. Modules: [`apt`] (packages), [`modules`] (load order), [`cpio`] and
//! [`initramfs`], [`rootfs`] (ext4 from debootstrap, a directory or an OCI tarball), [`elf`]
//! (the bits of ELF read here).

pub mod agent;
pub mod apt;
pub mod build;
pub mod cpio;
pub mod elf;
pub mod error;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod modules;
pub mod rootfs;
mod tool;

pub use agent::{check_agent, find_agent, AGENT_ENV};
pub use build::{build, BuildOptions, Progress, CACHE_ENV};
pub use error::ImageError;
pub use image::{list, open, Image, ImageSummary, DEFAULT_IMAGE};
pub use manifest::Manifest;
pub use rootfs::{parse_size, RootfsSource};
