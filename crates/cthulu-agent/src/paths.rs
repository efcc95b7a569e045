//! Paths of requests, resolved beneath the workspace the way the host backend does it
//! (`cthulu_host::workspace`): a lexical first pass (absolute paths other than the
//! workspace's own, `..` climbing out), then `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` from a descriptor of the workspace, so the kernel refuses
//! absolute symlinks and symlinks (even ones swapped in meanwhile) that would leave it.

use std::path::{Component, Path, PathBuf};

use cthulu_guest_protocol::message::{ErrorCode, ErrorReply};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A kernel resolving `..` beneath a directory while something is renamed may answer
/// EAGAIN; retrying is the documented response.
const RESOLVE_RETRIES: usize = 16;

pub fn reply(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

/// `user_path` relative to `workspace` (empty for the workspace itself). Absolute paths are
/// accepted when they name something under the workspace's own path.
pub fn relative(workspace: &Path, user_path: &str) -> Result<PathBuf, ErrorReply> {
    let outside = || {
        reply(
            ErrorCode::OutsideWorkspace,
            format!("path leads outside the workspace: {user_path}"),
        )
    };
    if user_path.contains('\0') {
        return Err(reply(
            ErrorCode::InvalidRequest,
            "the path contains a NUL byte",
        ));
    }
    let rest = if user_path.starts_with('/') {
        let workspace = workspace.to_str().unwrap_or_default().trim_end_matches('/');
        match user_path.strip_prefix(workspace) {
            Some(rest) if !workspace.is_empty() && (rest.is_empty() || rest.starts_with('/')) => {
                rest.trim_start_matches('/')
            }
            _ => return Err(outside()),
        }
    } else {
        user_path
    };
    let mut normal = PathBuf::new();
    let mut depth = 0usize;
    for component in Path::new(rest).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(outside());
                }
                depth -= 1;
                normal.pop();
            }
            Component::Normal(part) => {
                depth += 1;
                normal.push(part);
            }
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    Ok(normal)
}

/// The workspace directory, opened for resolving paths beneath it.
pub fn open_root(workspace: &Path) -> Result<OwnedFd, ErrorReply> {
    rustix::fs::open(
        workspace,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| {
        reply(
            ErrorCode::Internal,
            format!("opening the workspace {}: {errno}", workspace.display()),
        )
    })
}

/// Opens `relative` beneath `root` (empty is `root` itself), never leaving it.
pub fn open_beneath(
    root: &OwnedFd,
    relative: &Path,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let path = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let mut attempts = 0;
    loop {
        match rustix::fs::openat2(
            root,
            path,
            flags | OFlags::CLOEXEC,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::AGAIN | Errno::INTR) if attempts < RESOLVE_RETRIES => attempts += 1,
            result => return result,
        }
    }
}

/// Opens the directory `relative` beneath `root` as a handle for `*at` calls.
pub fn open_dir_beneath(root: &OwnedFd, relative: &Path) -> Result<OwnedFd, Errno> {
    open_beneath(
        root,
        relative,
        OFlags::PATH | OFlags::DIRECTORY,
        Mode::empty(),
    )
}

/// Opens the directory `relative` beneath `root`, creating what is missing of it, each
/// directory with `mkdirat` in its already-resolved parent.
pub fn open_or_create_dir_beneath(
    root: &OwnedFd,
    relative: &Path,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    match open_dir_beneath(root, relative) {
        Err(Errno::NOENT) => {}
        result => return result,
    }
    let mut prefix = PathBuf::new();
    let mut current: Option<OwnedFd> = None;
    for component in relative.components() {
        prefix.push(component);
        let opened = match open_dir_beneath(root, &prefix) {
            Err(Errno::NOENT) => {
                let parent = current.as_ref().unwrap_or(root);
                match rustix::fs::mkdirat(parent, component.as_os_str(), Mode::from_raw_mode(mode))
                {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(errno),
                }
                open_dir_beneath(root, &prefix)?
            }
            result => result?,
        };
        current = Some(opened);
    }
    match current {
        Some(directory) => Ok(directory),
        None => open_dir_beneath(root, relative),
    }
}

