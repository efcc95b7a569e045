//! The optional ext4 root filesystem the agent switches into: made from a debootstrap
//! bookworm, a directory, or an OCI / `docker save` tarball, then packed by
//! `mkfs.ext4 -d` (no mount, no loop device).
//!
//! - [`layer`]: applies one tar layer to a staging directory without ever following a
//!   symlink or leaving the directory (OCI whiteouts included).
//! - [`oci`]: finds the layers of an OCI image layout or a `docker save` archive.

pub mod layer;
pub mod oci;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::error::ImageError;
use crate::image::{hex, sha256_file};
use crate::tool;

/// The smallest root filesystem made when no size is given.
pub const MIN_ROOTFS_BYTES: u64 = 256 << 20;
/// Suite and packages of `--rootfs debootstrap`.
pub const DEBOOTSTRAP_SUITE: &str = "bookworm";
pub const DEBOOTSTRAP_PACKAGES: &str = "python3,git";

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// `debootstrap --variant=minbase bookworm` with python3 and git.
    Debootstrap,
    /// A directory tree, copied as it is.
    Directory(PathBuf),
    /// An OCI image layout or `docker save` tarball; its layers applied in order.
    OciArchive(PathBuf),
}

impl RootfsSource {
    /// `debootstrap`, a directory, or a `.tar` file.
    pub fn parse(text: &str) -> Result<RootfsSource, ImageError> {
        if text == "debootstrap" {
            return Ok(RootfsSource::Debootstrap);
        }
        let path = PathBuf::from(text);
        if path.is_dir() {
            Ok(RootfsSource::Directory(path))
        } else if path.is_file() {
            Ok(RootfsSource::OciArchive(path))
        } else {
            Err(ImageError::RootfsSource { path })
        }
    }

    /// How the manifest names the source.
    pub fn describe(&self) -> String {
        match self {
            RootfsSource::Debootstrap => "debootstrap".to_owned(),
            RootfsSource::Directory(path) => format!("dir:{}", path.display()),
            RootfsSource::OciArchive(path) => format!("oci:{}", path.display()),
        }
    }

    /// A key that changes when the source's content does: a fixed recipe for debootstrap
    /// (rebuild with `--force` to pick up new Debian packages), every entry's metadata for
    /// a directory, the sha256 for a tarball.
    pub fn input_key(&self) -> Result<String, ImageError> {
        Ok(match self {
            RootfsSource::Debootstrap => format!(
                "debootstrap --variant=minbase --include={DEBOOTSTRAP_PACKAGES} {DEBOOTSTRAP_SUITE}"
            ),
            RootfsSource::Directory(path) => {
                format!("dir:{}:{}", path.display(), tree_digest(path)?)
            }
            RootfsSource::OciArchive(path) => {
                format!("oci:{}:{}", path.display(), sha256_file(path)?)
            }
        })
    }
}

/// Parses `512M`, `2G`, `1073741824` (binary units).
pub fn parse_size(text: &str) -> Result<u64, ImageError> {
    let invalid = || ImageError::InvalidSize {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    let without_b = trimmed
        .strip_suffix("iB")
        .or_else(|| trimmed.strip_suffix('B'))
        .unwrap_or(trimmed);
    let (number, shift) = match without_b.chars().last() {
        Some('K' | 'k') => (&without_b[..without_b.len() - 1], 10),
        Some('M' | 'm') => (&without_b[..without_b.len() - 1], 20),
        Some('G' | 'g') => (&without_b[..without_b.len() - 1], 30),
        Some('T' | 't') => (&without_b[..without_b.len() - 1], 40),
        _ => (without_b, 0),
    };
    let value: u64 = number.trim().parse().map_err(|_| invalid())?;
    value
        .checked_mul(1u64 << shift)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(invalid)
}

/// Visits every entry under `root` (not following symlinks), sorted, with its path
/// relative to `root` and its metadata.
fn walk(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let walk_error = |source| ImageError::io(format!("cannot read {}", root.display()), source);
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let mut entries: Vec<_> = fs_err::read_dir(root.join(&relative))
            .map_err(walk_error)?
            .collect::<Result<_, _>>()
            .map_err(walk_error)?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let child = relative.join(entry.file_name());
            let metadata = fs_err::symlink_metadata(entry.path()).map_err(walk_error)?;
            visit(&child, &metadata)?;
            if metadata.is_dir() {
                pending.push(child);
            }
        }
    }
    Ok(())
}

