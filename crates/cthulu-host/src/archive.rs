//! Gzipped tar archives of sandbox directories, the filesystem checkpoints of every backend
//! with a host-side directory (the host backend's workspace; the namespace backend's
//! workspace, root and overlay upper layer).
//!
//! An archive holds one or more [`Tree`]s: a single tree with an empty name is stored at
//! the top of the archive (the host backend's format), several are each stored under
//! their name. Both directions work on descriptors: the archive is written from a walk
//! that never follows a symlink, and restore empties each tree without following
//! symlinks, then creates each entry in a parent resolved beneath its tree
//! (`openat2` `RESOLVE_BENEATH`), so no entry can land outside it, whatever the archive
//! holds (`..`, absolute paths, symlinks to elsewhere). Entries that cannot be placed are
//! skipped with a warning, or fail the restore where placing them would mean following a
//! symlink out.
//!
//! Regular files, directories and symlinks are kept, with their modes and (given
//! [`RestoreOptions::owners`]) their owners; sockets, FIFOs and devices are skipped. With
//! [`ArchiveOptions::overlay`] the trees are overlayfs upper layers: whiteouts (character
//! devices 0:0) and the `trusted.overlay.*` / `user.overlay.*` attributes of directories
//! and files (`opaque`, `origin`...) are kept too, as PAX `CTHULU.xattr.<name>` records
//! with the value in hex (binary values such as `origin` may hold a newline, which the
//! `tar` crate's PAX reader takes for the end of a record), and restore makes them again
//! or fails, naming the entry (a filesystem without user attributes cannot hold an
//! opaque directory).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::files::empty_dir_at;
use crate::workspace::{open_beneath, open_or_create_dir_beneath};

const IO_BUFFER: usize = 1 << 20;
/// The largest extended attribute value Linux stores.
const XATTR_MAX: usize = 1 << 16;
/// Attribute prefixes of overlayfs kept with [`ArchiveOptions::overlay`].
const OVERLAY_XATTRS: [&str; 2] = ["trusted.overlay.", "user.overlay."];
/// How PAX records of ours carry extended attributes (values in hex).
const PAX_XATTR: &str = "CTHULU.xattr.";

/// One directory of an archive.
#[derive(Debug, Clone, Copy)]
pub struct Tree<'a> {
    /// Where its entries are stored in the archive (`""`: at the top, for a lone tree).
    pub name: &'a str,
    pub path: &'a Path,
}

/// What an archive keeps beyond files, directories, symlinks and modes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArchiveOptions {
    /// The trees are overlayfs upper layers: keep whiteouts and overlay attributes.
    pub overlay: bool,
}

/// How a restore places entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Make whiteouts and overlay attributes again (see [`ArchiveOptions::overlay`]).
    pub overlay: bool,
    /// Give entries the owners recorded in the archive where they fall in this range,
    /// anything else to its first ids; `None` leaves them to the restoring user.
    pub owners: Option<OwnerRange>,
}

