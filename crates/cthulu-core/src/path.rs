//! Paths as a sandbox user writes them, turned into paths relative to the workspace.
//!
//! `/workspace/a/b`, `a/b` and `./a/b` all name `a/b` inside the workspace; `/workspace`
//! and `` name the workspace itself. Any other absolute path, and any `..` that climbs out
//! of the workspace, is [`SandboxError::PathOutsideSandbox`]. This is the lexical first
//! line only: backends open the result with a race-free resolution that refuses symlinks
//! leading out (openat2 `RESOLVE_BENEATH` on the host backend).

use std::path::{Component, Path, PathBuf};

use crate::SandboxError;

/// The workspace as sandboxed programs see it.
pub const WORKSPACE: &str = "/workspace";

/// `path` relative to the workspace root; `""` for the root itself.
pub fn workspace_relative(path: &str) -> Result<PathBuf, SandboxError> {
    let outside = || SandboxError::PathOutsideSandbox {
        path: path.to_owned(),
    };
    if path.contains('\0') {
        return Err(SandboxError::invalid("path", "contains a NUL byte"));
    }
    let relative = if let Some(rest) = path.strip_prefix(WORKSPACE) {
        if !(rest.is_empty() || rest.starts_with('/')) {
            // `/workspacefoo` is not under `/workspace`.
            return Err(outside());
        }
        rest.trim_start_matches('/')
    } else if path.starts_with('/') {
        return Err(outside());
    } else {
        path
    };
    let mut normal = PathBuf::new();
    let mut depth = 0usize;
    for component in Path::new(relative).components() {
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

/// The path as the sandbox shows it (`/workspace/...`), for messages and listings.
pub fn display_path(relative: &Path) -> String {
    if relative.as_os_str().is_empty() {
        WORKSPACE.to_owned()
    } else {
        format!("{WORKSPACE}/{}", relative.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        workspace_relative(path).unwrap().display().to_string()
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(ok("/workspace/a/b"), "a/b");
        assert_eq!(ok("a/b"), "a/b");
        assert_eq!(ok("./a//b/"), "a/b");
        assert_eq!(ok("/workspace"), "");
        assert_eq!(ok("/workspace/"), "");
        assert_eq!(ok(""), "");
        assert_eq!(ok("a/../b"), "b");
    }

    #[test]
    fn escapes_are_refused() {
        for path in [
            "../x",
            "/etc/passwd",
            "/workspace/../etc",
            "a/../../x",
            "/workspacex",
            "/",
        ] {
            assert!(
                matches!(
                    workspace_relative(path),
                    Err(SandboxError::PathOutsideSandbox { .. })
                ),
                "{path}"
            );
        }
        assert!(matches!(
            workspace_relative("a\0b"),
            Err(SandboxError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn display_round_trip() {
        assert_eq!(display_path(Path::new("")), "/workspace");
        assert_eq!(display_path(Path::new("a/b")), "/workspace/a/b");
    }
}
