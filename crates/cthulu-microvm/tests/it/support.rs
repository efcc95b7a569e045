//! A qemu provider on a temporary state directory, sharing the machine's templates.

use std::path::{Path, PathBuf};

use cthulu_core::conformance::report_skip;
use cthulu_microvm::{image_resolver, QemuConfig, QemuProvider};

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

/// A provider on `state` with the test image, or why the backend cannot run here.
pub fn try_provider(state: &Path) -> Result<QemuProvider, String> {
    let images = images_dir()?;
    let provider = QemuProvider::new(QemuConfig {
        root: state.to_path_buf(),
        templates: Some(images.join(".templates")),
        binary: None,
        images: image_resolver(images),
    });
    match cthulu_core::SandboxProvider::info(&provider).unavailable_reason {
        Some(reason) => Err(reason),
        None => Ok(provider),
    }
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
