//! The conformance suite of `cthulu_core::conformance` against the host backend: one test
//! per scenario, each on a provider rooted in a temporary directory, with the shim this
//! crate builds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cthulu_core::conformance::ConformanceTarget;
use cthulu_core::SandboxProvider;
use cthulu_host::{HostConfig, HostProvider, ShimCommand};
use cthulu_types::SandboxId;

struct HostTarget {
    state: tempfile::TempDir,
}

impl HostTarget {
    fn new() -> Self {
        let state = tempfile::Builder::new()
            .prefix("cthulu-host-conformance-")
            .tempdir()
            .expect("creating the state directory");
        HostTarget { state }
    }

    fn root(&self) -> PathBuf {
        self.state.path().join("sandboxes")
    }

    /// A provider on the same root: the first one, or the one a restarted server makes.
    fn make_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        let config = HostConfig {
            root: self.root(),
            shim: ShimCommand {
                program: env!("CARGO_BIN_EXE_cthulu-shim").into(),
                args: Vec::new(),
            },
        };
        let provider = HostProvider::new(config).map_err(|error| error.to_string())?;
        Ok(Arc::new(provider))
    }
}

impl ConformanceTarget for HostTarget {
    fn name(&self) -> &'static str {
        "host"
    }

    fn provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.make_provider()
    }

    fn restarted_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.make_provider()
    }

    fn isolating(&self) -> bool {
        false
    }

    /// The sandbox's directory, and any process working in it or started for it (a
    /// shim names its process directory on its command line).
    fn leftovers(&self, sandbox_id: &SandboxId) -> Option<Vec<String>> {
        let dir = self.root().join(sandbox_id.to_string());
        let mut found = Vec::new();
        if dir.symlink_metadata().is_ok() {
            found.push(format!("its directory {}", dir.display()));
        }
        found.extend(processes_using(&dir));
        Some(found)
    }
}

/// Live processes whose working directory is under `dir` or whose command line names it.
fn processes_using(dir: &Path) -> Vec<String> {
    let own = std::process::id().to_string();
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|byte| byte.is_ascii_digit()) || pid == own {
            continue;
        }
        let proc_dir = entry.path();
        let cwd_inside = std::fs::read_link(proc_dir.join("cwd"))
            .map(|cwd| cwd.starts_with(dir))
            .unwrap_or(false);
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let named = cmdline
            .windows(needle.len().max(1))
            .any(|window| window == needle);
        if cwd_inside || named {
            let command = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("process {pid} ({})", command.trim()));
        }
    }
    found
}

cthulu_core::conformance_suite!(HostTarget::new());
