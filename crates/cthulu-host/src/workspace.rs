//! Race-free path resolution beneath a sandbox's workspace, shared by the file API, exec's
//! working directory and checkpoint restore — of this backend and of every backend whose
//! workspace is a directory on the host (the namespace backend binds it as `/workspace`).
//! A kernel without `openat2` never gets here: the providers report themselves
//! unavailable (see [`openat2_supported`]).
//!
//! The workspace directory is opened as a descriptor for each operation and every path is
//! resolved from it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: the kernel
//! refuses `..` above the workspace, absolute symlinks, and symlinks (even ones swapped in
//! mid-operation) that would leave it. Symlinks that stay inside are followed. Everything
//! after that works relative to opened descriptors, never to paths.

use std::path::{Path, PathBuf};

use cthulu_core::path::display_path;
use cthulu_core::{workspace_relative, SandboxError};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A kernel resolving `..` beneath a directory while something is renamed may answer
/// EAGAIN; retrying is the documented response.
const RESOLVE_RETRIES: usize = 16;

/// Who owns what the file API creates in a workspace, when that is not the server's own
/// user: a namespace sandbox whose root is a subordinate uid outside must own its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Gives `name` in `parent` (not following a symlink) to this owner.
    pub fn chown_at(&self, parent: &impl AsFd, name: &std::ffi::OsStr) -> Result<(), Errno> {
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
    }
}

#[derive(Debug, Clone)]
pub struct Workspace {
    path: PathBuf,
    owner: Option<Owner>,
}

impl Workspace {
    /// A workspace whose new files belong to the server's user.
    pub fn new(path: PathBuf) -> Workspace {
        Workspace { path, owner: None }
    }

    /// A workspace whose new files and directories are given to `owner`.
    pub fn owned_by(path: PathBuf, owner: Option<Owner>) -> Workspace {
        Workspace { path, owner }
    }

    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// The workspace on the host (HOME of every command).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The workspace as the sandbox contract describes it to callers.
    pub fn host_workspace(&self) -> cthulu_core::HostWorkspace {
        cthulu_core::HostWorkspace {
            path: self.path.clone(),
            owner: self.owner.map(|owner| (owner.uid, owner.gid)),
        }
    }

    /// `user_path` relative to the workspace (`""` for the workspace itself). Accepts what
    /// [`workspace_relative`] accepts, and also the workspace's real absolute path, which is
    /// what programs in a host sandbox see as `$HOME`.
    pub fn relative(&self, user_path: &str) -> Result<PathBuf, SandboxError> {
        if let Some(host) = self.path.to_str() {
            if let Some(rest) = user_path.strip_prefix(host) {
                if rest.is_empty() || rest.starts_with('/') {
                    return workspace_relative(rest.trim_start_matches('/'));
                }
            }
        }
        workspace_relative(user_path)
    }

    /// The workspace directory, opened for resolving paths beneath it.
    pub fn open_root(&self) -> Result<OwnedFd, SandboxError> {
        rustix::fs::open(
            &self.path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| SandboxError::io("open the workspace", &self.path, errno.into()))
    }
}

/// Opens `relative` beneath `root` (`""` is `root` itself), never leaving it.
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

/// Opens the directory `relative` beneath `root`, creating what is missing of it (each
/// directory made with `mkdirat` in its already-resolved parent, so nothing is created
/// outside even if a symlink is swapped in meanwhile).
pub fn open_or_create_dir_beneath(
    root: &OwnedFd,
    relative: &Path,
    mode: u32,
    owner: Option<Owner>,
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
                    Ok(()) => {
                        if let Some(owner) = owner {
                            owner.chown_at(parent, component.as_os_str())?;
                        }
                    }
                    Err(Errno::EXIST) => {}
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

/// The contract's error for a failed system call on the user's `path`.
pub fn map_errno(errno: Errno, operation: &'static str, path: &Path) -> SandboxError {
    let shown = display_path(path);
    match errno {
        Errno::NOENT => SandboxError::FileNotFound { path: shown },
        Errno::EXIST => SandboxError::AlreadyExists { path: shown },
        Errno::NOTDIR => SandboxError::NotADirectory { path: shown },
        Errno::ISDIR => SandboxError::IsADirectory { path: shown },
        Errno::NOTEMPTY => SandboxError::DirectoryNotEmpty { path: shown },
        // Under RESOLVE_BENEATH these are the kernel refusing a way out of the workspace.
        Errno::XDEV | Errno::LOOP => SandboxError::PathOutsideSandbox { path: shown },
        errno => SandboxError::io(operation, shown, errno.into()),
    }
}

/// Whether this kernel has `openat2` with `RESOLVE_BENEATH`.
pub fn openat2_supported(dir: &Path) -> bool {
    let Ok(root) = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    open_dir_beneath(&root, Path::new("")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_accepts_the_real_workspace_path() {
        let workspace = Workspace::new(PathBuf::from("/srv/x/workspace"));
        let relative = |path: &str| workspace.relative(path).map(|p| p.display().to_string());
        assert_eq!(relative("/srv/x/workspace/a/b").unwrap(), "a/b");
        assert_eq!(relative("/srv/x/workspace").unwrap(), "");
        assert_eq!(relative("/workspace/a").unwrap(), "a");
        assert_eq!(relative("a/./b").unwrap(), "a/b");
        assert!(matches!(
            relative("/srv/x/workspace/../etc"),
            Err(SandboxError::PathOutsideSandbox { .. })
        ));
        assert!(matches!(
            relative("/srv/x/workspacefoo"),
            Err(SandboxError::PathOutsideSandbox { .. })
        ));
    }

    #[test]
    fn beneath_refuses_every_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("ws");
        std::fs::create_dir_all(workspace.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", workspace.join("absolute")).unwrap();
        std::os::unix::fs::symlink("../..", workspace.join("up")).unwrap();
        std::os::unix::fs::symlink("inside", workspace.join("sibling")).unwrap();
        let root = Workspace::new(workspace).open_root().unwrap();
        let open = |path: &str| open_dir_beneath(&root, Path::new(path));
        assert!(open("inside").is_ok());
        assert!(
            open("sibling").is_ok(),
            "a symlink that stays inside is followed"
        );
        for escape in ["absolute", "up", "..", "inside/../.."] {
            let errno = open(escape).unwrap_err();
            assert!(
                matches!(
                    map_errno(errno, "open", Path::new(escape)),
                    SandboxError::PathOutsideSandbox { .. }
                ),
                "{escape}: {errno:?}"
            );
        }
        assert_eq!(open("missing").unwrap_err(), Errno::NOENT);
    }

    #[test]
    fn creating_parents_stays_beneath() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&workspace).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, workspace.join("link")).unwrap();
        let root = Workspace::new(workspace.clone()).open_root().unwrap();
        open_or_create_dir_beneath(&root, Path::new("a/b/c"), 0o755, None).unwrap();
        assert!(workspace.join("a/b/c").is_dir());
        let errno =
            open_or_create_dir_beneath(&root, Path::new("link/x"), 0o755, None).unwrap_err();
        assert_eq!(errno, Errno::XDEV);
        assert!(!outside.join("x").exists());
    }
}
