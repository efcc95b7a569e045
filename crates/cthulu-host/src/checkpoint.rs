//! Filesystem checkpoints: a gzipped tar of the workspace in
//! `checkpoints/<checkpoint_id>.tar.gz`, its metadata in `state.json`. The host cannot
//! save processes, so a memory checkpoint is `Unsupported`.
//!
//! Both directions work on descriptors beneath the workspace, like the file API: the
//! archive is written from a walk that never follows a symlink, and restore empties the
//! workspace without following symlinks, then creates each entry in a parent resolved
//! beneath the workspace, so no entry can land outside it. Regular files, directories and
//! symlinks are kept; sockets, FIFOs and devices are skipped.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use cthulu_core::SandboxError;
use cthulu_types::checkpoint::valid_checkpoint_name;
use cthulu_types::sandbox::Operation;
use cthulu_types::{BackendKind, Checkpoint, CheckpointRequest};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::files::{blocking, empty_dir_at};
use crate::ids::{is_valid_id, random_id};
use crate::sandbox::HostSandbox;
use crate::state::{CHECKPOINTS_DIR, WORKSPACE_DIR};
use crate::workspace::{open_beneath, open_or_create_dir_beneath};

const IO_BUFFER: usize = 1 << 20;

impl HostSandbox {
    fn archive_path(&self, checkpoint_id: &str) -> PathBuf {
        self.dir
            .join(CHECKPOINTS_DIR)
            .join(format!("{checkpoint_id}.tar.gz"))
    }

    fn find_checkpoint(&self, id_or_name: &str) -> Result<Checkpoint, SandboxError> {
        let inner = self.lock();
        inner
            .state
            .checkpoints
            .iter()
            .find(|checkpoint| {
                checkpoint.id == id_or_name || checkpoint.name.as_deref() == Some(id_or_name)
            })
            .cloned()
            .ok_or_else(|| SandboxError::CheckpointNotFound {
                checkpoint: id_or_name.to_owned(),
            })
    }

    pub(crate) async fn create_checkpoint(
        &self,
        request: CheckpointRequest,
    ) -> Result<Checkpoint, SandboxError> {
        if request.memory {
            return Err(SandboxError::Unsupported {
                backend: BackendKind::Host,
                operation: "memory checkpoint",
                reason: "host processes cannot be saved; checkpoint without `memory`".into(),
            });
        }
        let name_taken = |inner: &crate::sandbox::Inner, name: &str| {
            inner
                .state
                .checkpoints
                .iter()
                .any(|checkpoint| checkpoint.name.as_deref() == Some(name))
        };
        {
            let inner = self.lock();
            inner.check(Operation::Checkpoint)?;
            if let Some(name) = &request.name {
                if !valid_checkpoint_name(name) {
                    return Err(SandboxError::invalid(
                        "name",
                        "1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`",
                    ));
                }
                if name_taken(&inner, name) {
                    return Err(SandboxError::CheckpointExists { name: name.clone() });
                }
            }
        }
        let checkpoint_id = random_id('c');
        let archive = self.archive_path(&checkpoint_id);
        let workspace = self.dir.join(WORKSPACE_DIR);
        let size = {
            let archive = archive.clone();
            blocking("checkpoint", move || {
                write_archive(&workspace, &archive)
                    .map_err(|error| SandboxError::io("write the checkpoint", &archive, error))
            })
            .await?
        };
        let checkpoint = Checkpoint {
            id: checkpoint_id,
            name: request.name,
            created_at_ms: cthulu_types::now_ms(),
            size_bytes: size,
            memory: false,
        };
        let mut inner = self.lock();
        let refused = inner.check(Operation::Checkpoint).err().or_else(|| {
            let name = checkpoint.name.as_deref()?;
            name_taken(&inner, name).then(|| SandboxError::CheckpointExists {
                name: name.to_owned(),
            })
        });
        if let Some(error) = refused {
            let _ = fs_err::remove_file(&archive);
            return Err(error);
        }
        inner.state.checkpoints.push(checkpoint.clone());
        if let Err(error) = self.persist(&inner) {
            inner.state.checkpoints.pop();
            let _ = fs_err::remove_file(&archive);
            return Err(error);
        }
        Ok(checkpoint)
    }

    pub(crate) fn checkpoints(&self) -> Result<Vec<Checkpoint>, SandboxError> {
        let inner = self.lock();
        inner.check_exists()?;
        Ok(inner.state.checkpoints.clone())
    }

