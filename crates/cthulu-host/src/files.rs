//! The file API: put, get, read_dir and remove, each resolved beneath the workspace
//! descriptor (see [`workspace`](crate::workspace)) and run on a blocking thread.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cthulu_core::path::display_path;
use cthulu_core::{ByteReader, FileDownload, PutOptions, SandboxError};
use cthulu_types::{DirEntry, FileKind};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::ids::random_id;
use crate::workspace::{
    map_errno, open_beneath, open_dir_beneath, open_or_create_dir_beneath, Owner, Workspace,
};

/// Large buffers: uploads and downloads should run at disk speed (≥ 1 GB/s).
const IO_CHUNK: usize = 1 << 20;
/// Chunks of a download read ahead of the consumer.
const DOWNLOAD_READ_AHEAD: usize = 4;
const DEFAULT_FILE_MODE: u32 = 0o644;
const PARENT_DIR_MODE: u32 = 0o755;
/// Prefix of upload temporaries: renamed over the target once complete.
const UPLOAD_PREFIX: &str = ".cthulu-upload-";

/// Runs blocking file work off the async threads.
pub async fn blocking<T: Send + 'static>(
    operation: &'static str,
    work: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| SandboxError::system(operation, io::Error::other(error)))?
}

/// `relative` split into its parent directory and its last component; `None` for the
/// workspace itself.
fn split(relative: &Path) -> Option<(&Path, &OsStr)> {
    Some((relative.parent()?, relative.file_name()?))
}

pub async fn put_file(
    workspace: &Workspace,
    path: &str,
    options: PutOptions,
    contents: ByteReader,
) -> Result<u64, SandboxError> {
    let relative = workspace.relative(path)?;
    let root = workspace.open_root()?;
    // Created here, on the runtime: the bridge reads the async body from the blocking
    // thread through this runtime's handle.
    let reader = SyncIoBridge::new(contents);
    let owner = workspace.owner();
    blocking("upload", move || {
        put_blocking(&root, &relative, options, owner, reader)
    })
    .await
}

fn put_blocking(
    root: &OwnedFd,
    relative: &Path,
    options: PutOptions,
    owner: Option<Owner>,
    mut contents: impl Read,
) -> Result<u64, SandboxError> {
    let Some((parent_relative, name)) = split(relative) else {
        return Err(SandboxError::IsADirectory {
            path: display_path(relative),
        });
    };
    let parent = if options.create_parents {
        open_or_create_dir_beneath(root, parent_relative, PARENT_DIR_MODE, owner)
    } else {
        open_dir_beneath(root, parent_relative)
    }
    .map_err(|errno| map_errno(errno, "open the parent directory of", parent_relative))?;

    let temporary = format!("{UPLOAD_PREFIX}{}", random_id('u'));
    let file = rustix::fs::openat(
        &parent,
        temporary.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|errno| map_errno(errno, "create", relative))?;
    let mut file = File::from(file);
    let result = (|| {
        let written = copy_large(&mut contents, &mut file)
            .map_err(|error| SandboxError::io("write", display_path(relative), error))?;
        // fchmod: the mode asked for, not what the umask leaves of it.
        let mode = options.mode.unwrap_or(DEFAULT_FILE_MODE) & 0o7777;
        if let Some(owner) = owner {
            rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(owner.uid)),
                Some(rustix::fs::Gid::from_raw(owner.gid)),
            )
            .map_err(|errno| map_errno(errno, "chown", relative))?;
        }
        // After the chown, which clears setuid and setgid bits.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
            .map_err(|errno| map_errno(errno, "chmod", relative))?;
        // Renaming replaces the target as a whole: a symlink or hard link at the target is
        // replaced, never written through.
        rustix::fs::renameat(&parent, temporary.as_str(), &parent, name)
            .map_err(|errno| map_errno(errno, "rename", relative))?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&parent, temporary.as_str(), AtFlags::empty());
    }
    result
}

