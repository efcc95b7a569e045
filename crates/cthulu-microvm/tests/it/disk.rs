//! VMs of an image with a root filesystem: the agent switches into a virtio-blk disk,
//! each clone writes its own copy-on-write overlay over the template's, and memory
//! checkpoints keep the disk the saved memory knows.
//!
//! Needs the image `debian` (`cthulu image build --name debian --rootfs debootstrap`, as
//! `.ci/run` builds it); without it the test prints `SKIP qemu-disk: <reason>`.

use std::sync::Arc;

use cthulu_core::conformance::report_skip;
use cthulu_core::{ExecSpec, SandboxHandle, SandboxProvider, SandboxSpec};
use cthulu_types::{CheckpointRequest, SandboxId};

use crate::support::{images_dir, provider};

const IMAGE: &str = "debian";

async fn shell(handle: &Arc<dyn SandboxHandle>, script: &str) -> String {
    let output = handle.exec(ExecSpec::shell(script)).await.unwrap();
    assert_eq!(
        output.exit.exit_code,
        Some(0),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_vm_with_a_root_disk_has_its_own_copy_on_write_disk() {
    let state = tempfile::tempdir().unwrap();
    let Some(provider) = provider(state.path()) else {
        return;
    };
    let has_image = images_dir()
        .map_err(|error| error.to_string())
        .and_then(|dir| cthulu_image::open(&dir, IMAGE).map_err(|error| error.to_string()));
    if let Err(reason) = has_image {
        report_skip(&format!(
            "SKIP qemu-disk: {reason} (build it with `cthulu image build --name {IMAGE} --rootfs debootstrap`)"
        ));
        return;
    }
    let spec = SandboxSpec {
        image: Some(IMAGE.into()),
        ..SandboxSpec::default()
    };
    let first_id = SandboxId::generate();
    let first = provider.provision(&first_id, &spec).await.unwrap();
    let second = provider
        .provision(&SandboxId::generate(), &spec)
        .await
        .unwrap();

    // The image's programs, from the disk (the initramfs has neither).
    let versions = shell(
        &first,
        "python3 -c 'print(6*7)'; git --version | cut -d' ' -f1-2; findmnt -n -o SOURCE /",
    )
    .await;
    assert_eq!(versions, "42\ngit version\n/dev/vda\n");

    // Writes land in this VM's overlay only.
    shell(
        &first,
        "echo mine > /etc/cthulu-test; echo work > note.txt; sync",
    )
    .await;
    let other = second
        .exec(ExecSpec::shell("cat /etc/cthulu-test"))
        .await
        .unwrap();
    assert_ne!(other.exit.exit_code, Some(0), "a clone saw another's write");

    // A memory checkpoint keeps the disk as it was; restore brings both back.
    first
        .checkpoint(CheckpointRequest {
            name: Some("before".into()),
            memory: true,
        })
        .await
        .unwrap();
    shell(&first, "rm /etc/cthulu-test; echo later > /etc/later; sync").await;
    first.restore("before").await.unwrap();
    let restored = shell(
        &first,
        "cat /etc/cthulu-test note.txt; test -e /etc/later && echo later-survived || true",
    )
    .await;
    assert_eq!(restored, "mine\nwork\n");

    // A new VM from that checkpoint starts with its disk.
    let clone = provider
        .provision(
            &SandboxId::generate(),
            &SandboxSpec {
                from_checkpoint: Some(format!("{first_id}/before")),
                ..SandboxSpec::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(shell(&clone, "cat /etc/cthulu-test").await, "mine\n");
    shell(&clone, "echo clone > /etc/cthulu-test; sync").await;
    assert_eq!(shell(&first, "cat /etc/cthulu-test").await, "mine\n");

    for handle in [first, second, clone] {
        handle.destroy().await.unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(state.path().join("sandboxes"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "destroy left {left:?}");
}
