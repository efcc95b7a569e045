//! What only a microVM backend has: the cold boot a template snapshot saves. Measured
//! with the backend's own template code (QEMU started, kernel booted, agent's hello) in
//! a scratch directory, so no template of the server is touched.

use std::path::Path;

use anyhow::Context as _;
use cthulu_microvm::qemu::Qemu;
use cthulu_microvm::template::{TemplateKey, Templates};
use cthulu_microvm::vm::Hypervisor;

use super::report::Latency;

/// Boots `count` VMs of the default image and size from nothing, each to its agent's
/// hello; the samples are the boot times.
pub async fn cold_boots(images_dir: &Path, count: u32) -> anyhow::Result<Option<Latency>> {
    let hypervisor = Hypervisor::Qemu(Qemu::detect(None).map_err(anyhow::Error::msg)?);
    let image = (cthulu_microvm::image_resolver(images_dir.to_owned()))(None)
        .map_err(anyhow::Error::msg)?;
    let scratch = tempfile::Builder::new()
        .prefix("cthulu-bench-boot-")
        .tempdir()
        .context("cannot create a scratch directory for cold boots")?;
    let key = TemplateKey {
        image_version: image.version.clone(),
        memory_mib: cthulu_microvm::provider::DEFAULT_MEMORY_MIB,
        vcpus: cthulu_microvm::provider::DEFAULT_VCPUS,
        network: false,
    };
    let mut samples = Vec::new();
    for boot in 0..count {
        let templates = Templates::new(scratch.path().join(boot.to_string()));
        let template = templates
            .get(&hypervisor, &image, &key)
            .await
            .context("a cold boot failed")?;
        samples.extend(template.boot);
        templates
            .clear()
            .context("cannot remove a scratch template")?;
    }
    Ok(Latency::of(&samples))
}