fn copy_large(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<u64> {
    let mut buffer = vec![0u8; IO_CHUNK];
    let mut total = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..read])?;
        total += read as u64;
    }
}

pub async fn get_file(workspace: &Workspace, path: &str) -> Result<FileDownload, SandboxError> {
    let relative = workspace.relative(path)?;
    let root = workspace.open_root()?;
    let (file, size, mode) = blocking("download", move || {
        // NONBLOCK: opening a FIFO must not hang; it is refused below.
        let file = open_beneath(
            &root,
            &relative,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|errno| map_errno(errno, "open", &relative))?;
        let stat = rustix::fs::fstat(&file).map_err(|errno| map_errno(errno, "stat", &relative))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => {
                return Err(SandboxError::IsADirectory {
                    path: display_path(&relative),
                })
            }
            _ => {
                return Err(SandboxError::invalid(
                    "path",
                    format!("{} is not a regular file", display_path(&relative)),
                ))
            }
        }
        let flags =
            rustix::fs::fcntl_getfl(&file).map_err(|errno| map_errno(errno, "fcntl", &relative))?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)
            .map_err(|errno| map_errno(errno, "fcntl", &relative))?;
        Ok((File::from(file), stat.st_size as u64, stat.st_mode & 0o7777))
    })
    .await?;
    Ok(FileDownload {
        size,
        mode,
        contents: read_in_background(file),
    })
}

/// A reader over `file` fed by a blocking thread that reads ahead in large chunks (a
/// tokio `File` would make one blocking round trip per small read).
fn read_in_background(mut file: File) -> ByteReader {
    let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(DOWNLOAD_READ_AHEAD);
    tokio::task::spawn_blocking(move || loop {
        let mut buffer = vec![0u8; IO_CHUNK];
        let item = match file.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => {
                buffer.truncate(read);
                Ok(Bytes::from(buffer))
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => Err(error),
        };
        let failed = item.is_err();
        // An error from send: the download was dropped; stop reading.
        if sender.blocking_send(item).is_err() || failed {
            return;
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Box::new(StreamReader::new(Box::pin(stream)))
}

pub async fn read_dir(workspace: &Workspace, path: &str) -> Result<Vec<DirEntry>, SandboxError> {
    let relative = workspace.relative(path)?;
    let root = workspace.open_root()?;
    blocking("read_dir", move || {
        let directory = open_beneath(
            &root,
            &relative,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|errno| map_errno(errno, "open", &relative))?;
        let handle = directory
            .try_clone()
            .map_err(|error| SandboxError::io("dup", display_path(&relative), error))?;
        let listing =
            rustix::fs::Dir::new(directory).map_err(|errno| map_errno(errno, "read", &relative))?;
        let mut entries = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|errno| map_errno(errno, "read", &relative))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match describe(&handle, OsStr::from_bytes(name)) {
                Ok(described) => entries.push(described),
                // Removed since it was listed.
                Err(Errno::NOENT) => {}
                Err(errno) => {
                    return Err(map_errno(
                        errno,
                        "stat",
                        &relative.join(OsStr::from_bytes(name)),
                    ))
                }
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    })
    .await
}

/// One entry, by lstat: a symlink is described, never followed.
fn describe(directory: &OwnedFd, name: &OsStr) -> Result<DirEntry, Errno> {
    let stat = rustix::fs::statat(directory, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    };
    let link_target = if kind == FileKind::Symlink {
        let target = rustix::fs::readlinkat(directory, name, Vec::new())?;
        Some(String::from_utf8_lossy(target.as_bytes()).into_owned())
    } else {
        None
    };
    let modified_ms =
        (stat.st_mtime as i64).max(0) as u64 * 1000 + (stat.st_mtime_nsec as u64) / 1_000_000;
    Ok(DirEntry {
        name: name.to_string_lossy().into_owned(),
        kind,
        size: stat.st_size as u64,
        mode: stat.st_mode & 0o7777,
        modified_ms,
        link_target,
    })
}

pub async fn remove(
    workspace: &Workspace,
    path: &str,
    recursive: bool,
) -> Result<(), SandboxError> {
    let relative = workspace.relative(path)?;
    let root = workspace.open_root()?;
    blocking("remove", move || {
        let Some((parent_relative, name)) = split(&relative) else {
            return Err(SandboxError::invalid(
                "path",
                "the workspace itself cannot be removed",
            ));
        };
        let parent = open_dir_beneath(&root, parent_relative)
            .map_err(|errno| map_errno(errno, "open", parent_relative))?;
        let stat = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| map_errno(errno, "stat", &relative))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                .map_err(|errno| map_errno(errno, "remove", &relative));
        }
        if recursive {
            remove_tree(&parent, name).map_err(|errno| map_errno(errno, "remove", &relative))
        } else {
            rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)
                .map_err(|errno| map_errno(errno, "remove", &relative))
        }
    })
    .await
}

