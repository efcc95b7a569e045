//! The conformance suite of `cthulu_core::conformance` against the qemu backend: real
//! microVMs (TCG on machines without hardware KVM), cloned from the test image's
//! templates, one provider per test on a temporary state directory.

#[path = "it/support.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;

use cthulu_core::conformance::ConformanceTarget;
use cthulu_core::SandboxProvider;
use cthulu_types::SandboxId;

struct QemuTarget {
    state: tempfile::TempDir,
}

impl QemuTarget {
    fn new() -> Self {
        let state = tempfile::Builder::new()
            .prefix("cthulu-qemu-conformance-")
            .tempdir()
            .expect("creating the state directory");
        QemuTarget { state }
    }

    fn sandbox_dir(&self, sandbox_id: &SandboxId) -> PathBuf {
        self.state
            .path()
            .join("sandboxes")
            .join(sandbox_id.as_str())
    }
}

impl ConformanceTarget for QemuTarget {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        Ok(Arc::new(support::try_provider(self.state.path())?))
    }

    fn restarted_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.provider()
    }

    fn isolating(&self) -> bool {
        true
    }

    /// The sandbox's directory (sockets, state, checkpoints) and its QEMU process.
    fn leftovers(&self, sandbox_id: &SandboxId) -> Option<Vec<String>> {
        let dir = self.sandbox_dir(sandbox_id);
        let mut found = Vec::new();
        if dir.symlink_metadata().is_ok() {
            found.push(format!("its directory {}", dir.display()));
        }
        let needle = dir.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                found.push(format!("process {}", entry.file_name().to_string_lossy()));
            }
        }
        Some(found)
    }
}

cthulu_core::conformance_suite!(QemuTarget::new());