/// The error reply for a failed system call on the user's `path`.
pub fn errno_reply(errno: Errno, operation: &str, path: &str) -> ErrorReply {
    let (code, message) = match errno {
        Errno::NOENT => (
            ErrorCode::NotFound,
            format!("no such file or directory: {path}"),
        ),
        Errno::EXIST => (ErrorCode::AlreadyExists, format!("already exists: {path}")),
        Errno::NOTDIR => (ErrorCode::NotADirectory, format!("not a directory: {path}")),
        Errno::ISDIR => (ErrorCode::IsADirectory, format!("is a directory: {path}")),
        Errno::NOTEMPTY => (
            ErrorCode::DirectoryNotEmpty,
            format!("directory not empty: {path}"),
        ),
        // Under RESOLVE_BENEATH these are the kernel refusing a way out of the workspace.
        Errno::XDEV | Errno::LOOP => (
            ErrorCode::OutsideWorkspace,
            format!("path leads outside the workspace: {path}"),
        ),
        Errno::ACCESS | Errno::PERM | Errno::ROFS => (
            ErrorCode::PermissionDenied,
            format!("{operation} {path}: {errno}"),
        ),
        Errno::NAMETOOLONG => (ErrorCode::InvalidRequest, format!("name too long: {path}")),
        Errno::NOSPC | Errno::DQUOT | Errno::FBIG => {
            (ErrorCode::TooLarge, format!("{operation} {path}: {errno}"))
        }
        errno => (ErrorCode::Internal, format!("{operation} {path}: {errno}")),
    };
    reply(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: &str) -> Result<String, ErrorCode> {
        relative(Path::new("/srv/ws"), path)
            .map(|path| path.display().to_string())
            .map_err(|reply| reply.code)
    }

    #[test]
    fn lexical_forms() {
        assert_eq!(rel("a/b").unwrap(), "a/b");
        assert_eq!(rel("./a//b/").unwrap(), "a/b");
        assert_eq!(rel("a/../b").unwrap(), "b");
        assert_eq!(rel("").unwrap(), "");
        assert_eq!(rel(".").unwrap(), "");
        assert_eq!(rel("/srv/ws").unwrap(), "");
        assert_eq!(rel("/srv/ws/x").unwrap(), "x");
        for outside in ["..", "a/../..", "/etc", "/srv/wsx", "/srv/ws/../x"] {
            assert_eq!(rel(outside), Err(ErrorCode::OutsideWorkspace), "{outside}");
        }
        assert_eq!(rel("a\0b"), Err(ErrorCode::InvalidRequest));
    }

    #[test]
    fn beneath_refuses_every_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("ws");
        std::fs::create_dir_all(workspace.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", workspace.join("absolute")).unwrap();
        std::os::unix::fs::symlink("../..", workspace.join("up")).unwrap();
        std::os::unix::fs::symlink("inside", workspace.join("sibling")).unwrap();
        let root = open_root(&workspace).unwrap();
        let open = |path: &str| open_dir_beneath(&root, Path::new(path));
        assert!(open("inside").is_ok());
        assert!(open("sibling").is_ok());
        for escape in ["absolute", "up", "absolute/passwd", "up/x"] {
            let errno = open(escape).unwrap_err();
            assert_eq!(
                errno_reply(errno, "open", escape).code,
                ErrorCode::OutsideWorkspace,
                "{escape}: {errno:?}"
            );
        }
        let created = open_or_create_dir_beneath(&root, Path::new("sibling/a/b"), 0o755);
        assert!(created.is_ok());
        assert!(workspace.join("inside/a/b").is_dir());
        assert!(open_or_create_dir_beneath(&root, Path::new("absolute/x"), 0o755).is_err());
    }
}
