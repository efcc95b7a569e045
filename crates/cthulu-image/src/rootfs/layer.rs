//! Applies one tar layer to a staging directory, the way an OCI runtime unpacks an image,
//! but safely against a hostile archive:
//!
//! - every operation is relative to a directory file descriptor reached from the staging
//!   root one component at a time with `O_NOFOLLOW`, so an entry whose parent is a symlink
//!   (planted by an earlier entry or layer) is refused instead of written through;
//! - absolute names and `..` components are refused, in entry names and hard-link targets;
//! - an existing file is unlinked before its replacement is created with `O_EXCL`, so a
//!   symlink in its place is replaced, never followed;
//! - whiteouts: `.wh.NAME` removes `NAME`, `.wh..wh..opq` empties its directory (what
//!   lower layers put there); removal walks directories by descriptor, too.
//!
//! Ownership is kept when running as root; device nodes need root and are skipped (with a
//! warning) otherwise.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::error::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Which layer of which archive is being applied, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct LayerName<'a> {
    pub archive: &'a Path,
    pub layer: &'a str,
}

/// Why one entry could not be applied.
enum EntryError {
    Unsafe(String),
    Io(io::Error),
}

impl From<io::Error> for EntryError {
    fn from(error: io::Error) -> Self {
        EntryError::Io(error)
    }
}

impl From<Errno> for EntryError {
    fn from(error: Errno) -> Self {
        EntryError::Io(error.into())
    }
}

/// Opens `path` as the staging root for [`apply`].
pub fn open_root(path: &Path) -> Result<OwnedFd, ImageError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| ImageError::io(format!("cannot open {}", path.display()), errno.into()))
}

/// Applies the tar stream `reader` on top of the tree at `root`.
pub fn apply(reader: impl Read, root: &OwnedFd, name: LayerName<'_>) -> Result<(), ImageError> {
    let as_root = rustix::process::geteuid().is_root();
    let mut archive = tar::Archive::new(reader);
    let read_error = |source| {
        ImageError::io(
            format!(
                "cannot read layer {} of {}",
                name.layer,
                name.archive.display()
            ),
            source,
        )
    };
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let entry_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        apply_entry(&mut entry, root, as_root).map_err(|error| match error {
            EntryError::Unsafe(problem) => ImageError::UnsafeEntry {
                path: name.archive.to_path_buf(),
                layer: name.layer.to_owned(),
                entry: entry_name.clone(),
                problem,
            },
            EntryError::Io(source) => ImageError::io(
                format!(
                    "cannot unpack {entry_name} of layer {} of {}",
                    name.layer,
                    name.archive.display()
                ),
                source,
            ),
        })?;
    }
    Ok(())
}

/// The components of an entry name: relative, no `..`; `.` and empty ones dropped.
fn components(raw: &[u8]) -> Result<Vec<&OsStr>, EntryError> {
    if raw.starts_with(b"/") {
        return Err(EntryError::Unsafe("absolute path".into()));
    }
    let mut parts = Vec::new();
    for part in raw.split(|byte| *byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(EntryError::Unsafe("`..` component".into())),
            part if part.contains(&0) => return Err(EntryError::Unsafe("NUL byte".into())),
            part => parts.push(OsStr::from_bytes(part)),
        }
    }
    Ok(parts)
}

/// The directory `parts` names under `root`, reached without following symlinks; created
/// (0755) where missing when `create`, else `None` when missing.
fn open_directory(
    root: &OwnedFd,
    parts: &[&OsStr],
    create: bool,
) -> Result<Option<OwnedFd>, EntryError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut current = rustix::io::dup(root)?;
    for part in parts {
        let next = match rustix::fs::openat(&current, *part, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                rustix::fs::mkdirat(&current, *part, Mode::from_raw_mode(0o755))?;
                rustix::fs::openat(&current, *part, flags, Mode::empty())?
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(EntryError::Unsafe(format!(
                    "its path goes through {:?}, which is a symlink or not a directory",
                    part
                )))
            }
            Err(errno) => return Err(errno.into()),
        };
        current = next;
    }
    Ok(Some(current))
}