/// A digest of a tree's paths, types, modes, owners, sizes, mtimes and link targets.
fn tree_digest(root: &Path) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    walk(root, &mut |relative, metadata| {
        let target = if metadata.is_symlink() {
            fs_err::read_link(root.join(relative))
                .map_err(|source| ImageError::io("cannot read a symlink", source))?
        } else {
            PathBuf::new()
        };
        hasher.update(
            format!(
                "{}\0{:o}\0{}:{}\0{}\0{}.{}\0{}\n",
                relative.display(),
                metadata.mode(),
                metadata.uid(),
                metadata.gid(),
                metadata.size(),
                metadata.mtime(),
                metadata.mtime_nsec(),
                target.display()
            )
            .as_bytes(),
        );
        Ok(())
    })?;
    Ok(hex(&hasher.finalize()))
}

/// Bytes a tree needs on ext4, roughly: data rounded up to 4 KiB blocks plus one block
/// per inode.
pub fn content_bytes(root: &Path) -> Result<u64, ImageError> {
    const BLOCK: u64 = 4096;
    let mut total = 0u64;
    walk(root, &mut |_, metadata| {
        total += metadata.size().div_ceil(BLOCK) * BLOCK + BLOCK;
        Ok(())
    })?;
    Ok(total)
}

/// The file system size for `content` bytes: `requested`, else content + 50 %, at least
/// [`MIN_ROOTFS_BYTES`], rounded up to a MiB.
pub fn image_size(content: u64, requested: Option<u64>) -> Result<u64, ImageError> {
    const MIB: u64 = 1 << 20;
    let size = match requested {
        Some(size) if size < content => {
            return Err(ImageError::RootfsTooSmall { size, content });
        }
        Some(size) => size,
        None => (content + content / 2).max(MIN_ROOTFS_BYTES),
    };
    Ok(size.div_ceil(MIB) * MIB)
}

/// `debootstrap --variant=minbase --include=python3,git bookworm <target>` (Debian's
/// default mirror).
fn debootstrap_command(target: &Path) -> Command {
    let mut command = Command::new("debootstrap");
    command
        .arg("--variant=minbase")
        .arg(format!("--include={DEBOOTSTRAP_PACKAGES}"))
        .arg(DEBOOTSTRAP_SUITE)
        .arg(target);
    command
}

/// Runs debootstrap into `target` (which must not exist or be empty).
pub fn debootstrap(target: &Path) -> Result<(), ImageError> {
    tool::run(&mut debootstrap_command(target), "debootstrap").map(drop)
}

/// `mkfs.ext4` packing `tree` into the existing file `output`, root owned by root.
fn mkfs_command(tree: &Path, output: &Path) -> Command {
    let mut command = Command::new("mkfs.ext4");
    command
        .args([
            "-q",
            "-F",
            "-L",
            "cthulu-root",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(tree)
        .arg(output);
    command
}

/// Packs `tree` into a new ext4 image `output` of `size` bytes with `mkfs.ext4 -d`, which
/// copies symlinks as symlinks and never follows them.
pub fn make_ext4(tree: &Path, output: &Path, size: u64) -> Result<(), ImageError> {
    let file = fs_err::File::create(output)
        .map_err(|source| ImageError::io("cannot create the root filesystem", source))?;
    file.set_len(size)
        .map_err(|source| ImageError::io("cannot size the root filesystem", source))?;
    drop(file);
    tool::run(&mut mkfs_command(tree, output), "mkfs.ext4").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(
            tool::describe(&debootstrap_command(Path::new("/w/rootfs"))),
            "debootstrap --variant=minbase --include=python3,git bookworm /w/rootfs"
        );
        assert_eq!(
            tool::describe(&mkfs_command(
                Path::new("/w/tree"),
                Path::new("/w/rootfs.ext4")
            )),
            "mkfs.ext4 -q -F -L cthulu-root -E root_owner=0:0 -d /w/tree /w/rootfs.ext4"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "M", "-1G", "1.5G", "0", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_sizes() {
        assert_eq!(image_size(1 << 20, None).unwrap(), MIN_ROOTFS_BYTES);
        assert_eq!(image_size(400 << 20, None).unwrap(), 600 << 20);
        assert_eq!(image_size(1 << 20, Some(300 << 20)).unwrap(), 300 << 20);
        assert!(matches!(
            image_size(400 << 20, Some(300 << 20)),
            Err(ImageError::RootfsTooSmall { .. })
        ));
    }

    #[test]
    fn a_directory_digest_follows_content_changes() {
        let directory = tempfile::tempdir().unwrap();
        fs_err::write(directory.path().join("a"), "one").unwrap();
        let first = tree_digest(directory.path()).unwrap();
        assert_eq!(first, tree_digest(directory.path()).unwrap());
        fs_err::write(directory.path().join("a"), "three").unwrap();
        assert_ne!(first, tree_digest(directory.path()).unwrap());
    }
}