/// Ids `uid..uid + count` and `gid..gid + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerRange {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl OwnerRange {
    /// The owner of a restored entry recorded as `uid`:`gid`.
    fn clamp(&self, uid: u64, gid: u64) -> (u32, u32) {
        let within = |id: u64, first: u32| {
            u32::try_from(id)
                .ok()
                .filter(|id| *id >= first && id - first < self.count)
                .unwrap_or(first)
        };
        (within(uid, self.uid), within(gid, self.gid))
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

/// An I/O error that names the archive entry it happened on.
fn at_entry(path: &Path, error: impl Into<io::Error>) -> io::Error {
    let error = error.into();
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Writes the archive of `trees` to `archive` (through a temporary file) and returns its
/// size.
pub fn write_archive(
    trees: &[Tree<'_>],
    archive: &Path,
    options: ArchiveOptions,
) -> io::Result<u64> {
    let temporary = archive.with_extension("tmp");
    let result = (|| {
        let file = fs_err::File::create(&temporary)?;
        let encoder = GzEncoder::new(
            BufWriter::with_capacity(IO_BUFFER, file),
            Compression::fast(),
        );
        let mut writer = write_tar(trees, encoder, options)?.finish()?;
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

/// Writes an uncompressed tar of `trees` to `writer` and returns it: the body of
/// [`write_archive`], and how a workspace is read from the host side (agent runs).
pub fn write_tar<W: Write>(
    trees: &[Tree<'_>],
    writer: W,
    options: ArchiveOptions,
) -> io::Result<W> {
    let mut builder = tar::Builder::new(writer);
    for tree in trees {
        let root = rustix::fs::open(
            tree.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| at_entry(tree.path, errno))?;
        append_tree(&mut builder, root, Path::new(tree.name), options)?;
    }
    builder.into_inner()
}

/// The overlay attributes of an open file or directory, as PAX records.
fn overlay_xattrs(file: &impl AsFd) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; XATTR_MAX];
    let length = match rustix::fs::flistxattr(file, &mut names[..]) {
        Ok(length) => length,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(errno) => return Err(errno.into()),
    };
    let mut records = Vec::new();
    for name in names[..length].split(|byte| *byte == 0) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !OVERLAY_XATTRS.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        let mut value = vec![0u8; XATTR_MAX];
        let length = match rustix::fs::fgetxattr(file, name, &mut value[..]) {
            Ok(length) => length,
            Err(Errno::NODATA) => continue,
            Err(errno) => return Err(errno.into()),
        };
        let hex: String = value[..length]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        records.push((format!("{PAX_XATTR}{name}"), hex.into_bytes()));
    }
    Ok(records)
}

fn append_xattrs(
    builder: &mut tar::Builder<impl Write>,
    records: &[(String, Vec<u8>)],
) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    builder.append_pax_extensions(
        records
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice())),
    )
}

/// Adds everything under `root` to the archive under `prefix`, walking by descriptors,
/// never following a symlink. Entries that vanish during the walk are skipped.
fn append_tree(
    builder: &mut tar::Builder<impl Write>,
    root: OwnedFd,
    prefix: &Path,
    options: ArchiveOptions,
) -> io::Result<()> {
    let mut pending: Vec<(OwnedFd, PathBuf)> = vec![(root, prefix.to_owned())];
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
                Err(errno) => return Err(at_entry(&path, errno)),
            };
            let mut header = tar::Header::new_gnu();
            header.set_mode(stat.st_mode & 0o7777);
            header.set_mtime(stat.st_mtime.max(0) as u64);
            header.set_uid(stat.st_uid.into());
            header.set_gid(stat.st_gid.into());
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    let opened = match open_nofollow_dir(&directory, name) {
                        Ok(opened) => opened,
                        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                        Err(errno) => return Err(at_entry(&path, errno)),
                    };
                    if options.overlay {
                        let records = overlay_xattrs(&opened).map_err(|e| at_entry(&path, e))?;
                        append_xattrs(builder, &records)?;
                    }
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
                        Err(errno) => return Err(at_entry(&path, errno)),
                    };
                    if options.overlay {
                        let records = overlay_xattrs(&file).map_err(|e| at_entry(&path, e))?;
                        append_xattrs(builder, &records)?;
                    }
                    let size = file.metadata()?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    builder.append_data(&mut header, &path, ExactSize::new(file, size))?;
                }
                FileType::Symlink => {
                    let target = match rustix::fs::readlinkat(&directory, name, Vec::new()) {
                        Ok(target) => target,
                        Err(Errno::NOENT | Errno::INVAL) => continue,
                        Err(errno) => return Err(at_entry(&path, errno)),
                    };
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(
                        &mut header,
                        &path,
                        OsStr::from_bytes(target.as_bytes()),
                    )?;
                }
                FileType::CharacterDevice if options.overlay && stat.st_rdev == 0 => {
                    header.set_entry_type(tar::EntryType::Char);
                    header.set_size(0);
                    header.set_device_major(0)?;
                    header.set_device_minor(0)?;
                    builder.append_data(&mut header, &path, io::empty())?;
                }
                _ => tracing::debug!(path = %path.display(), "an archive skips a special file"),
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