    pub(crate) async fn restore_checkpoint(&self, id_or_name: &str) -> Result<(), SandboxError> {
        self.lock().check(Operation::Restore)?;
        let checkpoint = self.find_checkpoint(id_or_name)?;
        let archive = self.archive_path(&checkpoint.id);
        let sandbox_dir = self.dir.clone();
        blocking("restore", move || {
            restore_archive(&sandbox_dir, &archive)
                .map_err(|error| SandboxError::io("restore the checkpoint", &archive, error))
        })
        .await
    }

    pub(crate) async fn remove_checkpoint(&self, id_or_name: &str) -> Result<(), SandboxError> {
        let checkpoint = {
            let mut inner = self.lock();
            inner.check_exists()?;
            let position = inner
                .state
                .checkpoints
                .iter()
                .position(|checkpoint| {
                    checkpoint.id == id_or_name || checkpoint.name.as_deref() == Some(id_or_name)
                })
                .ok_or_else(|| SandboxError::CheckpointNotFound {
                    checkpoint: id_or_name.to_owned(),
                })?;
            let checkpoint = inner.state.checkpoints.remove(position);
            if let Err(error) = self.persist(&inner) {
                inner.state.checkpoints.insert(position, checkpoint);
                return Err(error);
            }
            checkpoint
        };
        debug_assert!(is_valid_id(&checkpoint.id, 'c'));
        match fs_err::remove_file(self.archive_path(&checkpoint.id)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(SandboxError::io(
                "remove the checkpoint",
                self.archive_path(&checkpoint.id),
                error,
            )),
            _ => Ok(()),
        }
    }
}

fn open_nofollow_dir(parent: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Writes the archive of `workspace` to `archive` (through a temporary file) and returns
/// its size.
fn write_archive(workspace: &Path, archive: &Path) -> io::Result<u64> {
    let temporary = archive.with_extension("tmp");
    let result = (|| {
        let file = fs_err::File::create(&temporary)?;
        let encoder = GzEncoder::new(
            BufWriter::with_capacity(IO_BUFFER, file),
            Compression::fast(),
        );
        let mut builder = tar::Builder::new(encoder);
        let root = rustix::fs::open(
            workspace,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        append_tree(&mut builder, root)?;
        let mut writer = builder.into_inner()?.finish()?;
        writer.flush()?;
        let file = writer.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        let size = file.metadata()?.len();
        fs_err::rename(&temporary, archive)?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Adds everything under `root` to the archive, walking by descriptors, never following a
/// symlink. Entries that vanish during the walk are skipped.
fn append_tree(builder: &mut tar::Builder<impl Write>, root: OwnedFd) -> io::Result<()> {
    let mut pending: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::new())];
    while let Some((directory, prefix)) = pending.pop() {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in rustix::fs::Dir::read_from(&directory)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let name = OsStr::from_bytes(&name);
            let path = prefix.join(name);
            let stat = match rustix::fs::statat(&directory, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => continue,
                Err(errno) => return Err(errno.into()),
            };
            let mut header = tar::Header::new_gnu();
            header.set_mode(stat.st_mode & 0o7777);
            header.set_mtime(stat.st_mtime.max(0) as u64);
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    let opened = match open_nofollow_dir(&directory, name) {
                        Ok(opened) => opened,
                        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                        Err(errno) => return Err(errno.into()),
                    };
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, &path, io::empty())?;
                    pending.push((opened, path));
                }
                FileType::RegularFile => {
                    let file = match rustix::fs::openat(
                        &directory,
                        name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(file) => File::from(file),
                        Err(Errno::NOENT | Errno::LOOP) => continue,
                        Err(errno) => return Err(errno.into()),
                    };
                    let size = file.metadata()?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    builder.append_data(&mut header, &path, ExactSize::new(file, size))?;
                }
                FileType::Symlink => {
                    let target = match rustix::fs::readlinkat(&directory, name, Vec::new()) {
                        Ok(target) => target,
                        Err(Errno::NOENT | Errno::INVAL) => continue,
                        Err(errno) => return Err(errno.into()),
                    };
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(
                        &mut header,
                        &path,
                        OsStr::from_bytes(target.as_bytes()),
                    )?;
                }
                _ => tracing::debug!(path = %path.display(), "checkpoint skips a special file"),
            }
        }
    }
    Ok(())
}

/// Exactly `size` bytes of a file that may change while it is archived: cut if it grew,
/// padded with zeros if it shrank (the header already promised `size`).
struct ExactSize {
    file: io::Take<File>,
    remaining: u64,
}

