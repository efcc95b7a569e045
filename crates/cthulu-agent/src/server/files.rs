//! File requests, each resolved beneath the workspace (see [`crate::paths`]): a put writes
//! a temporary file in the target's directory and renames it over the target; a get and a
//! listing are read piece by piece as the host's window allows; a remove never follows a
//! symlink. Semantics and error classes follow the host backend's `cthulu_host::files`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cthulu_guest_protocol::message::{DirEntry, EntryKind, ErrorCode, ErrorReply, MAX_LIST_ITEMS};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::paths::{self, errno_reply, reply};

const PARENT_DIR_MODE: u32 = 0o755;
/// Prefix of upload temporaries, renamed over the target once complete.
const UPLOAD_PREFIX: &str = ".cthulu-upload-";
/// JSON bytes of one `dir_entries` message at most (a frame carries 128 KiB).
const LISTING_CHUNK_BYTES: usize = 96 * 1024;

/// A number for each upload of this agent, so temporaries of concurrent uploads differ.
fn next_upload_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn split(relative: &Path) -> Option<(&Path, &OsStr)> {
    Some((relative.parent()?, relative.file_name()?))
}

/// A file being uploaded.
#[derive(Debug)]
pub struct Put {
    parent: OwnedFd,
    temporary: String,
    name: OsString,
    file: File,
    expected: u64,
    written: u64,
    mode: u32,
    path: String,
}