/// Which tree an archive path belongs to, and its path in that tree.
fn place<'t>(trees: &'t [(Tree<'_>, OwnedFd)], path: &Path) -> Option<(&'t OwnedFd, PathBuf)> {
    let relative = archive_relative(path)?;
    if let [(tree, root)] = trees {
        if tree.name.is_empty() {
            return Some((root, relative));
        }
    }
    let mut components = relative.components();
    let first = components.next()?.as_os_str();
    let (_, root) = trees
        .iter()
        .find(|(tree, _)| !tree.name.is_empty() && OsStr::new(tree.name) == first)?;
    let rest = components.as_path().to_owned();
    (!rest.as_os_str().is_empty()).then_some((root, rest))
}

/// Empties every tree, then unpacks `archive` into them. Each tree's directory must exist;
/// it is emptied, not replaced (a process working in it keeps a valid cwd).
pub fn restore_archive(
    trees: &[Tree<'_>],
    archive: &Path,
    options: RestoreOptions,
) -> io::Result<()> {
    let file = fs_err::File::open(archive)?;
    unpack_tar(
        trees,
        GzDecoder::new(BufReader::with_capacity(IO_BUFFER, file)),
        options,
        true,
    )
}

/// Unpacks the uncompressed tar `reader` into `trees` (emptied first with `empty`), with
/// the same guarantees as [`restore_archive`]: no entry lands outside its tree whatever
/// the archive holds. How an agent run's input reaches a host-side workspace.
pub fn unpack_tar(
    trees: &[Tree<'_>],
    reader: impl Read,
    options: RestoreOptions,
    empty: bool,
) -> io::Result<()> {
    let mut roots = Vec::new();
    for tree in trees {
        let parent = tree.path.parent().unwrap_or(Path::new("/"));
        let name = tree.path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no directory to restore into", tree.path.display()),
            )
        })?;
        let parent = rustix::fs::open(
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| at_entry(parent, errno))?;
        if empty {
            empty_dir_at(&parent, name).map_err(|errno| at_entry(tree.path, errno))?;
        }
        let root = rustix::fs::openat(
            &parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| at_entry(tree.path, errno))?;
        roots.push((*tree, root));
    }
    let mut tar = tar::Archive::new(reader);
    // Directory modes are applied last, deepest first, so a read-only directory does not
    // stop its own entries from being created.
    let mut directory_modes: Vec<(&OwnedFd, PathBuf, u32)> = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some((root, relative)) = place(&roots, &path) else {
            tracing::warn!(path = %path.display(), "restore skips an entry outside its trees");
            continue;
        };
        let (Some(parent_relative), Some(name)) = (relative.parent(), relative.file_name()) else {
            continue;
        };
        let parent =
            open_or_create_dir_beneath(root, parent_relative, 0o755, None).map_err(|errno| {
                match errno {
                    // RESOLVE_BENEATH's answer to a symlink or `..` leading out.
                    Errno::XDEV => io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{}: its directory leads outside the tree (a symlink or `..`)",
                            path.display()
                        ),
                    ),
                    errno => at_entry(&path, errno),
                }
            })?;
        let xattrs = if options.overlay {
            overlay_records(&mut entry)?
        } else {
            Vec::new()
        };
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        let owner = options
            .owners
            .map(|range| range.clamp(header.uid().unwrap_or(0), header.gid().unwrap_or(0)));
        let whiteout = header.entry_type() == tar::EntryType::Char
            && matches!(
                (header.device_major(), header.device_minor()),
                (Ok(Some(0)), Ok(Some(0)))
            );
        let chown_at = |parent: &OwnedFd| -> io::Result<()> {
            if let Some((uid, gid)) = owner {
                rustix::fs::chownat(
                    parent,
                    name,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|errno| at_entry(&path, errno))?;
            }
            Ok(())
        };
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(at_entry(&path, errno)),
                }
                let directory = open_nofollow_dir(&parent, name).map_err(|e| at_entry(&path, e))?;
                set_xattrs(&directory, &xattrs).map_err(|error| at_entry(&path, error))?;
                chown_at(&parent)?;
                directory_modes.push((root, relative, mode));
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
                )
                .map_err(|errno| at_entry(&path, errno))?;
                let mut created = File::from(created);
                io::copy(&mut entry, &mut created)?;
                set_xattrs(&created, &xattrs).map_err(|error| at_entry(&path, error))?;
                // Before the mode: a change of owner clears setuid and setgid bits.
                chown_at(&parent)?;
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
                rustix::fs::symlinkat(target.as_ref(), &parent, name)
                    .map_err(|errno| at_entry(&path, errno))?;
                chown_at(&parent)?;
            }
            tar::EntryType::Char if options.overlay && whiteout => {
                // A whiteout: mknod of 0:0 is allowed without CAP_MKNOD (Linux 5.8).
                rustix::fs::mknodat(&parent, name, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(|errno| at_entry(&path, errno))?;
                chown_at(&parent)?;
            }
            kind => {
                tracing::warn!(path = %path.display(), ?kind, "restore skips an entry of this kind")
            }
        }
    }
    for (root, relative, mode) in directory_modes.into_iter().rev() {
        let directory = open_beneath(
            root,
            &relative,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|errno| at_entry(&relative, errno))?;
        rustix::fs::fchmod(&directory, Mode::from_raw_mode(mode))?;
    }
    Ok(())
}