/// Removes the directory `name` in `parent` and everything in it. Walks by descriptors
/// and opens with O_NOFOLLOW: a symlink is removed itself, never followed, even one swapped
/// in for a directory during the walk.
pub fn remove_tree(parent: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    empty_dir_at(parent, name)?;
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Err(Errno::NOENT) => Ok(()),
        result => result,
    }
}

/// Removes everything inside the directory `name` of `parent` (the directory stays).
pub fn empty_dir_at(parent: &impl AsFd, name: &OsStr) -> Result<(), Errno> {
    // Depth-first with an explicit stack (no recursion limit): each frame is an open
    // directory and the name it has in the frame below.
    let open = |parent: &dyn AsFd, name: &OsStr| {
        rustix::fs::openat(
            parent.as_fd(),
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(open(parent, name)?, PathBuf::new())];
    while let Some((directory, _)) = stack.last() {
        let mut descend = None;
        let listing = rustix::fs::Dir::read_from(directory)?;
        for entry in listing {
            let entry = entry?;
            let entry_name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
            if entry_name == "." || entry_name == ".." {
                continue;
            }
            let is_dir = match rustix::fs::statat(directory, &entry_name, AtFlags::SYMLINK_NOFOLLOW)
            {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode) == FileType::Directory,
                Err(Errno::NOENT) => continue,
                Err(errno) => return Err(errno),
            };
            if is_dir {
                match rustix::fs::unlinkat(directory, &entry_name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(Errno::NOTEMPTY | Errno::EXIST) => {
                        descend = Some(entry_name);
                        break;
                    }
                    Err(errno) => return Err(errno),
                }
            } else {
                match rustix::fs::unlinkat(directory, &entry_name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    // Became a directory since the stat: look again next round.
                    Err(Errno::ISDIR) => {
                        descend = Some(entry_name);
                        break;
                    }
                    Err(errno) => return Err(errno),
                }
            }
        }
        match descend {
            Some(child) => match open(directory, &child) {
                Ok(opened) => stack.push((opened, PathBuf::from(child))),
                // Swapped for a symlink or a file, or gone: unlink it as such next round.
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    match rustix::fs::unlinkat(directory, &child, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(errno) => return Err(errno),
                    }
                }
                Err(Errno::NOENT) => {}
                Err(errno) => return Err(errno),
            },
            None => {
                // This directory is empty now: remove it from its parent (the bottom frame
                // is the one asked for, which stays).
                let (_, name) = stack.pop().expect("the stack is not empty");
                if let Some((parent, _)) = stack.last() {
                    match rustix::fs::unlinkat(parent, &name, AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(errno) => return Err(errno),
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptying_a_tree_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/file"), "x").unwrap();
        std::fs::write(tree.join("top"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        let base =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        empty_dir_at(&base, OsStr::new("tree")).unwrap();
        assert!(tree.is_dir());
        assert_eq!(std::fs::read_dir(&tree).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
        std::fs::create_dir_all(tree.join("x/y")).unwrap();
        remove_tree(&base, OsStr::new("tree")).unwrap();
        assert!(!tree.exists());
    }
}
