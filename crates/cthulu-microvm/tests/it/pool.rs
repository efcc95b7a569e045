//! Warm VMs: a create of the default shape takes one, the pool refills, a stopping server
//! destroys its spares, a starting one removes those a crashed one left.

use std::time::{Duration, Instant};

use cthulu_core::{ExecSpec, SandboxProvider, SandboxSpec};
use cthulu_types::SandboxId;

use crate::support::try_provider;

async fn wait_ready(provider: &cthulu_microvm::QemuProvider, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while provider.warm_vms() < count {
        assert!(Instant::now() < deadline, "no warm VM within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn vm_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join("vms"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_create_takes_a_warm_vm_and_the_pool_refills() {
    let state = tempfile::tempdir().unwrap();
    // A leftover of a crashed server: a VM directory no sandbox records.
    let leftover = state.path().join("vms").join("spare-crashed");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("qemu.pid"), "1\n").unwrap();
    let provider = match try_provider(state.path()) {
        Ok(provider) => provider.with_warm_vms(1),
        Err(reason) => {
            cthulu_core::conformance::report_skip(&format!("SKIP qemu: {reason}"));
            return;
        }
    };
    wait_ready(&provider, 1).await;
    assert!(!leftover.exists(), "the crashed server's spare was removed");
    let spares = vm_dirs(state.path());
    assert_eq!(spares.len(), 1, "{spares:?}");

    let sandbox_id = SandboxId::generate();
    let handle = provider
        .provision(&sandbox_id, &SandboxSpec::default())
        .await
        .unwrap();
    let output = handle
        .exec(ExecSpec::shell("hostname; cat /etc/machine-id"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(sandbox_id.as_str()),
        "the clone's own hostname"
    );
    let machine_id = lines.next().unwrap_or_default().to_string();
    assert_eq!(machine_id.len(), 32, "a fresh machine id: {stdout:?}");
    let sandbox_dir = state.path().join("sandboxes").join(sandbox_id.as_str());
    assert!(
        !sandbox_dir.join("qmp.sock").exists(),
        "the VM runs in the warm VM's directory, not a new one"
    );
    assert!(spares[0].join("qmp.sock").exists());

    // The pool makes the next one; a second sandbox gets another identity.
    wait_ready(&provider, 1).await;
    let other_id = SandboxId::generate();
    let other = provider
        .provision(&other_id, &SandboxSpec::default())
        .await
        .unwrap();
    let other_output = other
        .exec(ExecSpec::shell("cat /etc/machine-id"))
        .await
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&other_output.stdout).trim(),
        machine_id,
        "clones of one snapshot do not share a machine id"
    );

    handle.destroy().await.unwrap();
    other.destroy().await.unwrap();
    assert!(!spares[0].exists(), "destroy removed the VM's directory");
    wait_ready(&provider, 1).await;
    provider.shutdown().await;
    assert!(
        vm_dirs(state.path()).is_empty(),
        "a stopping server destroys its spares: {:?}",
        vm_dirs(state.path())
    );
}