/// The overlay attributes an entry's PAX records carry (others are ignored).
fn overlay_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut records = Vec::new();
    for extension in extensions {
        let extension = extension?;
        let Ok(key) = extension.key() else {
            continue;
        };
        let Some(name) = key.strip_prefix(PAX_XATTR) else {
            continue;
        };
        if !OVERLAY_XATTRS.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        let value = unhex(extension.value_bytes()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the value of the attribute {name} is not hex"),
            )
        })?;
        records.push((name.to_owned(), value));
    }
    Ok(records)
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn set_xattrs(file: &impl AsFd, records: &[(String, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in records {
        rustix::fs::fsetxattr(file, name.as_str(), value, XattrFlags::empty()).map_err(
            |errno| {
                io::Error::new(
                    io::Error::from(errno).kind(),
                    format!(
                        "cannot set the overlay attribute {name} ({errno}); the sandbox's layer \
                     cannot be restored on this filesystem"
                    ),
                )
            },
        )?;
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
    fn owners_outside_the_range_go_to_its_root() {
        let range = OwnerRange {
            uid: 1000,
            gid: 2000,
            count: 10,
        };
        assert_eq!(range.clamp(1005, 2009), (1005, 2009));
        assert_eq!(range.clamp(0, 0), (1000, 2000));
        assert_eq!(range.clamp(1010, 1 << 40), (1000, 2000));
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
        let workspace = dir.path().join("workspace");
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
        let trees = [Tree {
            name: "",
            path: &workspace,
        }];
        write_archive(&trees, &archive, ArchiveOptions::default()).unwrap();

        std::fs::write(workspace.join("sub/deep/file"), b"changed").unwrap();
        std::fs::write(workspace.join("new"), b"new").unwrap();
        restore_archive(&trees, &archive, RestoreOptions::default()).unwrap();
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

    #[test]
    fn several_trees_keep_whiteouts_and_overlay_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let (first, upper) = (dir.path().join("first"), dir.path().join("upper"));
        std::fs::create_dir_all(first.join("a")).unwrap();
        std::fs::write(first.join("a/file"), b"one").unwrap();
        std::fs::create_dir_all(upper.join("etc/opaque")).unwrap();
        std::fs::write(upper.join("etc/opaque/kept"), b"two").unwrap();
        let opaque = File::open(upper.join("etc/opaque")).unwrap();
        if let Err(errno) =
            rustix::fs::fsetxattr(&opaque, "user.overlay.opaque", b"y", XattrFlags::empty())
        {
            eprintln!("SKIP archive xattrs: this filesystem takes no user attributes ({errno})");
            return;
        }
        drop(opaque);
        let origin = File::open(upper.join("etc/opaque/kept")).unwrap();
        let binary = b"\n\0=\xff 12 x\n";
        rustix::fs::fsetxattr(&origin, "user.overlay.origin", binary, XattrFlags::empty()).unwrap();
        drop(origin);
        let whiteout = upper.join("etc/removed");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &whiteout,
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        let trees = [
            Tree {
                name: "first",
                path: &first,
            },
            Tree {
                name: "upper",
                path: &upper,
            },
        ];
        let archive = dir.path().join("c.tar.gz");
        write_archive(&trees, &archive, ArchiveOptions { overlay: true }).unwrap();
        std::fs::remove_dir_all(upper.join("etc")).unwrap();
        std::fs::write(first.join("a/file"), b"changed").unwrap();
        let options = RestoreOptions {
            overlay: true,
            owners: None,
        };
        restore_archive(&trees, &archive, options).unwrap();
        assert_eq!(std::fs::read(first.join("a/file")).unwrap(), b"one");
        assert_eq!(
            std::fs::read(upper.join("etc/opaque/kept")).unwrap(),
            b"two"
        );
        let opaque = File::open(upper.join("etc/opaque")).unwrap();
        let mut value = [0u8; 16];
        let length = rustix::fs::fgetxattr(&opaque, "user.overlay.opaque", &mut value[..]).unwrap();
        assert_eq!(&value[..length], b"y");
        let origin = File::open(upper.join("etc/opaque/kept")).unwrap();
        let length = rustix::fs::fgetxattr(&origin, "user.overlay.origin", &mut value[..]).unwrap();
        assert_eq!(&value[..length], binary);
        let stat = rustix::fs::lstat(&whiteout).unwrap();
        assert_eq!(
            (FileType::from_raw_mode(stat.st_mode), stat.st_rdev),
            (FileType::CharacterDevice, 0)
        );
    }

    /// A tar entry written byte by byte (the builder refuses `..` and absolute paths).
    fn raw_entry(archive: &mut Vec<u8>, path: &str, kind: tar::EntryType, link: &str) {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(if kind == tar::EntryType::Regular {
            1
        } else {
            0
        });
        header.set_cksum();
        archive.extend_from_slice(header.as_bytes());
        if kind == tar::EntryType::Regular {
            archive.extend_from_slice(&[b'x'; 512]);
        }
    }

    #[test]
    fn entries_outside_their_trees_are_skipped_and_symlinks_out_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, outside) = (dir.path().join("tree"), dir.path().join("outside"));
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let trees = [Tree {
            name: "tree",
            path: &tree,
        }];
        let archive = dir.path().join("c.tar.gz");
        let write = |entries: &[(&str, tar::EntryType, &str)]| {
            let mut raw = Vec::new();
            for (path, kind, link) in entries {
                raw_entry(&mut raw, path, *kind, link);
            }
            raw.extend_from_slice(&[0; 1024]);
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(&raw).unwrap();
            std::fs::write(&archive, encoder.finish().unwrap()).unwrap();
        };
        let regular = tar::EntryType::Regular;
        let absolute = format!("{}/absolute", outside.display());
        write(&[
            ("../outside/dotdot", regular, ""),
            ("tree/../../outside/dotdot", regular, ""),
            (&absolute, regular, ""),
            ("other/file", regular, ""),
            ("tree/null", tar::EntryType::Char, ""),
            ("tree/kept", regular, ""),
        ]);
        let options = RestoreOptions {
            overlay: true,
            owners: None,
        };
        restore_archive(&trees, &archive, options).unwrap();
        let names = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&tree), ["kept"]);
        let outside_text = outside.display().to_string();
        for (link, target) in [
            ("tree/abs", outside_text.as_str()),
            ("tree/rel", "../outside"),
        ] {
            for through in [format!("{link}/escaped"), link.to_owned()] {
                write(&[
                    (link, tar::EntryType::Symlink, target),
                    (&through, regular, ""),
                ]);
                let error = restore_archive(&trees, &archive, options).unwrap_err();
                assert!(error.to_string().contains(&through), "{error}");
            }
        }
        assert!(names(&outside).is_empty());
    }
}