impl Put {
    pub fn open(
        workspace: &Path,
        path: &str,
        mode: u32,
        size: u64,
        create_parents: bool,
    ) -> Result<Put, ErrorReply> {
        let relative = paths::relative(workspace, path)?;
        let root = paths::open_root(workspace)?;
        let Some((parent_relative, name)) = split(&relative) else {
            return Err(reply(
                ErrorCode::IsADirectory,
                format!("is a directory: {path}"),
            ));
        };
        let parent = if create_parents {
            paths::open_or_create_dir_beneath(&root, parent_relative, PARENT_DIR_MODE)
        } else {
            paths::open_dir_beneath(&root, parent_relative)
        }
        .map_err(|errno| errno_reply(errno, "opening the directory of", path))?;
        let mut attempt = 0u32;
        let (temporary, file) = loop {
            let temporary = format!(
                "{UPLOAD_PREFIX}{}-{}-{attempt}",
                std::process::id(),
                next_upload_number()
            );
            match rustix::fs::openat(
                &parent,
                temporary.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(file) => break (temporary, File::from(file)),
                Err(Errno::EXIST) if attempt < 16 => attempt += 1,
                Err(errno) => return Err(errno_reply(errno, "creating", path)),
            }
        };
        Ok(Put {
            parent,
            temporary,
            name: name.to_owned(),
            file,
            expected: size,
            written: 0,
            mode: mode & 0o7777,
            path: path.to_owned(),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorReply> {
        if self.written + bytes.len() as u64 > self.expected {
            return Err(reply(
                ErrorCode::InvalidRequest,
                format!(
                    "more data than the {} bytes announced for {}",
                    self.expected, self.path
                ),
            ));
        }
        self.file.write_all(bytes).map_err(|error| {
            let errno = Errno::from_io_error(&error).unwrap_or(Errno::IO);
            errno_reply(errno, "writing", &self.path)
        })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The host sent everything: set the mode and rename over the target.
    pub fn finish(self) -> Result<(), ErrorReply> {
        let result = (|| {
            if self.written != self.expected {
                return Err(reply(
                    ErrorCode::InvalidRequest,
                    format!(
                        "{} bytes announced for {}, {} sent",
                        self.expected, self.path, self.written
                    ),
                ));
            }
            // fchmod: the mode asked for, not what the umask leaves of it.
            rustix::fs::fchmod(&self.file, Mode::from_raw_mode(self.mode))
                .map_err(|errno| errno_reply(errno, "chmod", &self.path))?;
            // Renaming replaces the target as a whole: a symlink at the target is
            // replaced, never written through.
            rustix::fs::renameat(
                &self.parent,
                self.temporary.as_str(),
                &self.parent,
                &self.name,
            )
            .map_err(|errno| errno_reply(errno, "renaming over", &self.path))
        })();
        if result.is_err() {
            self.abandon();
        }
        result
    }

    /// Removes the temporary file.
    pub fn abandon(&self) {
        let _ = rustix::fs::unlinkat(&self.parent, self.temporary.as_str(), AtFlags::empty());
    }
}

/// A file being downloaded.
#[derive(Debug)]
pub struct Get {
    file: File,
    pub remaining: u64,
    path: String,
}

impl Get {
    /// Opens a regular file: `(the download, mode, size)`.
    pub fn open(workspace: &Path, path: &str) -> Result<(Get, u32, u64), ErrorReply> {
        let relative = paths::relative(workspace, path)?;
        let root = paths::open_root(workspace)?;
        // NONBLOCK: opening a FIFO must not hang; it is refused below.
        let file = paths::open_beneath(
            &root,
            &relative,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|errno| errno_reply(errno, "opening", path))?;
        let stat = rustix::fs::fstat(&file).map_err(|errno| errno_reply(errno, "stat", path))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => {
                return Err(reply(
                    ErrorCode::IsADirectory,
                    format!("is a directory: {path}"),
                ))
            }
            _ => {
                return Err(reply(
                    ErrorCode::InvalidRequest,
                    format!("not a regular file: {path}"),
                ))
            }
        }
        let flags =
            rustix::fs::fcntl_getfl(&file).map_err(|errno| errno_reply(errno, "fcntl", path))?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)
            .map_err(|errno| errno_reply(errno, "fcntl", path))?;
        let size = stat.st_size as u64;
        Ok((
            Get {
                file: File::from(file),
                remaining: size,
                path: path.to_owned(),
            },
            stat.st_mode & 0o7777,
            size,
        ))
    }

    /// Up to `max` next bytes (never more than announced).
    pub fn read(&mut self, max: usize) -> Result<Vec<u8>, ErrorReply> {
        let want = (max as u64).min(self.remaining) as usize;
        let mut buffer = vec![0u8; want];
        let read = loop {
            match self.file.read(&mut buffer) {
                Ok(read) => break read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let errno = Errno::from_io_error(&error).unwrap_or(Errno::IO);
                    return Err(errno_reply(errno, "reading", &self.path));
                }
            }
        };
        if read == 0 && want > 0 {
            return Err(reply(
                ErrorCode::Internal,
                format!("{} shrank while it was read", self.path),
            ));
        }
        buffer.truncate(read);
        self.remaining -= read as u64;
        Ok(buffer)
    }
}

/// A directory being listed, a chunk at a time.
pub struct Listing {
    entries: rustix::fs::Dir,
    handle: OwnedFd,
    path: String,
    sent_any: bool,
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Listing")
            .field("path", &self.path)
            .finish()
    }
}

impl Listing {
    pub fn open(workspace: &Path, path: &str) -> Result<Listing, ErrorReply> {
        let relative = paths::relative(workspace, path)?;
        let root = paths::open_root(workspace)?;
        let directory = paths::open_beneath(
            &root,
            &relative,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|errno| errno_reply(errno, "opening", path))?;
        let handle = directory
            .try_clone()
            .map_err(|error| reply(ErrorCode::Internal, format!("dup: {error}")))?;
        let entries =
            rustix::fs::Dir::new(directory).map_err(|errno| errno_reply(errno, "reading", path))?;
        Ok(Listing {
            entries,
            handle,
            path: path.to_owned(),
            sent_any: false,
        })
    }

    /// The next chunk of entries (in directory order); `None` once all were given (an
    /// empty directory gives one empty chunk).
    pub fn next_chunk(&mut self) -> Result<Option<Vec<DirEntry>>, ErrorReply> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let mut exhausted = false;
        while chunk.len() < MAX_LIST_ITEMS && bytes < LISTING_CHUNK_BYTES {
            let Some(entry) = self.entries.next() else {
                exhausted = true;
                break;
            };
            let entry = entry.map_err(|errno| errno_reply(errno, "reading", &self.path))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match describe(&self.handle, OsStr::from_bytes(name)) {
                Ok(described) => {
                    bytes += serde_json::to_vec(&described).map_or(0, |json| json.len()) + 1;
                    chunk.push(described);
                }
                // Removed since it was listed.
                Err(Errno::NOENT) => {}
                Err(errno) => return Err(errno_reply(errno, "stat", &self.path)),
            }
        }
        if chunk.is_empty() && exhausted && self.sent_any {
            return Ok(None);
        }
        self.sent_any = true;
        Ok(Some(chunk))
    }
}

