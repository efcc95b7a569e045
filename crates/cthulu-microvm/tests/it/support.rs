//! A microVM provider on a temporary state directory, sharing the machine's templates, and
//! the conformance target of both microVM backends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cthulu_core::conformance::{report_skip, ConformanceTarget};
use cthulu_core::SandboxProvider;
use cthulu_microvm::{image_resolver, QemuConfig, QemuProvider};
use cthulu_types::{BackendKind, SandboxId};

/// Where the test image is (`$CTHULU_TEST_IMAGES`, as `.ci/run` sets it, else
/// `/var/cache/cthulu/images`), or why there is none.
pub fn images_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("CTHULU_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cthulu/images"));
    cthulu_image::open(&dir, cthulu_image::DEFAULT_IMAGE)
        .map(|_| dir)
        .map_err(|error| error.to_string())
}

/// A provider of `kind` (qemu or firecracker) on `state` with the test image, or why the
/// backend cannot run here.
pub fn try_provider_of(kind: BackendKind, state: &Path) -> Result<QemuProvider, String> {
    let provider = match kind {
        BackendKind::Firecracker => {
            // Checked before the image: no binary is the reason that matters here.
            cthulu_microvm::firecracker::Firecracker::detect(None)?;
            let images = images_dir()?;
            QemuProvider::firecracker(QemuConfig {
                root: state.to_path_buf(),
                templates: Some(images.join(".firecracker-templates")),
                binary: None,
                images: image_resolver(images),
            })
        }
        _ => {
            let images = images_dir()?;
            QemuProvider::new(QemuConfig {
                root: state.to_path_buf(),
                templates: Some(images.join(".templates")),
                binary: None,
                images: image_resolver(images),
            })
        }
    };
    match cthulu_core::SandboxProvider::info(&provider).unavailable_reason {
        Some(reason) => Err(reason),
        None => Ok(provider),
    }
}

/// A qemu provider on `state` with the test image, or why the backend cannot run here.
pub fn try_provider(state: &Path) -> Result<QemuProvider, String> {
    try_provider_of(BackendKind::Qemu, state)
}

/// [`try_provider`], or `None` after printing why the backend cannot run here.
#[allow(dead_code)]
pub fn provider(state: &Path) -> Option<QemuProvider> {
    match try_provider(state) {
        Ok(provider) => Some(provider),
        Err(reason) => {
            report_skip(&format!("SKIP qemu: {reason}"));
            None
        }
    }
}

/// The conformance target of a microVM backend: one provider per test on a temporary
/// state directory.
#[allow(dead_code)]
pub struct VmTarget {
    kind: BackendKind,
    state: tempfile::TempDir,
}

#[allow(dead_code)]
impl VmTarget {
    pub fn new(kind: BackendKind) -> Self {
        let state = tempfile::Builder::new()
            .prefix(&format!("cthulu-{kind}-conformance-"))
            .tempdir()
            .expect("creating the state directory");
        VmTarget { kind, state }
    }

    fn sandbox_dir(&self, sandbox_id: &SandboxId) -> PathBuf {
        self.state
            .path()
            .join("sandboxes")
            .join(sandbox_id.as_str())
    }
}

impl ConformanceTarget for VmTarget {
    fn name(&self) -> &'static str {
        self.kind.as_str()
    }

    fn provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        Ok(Arc::new(try_provider_of(self.kind, self.state.path())?))
    }

    fn restarted_provider(&self) -> Result<Arc<dyn SandboxProvider>, String> {
        self.provider()
    }

    fn isolating(&self) -> bool {
        true
    }

    /// The sandbox's directory (sockets, state, checkpoints) and its VMM process.
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
