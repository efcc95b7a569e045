//! Finding the guest agent binary (`cthulu-agent`) and making sure it can run as the
//! initramfs's `/init`: an x86-64 ELF with no interpreter, since the guest has no libc.

use std::path::{Path, PathBuf};

use crate::elf::{self, Linkage};
use crate::error::ImageError;

/// The agent's file name, in the cargo target directory and next to `cthulu`.
pub const AGENT_BINARY: &str = "cthulu-agent";
/// The environment variable naming the agent binary.
pub const AGENT_ENV: &str = "CTHULU_AGENT";
/// The target triple `scripts/build-agent` builds for.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The agent binary: `explicit` if given, else `$CTHULU_AGENT`, else `cthulu-agent` next
/// to the current executable, else cargo's `--target` output beside the current
/// executable's profile directory (release, then debug). An explicitly named path must
/// exist; the others are tried in turn. The binary found must be static.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let from_environment = std::env::var_os(AGENT_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    let executable = std::env::current_exe().ok();
    let path = choose(explicit, from_environment.as_deref(), executable.as_deref())?;
    check_agent(&path, false)?;
    Ok(path)
}

/// The candidate chosen by [`find_agent`]'s rules (without the static check).
fn choose(
    explicit: Option<&Path>,
    from_environment: Option<&Path>,
    executable: Option<&Path>,
) -> Result<PathBuf, ImageError> {
    if let Some(path) = explicit.or(from_environment) {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(ImageError::AgentMissing {
                path: path.to_path_buf(),
            })
        };
    }
    let tried = candidates(executable);
    tried
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or(ImageError::AgentNotFound { tried })
}

/// Where the agent may be relative to the current executable.
fn candidates(executable: Option<&Path>) -> Vec<PathBuf> {
    let Some(directory) = executable.and_then(Path::parent) else {
        return Vec::new();
    };
    let mut paths = vec![directory.join(AGENT_BINARY)];
    if let Some(target_dir) = directory.parent() {
        for profile in ["release", "debug"] {
            paths.push(
                target_dir
                    .join(AGENT_TARGET)
                    .join(profile)
                    .join(AGENT_BINARY),
            );
        }
    }
    paths
}

/// Refuses a binary that cannot be the guest's `/init`: not an x86-64 ELF executable, or
/// dynamically linked. `allow_script` (tests only) lets a `#!` script through.
pub fn check_agent(path: &Path, allow_script: bool) -> Result<(), ImageError> {
    let bytes = match fs_err::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::AgentMissing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => return Err(ImageError::io("cannot read the guest agent", source)),
    };
    if allow_script && bytes.starts_with(b"#!") {
        return Ok(());
    }
    match elf::executable_linkage(&bytes) {
        Ok(Linkage::Static) => Ok(()),
        Ok(Linkage::Dynamic) => Err(ImageError::AgentDynamic {
            path: path.to_path_buf(),
        }),
        Err(problem) => Err(ImageError::AgentNotElf {
            path: path.to_path_buf(),
            problem: problem.0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::executable;

    #[test]
    fn explicit_then_environment_then_beside_the_executable() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        let release = root.join("target/release");
        let cross = root.join("target/x86_64-unknown-linux-gnu/debug");
        fs_err::create_dir_all(&release).unwrap();
        fs_err::create_dir_all(&cross).unwrap();
        let executable = release.join("cthulu");
        let explicit = root.join("explicit");
        let environment = root.join("environment");
        fs_err::write(&explicit, b"x").unwrap();
        fs_err::write(&environment, b"x").unwrap();

        let chosen = |explicit: Option<&Path>, environment: Option<&Path>| {
            choose(explicit, environment, Some(&executable))
        };
        assert_eq!(
            chosen(Some(&explicit), Some(&environment)).unwrap(),
            explicit
        );
        assert_eq!(chosen(None, Some(&environment)).unwrap(), environment);
        let missing = root.join("missing");
        assert!(matches!(
            chosen(Some(&missing), Some(&environment)),
            Err(ImageError::AgentMissing { path }) if path == missing
        ));

        match chosen(None, None) {
            Err(ImageError::AgentNotFound { tried }) => assert_eq!(
                tried,
                [
                    release.join("cthulu-agent"),
                    root.join("target/x86_64-unknown-linux-gnu/release/cthulu-agent"),
                    root.join("target/x86_64-unknown-linux-gnu/debug/cthulu-agent"),
                ]
            ),
            other => panic!("{other:?}"),
        }
        fs_err::write(cross.join("cthulu-agent"), b"x").unwrap();
        assert_eq!(chosen(None, None).unwrap(), cross.join("cthulu-agent"));
        fs_err::write(release.join("cthulu-agent"), b"x").unwrap();
        assert_eq!(chosen(None, None).unwrap(), release.join("cthulu-agent"));
    }

    #[test]
    fn only_static_executables_pass() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("agent");
        fs_err::write(&path, executable(&[1])).unwrap();
        check_agent(&path, false).unwrap();

        fs_err::write(&path, executable(&[6, 3, 1])).unwrap();
        let error = check_agent(&path, false).unwrap_err();
        assert!(matches!(error, ImageError::AgentDynamic { .. }));
        assert!(error.to_string().contains("scripts/build-agent"), "{error}");

        fs_err::write(&path, b"#!/bin/busybox sh\necho hi\n").unwrap();
        assert!(matches!(
            check_agent(&path, false),
            Err(ImageError::AgentNotElf { .. })
        ));
        check_agent(&path, true).unwrap();
    }

    #[test]
    fn the_hosts_own_dynamic_binaries_are_refused() {
        // /bin/sh on any Debian is dynamically linked.
        let error = check_agent(Path::new("/bin/sh"), false).unwrap_err();
        assert!(matches!(error, ImageError::AgentDynamic { .. }), "{error}");
    }
}