/// The type of `name` in `directory`, without following a symlink; `None` if absent.
fn kind_of(directory: &OwnedFd, name: &OsStr) -> Result<Option<FileType>, EntryError> {
    match rustix::fs::statat(directory, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

/// Removes `name` from `directory`, a directory with everything in it.
fn remove(directory: &OwnedFd, name: &OsStr) -> Result<(), EntryError> {
    match kind_of(directory, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            if let Some(child) = open_directory(directory, &[name], false)? {
                empty_directory(&child)?;
            }
            Ok(rustix::fs::unlinkat(directory, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rustix::fs::unlinkat(directory, name, AtFlags::empty())?),
    }
}

/// Removes everything in `directory`.
fn empty_directory(directory: &OwnedFd) -> Result<(), EntryError> {
    let names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(directory)?
        .map(|entry| entry.map(|entry| entry.file_name().to_bytes().to_vec()))
        .collect::<Result<_, _>>()?;
    for name in names {
        if name != b"." && name != b".." {
            remove(directory, OsStr::from_bytes(&name))?;
        }
    }
    Ok(())
}

fn set_owner(
    directory: &OwnedFd,
    name: &OsStr,
    header: &tar::Header,
    as_root: bool,
) -> Result<(), EntryError> {
    if !as_root {
        return Ok(());
    }
    // An empty or malformed owner field means root, as GNU tar reads it.
    let uid = header
        .uid()
        .ok()
        .and_then(|uid| u32::try_from(uid).ok())
        .unwrap_or(0);
    let gid = header
        .gid()
        .ok()
        .and_then(|gid| u32::try_from(gid).ok())
        .unwrap_or(0);
    rustix::fs::chownat(
        directory,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &OwnedFd,
    as_root: bool,
) -> Result<(), EntryError> {
    let raw_name = entry.path_bytes().into_owned();
    let parts = components(&raw_name)?;
    let Some((name, parent_parts)) = parts.split_last() else {
        // The root itself (`./`): nothing to create.
        return Ok(());
    };
    let header = entry.header().clone();
    let mode = header.mode()? & 0o7777;
    let name_text = name.to_string_lossy();

    if name_text == OPAQUE_WHITEOUT {
        if let Some(directory) = open_directory(root, parent_parts, true)? {
            empty_directory(&directory)?;
        }
        return Ok(());
    }
    if let Some(hidden) = name_text.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(EntryError::Unsafe("whiteout of nothing".into()));
        }
        if let Some(directory) = open_directory(root, parent_parts, false)? {
            remove(&directory, OsStr::new(hidden))?;
        }
        return Ok(());
    }

    let parent = open_directory(root, parent_parts, true)?.expect("created when missing");
    let existing = kind_of(&parent, name)?;
    match header.entry_type() {
        EntryType::Directory => {
            if existing.is_some_and(|kind| kind != FileType::Directory) {
                remove(&parent, name)?;
            }
            if existing != Some(FileType::Directory) {
                rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o700))?;
            }
            let directory = open_directory(&parent, &[name], false)?.expect("the directory exists");
            set_owner(&parent, name, &header, as_root)?;
            // Without root, keep the directory writable so later entries can go in it.
            let mode = if as_root { mode } else { mode | 0o700 };
            rustix::fs::fchmod(&directory, Mode::from_raw_mode(mode))?;
        }
        EntryType::Regular | EntryType::Continuous => {
            remove(&parent, name)?;
            let fd = rustix::fs::openat(
                &parent,
                *name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let mut file = File::from(fd);
            io::copy(entry, &mut file)?;
            set_owner(&parent, name, &header, as_root)?;
            // After chown, which clears set-id bits.
            rustix::fs::fchmod(file.as_fd(), Mode::from_raw_mode(mode))?;
        }
        EntryType::Symlink => {
            let target = header
                .link_name_bytes()
                .ok_or_else(|| EntryError::Unsafe("symlink without a target".into()))?;
            remove(&parent, name)?;
            // The target is stored, never resolved here: it means something only inside
            // the guest.
            rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, *name)?;
            set_owner(&parent, name, &header, as_root)?;
        }
        EntryType::Link => {
            let target = header
                .link_name_bytes()
                .ok_or_else(|| EntryError::Unsafe("hard link without a target".into()))?;
            let target_parts = components(&target)?;
            let Some((target_name, target_parent)) = target_parts.split_last() else {
                return Err(EntryError::Unsafe("hard link to the root".into()));
            };
            let source_directory = open_directory(root, target_parent, false)?
                .ok_or_else(|| EntryError::Unsafe("hard link to a missing file".into()))?;
            match kind_of(&source_directory, target_name)? {
                None => return Err(EntryError::Unsafe("hard link to a missing file".into())),
                Some(FileType::Directory) => {
                    return Err(EntryError::Unsafe("hard link to a directory".into()))
                }
                Some(_) => {}
            }
            if target_parts == parts {
                return Ok(());
            }
            remove(&parent, name)?;
            // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
            rustix::fs::linkat(
                &source_directory,
                *target_name,
                &parent,
                *name,
                AtFlags::empty(),
            )?;
        }
        kind @ (EntryType::Char | EntryType::Block | EntryType::Fifo) => {
            remove(&parent, name)?;
            let file_type = match kind {
                EntryType::Char => FileType::CharacterDevice,
                EntryType::Block => FileType::BlockDevice,
                _ => FileType::Fifo,
            };
            let device = rustix::fs::makedev(
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            );
            match rustix::fs::mknodat(&parent, *name, file_type, Mode::from_raw_mode(mode), device)
            {
                Ok(()) => set_owner(&parent, name, &header, as_root)?,
                Err(Errno::PERM) => {
                    tracing::warn!(
                        entry = %String::from_utf8_lossy(&raw_name),
                        "skipping a device node: creating one needs root"
                    );
                }
                Err(errno) => return Err(errno.into()),
            }
        }
        other => {
            tracing::warn!(
                entry = %String::from_utf8_lossy(&raw_name),
                "skipping a tar entry of type {other:?}"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        let names = |raw: &[u8]| {
            components(raw).map(|parts| {
                parts
                    .iter()
                    .map(|part| part.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(names(b"./etc//passwd").ok().unwrap(), ["etc", "passwd"]);
        assert_eq!(names(b"./").ok().unwrap(), Vec::<String>::new());
        assert!(names(b"/etc/passwd").is_err());
        assert!(names(b"a/../../b").is_err());
        assert!(names(b"..").is_err());
    }
}
