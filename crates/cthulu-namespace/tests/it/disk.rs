//! The disk limit: the sandbox's writable state on a loop-mounted ext4 image of that size
//! (root servers), refused by name elsewhere; nothing of it (mount, loop device, image)
//! left after destroy or a failed create. Filling it is the conformance scenario
//! `disk_fill_stops_at_the_disk_limit`.

use std::path::Path;
use std::time::Duration;

use cthulu_core::{PutOptions, SandboxError, SandboxProvider, SandboxSpec};
use cthulu_namespace::{InitCommand, NamespaceConfig, NamespaceProvider};
use cthulu_types::{CheckpointRequest, Resources, SandboxId};

use crate::support::{sh_ok, Fixture};

fn with_disk(megabytes: u64) -> SandboxSpec {
    SandboxSpec {
        resources: Resources {
            disk_mb: Some(megabytes),
            ..Resources::default()
        },
        ..SandboxSpec::default()
    }
}

/// Whether this server enforces disk limits; prints the SKIP line when it does not.
fn disk_enforced(provider: &NamespaceProvider) -> bool {
    let enforced = provider
        .info()
        .limits
        .iter()
        .any(|limit| limit.limit == "disk" && limit.enforced);
    if !enforced {
        eprintln!("SKIP namespace disk limit: not enforced by this server (see /api/v1/info)");
    }
    enforced
}

/// Mounts of this mount namespace at or below `dir`, as (mount point, filesystem type).
fn mounts_below(dir: &Path) -> Vec<(String, String)> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            let kind = filesystem.split_whitespace().next()?;
            point
                .starts_with(&needle)
                .then(|| (point.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// Loop devices whose backing file is below `dir`.
fn loop_devices_below(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let Ok(devices) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    devices
        .flatten()
        .filter_map(|device| {
            let backing = std::fs::read_to_string(device.path().join("loop/backing_file")).ok()?;
            backing.starts_with(&needle).then(|| {
                format!(
                    "{}: {}",
                    device.file_name().to_string_lossy(),
                    backing.trim()
                )
            })
        })
        .collect()
}

/// Waits until no loop device is backed by a file below `dir` (autoclear runs when the
/// filesystem's last mount goes, which another sandbox's starting init may hold a moment).
async fn assert_loop_devices_go(dir: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = loop_devices_below(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "loop devices left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_limit_holds_the_writable_state_and_leaves_nothing() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    if !disk_enforced(&fixture.provider) {
        let sandbox_id = SandboxId::generate();
        match fixture
            .provider
            .provision(&sandbox_id, &with_disk(64))
            .await
        {
            Err(SandboxError::Unsupported {
                operation, reason, ..
            }) => {
                assert_eq!(operation, "disk limit");
                eprintln!("SKIP namespace disk limit: {reason}");
            }
            Err(other) => panic!("expected Unsupported, got {other}"),
            Ok(_) => panic!("a disk limit that is not enforced must be refused"),
        }
        assert!(!fixture.dir(&sandbox_id).exists());
        return;
    }
    let (sandbox_id, handle) = fixture.sandbox_with(&with_disk(32)).await;
    let dir = fixture.dir(&sandbox_id);
    let mut mounted = mounts_below(&dir);
    mounted.sort();
    let expected: Vec<(String, String)> = ["layer", "root", "workspace"]
        .iter()
        .map(|name| (dir.join(name).display().to_string(), "ext4".to_owned()))
        .collect();
    assert_eq!(mounted, expected);
    assert_eq!(loop_devices_below(&dir).len(), 1);

    // /root, /usr/local and /workspace share the 32 MB.
    let fill = sh_ok(
        &handle,
        "dd if=/dev/zero of=/root/fill bs=1M count=64 2>&1; echo root=$?; \
         dd if=/dev/zero of=/usr/local/more bs=1M count=2 2>&1; echo usr=$?",
    )
    .await;
    assert_eq!(
        fill.matches("No space left on device").count(),
        2,
        "both writes stop at the limit: {fill}"
    );
    assert!(fill.contains("root=1") && fill.contains("usr=1"), "{fill}");
    let upload = handle
        .put_file(
            "big.bin",
            PutOptions::default(),
            Box::new(std::io::Cursor::new(vec![7u8; 1 << 20])),
        )
        .await;
    assert!(upload.is_err(), "an upload into a full disk fails");
    sh_ok(&handle, "rm /root/fill").await;
    handle
        .put_file(
            "big.bin",
            PutOptions::default(),
            Box::new(std::io::Cursor::new(vec![7u8; 1 << 20])),
        )
        .await
        .expect("room again after the fill is removed");
    // Checkpoints restore onto the image.
    sh_ok(&handle, "echo saved > /root/note").await;
    let checkpoint = handle
        .checkpoint(CheckpointRequest::default())
        .await
        .unwrap();
    sh_ok(&handle, "rm /root/note").await;
    handle.restore(&checkpoint.id).await.unwrap();
    assert_eq!(sh_ok(&handle, "cat /root/note").await, "saved\n");
    assert_eq!(mounts_below(&dir).len(), 3, "still on the image");

    handle.destroy().await.unwrap();
    assert_eq!(mounts_below(&dir), []);
    assert!(!dir.exists());
    assert_loop_devices_go(&dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_failing_after_the_disk_was_made_leaves_nothing() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    if !disk_enforced(&fixture.provider) {
        return;
    }
    let root = fixture.state.path().join("broken");
    let broken = NamespaceProvider::new(NamespaceConfig {
        root: root.clone(),
        init: InitCommand {
            program: "/nonexistent/cthulu-ns-init".into(),
            args: Vec::new(),
        },
        shim: cthulu_host::ShimCommand {
            program: env!("CARGO_BIN_EXE_cthulu-ns-shim").into(),
            args: Vec::new(),
        },
    })
    .unwrap();
    let sandbox_id = SandboxId::generate();
    let error = match broken.provision(&sandbox_id, &with_disk(32)).await {
        Err(error) => error,
        Ok(_) => panic!("a create with no init binary succeeded"),
    };
    assert!(error.to_string().contains("namespace init"), "{error}");
    let dir = root.join(sandbox_id.as_str());
    assert!(!dir.exists(), "the directory is left");
    assert_eq!(mounts_below(&dir), []);
    assert_loop_devices_go(&dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_disk_limits_are_invalid() {
    let Some(fixture) = Fixture::new() else {
        return;
    };
    if !disk_enforced(&fixture.provider) {
        return;
    }
    let sandbox_id = SandboxId::generate();
    assert!(matches!(
        fixture.provider.provision(&sandbox_id, &with_disk(1)).await,
        Err(SandboxError::InvalidRequest {
            field: "resources.disk_mb",
            ..
        })
    ));
    assert!(!fixture.dir(&sandbox_id).exists());
}