impl ExactSize {
    fn new(file: File, size: u64) -> ExactSize {
        ExactSize {
            file: file.take(size),
            remaining: size,
        }
    }
}

impl Read for ExactSize {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let read = match self.file.read(buffer)? {
            0 => {
                let zeros = buffer
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                buffer[..zeros].fill(0);
                zeros
            }
            read => read,
        };
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// `path` from an archive as a relative path of plain components, or `None`.
fn archive_relative(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!relative.as_os_str().is_empty()).then_some(relative)
}

/// Empties the workspace of `sandbox_dir`, then unpacks `archive` into it.
fn restore_archive(sandbox_dir: &Path, archive: &Path) -> io::Result<()> {
    let file = fs_err::File::open(archive)?;
    let sandbox = rustix::fs::open(
        sandbox_dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Emptied, not replaced: processes working in the workspace keep a valid cwd.
    empty_dir_at(&sandbox, OsStr::new(WORKSPACE_DIR))?;
    let root = rustix::fs::openat(
        &sandbox,
        WORKSPACE_DIR,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::with_capacity(IO_BUFFER, file)));
    // Directory modes are applied last, deepest first, so a read-only directory does not
    // stop its own entries from being created.
    let mut directory_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let Some(relative) = archive_relative(&entry.path()?) else {
            tracing::warn!(path = %entry.path()?.display(), "restore skips an entry outside the workspace");
            continue;
        };
        let (Some(parent_relative), Some(name)) = (relative.parent(), relative.file_name()) else {
            continue;
        };
        let parent = open_or_create_dir_beneath(&root, parent_relative, 0o755, None)?;
        let mode = entry.header().mode()? & 0o7777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(errno.into()),
                }
                directory_modes.push((relative, mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let created = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::TRUNC
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut created = File::from(created);
                io::copy(&mut entry, &mut created)?;
                rustix::fs::fchmod(&created, Mode::from_raw_mode(mode))?;
                let mtime = Timespec {
                    tv_sec: entry.header().mtime()? as i64,
                    tv_nsec: 0,
                };
                rustix::fs::futimens(
                    &created,
                    &Timestamps {
                        last_access: mtime,
                        last_modification: mtime,
                    },
                )?;
            }
            tar::EntryType::Symlink => {
                let Some(target) = entry.link_name()? else {
                    continue;
                };
                rustix::fs::symlinkat(target.as_ref(), &parent, name)?;
            }
            _ => {}
        }
    }
    for (relative, mode) in directory_modes.into_iter().rev() {
        let directory = open_beneath(
            &root,
            &relative,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        rustix::fs::fchmod(&directory, Mode::from_raw_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_stay_relative() {
        assert_eq!(
            archive_relative(Path::new("a/b")),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(archive_relative(Path::new("./a")), Some(PathBuf::from("a")));
        assert_eq!(archive_relative(Path::new("../a")), None);
        assert_eq!(archive_relative(Path::new("/etc/passwd")), None);
        assert_eq!(archive_relative(Path::new("a/../../b")), None);
        assert_eq!(archive_relative(Path::new(".")), None);
    }

    #[test]
    fn exact_size_cuts_and_pads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let mut out = Vec::new();
        ExactSize::new(File::open(&path).unwrap(), 3)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hel");
        out.clear();
        ExactSize::new(File::open(&path).unwrap(), 8)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello\0\0\0");
    }

    #[test]
    fn archive_round_trip_keeps_files_modes_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sandbox");
        let workspace = sandbox.join(WORKSPACE_DIR);
        std::fs::create_dir_all(workspace.join("sub/deep")).unwrap();
        std::fs::write(workspace.join("sub/deep/file"), b"data").unwrap();
        std::fs::write(workspace.join("exec.sh"), b"#!/bin/sh").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            workspace.join("exec.sh"),
            std::fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", workspace.join("link")).unwrap();
        let archive = dir.path().join("c.tar.gz");
        write_archive(&workspace, &archive).unwrap();

        std::fs::write(workspace.join("sub/deep/file"), b"changed").unwrap();
        std::fs::write(workspace.join("new"), b"new").unwrap();
        restore_archive(&sandbox, &archive).unwrap();
        assert_eq!(
            std::fs::read(workspace.join("sub/deep/file")).unwrap(),
            b"data"
        );
        assert!(!workspace.join("new").exists());
        let mode = std::fs::metadata(workspace.join("exec.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o751);
        assert_eq!(
            std::fs::read_link(workspace.join("link")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
    }
}