/// One entry, by lstat: a symlink is described, never followed.
fn describe(directory: &OwnedFd, name: &OsStr) -> Result<DirEntry, Errno> {
    let stat = rustix::fs::statat(directory, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    };
    let link_target = if kind == EntryKind::Symlink {
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

/// Removes a file, a symlink (not its target), an empty directory or, with `recursive`, a
/// tree. The workspace itself is refused.
pub fn remove(workspace: &Path, path: &str, recursive: bool) -> Result<(), ErrorReply> {
    let relative: PathBuf = paths::relative(workspace, path)?;
    let root = paths::open_root(workspace)?;
    let Some((parent_relative, name)) = split(&relative) else {
        return Err(reply(
            ErrorCode::InvalidRequest,
            "the workspace itself cannot be removed",
        ));
    };
    let parent = paths::open_dir_beneath(&root, parent_relative)
        .map_err(|errno| errno_reply(errno, "opening", path))?;
    let stat = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|errno| errno_reply(errno, "stat", path))?;
    let result = if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        rustix::fs::unlinkat(&parent, name, AtFlags::empty())
    } else if recursive {
        remove_tree(&parent, name)
    } else {
        rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)
    };
    result.map_err(|errno| errno_reply(errno, "removing", path))
}

/// Removes the directory `name` in `parent` and everything in it, walking by descriptors
/// opened with O_NOFOLLOW: a symlink is removed itself, never followed, even one swapped
/// in for a directory during the walk. (The host backend's walk, `cthulu_host::files`.)
fn remove_tree(parent: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let open = |parent: &OwnedFd, name: &OsStr| {
        rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    // Depth-first with an explicit stack: each frame is an open directory and its name in
    // the frame below.
    let mut stack: Vec<(OwnedFd, OsString)> = vec![(open(parent, name)?, name.to_owned())];
    while let Some((directory, _)) = stack.last() {
        let mut descend = None;
        for entry in rustix::fs::Dir::read_from(directory)? {
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
            let flags = if is_dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            match rustix::fs::unlinkat(directory, &entry_name, flags) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::NOTEMPTY | Errno::EXIST | Errno::ISDIR) => {
                    descend = Some(entry_name);
                    break;
                }
                Err(errno) => return Err(errno),
            }
        }
        match descend {
            Some(child) => match open(directory, &child) {
                Ok(opened) => stack.push((opened, child)),
                // Swapped for a symlink or a file: unlink it as such next round.
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
                let (_, name) = stack.pop().expect("the stack is not empty");
                let parent = stack.last().map_or(parent, |(directory, _)| directory);
                match rustix::fs::unlinkat(parent, &name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(errno) => return Err(errno),
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
    fn removing_a_tree_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let workspace = dir.path().join("ws");
        let tree = workspace.join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        remove(&workspace, "tree", true).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        assert_eq!(
            remove(&workspace, "", true).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn a_listing_comes_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        for index in 0..5000 {
            std::fs::write(dir.path().join(format!("file-{index:05}")), "").unwrap();
        }
        let mut listing = Listing::open(dir.path(), "").unwrap();
        let mut total = 0;
        let mut chunks = 0;
        while let Some(chunk) = listing.next_chunk().unwrap() {
            assert!(chunk.len() <= MAX_LIST_ITEMS);
            total += chunk.len();
            chunks += 1;
        }
        assert_eq!(total, 5000);
        assert!(chunks >= 2);
        let empty = tempfile::tempdir().unwrap();
        let mut listing = Listing::open(empty.path(), "").unwrap();
        assert_eq!(listing.next_chunk().unwrap(), Some(Vec::new()));
        assert_eq!(listing.next_chunk().unwrap(), None);
    }
}
